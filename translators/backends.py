"""Backend references -> clusters: where a route rule's traffic goes, as `ClusterIR`.

Cluster names are keyed by the backend (never by route or rule index) so that reordering or editing rules never
replaces a cluster Envoy is using. A rule with several weighted or prioritised backendRefs gets one cluster per
distinct combination, named by a hash of its members, with one locality per backend.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace

from translators.ir import (
    AddressKind,
    ApiSchema,
    ClusterIR,
    Discovery,
    Endpoint,
    EndpointGroup,
    EndpointHealth,
    EndpointPickerIR,
    ObjectRef,
    PickerMode,
    PoolBalancing,
    PoolIR,
    SchemaIR,
    UpstreamTlsIR,
)
from translators.loader import ResourceSet
from translators.picker_config import PickerConfigFinder
from translators.pools import active_ports, pool_members, pool_objectives
from translators.resources import (
    AIServiceBackend,
    Backend,
    EndpointSlice,
    InferenceObjective,
    InferencePool,
    Pod,
    ReferenceGrant,
    Resource,
    Service,
)
from translators.resources.core import SERVICE_NAME_LABEL
from translators.resources.envoy_gateway import ENVOY_GATEWAY_GROUP
from translators.resources.inference import INFERENCE_GROUP
from translators.tracking import Reads, selects
from translators.upstream_tls import TargetTls, UpstreamTls
from translators.xds.names import ENDPOINT_PICKER_ANNOTATION, NOT_A_HEADER_VALUE

CLUSTER_LOCAL_SUFFIX = ".svc.cluster.local"
# A Service port's (or a pool's) appProtocol saying HTTP/2 in cleartext.
H2C_APP_PROTOCOL = "kubernetes.io/h2c"


def ai_backend_id(namespace: str, name: str) -> str:
    """An AIServiceBackend's identity: its cluster's name, its endpoints' `backend` metadata, its settings' key."""
    return f"aiservicebackend/{namespace}/{name}"


class Unresolved(Exception):
    """A reference that cannot be followed; `reason` is a Gateway API ResolvedRefs reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class WeightedCluster:
    """One backendRef, resolved: its own cluster plus the weight and priority the rule gives it."""

    cluster: ClusterIR
    weight: int
    priority: int


class ReferenceGrants:
    """Which cross-namespace references the ReferenceGrants allow. A grant lives in the namespace referred to; it
    allows a reference when one of its `from` entries names the referring object's group, kind and namespace, and
    one of its `to` entries the target's group and kind (and name, when it has one)."""

    def __init__(self, resources: ResourceSet) -> None:
        self._by_namespace: dict[str, list[ReferenceGrant]] = {}
        for grant in resources.of_kind(ReferenceGrant):
            self._by_namespace.setdefault(grant.namespace, []).append(grant)

    def allows(self, source: Resource, group: str, kind: str, namespace: str, name: str) -> bool:
        if namespace == source.namespace:
            return True
        origin = (source.group, source.kind, source.namespace)
        return any(
            any((f.group, f.kind, f.namespace) == origin for f in grant.spec.from_)
            and any((t.group, t.kind) == (group, kind) and t.name in (None, name) for t in grant.spec.to)
            for grant in self._by_namespace.get(namespace, ())
        )

    def check(self, source: Resource, group: str, kind: str, namespace: str, name: str) -> None:
        if not self.allows(source, group, kind, namespace, name):
            raise Unresolved("RefNotPermitted", f"{kind} in namespace {namespace} needs a ReferenceGrant")


def _usable(target: TargetTls) -> UpstreamTlsIR | None:
    """The target's TLS (None: plain HTTP); TLS that was asked for and cannot be set up refuses the reference, so
    that nothing is sent in plain text in its place."""
    if target.refusal is not None:
        raise Unresolved(target.refusal.reason, target.refusal.message)
    return target.tls


def discovery_for(groups: Sequence[EndpointGroup]) -> Discovery:
    endpoints = [e for g in groups for e in g.endpoints]
    if any(e.kind is AddressKind.DNS for e in endpoints):
        if any(e.kind is AddressKind.UNIX for e in endpoints):
            raise Unresolved("UnsupportedValue", "unix socket backends cannot be combined with DNS backends")
        return Discovery.STRICT_DNS
    return Discovery.EDS if any(g.dynamic for g in groups) else Discovery.STATIC


class BackendResolver:
    """Follows references within one ResourceSet; across namespaces only where a ReferenceGrant allows it."""

    def __init__(
        self,
        resources: ResourceSet,
        resolve_cluster_local: bool,
        grants: ReferenceGrants | None = None,
        endpoint_picker: PickerMode = PickerMode.EMBEDDED,
    ) -> None:
        """`endpoint_picker`: who picks for a pool that does not say (its annotation ENDPOINT_PICKER_ANNOTATION)."""
        self._resources = resources
        self.tls = UpstreamTls(resources)  # the backends' TLS settings, resolved once
        self._endpoint_picker = endpoint_picker
        self._grants = grants if grants is not None else ReferenceGrants(resources)
        self._resolve_cluster_local = resolve_cluster_local
        # (ns, name) of the AIServiceBackends with upstream-phase settings: set by the translation once
        # UpstreamSettings, which resolves backends with this very resolver, has found them.
        self.upstream_backends: frozenset[tuple[str, str]] = frozenset()
        # Pods by (Ready or not, namespace, label, value), in name order: a selector's first label narrows the search
        # to the pods that have it (a Service per pod would otherwise scan every pod for each Service). Not Ready:
        # only those with an address (not Ready yet, or terminating).
        self._labelled: dict[tuple[bool, str, str, str], list[Pod]] = {}
        # The EndpointSlices by (namespace, Service), indexed when first asked (a read of the whole kind, which every
        # asker depends on: hence `cached`).
        self._slices: dict[Hashable, tuple[dict[tuple[str, str], list[EndpointSlice]], Reads]] = {}
        # Every pod, read without tracking the kind: each answer (`_pods`) records the selection it made.
        for pod in resources.untracked_of_kind(Pod):
            ready = pod.is_ready
            if ready or pod.status.pod_ip:
                namespace = pod.namespace
                for label, value in pod.metadata.labels.items():
                    self._labelled.setdefault((ready, namespace, label, value), []).append(pod)
        self._objectives: dict[str, list[InferenceObjective]] = {}
        for objective in resources.of_kind(InferenceObjective):
            self._objectives.setdefault(objective.namespace, []).append(objective)
        self._picker_configs = PickerConfigFinder(resources)
        # Every rule routing to a pool needs it: built once, with the Endpoint Picker it calls in reference mode.
        self._pools: dict[Hashable, tuple[tuple[PoolIR, EndpointPickerIR | None], Reads]] = {}

    def _pods(self, namespace: str, labels: dict[str, str], ready: bool = True) -> list[Pod]:
        """The Ready pods `labels` select; with `ready=False`, those with an address that are not Ready."""
        if not labels:  # a selector-less Service has no automatic endpoints
            return []
        self._resources.read_selection(Pod, namespace, labels)
        candidates = min((self._labelled.get((ready, namespace, k, v), []) for k, v in labels.items()), key=len)
        return [p for p in candidates if selects(p.metadata.labels, labels)]

    def _standby_endpoints(self, pool: InferencePool, ready: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
        """The pool's endpoints on pods that are not Ready (yet) or terminating: see EndpointHealth."""
        target_ports = [port.number for port in pool.spec.target_ports]
        taken = {(e.address, e.port) for e in ready}
        found = set()
        for pod in self._pods(pool.namespace, pool.spec.selector.match_labels, ready=False):
            terminating = pod.metadata.deletion_timestamp is not None
            health = EndpointHealth.TERMINATING if terminating else EndpointHealth.NOT_READY
            for port in active_ports(pod, target_ports):
                if (pod.status.pod_ip, port) not in taken:
                    found.add(Endpoint(pod.status.pod_ip or "", port, health=health))
        return tuple(sorted(found))

    def service_endpoints(self, namespace: str, name: str, port: int) -> tuple[Endpoint, ...]:
        service = self._resources.get(Service, namespace, name)
        if service is None:
            raise Unresolved("BackendNotFound", f"Service {namespace}/{name} not found")
        service_port = next((p for p in service.spec.ports if p.port == port), None)
        if service_port is None:
            raise Unresolved("BackendNotFound", f"Service {namespace}/{name} has no port {port}")
        if not service.spec.selector:
            return self._slice_endpoints(namespace, name, service_port.name)
        target = service_port.target_port if service_port.target_port is not None else service_port.port
        endpoints = set()
        for pod in self._pods(namespace, service.spec.selector):
            pod_port = target if isinstance(target, int) else pod.container_port(target)
            if pod_port is not None and pod.status.pod_ip:
                endpoints.add(Endpoint(pod.status.pod_ip, pod_port))
        return tuple(sorted(endpoints))

    def _slice_endpoints(self, namespace: str, service: str, port_name: str | None) -> tuple[Endpoint, ...]:
        """A Service without a selector: the ready endpoints of the EndpointSlices that name it, on the slice port
        named like the Service port (Kubernetes pairs them by name; an unnamed port matches an unnamed one)."""

        def index() -> dict[tuple[str, str], list[EndpointSlice]]:
            slices: dict[tuple[str, str], list[EndpointSlice]] = {}
            for found in self._resources.of_kind(EndpointSlice):
                owner = found.metadata.labels.get(SERVICE_NAME_LABEL)
                if owner is not None and found.address_type != "FQDN":
                    slices.setdefault((found.namespace, owner), []).append(found)
            return slices

        endpoints: set[Endpoint] = set()
        for endpoint_slice in self._resources.cached(self._slices, None, index).get((namespace, service), ()):
            port = next((p.port for p in endpoint_slice.ports if (p.name or None) == (port_name or None)), None)
            if port is None:
                continue
            for endpoint in endpoint_slice.endpoints:
                if endpoint.conditions.ready is not False:
                    endpoints.update(Endpoint(address, port) for address in endpoint.addresses)
        return tuple(sorted(endpoints))

    def service_cluster(self, namespace: str, name: str, port: int | None) -> ClusterIR:
        if port is None:
            raise Unresolved("UnsupportedValue", f"backendRef to Service {namespace}/{name} needs a port")
        identity = f"service/{namespace}/{name}/{port}"
        tls = _usable(self.tls.service(namespace, name, port))
        group = EndpointGroup(identity, self.service_endpoints(namespace, name, port), dynamic=True, tls=tls)
        return ClusterIR(group.backend, Discovery.EDS, (group,))

    def _backend_group(self, namespace: str, name: str, identity: str) -> EndpointGroup:
        backend = self._resources.get(Backend, namespace, name)
        if backend is None:
            raise Unresolved("BackendNotFound", f"Backend {namespace}/{name} not found")
        endpoints: list[Endpoint] = []
        dynamic = False
        for item in backend.spec.endpoints:
            if item.ip is not None:
                endpoints.append(Endpoint(item.ip.address, item.ip.port))
            elif item.unix is not None:
                endpoints.append(Endpoint(item.unix.path, 0, AddressKind.UNIX))
            elif item.fqdn is not None:
                pods = self._cluster_local(item.fqdn.hostname, item.fqdn.port)
                if pods is None:
                    endpoints.append(Endpoint(item.fqdn.hostname, item.fqdn.port, AddressKind.DNS))
                else:
                    endpoints.extend(pods)
                    dynamic = True
        tls = _usable(self.tls.backend(namespace, name))
        return EndpointGroup(identity, tuple(sorted(set(endpoints))), dynamic=dynamic, tls=tls)

    def _cluster_local(self, hostname: str, port: int) -> tuple[Endpoint, ...] | None:
        """The resolver hook: `<svc>.<ns>.svc.cluster.local` -> that Service's pods, when enabled and known."""
        if not (self._resolve_cluster_local and hostname.endswith(CLUSTER_LOCAL_SUFFIX)):
            return None
        parts = hostname.removesuffix(CLUSTER_LOCAL_SUFFIX).split(".")
        if len(parts) != 2 or self._resources.get(Service, parts[1], parts[0]) is None:
            return None
        try:
            return self.service_endpoints(parts[1], parts[0], port)
        except Unresolved:
            return None

    def backend_cluster(self, namespace: str, name: str) -> ClusterIR:
        group = self._backend_group(namespace, name, f"backend/{namespace}/{name}")
        return ClusterIR(group.backend, discovery_for([group]), (group,))

    def ai_service_backend_cluster(self, namespace: str, name: str) -> ClusterIR:
        ai_backend = self._resources.get(AIServiceBackend, namespace, name)
        if ai_backend is None:
            raise Unresolved("BackendNotFound", f"AIServiceBackend {namespace}/{name} not found")
        schema = schema_of(ai_backend)
        ref = ai_backend.spec.backend_ref
        target = ref.namespace or namespace
        self._grants.check(ai_backend, ref.group or "", ref.kind or "Backend", target, ref.name)
        identity = ai_backend_id(namespace, name)
        if (ref.group or "", ref.kind or "Service") == ("", "Service"):
            if ref.port is None:
                raise Unresolved("UnsupportedValue", f"AIServiceBackend {namespace}/{name}: Service ref needs a port")
            endpoints = self.service_endpoints(target, ref.name, ref.port)
            tls = _usable(self.tls.service(target, ref.name, ref.port))
            group = EndpointGroup(identity, endpoints, dynamic=True, tls=tls)
        elif (ref.group, ref.kind) == (ENVOY_GATEWAY_GROUP, "Backend"):
            group = self._backend_group(target, ref.name, identity)
        else:
            raise Unresolved("InvalidKind", f"AIServiceBackend {namespace}/{name}: cannot reference {ref.kind}")
        upstream = (namespace, name) in self.upstream_backends
        answers = schema.answers_translated
        return ClusterIR(identity, discovery_for([group]), (group,), upstream_settings=upstream, translates=answers)

    def pool(self, pool: InferencePool) -> PoolIR:
        return self._pool(pool)[0]

    def _pool(self, pool: InferencePool) -> tuple[PoolIR, EndpointPickerIR | None]:
        def build() -> tuple[PoolIR, EndpointPickerIR | None]:
            pool_ir = self._build_pool(pool)
            referenced = self._endpoint_picker_of(pool) if pool_ir.picker is PickerMode.REFERENCE else None
            return pool_ir, referenced

        return self._resources.cached(self._pools, (pool.namespace, pool.name), build)

    def _picker_mode(self, pool: InferencePool) -> PickerMode:
        """The pool's annotation, else the option. A pool without endpointPickerRef (optional since GIE v1.6) has
        no picker to call: the embedded one picks. An annotation value that is no mode is ignored."""
        if pool.spec.endpoint_picker_ref is None:
            return PickerMode.EMBEDDED
        annotation = pool.metadata.annotations.get(ENDPOINT_PICKER_ANNOTATION)
        return PickerMode(annotation) if annotation in set(PickerMode) else self._endpoint_picker

    def _endpoint_picker_of(self, pool: InferencePool) -> EndpointPickerIR:
        """The Service endpointPickerRef names, as a cluster of its ready pods; `missing` says why there is none."""
        ref = pool.spec.endpoint_picker_ref
        assert ref is not None  # _picker_mode makes a pool without one embedded
        port = ref.port.number if ref.port is not None else 0
        service_ref = ObjectRef(ref.kind, pool.namespace, ref.name)
        if (ref.group, ref.kind) != ("", "Service"):
            missing = f"endpointPickerRef kind {ref.kind} of group {ref.group!r} is not supported (a Service is)"
            return EndpointPickerIR(service_ref, port, missing=missing)
        try:
            endpoints = self.service_endpoints(pool.namespace, ref.name, port)
        except Unresolved as exc:
            return EndpointPickerIR(service_ref, port, missing=exc.message)
        service = self._resources.get(Service, pool.namespace, ref.name)
        assert service is not None  # service_endpoints found it
        app_protocol = next(p.app_protocol for p in service.spec.ports if p.port == port)
        return EndpointPickerIR(service_ref, port, endpoints, tls=app_protocol != H2C_APP_PROTOCOL)

    def _build_pool(self, pool: InferencePool) -> PoolIR:
        members = pool_members(pool, self._pods(pool.namespace, pool.spec.selector.match_labels))
        picker = pool.spec.endpoint_picker_ref
        return PoolIR(
            namespace=pool.namespace,
            name=pool.name,
            endpoints=tuple(sorted({Endpoint(m.address, m.port) for m in members})),
            fail_open=picker is not None and picker.failure_mode == "FailOpen",
            picker_service=picker.name if picker is not None and picker.kind == "Service" else None,
            members=members,
            objectives=pool_objectives(pool, self._objectives.get(pool.namespace, [])),
            picker_config=self._picker_configs.find(pool),
            picker=self._picker_mode(pool),
        )

    def pool_cluster(self, namespace: str, name: str) -> tuple[ClusterIR, PoolIR]:
        pool = self._resources.get(InferencePool, namespace, name)
        if pool is None:
            raise Unresolved("BackendNotFound", f"InferencePool {namespace}/{name} not found")
        pool_ir, endpoint_picker = self._pool(pool)
        endpoints = pool_ir.endpoints + self._standby_endpoints(pool, pool_ir.endpoints)
        group = EndpointGroup(f"inferencepool/{namespace}/{name}", endpoints, dynamic=True)
        balancing = PoolBalancing(ObjectRef(InferencePool.kind, namespace, name), pool_ir.fail_open, endpoint_picker)
        cluster = ClusterIR(
            group.backend,
            Discovery.EDS,
            (group,),
            pool=balancing,
            http2=pool.spec.app_protocol == H2C_APP_PROTOCOL,
        )
        return cluster, pool_ir

    def resolve(
        self, route: Resource, group: str, kind: str, name: str, namespace: str | None, port: int | None
    ) -> ClusterIR:
        """One backendRef of `route` (HTTPRoute or AIGatewayRoute shape, defaults already applied) -> its cluster."""
        target = namespace or route.namespace
        self._grants.check(route, group, kind, target, name)
        if (group, kind) == (INFERENCE_GROUP, "InferencePool"):
            return self.pool_cluster(target, name)[0]
        if (group, kind) == ("", "Service"):
            return self.service_cluster(target, name, port)
        if (group, kind) == (ENVOY_GATEWAY_GROUP, "Backend"):
            return self.backend_cluster(target, name)
        if kind == "AIServiceBackend":
            return self.ai_service_backend_cluster(target, name)
        raise Unresolved("InvalidKind", f"backendRef kind {group}/{kind} is not supported")


# The schema every request is in, and the one path prefix it is sent with: requests go out as the client sent them.
OPENAI_PREFIXES = frozenset({"v1", "/v1"})
# The schemas whose requests this controller can send (ApiSchema); the others are refused with a reason.
TRANSLATED_SCHEMAS = {schema.value: schema for schema in ApiSchema}


def schema_of(backend: AIServiceBackend) -> SchemaIR:
    """The backend's API, checked: a schema whose requests this controller cannot make yet, or a field it would have
    to ignore, refuses the backend rather than send it requests it would fail."""
    schema = backend.spec.schema_
    where = f"AIServiceBackend {backend.namespace}/{backend.name}"
    name = TRANSLATED_SCHEMAS.get(schema.name)
    if name is None:
        supported = ", ".join(TRANSLATED_SCHEMAS)
        raise Unresolved(
            "UnsupportedValue",
            f"{where}: schema {schema.name} is not translated by this controller yet, so its requests would reach the "
            f"provider in OpenAI's format and fail; the schemas translated are {supported}",
        )
    if name is ApiSchema.OPENAI and schema.prefix is not None and schema.prefix not in OPENAI_PREFIXES:
        raise Unresolved(
            "UnsupportedValue",
            f"{where}: schema prefix {schema.prefix!r} is not supported: requests are sent on the client's own path "
            "(/v1/...); leave prefix out or set it to v1",
        )
    if name is ApiSchema.AZURE_OPENAI and schema.prefix is not None:
        raise Unresolved(
            "UnsupportedValue",
            f"{where}: schema AzureOpenAI has no prefix (requests go to /openai/deployments/<model>/...); remove it",
        )
    if name is ApiSchema.OPENAI and schema.version is not None:
        raise Unresolved("UnsupportedValue", f"{where}: schema OpenAI has no version; remove it")
    if name is ApiSchema.ANTHROPIC and schema.prefix is not None and not _PATH_SEGMENT.fullmatch(schema.prefix):
        raise Unresolved("UnsupportedValue", f"{where}: schema prefix {schema.prefix!r} is not one path segment")
    for value, what in ((schema.version, "version"), (schema.prefix, "prefix")):
        if value is not None and NOT_A_HEADER_VALUE.search(value):
            raise Unresolved("UnsupportedValue", f"{where}: schema {what} has control characters")
    return SchemaIR(name, schema.version, schema.prefix.strip("/") if schema.prefix is not None else None)


_PATH_SEGMENT = re.compile(r"/?[A-Za-z0-9._~-]+/?")


def combine(refs: Sequence[WeightedCluster]) -> ClusterIR:
    """The cluster a rule routes to: the single backend's own cluster, or one locality per weighted backend."""
    live = [ref for ref in refs if ref.weight > 0]
    if not live:
        raise Unresolved("UnsupportedValue", "every backendRef of the rule has weight 0")
    if len(live) == 1:
        return live[0].cluster
    if any(ref.cluster.pool is not None for ref in live):
        raise Unresolved("UnsupportedValue", "an InferencePool cannot share a rule with other backends")
    # Envoy wants priorities 0..N without gaps; keep their order, drop the gaps.
    rank = {p: i for i, p in enumerate(sorted({ref.priority for ref in live}))}
    groups = tuple(
        replace(group, priority=rank[ref.priority], weight=ref.weight) for ref in live for group in ref.cluster.groups
    )
    members = sorted([g.backend, g.priority, g.weight] for g in groups)
    digest = hashlib.sha256(json.dumps(members).encode()).hexdigest()[:16]
    ordered = tuple(sorted(groups, key=lambda g: (g.priority, g.backend)))
    upstream = any(ref.cluster.upstream_settings for ref in live)
    translates = any(ref.cluster.translates for ref in live)
    return ClusterIR(
        f"weighted/{digest}", discovery_for(ordered), ordered, upstream_settings=upstream, translates=translates
    )
