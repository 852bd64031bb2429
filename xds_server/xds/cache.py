"""Snapshot cache: one snapshot per key (Envoy's node.cluster, "<ns>/<gateway>"), versions that are content hashes.

The cache knows xDS resources, not Gateway API: whoever builds snapshots decides what is in them. Versions are
hashes of the deterministic serialization of each type's resources, so identical content always has the same
version, across restarts too, and publishing the same content again changes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf.message import Message

from translators.xds.names import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE

# The order pushes go out on one ADS stream: make before break (xds.md §1.7); a listener's certificates before it.
PUSH_ORDER = (CLUSTER_TYPE, ENDPOINT_TYPE, SECRET_TYPE, LISTENER_TYPE, ROUTE_TYPE)
# LDS and CDS are wildcard in SotW (always the full state); EDS and RDS are asked for by name.
WILDCARD_TYPES = frozenset({LISTENER_TYPE, CLUSTER_TYPE})
# What a make-before-break removal of clusters waits on: the client holding routing that no longer uses them.
ROUTING_TYPES = (LISTENER_TYPE, ROUTE_TYPE)
_HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


class InconsistentSnapshot(ValueError):
    """A snapshot Envoy could not apply as a whole: a reference to a resource it does not contain."""


@dataclass(frozen=True)
class CachedResource:
    name: str
    message: Message
    serialized: bytes  # deterministic: computed once, shared by every stream that sends it
    version: str


@dataclass(frozen=True)
class TypeSnapshot:
    version: str
    resources: Mapping[str, CachedResource]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def eds_name(cluster: Message) -> str:
    """The ClusterLoadAssignment name an EDS cluster asks for: its service_name, else its own name."""
    assert isinstance(cluster, cluster_pb2.Cluster)
    return str(cluster.eds_cluster_config.service_name or cluster.name)


def _name(type_url: str, message: Message) -> str:
    if type_url == ENDPOINT_TYPE:
        assert isinstance(message, endpoint_pb2.ClusterLoadAssignment)
        return str(message.cluster_name)
    name: str = getattr(message, "name")  # noqa: B009 -- every other xDS resource type has `name`
    return name


def type_snapshot(
    type_url: str, messages: Iterable[Message], previous: Mapping[str, CachedResource] | None = None
) -> TypeSnapshot:
    """`previous` resources whose message is the very same object (a reused one) are not serialized again."""
    resources: dict[str, CachedResource] = {}
    for message in messages:
        name = _name(type_url, message)
        if name in resources:
            raise InconsistentSnapshot(f"duplicate {type_url.rsplit('.', 1)[-1]} {name!r}")
        earlier = previous.get(name) if previous is not None else None
        if earlier is not None and earlier.message is message:
            resources[name] = earlier
            continue
        serialized = message.SerializeToString(deterministic=True)
        resources[name] = CachedResource(name, message, serialized, _digest(serialized))
    joined = "\n".join(f"{name} {resources[name].version}" for name in sorted(resources))
    return TypeSnapshot(_digest(joined.encode()), MappingProxyType(resources))


def empty_resource(type_url: str, name: str) -> CachedResource | None:
    """What answers a subscribed EDS/RDS name a snapshot lacks, so Envoy never waits on it; None for other types
    (a Secret has no empty form: Envoy keeps a listener that asks for a missing one warming, never serving it)."""
    message: Message
    if type_url == ENDPOINT_TYPE:
        message = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    elif type_url == ROUTE_TYPE:
        message = route_pb2.RouteConfiguration(name=name)
    else:
        return None
    return type_snapshot(type_url, [message]).resources[name]


@dataclass(frozen=True)
class Snapshot:
    types: Mapping[str, TypeSnapshot]

    @classmethod
    def build(cls, resources: Mapping[str, Iterable[Message]], previous: Snapshot | None = None) -> Snapshot:
        """Resources by type URL -> a checked snapshot; raises InconsistentSnapshot rather than publish a broken one."""
        snapshot = cls(
            MappingProxyType(
                {
                    t: type_snapshot(t, resources.get(t, ()), previous.resources(t) if previous else None)
                    for t in PUSH_ORDER
                }
            )
        )
        snapshot.check()
        return snapshot

    def version(self, type_url: str) -> str:
        return self.types[type_url].version

    def resources(self, type_url: str) -> Mapping[str, CachedResource]:
        return self.types[type_url].resources

    def check(self) -> None:
        """Every RDS and EDS name referenced exists, and every route's cluster exists."""
        clusters = self.resources(CLUSTER_TYPE)
        endpoints = self.resources(ENDPOINT_TYPE)
        routes = self.resources(ROUTE_TYPE)
        for cached in clusters.values():
            cluster = cached.message
            assert isinstance(cluster, cluster_pb2.Cluster)
            if cluster.type == cluster_pb2.Cluster.EDS and eds_name(cluster) not in endpoints:
                raise InconsistentSnapshot(
                    f"EDS cluster {cluster.name!r} has no ClusterLoadAssignment {eds_name(cluster)!r}"
                )
        secrets = self.resources(SECRET_TYPE)
        for cached in self.resources(LISTENER_TYPE).values():
            assert isinstance(cached.message, listener_pb2.Listener)
            for route_name in _rds_names(cached.message):
                if route_name not in routes:
                    raise InconsistentSnapshot(
                        f"listener {cached.name!r} uses missing RouteConfiguration {route_name!r}"
                    )
            for secret_name in _sds_names(cached.message):
                if secret_name not in secrets:
                    raise InconsistentSnapshot(f"listener {cached.name!r} uses missing Secret {secret_name!r}")
        for cached in routes.values():
            assert isinstance(cached.message, route_pb2.RouteConfiguration)
            for vhost in cached.message.virtual_hosts:
                for route in vhost.routes:
                    if route.HasField("route") and route.route.cluster and route.route.cluster not in clusters:
                        raise InconsistentSnapshot(
                            f"route {route.name!r} in {cached.name!r} uses missing cluster {route.route.cluster!r}"
                        )


def _rds_names(listener: listener_pb2.Listener) -> list[str]:
    names = []
    for chain in listener.filter_chains:
        for network_filter in chain.filters:
            if network_filter.typed_config.type_url == _HCM_TYPE:
                manager = hcm_pb2.HttpConnectionManager()
                network_filter.typed_config.Unpack(manager)
                if manager.HasField("rds"):
                    names.append(manager.rds.route_config_name)
    return names


def _sds_names(listener: listener_pb2.Listener) -> list[str]:
    """The SDS certificates the listener's TLS filter chains present."""
    names = []
    for chain in listener.filter_chains:
        if chain.HasField("transport_socket"):
            context = tls_pb2.DownstreamTlsContext()
            if chain.transport_socket.typed_config.Unpack(context):
                names += [config.name for config in context.common_tls_context.tls_certificate_sds_secret_configs]
    return names


Listener = Callable[[str, Snapshot], None]


@dataclass
class SnapshotCache:
    """Latest snapshot per key; listeners hear of every change (never of a re-publish of equal content)."""

    _snapshots: dict[str, Snapshot] = field(default_factory=dict)
    _listeners: list[Listener] = field(default_factory=list)

    def get(self, key: str) -> Snapshot | None:
        return self._snapshots.get(key)

    def snapshot_keys(self) -> list[str]:
        return sorted(self._snapshots)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def set(self, key: str, snapshot: Snapshot) -> list[str]:
        """Publishes; returns the type URLs whose version changed (in push order), empty when nothing did."""
        previous = self._snapshots.get(key)
        changed = [t for t in PUSH_ORDER if previous is None or previous.version(t) != snapshot.version(t)]
        if changed:
            self._snapshots[key] = snapshot
            for listener in self._listeners:
                listener(key, snapshot)
        return changed

    def remove(self, key: str) -> bool:
        return self._snapshots.pop(key, None) is not None
