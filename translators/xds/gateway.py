"""IR -> Envoy xDS protobufs: the five resource types of one Gateway's snapshot, each sorted by name."""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf.message import Message

from translators.ir import Discovery, EndpointPickerIR, GatewayIR, ObjectRef, TranslateOptions
from translators.xds.clusters import (
    cluster,
    credential_secret,
    endpoint_picker_cluster,
    endpoint_picker_cluster_ir,
    extproc_cluster,
    load_assignment,
)
from translators.xds.listener_tls import certificate_secret
from translators.xds.listeners import listener, uses_extproc
from translators.xds.memo import Memo
from translators.xds.names import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE
from translators.xds.routes import route_configuration


@dataclass(frozen=True)
class XdsResources:
    """One Gateway's resources, by type, each tuple sorted by resource name."""

    gateway: str  # "<ns>/<name>", Envoy's node.cluster
    listeners: tuple[listener_pb2.Listener, ...]
    routes: tuple[route_pb2.RouteConfiguration, ...]
    clusters: tuple[cluster_pb2.Cluster, ...]
    endpoints: tuple[endpoint_pb2.ClusterLoadAssignment, ...]
    secrets: tuple[secret_pb2.Secret, ...] = ()

    def by_type(self) -> dict[str, tuple[Message, ...]]:
        """The resources keyed by xDS type URL, the shape a snapshot is built from."""
        return {
            CLUSTER_TYPE: self.clusters,
            ENDPOINT_TYPE: self.endpoints,
            SECRET_TYPE: self.secrets,
            LISTENER_TYPE: self.listeners,
            ROUTE_TYPE: self.routes,
        }


def endpoint_pickers(gateway: GatewayIR) -> dict[ObjectRef, EndpointPickerIR]:
    """The Endpoint Picker each pool of the Gateway calls in reference mode, by pool (the pool clusters say)."""
    return {c.pool.pool: c.pool.picker for c in gateway.clusters if c.pool is not None and c.pool.picker is not None}


def gateway_resources(gateway: GatewayIR, options: TranslateOptions, memo: Memo | None = None) -> XdsResources:
    """`memo` (kept by a caller that translates again and again) reuses the messages of unchanged IR values."""
    memo = memo or Memo()
    limit, cas = options.buffer_limit_bytes, options.system_ca_bundle
    clusters = [
        memo.of("cluster", c, (limit, cas), lambda c=c: cluster(c, limit, cas))  # type: ignore[misc]
        for c in gateway.clusters
    ]
    pickers = endpoint_pickers(gateway)
    # One cluster per referenced Endpoint Picker Service port, shared by the pools that name it.
    reachable = {p.cluster: p for p in sorted(pickers.values(), key=lambda p: p.cluster) if p.missing is None}
    clusters += [
        memo.get(("endpoint_picker", p, limit), lambda p=p: endpoint_picker_cluster(p, limit))  # type: ignore[misc]
        for p in reachable.values()
    ]
    if any(uses_extproc(lis) for lis in gateway.listeners):
        clusters.append(extproc_cluster(options))
    eds = [c for c in gateway.clusters if c.discovery is Discovery.EDS]
    eds += [endpoint_picker_cluster_ir(p) for p in reachable.values()]
    assignments = [
        memo.of("load_assignment", c, None, lambda c=c: load_assignment(c))  # type: ignore[misc]
        for c in eds
    ]
    routes = (route_configuration(lis, memo, pickers) for lis in gateway.listeners)
    secrets = [
        memo.get(("secret", c), lambda c=c: certificate_secret(c))  # type: ignore[misc]
        for c in gateway.certificates
    ]
    secrets += [
        memo.get(("credential", c), lambda c=c: credential_secret(c))  # type: ignore[misc]
        for c in gateway.clusters
        if c.api_key is not None
    ]
    return XdsResources(
        gateway=gateway.key,
        listeners=tuple(sorted((listener(lis, options) for lis in gateway.listeners), key=lambda r: r.name)),
        routes=tuple(sorted(routes, key=lambda r: r.name)),
        clusters=tuple(sorted(clusters, key=lambda r: r.name)),
        endpoints=tuple(sorted(assignments, key=lambda r: r.cluster_name)),
        secrets=tuple(sorted(secrets, key=lambda s: s.name)),
    )
