"""Connected Envoys as the ADS servicers see them: per stream the node, and per type what was sent and ACKed.

Both servicers (SotW and Delta) keep their bookkeeping here, so `/debug/clients`, `xds-server status` and the
metrics read one place. Nothing here does I/O.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from envoy.config.cluster.v3 import cluster_pb2

from translators.xds.names import CLUSTER_TYPE, ENDPOINT_TYPE
from xds_server import metrics
from xds_server.xds.cache import CachedResource


@dataclass
class TypeState:
    nonce: str = ""  # of the last response sent
    sent_version: str | None = None  # on the wire; differs from built_from while make-before-break retains
    built_from: str | None = None  # the snapshot version the last response was built from
    names: frozenset[str] | None = None  # subscribed names; None: wildcard
    acked_version: str = ""
    nacked_version: str = ""
    last_error: str = ""
    answer: str = ""  # to the latest response: "ACK", "NACK", or "" while none came yet
    # What the client holds of this type, as last sent: the old versions make-before-break keeps alive.
    sent: dict[str, CachedResource] = field(default_factory=dict)

    def sync_state(self) -> str:
        """Like istioctl proxy-status: SYNCED when the latest response is ACKed, NACKED when it was rejected."""
        if self.sent_version is None:
            return "NOT SENT"
        return {"ACK": "SYNCED", "NACK": "NACKED"}.get(self.answer, "STALE")


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
    protocol: str  # "sotw" or "delta"
    node_id: str = ""
    key: str = ""  # the node's cluster: "<ns>/<gateway>", the snapshot it is served
    connected_at: float = field(default_factory=time.time)
    types: dict[str, TypeState] = field(default_factory=dict)
    # Make-before-break: clusters (and their CLAs) a push removed, still sent until the routes and listeners of
    # that push are ACKed (or rejected and then replaced), because Envoy's current routes may still use them.
    retained: dict[str, dict[str, CachedResource]] = field(default_factory=dict)
    release_after: dict[str, str] = field(default_factory=dict)  # type URL -> version to be answered first

    def state(self, type_url: str) -> TypeState:
        return self.types.setdefault(type_url, TypeState())

    def clusters_warming(self) -> bool:
        """Whether the client holds EDS clusters it has not been sent a CLA for: Envoy keeps those warming, and a
        route to a warming cluster fails, so listeners and routes should wait until every CLA has gone out."""
        clusters, assignments = self.types.get(CLUSTER_TYPE), self.types.get(ENDPOINT_TYPE)
        if clusters is None or assignments is None or clusters.answer == "NACK":
            return False
        for name, cached in clusters.sent.items():
            cluster = cached.message
            assert isinstance(cluster, cluster_pb2.Cluster)
            if cluster.type == cluster_pb2.Cluster.EDS and (cluster.eds_cluster_config.service_name or name) not in (
                assignments.sent
            ):
                return True
        return False


NackListener = Callable[[Nack], None]
AckListener = Callable[[ClientStream, str, str], None]  # stream, type URL, version


class ClientRegistry:
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._streams: dict[int, ClientStream] = {}
        self._nack_listeners: list[NackListener] = []
        self._ack_listeners: list[AckListener] = []

    def open(self, protocol: str) -> ClientStream:
        stream = ClientStream(next(self._ids), protocol)
        self._streams[stream.stream_id] = stream
        return stream

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

    def acked(self, stream: ClientStream, type_url: str, version: str) -> None:
        state = stream.state(type_url)
        state.acked_version, state.answer = version, "ACK"
        for listener in self._ack_listeners:
            listener(stream, type_url, version)

    def nacked(self, stream: ClientStream, type_url: str, version: str, message: str) -> None:
        state = stream.state(type_url)
        state.nacked_version, state.last_error, state.answer = version, message, "NACK"
        metrics.NACKS.labels(stream.key, short_type(type_url)).inc()
        nack = Nack(stream.key, stream.node_id, type_url, version, message)
        for listener in self._nack_listeners:
            listener(nack)


def short_type(type_url: str) -> str:
    """`type.googleapis.com/envoy.config.cluster.v3.Cluster` -> `Cluster`, for labels and logs."""
    return type_url.rsplit(".", 1)[-1]
