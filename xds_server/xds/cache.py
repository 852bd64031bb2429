"""Snapshot cache: one snapshot per key (Envoy's node.cluster, "<ns>/<gateway>"), versions that are content hashes.

The cache knows xDS resources, not Gateway API: whoever builds snapshots decides what is in them. Versions are
hashes of the deterministic serialization of each type's resources, so identical content always has the same
version, across restarts too, and publishing the same content again changes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property, partial
from operator import attrgetter, methodcaller
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf.message import Message

from translators.xds.memo import fill_in
from translators.xds.names import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE
from translators.xds.serialized import SerializedResource

# The order pushes go out on one ADS stream: make before break (xds.md §1.7); a listener's certificates before it.
PUSH_ORDER = (CLUSTER_TYPE, ENDPOINT_TYPE, SECRET_TYPE, LISTENER_TYPE, ROUTE_TYPE)
# LDS and CDS are wildcard in SotW (always the full state); EDS and RDS are asked for by name.
WILDCARD_TYPES = frozenset({LISTENER_TYPE, CLUSTER_TYPE})
# What a make-before-break removal of clusters waits on: the client holding routing that no longer uses them.
ROUTING_TYPES = (LISTENER_TYPE, ROUTE_TYPE)
_HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


# What a resource of each type names resources of, by type, as Envoy resolves them (Snapshot.check).
REFERS_TO = {CLUSTER_TYPE: (ENDPOINT_TYPE,), LISTENER_TYPE: (ROUTE_TYPE, SECRET_TYPE), ROUTE_TYPE: (CLUSTER_TYPE,)}
_NONE: Mapping[str, frozenset[str]] = MappingProxyType({})
_EMPTY: frozenset[str] = frozenset()

# What a snapshot is built from: a message, or a resource already serialized (translators.xds.serialized).
Resource = Message | SerializedResource[Message]


class InconsistentSnapshot(ValueError):
    """A snapshot Envoy could not apply as a whole: a reference to a resource it does not contain."""


@dataclass(frozen=True)
class CachedResource:
    name: str
    source: Resource  # what it was cached from; the same object again (a memo's) is the same resource
    serialized: bytes  # deterministic: computed once, shared by every stream that sends it
    version: str
    references: Mapping[str, frozenset[str]]  # the names of other resources it needs, by type URL

    @property
    def message(self) -> Message:
        """A serialized resource's message is parsed on first use: nothing on a build's path asks for it."""
        return self.source.message if isinstance(self.source, SerializedResource) else self.source

    @cached_property
    def listed(self) -> str:
        """Its line in its type's version text (see type_snapshot)."""
        return f"{self.name} {self.version}"


@dataclass(frozen=True)
class TypeSnapshot:
    version: str
    resources: Mapping[str, CachedResource]
    references: Mapping[str, frozenset[str]]  # what its resources need, by type URL
    # By the id of its source (which it keeps alive); a dict, not a read-only proxy, as it is looked up in bulk.
    by_source: dict[int, CachedResource] = field(repr=False, compare=False)


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


def _references(message: Message) -> Mapping[str, frozenset[str]]:
    """What Snapshot.check looks for, read once, when the resource is cached (a reused one is not read again)."""
    if isinstance(message, cluster_pb2.Cluster):
        return {ENDPOINT_TYPE: frozenset({eds_name(message)})} if message.type == cluster_pb2.Cluster.EDS else _NONE
    if isinstance(message, listener_pb2.Listener):
        return {ROUTE_TYPE: frozenset(_rds_names(message)), SECRET_TYPE: frozenset(_sds_names(message))}
    if isinstance(message, route_pb2.RouteConfiguration):
        return {CLUSTER_TYPE: frozenset(cluster for _, cluster in _route_clusters(message) if cluster)}
    return _NONE


def _cached(type_url: str, resource: Resource) -> CachedResource:
    if isinstance(resource, SerializedResource):
        serialized = resource.serialized
        return CachedResource(resource.name, resource, serialized, _digest(serialized), resource.references)
    serialized = resource.SerializeToString(deterministic=True)
    name = _name(type_url, resource)
    return CachedResource(name, resource, serialized, _digest(serialized), _references(resource))


_NAME = attrgetter("name")
_LISTED = attrgetter("listed")
_REFERENCES = attrgetter("references")


def needed(resources: Iterable[CachedResource], target: str) -> frozenset[str]:
    """The names of `target`'s type the resources refer to, as each recorded them when cached: gathered in C."""
    referring = filter(None, map(_REFERENCES, resources))  # most refer to nothing (a cluster not EDS)
    return _EMPTY.union(*map(methodcaller("get", target, _EMPTY), referring))


def type_snapshot(type_url: str, resources: Iterable[Resource], previous: TypeSnapshot | None = None) -> TypeSnapshot:
    """`previous` resources cached from the very same objects (reused by the translator's memo) are taken as they
    are, neither serialized nor hashed nor read again. They are found in bulk (`fill_in`), and the version text is
    joined from each one's line, so 10,000 clusters of which one is new cost one serialization and loops in C."""
    given = tuple(resources)
    found: list[CachedResource | None]
    found = list(map(previous.by_source.get, map(id, given))) if previous is not None else [None] * len(given)
    cached = fill_in(found, given, partial(_cached, type_url))
    by_name = dict(zip(map(_NAME, cached), cached, strict=True))
    if len(by_name) < len(cached):
        raise InconsistentSnapshot(f"duplicate {type_url.rsplit('.', 1)[-1]} {_first_repeated(map(_NAME, cached))!r}")
    listed = "\n".join(map(_LISTED, map(by_name.__getitem__, sorted(by_name))))
    needs = {target: needed(cached, target) for target in REFERS_TO.get(type_url, ())}
    return TypeSnapshot(
        _digest(listed.encode()),
        MappingProxyType(by_name),
        MappingProxyType(needs),
        dict(zip(map(id, given), cached, strict=True)),
    )


def _first_repeated(names: Iterable[str]) -> str:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    raise AssertionError("no name is repeated")


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
    def build(cls, resources: Mapping[str, Iterable[Resource]], previous: Snapshot | None = None) -> Snapshot:
        """Resources by type URL -> a checked snapshot; raises InconsistentSnapshot rather than publish a broken one."""
        snapshot = cls(
            MappingProxyType(
                {
                    t: type_snapshot(t, resources.get(t, ()), previous.types.get(t) if previous else None)
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
        """Every RDS and EDS name referenced exists, and every route's cluster exists: what each type needs (read
        as its resources were cached) is compared with what the others have, as sets, without reading a resource."""
        for typed in self.types.values():
            for target, names in typed.references.items():
                if not self.resources(target).keys() >= names:
                    self._explain()

    def _explain(self) -> None:
        """Raises the inconsistency `check` found, as the first resource with a missing reference says it."""
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
            for route_name, cluster_name in _route_clusters(cached.message):
                if cluster_name and cluster_name not in clusters:
                    raise InconsistentSnapshot(
                        f"route {route_name!r} in {cached.name!r} uses missing cluster {cluster_name!r}"
                    )
        raise InconsistentSnapshot("a resource refers to a missing one")  # unreachable: references say what is read


def _route_clusters(config: route_pb2.RouteConfiguration) -> Iterator[tuple[str, str]]:
    """Each route's name and the cluster it forwards to ("" for none)."""
    for vhost in config.virtual_hosts:
        for route in vhost.routes:
            yield route.name, route.route.cluster if route.HasField("route") else ""


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
