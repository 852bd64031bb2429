"""Gateway API kinds (gateway.networking.k8s.io): GatewayClass, Gateway, HTTPRoute, ReferenceGrant."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from translators.resources.base import (
    Duration,
    Hostname,
    K8sModel,
    LabelSelector,
    ObjectName,
    PortNumber,
    Resource,
)

GATEWAY_API_GROUP = "gateway.networking.k8s.io"


class ParametersRef(K8sModel):
    group: str
    kind: str
    name: str
    namespace: str | None = None


class GatewayClassSpec(K8sModel):
    controller_name: str
    parameters_ref: ParametersRef | None = None


class GatewayClass(Resource):
    group = GATEWAY_API_GROUP
    kind = "GatewayClass"
    versions = ("v1", "v1beta1")
    namespaced = False

    spec: GatewayClassSpec


class RouteNamespaces(K8sModel):
    from_: Literal["Same", "All", "Selector"] = Field(default="Same", alias="from")
    selector: LabelSelector | None = None


class RouteGroupKind(K8sModel):
    group: str = GATEWAY_API_GROUP
    kind: str = Field(min_length=1)


class AllowedRoutes(K8sModel):
    namespaces: RouteNamespaces = Field(default_factory=RouteNamespaces)
    kinds: list[RouteGroupKind] = Field(default_factory=list, max_length=8)  # empty: every kind the protocol takes


class SecretObjectReference(K8sModel):
    group: str = ""
    kind: str = "Secret"
    name: ObjectName
    namespace: ObjectName | None = None


class GatewayTLSConfig(K8sModel):
    mode: Literal["Terminate", "Passthrough"] = "Terminate"
    certificate_refs: list[SecretObjectReference] = Field(default_factory=list, max_length=64)
    options: dict[str, str] = Field(default_factory=dict)


class Listener(K8sModel):
    name: ObjectName
    hostname: Hostname | None = None
    port: PortNumber
    protocol: str
    tls: GatewayTLSConfig | None = None
    allowed_routes: AllowedRoutes = Field(default_factory=AllowedRoutes)


class GatewaySpec(K8sModel):
    gateway_class_name: ObjectName
    listeners: list[Listener] = Field(min_length=1, max_length=64)


class Gateway(Resource):
    group = GATEWAY_API_GROUP
    kind = "Gateway"
    versions = ("v1", "v1beta1")

    spec: GatewaySpec


class ParentReference(K8sModel):
    group: str = GATEWAY_API_GROUP
    kind: str = "Gateway"
    namespace: ObjectName | None = None
    name: ObjectName
    section_name: str | None = None
    port: PortNumber | None = None


class HeaderMatch(K8sModel):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
    value: str = Field(max_length=4096)


class PathMatch(K8sModel):
    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: str = Field(default="/", max_length=1024)


class HTTPRouteMatch(K8sModel):
    path: PathMatch = Field(default_factory=PathMatch)
    headers: list[HeaderMatch] = Field(default_factory=list, max_length=16)
    method: str | None = None


class HTTPRouteTimeouts(K8sModel):
    request: Duration | None = None
    backend_request: Duration | None = None


class HTTPBackendRef(K8sModel):
    group: str = ""
    kind: str = "Service"
    name: ObjectName
    namespace: ObjectName | None = None
    port: PortNumber | None = None
    weight: int = Field(default=1, ge=0, le=1_000_000)


class HTTPRouteRule(K8sModel):
    name: str | None = None
    matches: list[HTTPRouteMatch] = Field(default_factory=lambda: [HTTPRouteMatch()], max_length=64)
    backend_refs: list[HTTPBackendRef] = Field(default_factory=list)
    timeouts: HTTPRouteTimeouts | None = None


class HTTPRouteSpec(K8sModel):
    parent_refs: list[ParentReference] = Field(default_factory=list, max_length=32)
    hostnames: list[Hostname] = Field(default_factory=list, max_length=16)
    rules: list[HTTPRouteRule] = Field(default_factory=lambda: [HTTPRouteRule()], max_length=16)


class HTTPRoute(Resource):
    group = GATEWAY_API_GROUP
    kind = "HTTPRoute"
    versions = ("v1", "v1beta1")

    spec: HTTPRouteSpec


class Namespace(Resource):
    """Only its labels matter here: listeners may admit routes by a namespace selector."""

    group = ""
    kind = "Namespace"
    versions = ("v1",)
    namespaced = False


class ReferenceGrantFrom(K8sModel):
    group: str
    kind: str = Field(min_length=1)
    namespace: ObjectName


class ReferenceGrantTo(K8sModel):
    group: str
    kind: str = Field(min_length=1)
    name: ObjectName | None = None  # None: every object of that kind in the grant's namespace


class ReferenceGrantSpec(K8sModel):
    from_: list[ReferenceGrantFrom] = Field(alias="from", min_length=1, max_length=16)
    to: list[ReferenceGrantTo] = Field(min_length=1, max_length=16)


class ReferenceGrant(Resource):
    """Lets objects of other namespaces (`from`) refer to objects of this grant's namespace (`to`)."""

    group = GATEWAY_API_GROUP
    kind = "ReferenceGrant"
    versions = ("v1beta1", "v1")

    spec: ReferenceGrantSpec
