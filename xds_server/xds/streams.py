"""Connected Envoys as the ADS servicers see them: one state model for SotW and Delta streams alike.

Per stream: the node, and per type what was sent (nonce, versions, the resources the client holds) and how the
client answered; plus the make-before-break `Retention` both protocols use. `/debug/clients`, `xds-server status`,
`up` and the metrics all read this one place (through `sync.py` for "is it in sync"). Nothing here does I/O.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from translators.xds.names import CLUSTER_TYPE, ENDPOINT_TYPE
from xds_server import metrics
from xds_server.xds.cache import CachedResource, eds_name, needed


class XdsProtocol(StrEnum):
    SOTW = "sotw"
    DELTA = "delta"


class Answer(StrEnum):
    """How the client answered the latest response of a type."""

    NONE = ""  # not yet
    ACK = "ACK"
    NACK = "NACK"


@dataclass
class TypeState:
    nonce: int = 0  # of the last response sent (0: none); nonces grow, so "sent after" is a comparison
    sent_version: str | None = None  # on the wire; differs from built_from while make-before-break retains (SotW)
    built_from: str | None = None  # the snapshot version the last response was built from
    names: frozenset[str] | None = None  # subscribed names; None: wildcard
    acked_version: str = ""
    acked_nonce: int = 0  # the latest response the client ACKed
    nacked_version: str = ""
    last_error: str = ""
    answer: Answer = Answer.NONE
    # What the client holds of this type, as last sent: the old versions make-before-break keeps alive.
    sent: dict[str, CachedResource] = field(default_factory=dict)


@dataclass
class Retention:
    """Make before break: clusters (and their CLAs) a push removed, still served until the client has ACKed the
    listeners and routes that stopped using them, because Envoy's current routes may still point at them.

    `waiting` maps each routing type that must be ACKed first to the nonce of the first response of that type sent
    since (None until it is sent); an ACK of that response or a later one satisfies it. A NACK does not.
    """

    resources: dict[str, dict[str, CachedResource]] = field(default_factory=dict)  # type URL -> name -> resource
    waiting: dict[str, int | None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any(self.resources.values())

    def of(self, type_url: str) -> Mapping[str, CachedResource]:
        return self.resources.get(type_url, {})

    def hold(
        self,
        clusters: Mapping[str, CachedResource],
        assignments: Mapping[str, CachedResource],
        routing_types: Iterable[str],
    ) -> None:
        self.resources.setdefault(CLUSTER_TYPE, {}).update(clusters)
        self.resources.setdefault(ENDPOINT_TYPE, {}).update(assignments)
        for type_url in routing_types:
            self.waiting[type_url] = None  # the next response of that type carries the change

    def sent(self, type_url: str, nonce: int) -> None:
        if type_url in self.waiting and self.waiting[type_url] is None:
            self.waiting[type_url] = nonce

    def due(self, types: Mapping[str, TypeState]) -> bool:
        return bool(self) and all(
            nonce is not None and type_url in types and types[type_url].acked_nonce >= nonce
            for type_url, nonce in self.waiting.items()
        )

    def release(self) -> None:
        self.resources.clear()
        self.waiting.clear()


# Envoy's words for a listen socket another socket holds: the one bind failure that mends itself (a port that is not
# the process's to take, or an address not on the machine, does not, and is not retried).
_PORT_IN_USE = "address already in use"
_PORT_IN_USE_HINT = (
    " (another process or another Gateway's Envoy holds that port: the listener is tried again until the port is"
    " free; stop the other, or give this listener another port)"
)


def says_port_in_use(error: str) -> bool:
    """Whether an Envoy's rejection is a listener port another process (or another Envoy) holds."""
    return _PORT_IN_USE in error.lower()


def explained(error: str) -> str:
    """An Envoy's rejection as every view shows it: a port in use says what to do about it."""
    return error + _PORT_IN_USE_HINT if says_port_in_use(error) else error


@dataclass(frozen=True)
class Nack:
    key: str
    node_id: str
    type_url: str
    version: str
    message: str


@dataclass
class ClientStream:
    stream_id: int
    protocol: XdsProtocol
    node_id: str = ""
    key: str = ""  # the node's cluster: "<ns>/<gateway>", the snapshot it is served
    connected_at: float = field(default_factory=time.time)
    types: dict[str, TypeState] = field(default_factory=dict)
    retention: Retention = field(default_factory=Retention)

    def state(self, type_url: str) -> TypeState:
        return self.types.setdefault(type_url, TypeState())

    def clusters_warming(self) -> bool:
        """Whether the client holds EDS clusters it has not been sent a CLA for: Envoy keeps those warming, and a
        route to a warming cluster fails, so listeners and routes should wait until every CLA has gone out."""
        clusters, assignments = self.types.get(CLUSTER_TYPE), self.types.get(ENDPOINT_TYPE)
        if clusters is None or assignments is None or clusters.answer is Answer.NACK:
            return False
        # Gathered in C: 10,000 clusters are looked at on every push.
        return not needed(clusters.sent.values(), ENDPOINT_TYPE) <= assignments.sent.keys()

    def retain_removed_clusters(self, removed: Iterable[str], routing_types: Iterable[str]) -> set[str]:
        """Holds the clusters among `removed` the client has (and their CLAs) until `routing_types`' next responses
        are ACKed; returns the names held."""
        held_clusters = self.state(CLUSTER_TYPE).sent
        clusters = {name: held_clusters[name] for name in removed if name in held_clusters}
        if not clusters:
            return set()
        endpoints = self.types.get(ENDPOINT_TYPE)  # not state(): that would create it
        held_assignments = endpoints.sent if endpoints is not None else {}
        wanted = {eds_name(cached.message) for cached in clusters.values()}
        assignments = {name: held_assignments[name] for name in wanted if name in held_assignments}
        self.retention.hold(clusters, assignments, routing_types)
        return set(clusters)

    def responded(self, type_url: str, nonce: int) -> None:
        state = self.state(type_url)
        state.nonce, state.answer = nonce, Answer.NONE
        self.retention.sent(type_url, nonce)


NackListener = Callable[[Nack], None]
AckListener = Callable[[ClientStream, str, str], None]  # stream, type URL, version


class ClientRegistry:
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._nonces = itertools.count(1)
        self._streams: dict[int, ClientStream] = {}
        self._nack_listeners: list[NackListener] = []
        self._ack_listeners: list[AckListener] = []

    def open(self, protocol: XdsProtocol) -> ClientStream:
        stream = ClientStream(next(self._ids), protocol)
        self._streams[stream.stream_id] = stream
        return stream

    def next_nonce(self) -> int:
        """Nonces are unique across streams and protocols, and grow."""
        return next(self._nonces)

    def identified(self, stream: ClientStream, node_id: str, key: str) -> None:
        stream.node_id, stream.key = node_id, key
        metrics.CONNECTED_ENVOYS.labels(key).inc()

    def close(self, stream: ClientStream) -> None:
        if self._streams.pop(stream.stream_id, None) is not None and stream.key:
            metrics.CONNECTED_ENVOYS.labels(stream.key).dec()

    def streams(self) -> list[ClientStream]:
        return sorted(self._streams.values(), key=lambda s: (s.key, s.node_id, s.stream_id))

    def add_nack_listener(self, listener: NackListener) -> None:
        self._nack_listeners.append(listener)

    def add_ack_listener(self, listener: AckListener) -> None:
        self._ack_listeners.append(listener)

    def remove_ack_listener(self, listener: AckListener) -> None:
        self._ack_listeners.remove(listener)

    def acked(self, stream: ClientStream, type_url: str) -> None:
        """The client ACKed the latest response of `type_url` (its nonce is the state's)."""
        state = stream.state(type_url)
        version = state.sent_version or ""
        state.acked_version, state.acked_nonce, state.answer = version, state.nonce, Answer.ACK
        for listener in list(self._ack_listeners):
            listener(stream, type_url, version)

    def nacked(self, stream: ClientStream, type_url: str, message: str) -> None:
        """The client rejected the latest response of `type_url`."""
        message = message.strip()  # Envoy ends some of its messages with a newline
        state = stream.state(type_url)
        version = state.sent_version or ""
        state.nacked_version, state.last_error, state.answer = version, message, Answer.NACK
        metrics.NACKS.labels(stream.key, short_type(type_url)).inc()
        nack = Nack(stream.key, stream.node_id, type_url, version, message)
        for listener in self._nack_listeners:
            listener(nack)


def short_type(type_url: str) -> str:
    """`type.googleapis.com/envoy.config.cluster.v3.Cluster` -> `Cluster`, for labels and logs."""
    return type_url.rsplit(".", 1)[-1]
