"""State-of-the-world ADS (`StreamAggregatedResources`) over grpc.aio, following xds.md §1.

Per stream: the node from the first request, and per type the last nonce and version sent, the subscribed
names and the last ACKed version. Responses go out only when something changed; ACKs and stale nonces get no
answer; a NACK is recorded and never answered with the version it rejected.

Make before break (`streams.Retention`): a push that removes clusters while it also changes listeners or routes
first sends CDS with the removed clusters still in it (and their CLAs on EDS); the final CDS follows once the client
has ACKed that push's listeners and routes, so no route Envoy still holds points at a cluster it no longer has.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from translators.xds.names import CLUSTER_TYPE, ENDPOINT_TYPE
from xds_server import metrics
from xds_server.xds.cache import (
    PUSH_ORDER,
    ROUTING_TYPES,
    WILDCARD_TYPES,
    CachedResource,
    Snapshot,
    SnapshotCache,
    empty_resource,
)
from xds_server.xds.streams import ClientRegistry, ClientStream, XdsProtocol, short_type

log = logging.getLogger(__name__)


class SotwSession:
    """One SotW stream: what to send when a request or a new snapshot arrives."""

    def __init__(self, stream: ClientStream, cache: SnapshotCache, clients: ClientRegistry) -> None:
        self._stream = stream
        self._cache = cache
        self._clients = clients

    def on_request(self, request: discovery_pb2.DiscoveryRequest) -> list[discovery_pb2.DiscoveryResponse]:
        stream = self._stream
        type_url = request.type_url
        state = stream.state(type_url)
        if request.response_nonce and request.response_nonce != str(state.nonce):
            return []  # stale: superseded by a response the client has not processed yet
        names = None if type_url in WILDCARD_TYPES else frozenset(request.resource_names)
        subscription_changed = state.sent_version is not None and names != state.names
        state.names = names
        if request.HasField("error_detail"):
            log.warning(
                "NACK from %s for %s version %s: %s",
                stream.node_id,
                short_type(type_url),
                state.sent_version or "",
                request.error_detail.message,
            )
            self._clients.nacked(stream, type_url, request.error_detail.message)
        elif request.response_nonce:
            self._clients.acked(stream, type_url)
        snapshot = self._cache.get(stream.key)
        if snapshot is None or type_url not in snapshot.types:
            return []
        responses = []
        if stream.retention.due(stream.types):
            stream.retention.release()
            responses.append(self._response(CLUSTER_TYPE, snapshot))
        answered = bool(responses) and type_url == CLUSTER_TYPE
        if not answered and (
            state.sent_version is None or subscription_changed or snapshot.version(type_url) != state.built_from
        ):
            responses.append(self._response(type_url, snapshot))
        if type_url == ENDPOINT_TYPE and not stream.clusters_warming():  # the CLAs they waited for went out
            responses += [self._response(t, snapshot) for t in self._pending(snapshot, ROUTING_TYPES)]
        return responses

    def on_change(self) -> list[discovery_pb2.DiscoveryResponse]:
        """A new snapshot: every type the client subscribed to whose version moved, in push order."""
        snapshot = self._cache.get(self._stream.key)
        if snapshot is None:
            return []
        pending = self._pending(snapshot, PUSH_ORDER)
        routing = [type_url for type_url in pending if type_url in ROUTING_TYPES]
        if CLUSTER_TYPE in pending and routing:
            current = snapshot.resources(CLUSTER_TYPE)
            removed = [name for name in self._stream.state(CLUSTER_TYPE).sent if name not in current]
            self._stream.retain_removed_clusters(removed, routing)
        responses = []
        for type_url in pending:
            if type_url in routing and self._stream.clusters_warming():
                break  # sent once the client has the new clusters' CLAs (see on_request)
            responses.append(self._response(type_url, snapshot))
        return responses

    def on_retry(self, type_url: str) -> list[discovery_pb2.DiscoveryResponse]:
        """The type's current state again, though the client rejected it: Envoy applies a SotW response whatever its
        version, so a listener it could not bind is tried anew."""
        snapshot = self._cache.get(self._stream.key)
        if snapshot is None or type_url not in self._stream.types:
            return []
        return [self._response(type_url, snapshot)]

    def _pending(self, snapshot: Snapshot, types: Iterable[str]) -> list[str]:
        """The subscribed types among `types` whose latest snapshot version has not been sent."""
        held = self._stream.types
        return [t for t in types if t in held and snapshot.version(t) != held[t].built_from]

    def _response(self, type_url: str, snapshot: Snapshot) -> discovery_pb2.DiscoveryResponse:
        stream = self._stream
        state = stream.state(type_url)
        available = snapshot.resources(type_url)
        retained = stream.retention.of(type_url)
        wanted = sorted(available.keys() | retained.keys()) if state.names is None else sorted(state.names)
        sent: dict[str, CachedResource] = {}
        resources = []
        for name in wanted:
            cached = available.get(name) or retained.get(name) or empty_resource(type_url, name)
            if cached is None:  # a Secret gone from the snapshot: SotW says so by leaving it out
                continue
            if name in available or name in retained:
                sent[name] = cached
            resources.append(any_pb2.Any(type_url=type_url, value=cached.serialized))
        version = snapshot.version(type_url)
        state.built_from = version
        # A full-state response that still carries retained resources is not the snapshot's state: its own version.
        state.sent_version = f"{version}+retained{len(retained)}" if retained and state.names is None else version
        state.sent = sent
        nonce = self._clients.next_nonce()
        stream.responded(type_url, nonce)
        metrics.PUSHES.labels(stream.key, short_type(type_url), XdsProtocol.SOTW).inc()
        metrics.PUSH_BYTES.labels(short_type(type_url), XdsProtocol.SOTW).inc(sum(len(r.value) for r in resources))
        return discovery_pb2.DiscoveryResponse(
            version_info=state.sent_version, resources=resources, type_url=type_url, nonce=str(nonce)
        )
