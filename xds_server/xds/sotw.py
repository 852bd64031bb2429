"""State-of-the-world ADS (`StreamAggregatedResources`) over grpc.aio, following xds.md §1.

Per stream: the node from the first request, and per type the last nonce and version sent, the subscribed
names and the last ACKed version. Responses go out only when something changed; ACKs and stale nonces get no
answer; a NACK is recorded and never answered with the version it rejected.

Make before break: a push that removes clusters while it also changes listeners or routes first sends CDS with
the removed clusters still in it (and their CLAs on EDS); the final CDS follows once the client has ACKed that
push's listeners and routes, so no route Envoy still holds points at a cluster it no longer has.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from translators.xds.names import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE
from xds_server import metrics
from xds_server.xds.cache import PUSH_ORDER, CachedResource, Snapshot, SnapshotCache, empty_resource
from xds_server.xds.stream_loop import run_stream, wake
from xds_server.xds.streams import ClientRegistry, ClientStream, short_type

log = logging.getLogger(__name__)
WILDCARD_TYPES = frozenset(PUSH_ORDER) - {ENDPOINT_TYPE, ROUTE_TYPE}  # LDS and CDS: always the full state


@dataclass(frozen=True)
class _SotwStream:
    """The StreamHandler of one SotW stream: the servicer's logic, bound to the stream."""

    servicer: SotwAds
    stream: ClientStream

    def on_request(self, request: discovery_pb2.DiscoveryRequest) -> list[discovery_pb2.DiscoveryResponse]:
        return self.servicer._on_request(self.stream, request)

    def on_change(self) -> list[discovery_pb2.DiscoveryResponse]:
        return self.servicer._on_change(self.stream)


class SotwAds(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, cache: SnapshotCache, clients: ClientRegistry) -> None:
        self._cache = cache
        self._clients = clients
        self._nonce = 0  # the last one issued: nonces grow, so "sent after" is a comparison
        self._wakeups: dict[str, set[asyncio.Queue[object]]] = {}
        cache.add_listener(self._snapshot_changed)

    def _snapshot_changed(self, key: str, _snapshot: Snapshot) -> None:
        wake(self._wakeups, key)

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        # An async generator itself: grpc.aio tells stream handlers from unary ones by that.
        async for response in run_stream(
            request_iterator, context, self._clients, "sotw", self._wakeups, self._handler
        ):
            yield response

    def _handler(self, stream: ClientStream) -> _SotwStream:
        return _SotwStream(self, stream)

    def _on_request(
        self, stream: ClientStream, request: discovery_pb2.DiscoveryRequest
    ) -> list[discovery_pb2.DiscoveryResponse]:
        type_url = request.type_url
        state = stream.state(type_url)
        if request.response_nonce and request.response_nonce != state.nonce:
            return []  # stale: superseded by a response the client has not processed yet
        names = None if type_url in WILDCARD_TYPES else frozenset(request.resource_names)
        subscription_changed = state.sent_version is not None and names != state.names
        state.names = names
        if request.HasField("error_detail"):
            version = state.sent_version or ""
            log.warning(
                "NACK from %s for %s version %s: %s",
                stream.node_id,
                short_type(type_url),
                version,
                request.error_detail.message,
            )
            self._clients.nacked(stream, type_url, version, request.error_detail.message)
        elif request.response_nonce:
            self._clients.acked(stream, type_url, request.version_info)
        snapshot = self._cache.get(stream.key)
        if snapshot is None or type_url not in snapshot.types:
            return []
        responses = []
        if self._release_due(stream):
            stream.retained.clear()
            stream.release_after.clear()
            responses.append(self._response(stream, CLUSTER_TYPE, snapshot))
        answered = bool(responses) and type_url == CLUSTER_TYPE
        if not answered and (
            state.sent_version is None or subscription_changed or snapshot.version(type_url) != state.built_from
        ):
            responses.append(self._response(stream, type_url, snapshot))
        if type_url == ENDPOINT_TYPE and not stream.clusters_warming():  # the CLAs they waited for went out
            responses += [
                self._response(stream, t, snapshot)
                for t in self._pending(stream, snapshot, (LISTENER_TYPE, ROUTE_TYPE))
            ]
        return responses

    def _on_change(self, stream: ClientStream) -> list[discovery_pb2.DiscoveryResponse]:
        """A new snapshot: every type the client subscribed to whose version moved, in push order."""
        snapshot = self._cache.get(stream.key)
        if snapshot is None:
            return []
        pending = self._pending(stream, snapshot, PUSH_ORDER)
        routing = [type_url for type_url in pending if type_url in (LISTENER_TYPE, ROUTE_TYPE)]
        if CLUSTER_TYPE in pending and routing:
            self._retain_removed_clusters(stream, snapshot, routing)
        responses = []
        for type_url in pending:
            if type_url in routing and stream.clusters_warming():
                break  # sent once the client has the new clusters' CLAs (see _on_request)
            responses.append(self._response(stream, type_url, snapshot))
        return responses

    @staticmethod
    def _pending(stream: ClientStream, snapshot: Snapshot, types: Iterable[str]) -> list[str]:
        """The subscribed types among `types` whose latest snapshot version has not been sent."""
        return [
            type_url
            for type_url in types
            if type_url in stream.types and snapshot.version(type_url) != stream.types[type_url].built_from
        ]

    def _retain_removed_clusters(self, stream: ClientStream, snapshot: Snapshot, routing: list[str]) -> None:
        current = snapshot.resources(CLUSTER_TYPE)
        removed = {name: cached for name, cached in stream.state(CLUSTER_TYPE).sent.items() if name not in current}
        if not removed:
            return
        assignments = stream.types.get(ENDPOINT_TYPE)
        sent_assignments = assignments.sent if assignments is not None else {}
        stream.retained.setdefault(CLUSTER_TYPE, {}).update(removed)
        stream.retained.setdefault(ENDPOINT_TYPE, {}).update(
            {name: sent_assignments[name] for name in removed if name in sent_assignments}
        )
        # Released by an ACK of a listener or route response sent from now on (a NACK keeps them).
        stream.release_after = {type_url: str(self._nonce) for type_url in routing}

    @staticmethod
    def _release_due(stream: ClientStream) -> bool:
        """Retained clusters can go once the client holds the listeners and routes that stopped using them."""
        return bool(stream.retained) and all(
            stream.state(type_url).answer == "ACK" and int(stream.state(type_url).nonce) > int(nonce)
            for type_url, nonce in stream.release_after.items()
        )

    def _response(self, stream: ClientStream, type_url: str, snapshot: Snapshot) -> discovery_pb2.DiscoveryResponse:
        state = stream.state(type_url)
        available = snapshot.resources(type_url)
        retained = stream.retained.get(type_url, {})
        wanted = sorted(available.keys() | retained.keys()) if state.names is None else sorted(state.names)
        sent: dict[str, CachedResource] = {}
        resources = []
        for name in wanted:
            cached = available.get(name) or retained.get(name) or empty_resource(type_url, name)
            if cached is None:
                raise ValueError(f"no empty form for {type_url}")
            if name in available or name in retained:
                sent[name] = cached
            resources.append(any_pb2.Any(type_url=type_url, value=cached.serialized))
        version = snapshot.version(type_url)
        state.built_from = version
        # A full-state response that still carries retained resources is not the snapshot's state: its own version.
        state.sent_version = f"{version}+retained{len(retained)}" if retained and state.names is None else version
        self._nonce += 1
        state.nonce, state.answer = str(self._nonce), ""
        state.sent = sent
        metrics.PUSHES.labels(stream.key, short_type(type_url), "sotw").inc()
        metrics.PUSH_BYTES.labels(short_type(type_url), "sotw").inc(sum(len(r.value) for r in resources))
        return discovery_pb2.DiscoveryResponse(
            version_info=state.sent_version, resources=resources, type_url=type_url, nonce=state.nonce
        )
