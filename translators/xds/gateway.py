"""IR -> Envoy xDS protobufs: the five resource types of one Gateway's snapshot, each sorted by name."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import compress
from operator import attrgetter, is_, is_not
from typing import TypeVar

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
from translators.xds.serialized import SerializedResource

V = TypeVar("V")


@dataclass(frozen=True)
class XdsResources:
    """One Gateway's resources, by type, each tuple sorted by resource name."""

    gateway: str  # "<ns>/<name>", Envoy's node.cluster
    listeners: tuple[listener_pb2.Listener, ...]
    route_configurations: tuple[SerializedResource[route_pb2.RouteConfiguration], ...]  # serialized: see routes.py
    clusters: tuple[cluster_pb2.Cluster, ...]
    endpoints: tuple[endpoint_pb2.ClusterLoadAssignment, ...]
    secrets: tuple[secret_pb2.Secret, ...] = ()

    @property
    def routes(self) -> tuple[route_pb2.RouteConfiguration, ...]:
        """The RouteConfiguration messages, parsed when first asked (snapshots are built from the bytes)."""
        return tuple(r.message for r in self.route_configurations)

    def by_type(self) -> dict[str, tuple[Message | SerializedResource[Message], ...]]:
        """The resources keyed by xDS type URL, the shape a snapshot is built from."""
        return {
            CLUSTER_TYPE: self.clusters,
            ENDPOINT_TYPE: self.endpoints,
            SECRET_TYPE: self.secrets,
            LISTENER_TYPE: self.listeners,
            ROUTE_TYPE: self.route_configurations,
        }


_NAME = attrgetter("name")
_IS_SET = partial(is_not, None)  # `value is not None`, as a builtin


def _where(values: Sequence[V], attribute: str, test: Callable[[object], bool]) -> list[V]:
    """The values whose `attribute` passes `test`, a builtin (operator.is_not, bound to None, say): filtered in C,
    as a Gateway has a cluster per backend and a reload asks this of each of 10,000."""
    return list(compress(values, map(test, map(attrgetter(attribute), values))))


def endpoint_pickers(gateway: GatewayIR) -> dict[ObjectRef, EndpointPickerIR]:
    """The Endpoint Picker each pool of the Gateway calls in reference mode, by pool (the pool clusters say)."""
    pooled = _where(gateway.clusters, "pool", _IS_SET)
    return {c.pool.pool: c.pool.picker for c in pooled if c.pool is not None and c.pool.picker is not None}


def gateway_resources(gateway: GatewayIR, options: TranslateOptions, memo: Memo | None = None) -> XdsResources:
    """`memo` (kept by a caller that translates again and again) reuses the messages of unchanged IR values: found in
    bulk (Memo.each), so a reload that changed a few of 10,000 routes and clusters does Python work for those few."""
    memo = memo or Memo()
    limit, cas = options.buffer_limit_bytes, options.system_ca_bundle
    clusters = memo.each(
        "cluster",
        gateway.clusters,
        (limit, cas),
        lambda c: memo.get(("cluster", c, limit, cas), lambda: cluster(c, limit, cas)),
    )
    pickers = endpoint_pickers(gateway)
    # One cluster per referenced Endpoint Picker Service port, shared by the pools that name it.
    reachable = {p.cluster: p for p in sorted(pickers.values(), key=lambda p: p.cluster) if p.missing is None}
    clusters += [
        memo.get(("endpoint_picker", p, limit), lambda p=p: endpoint_picker_cluster(p, limit))  # type: ignore[misc]
        for p in reachable.values()
    ]
    if any(uses_extproc(lis) for lis in gateway.listeners):
        clusters.append(extproc_cluster(options))
    eds = _where(gateway.clusters, "discovery", partial(is_, Discovery.EDS))
    eds += [endpoint_picker_cluster_ir(p) for p in reachable.values()]
    assignments = memo.each(
        "load_assignment", eds, None, lambda c: memo.get(("load_assignment", c), lambda: load_assignment(c))
    )
    routes = (route_configuration(lis, memo, pickers) for lis in gateway.listeners)
    secrets = [
        memo.get(("secret", c), lambda c=c: certificate_secret(c))  # type: ignore[misc]
        for c in gateway.certificates
    ]
    secrets += [
        memo.get(("credential", c), lambda c=c: credential_secret(c))  # type: ignore[misc]
        for c in _where(gateway.clusters, "api_key", _IS_SET)
    ]
    return XdsResources(
        gateway=gateway.key,
        listeners=tuple(sorted((listener(lis, options) for lis in gateway.listeners), key=_NAME)),
        route_configurations=tuple(sorted(routes, key=_NAME)),
        clusters=tuple(sorted(clusters, key=_NAME)),
        endpoints=tuple(sorted(assignments, key=attrgetter("cluster_name"))),
        secrets=tuple(sorted(secrets, key=_NAME)),
    )
