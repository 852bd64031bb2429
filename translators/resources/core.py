"""Core and apps kinds the translator reads: Service, Pod, Deployment, ConfigMap, Secret."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator

from translators.resources.base import K8sModel, LabelSelector, PortNumber, Resource, shown

_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _check_target_port(value: int | str) -> int | str:
    """A port number, or the name of a container port (IANA service name: at most 15 characters)."""
    if isinstance(value, int) and not 1 <= value <= 65535:
        raise ValueError(f"{value} is not a port number (1-65535)")
    if isinstance(value, str) and (len(value) > 15 or not _PORT_NAME.match(value)):
        raise ValueError(f"{shown(value)} is not a port name")
    return value


TargetPort = Annotated[int | str, AfterValidator(_check_target_port)]


class ServicePort(K8sModel):
    name: str | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    port: PortNumber
    target_port: TargetPort | None = None
    app_protocol: str | None = None


class ServiceSpec(K8sModel):
    selector: dict[str, str] = Field(default_factory=dict)
    ports: list[ServicePort] = Field(default_factory=list)
    cluster_ip: str | None = Field(default=None, alias="clusterIP")
    type: str = "ClusterIP"


class Service(Resource):
    group = ""
    kind = "Service"
    versions = ("v1",)

    spec: ServiceSpec = Field(default_factory=ServiceSpec)


class EndpointConditions(K8sModel):
    ready: bool | None = None  # unknown counts as ready, as Kubernetes says


class SliceEndpoint(K8sModel):
    addresses: list[str] = Field(min_length=1, max_length=100)
    conditions: EndpointConditions = Field(default_factory=EndpointConditions)


class EndpointPort(K8sModel):
    name: str | None = None
    port: int | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"


SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class EndpointSlice(Resource):
    """Endpoints written by hand (or by a controller) for a Service without a selector, which names it in its
    `kubernetes.io/service-name` label. A Service with a selector gets its endpoints from the selected pods."""

    group = "discovery.k8s.io"
    kind = "EndpointSlice"
    versions = ("v1",)

    address_type: Literal["IPv4", "IPv6", "FQDN"]
    endpoints: list[SliceEndpoint] = Field(default_factory=list)
    ports: list[EndpointPort] = Field(default_factory=list)

    @field_validator("endpoints", "ports", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        """The API server writes an empty list as null (a slice with no endpoints yet, as a controller creates it)."""
        return [] if value is None else value


class ContainerPort(K8sModel):
    name: str | None = None
    container_port: PortNumber
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"


class VolumeMount(K8sModel):
    name: str
    mount_path: str
    sub_path: str | None = None  # a path inside the volume mounted at mount_path instead of its root


class KeyToPath(K8sModel):
    key: str
    path: str  # relative path of the key's file inside the volume


class ConfigMapVolumeSource(K8sModel):
    name: str
    items: list[KeyToPath] = Field(default_factory=list)  # when set, only these keys, at these paths


class Volume(K8sModel):
    """Only ConfigMap volumes are read (the picker's config); other sources are kept as a name."""

    name: str
    config_map: ConfigMapVolumeSource | None = None


class Container(K8sModel):
    name: str
    image: str | None = None
    command: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    env: list[dict[str, Any]] = Field(default_factory=list)
    ports: list[ContainerPort] = Field(default_factory=list)
    readiness_probe: dict[str, Any] | None = None
    volume_mounts: list[VolumeMount] = Field(default_factory=list)


class PodSpec(K8sModel):
    containers: list[Container] = Field(min_length=1)
    volumes: list[Volume] = Field(default_factory=list)


class PodCondition(K8sModel):
    type: str
    status: Literal["True", "False", "Unknown"]


class PodStatus(K8sModel):
    phase: str | None = None
    pod_ip: str | None = Field(default=None, alias="podIP")
    conditions: list[PodCondition] = Field(default_factory=list)


class Pod(Resource):
    group = ""
    kind = "Pod"
    versions = ("v1",)

    spec: PodSpec
    status: PodStatus = Field(default_factory=PodStatus)

    @property
    def is_ready(self) -> bool:
        """Serving traffic: has an IP, is not terminating, and its Ready condition is True."""
        ready = any(c.type == "Ready" and c.status == "True" for c in self.status.conditions)
        return ready and bool(self.status.pod_ip) and self.metadata.deletion_timestamp is None

    def container_port(self, name: str) -> int | None:
        for container in self.spec.containers:
            for port in container.ports:
                if port.name == name:
                    return port.container_port
        return None


class TemplateMeta(K8sModel):
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class PodTemplate(K8sModel):
    metadata: TemplateMeta = Field(default_factory=TemplateMeta)
    spec: PodSpec


class DeploymentSpec(K8sModel):
    replicas: int = Field(default=1, ge=0)
    selector: LabelSelector
    template: PodTemplate


class Deployment(Resource):
    group = "apps"
    kind = "Deployment"
    versions = ("v1",)

    spec: DeploymentSpec


class ConfigMap(Resource):
    group = ""
    kind = "ConfigMap"
    versions = ("v1",)

    data: dict[str, str] = Field(default_factory=dict)


class Secret(Resource):
    """Values are excluded from repr so a logged object never shows them."""

    group = ""
    kind = "Secret"
    versions = ("v1",)

    type: str = "Opaque"
    data: dict[str, str] = Field(default_factory=dict, repr=False)
    string_data: dict[str, str] = Field(default_factory=dict, repr=False)

    def value(self, key: str) -> bytes | None:
        """The key's value, None when absent; stringData wins, as the API server merges it over data. Raises
        ValueError (without the value) when data does not hold base64."""
        if key in self.string_data:
            return self.string_data[key].encode()
        if key not in self.data:
            return None
        try:
            return base64.b64decode(self.data[key], validate=True)
        except binascii.Error:
            raise ValueError(f"key {key} is not base64") from None
