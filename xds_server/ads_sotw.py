"""State-of-the-world ADS (`StreamAggregatedResources`) over grpc.aio, following xds.md §1.

Per stream: the node from the first request, and per type the last nonce and version sent, the subscribed
names and the last ACKed version. Responses go out only when something changed; ACKs and stale nonces get no
answer; a NACK is recorded and never answered with the version it rejected.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from translators.xds import ENDPOINT_TYPE, ROUTE_TYPE
from xds_server.cache import PUSH_ORDER, Snapshot, SnapshotCache

log = logging.getLogger(__name__)
WILDCARD_TYPES = frozenset(PUSH_ORDER) - {ENDPOINT_TYPE, ROUTE_TYPE}  # LDS and CDS: always the full state


@dataclass
class TypeState:
    nonce: str = ""  # of the last response sent
    sent_version: str | None = None
    names: frozenset[str] | None = None  # None: wildcard
    acked_version: str = ""
    nacked_version: str = ""
    last_error: str = ""


@dataclass
class Nack:
    key: str
    node_id: str
    type_url: str
    version: str
    message: str


@dataclass
class _Stream:
    node_id: str = ""
    key: str = ""
    types: dict[str, TypeState] = field(default_factory=dict)


class SotwAds(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, cache: SnapshotCache, on_nack: Callable[[Nack], None] | None = None) -> None:
        self._cache = cache
        self._on_nack = on_nack
        self._nonces = itertools.count(1)
        self._wakeups: dict[str, set[asyncio.Queue[object]]] = {}
        cache.add_listener(self._snapshot_changed)

    def _snapshot_changed(self, key: str, _snapshot: Snapshot) -> None:
        for queue in self._wakeups.get(key, ()):
            queue.put_nowait(None)

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        events: asyncio.Queue[object] = asyncio.Queue()
        stream = _Stream()

        async def read() -> None:
            async for request in request_iterator:
                await events.put(request)
            await events.put(StopAsyncIteration())

        reader = asyncio.create_task(read())
        try:
            while True:
                event = await events.get()
                if isinstance(event, StopAsyncIteration):
                    return
                if isinstance(event, discovery_pb2.DiscoveryRequest):
                    if not stream.key:
                        if not event.node.id or not event.node.cluster:
                            await context.abort(
                                grpc.StatusCode.INVALID_ARGUMENT, "first request needs node id and cluster"
                            )
                        stream.node_id, stream.key = event.node.id, event.node.cluster
                        self._wakeups.setdefault(stream.key, set()).add(events)
                    responses = self._on_request(stream, event)
                else:
                    responses = self._on_change(stream)
                for response in responses:
                    yield response
        finally:
            reader.cancel()
            self._wakeups.get(stream.key, set()).discard(events)

    def _on_request(
        self, stream: _Stream, request: discovery_pb2.DiscoveryRequest
    ) -> list[discovery_pb2.DiscoveryResponse]:
        state = stream.types.setdefault(request.type_url, TypeState())
        if request.response_nonce and request.response_nonce != state.nonce:
            return []  # stale: superseded by a response the client has not processed yet
        names = None if request.type_url in WILDCARD_TYPES else frozenset(request.resource_names)
        subscription_changed = state.sent_version is not None and names != state.names
        state.names = names
        if request.HasField("error_detail"):
            state.nacked_version = state.sent_version or ""
            state.last_error = request.error_detail.message
            log.warning(
                "NACK from %s for %s version %s: %s",
                stream.node_id,
                request.type_url,
                state.nacked_version,
                state.last_error,
            )
            if self._on_nack is not None:
                self._on_nack(
                    Nack(stream.key, stream.node_id, request.type_url, state.nacked_version, state.last_error)
                )
        elif request.response_nonce:
            state.acked_version = request.version_info
        snapshot = self._cache.get(stream.key)
        if snapshot is None:
            return []
        current = snapshot.version(request.type_url) if request.type_url in snapshot.types else None
        needs = (
            state.sent_version is None
            or subscription_changed
            or (current != state.sent_version and current != state.nacked_version)
        )
        return [self._response(stream, request.type_url, snapshot)] if needs and current is not None else []

    def _on_change(self, stream: _Stream) -> list[discovery_pb2.DiscoveryResponse]:
        """A new snapshot: every type the client subscribed to whose version moved, in push order."""
        snapshot = self._cache.get(stream.key)
        if snapshot is None:
            return []
        return [
            self._response(stream, type_url, snapshot)
            for type_url in PUSH_ORDER
            if type_url in stream.types
            and snapshot.version(type_url)
            not in (stream.types[type_url].sent_version, stream.types[type_url].nacked_version)
        ]

    def _response(self, stream: _Stream, type_url: str, snapshot: Snapshot) -> discovery_pb2.DiscoveryResponse:
        state = stream.types[type_url]
        available = snapshot.resources(type_url)
        wanted = sorted(available) if state.names is None else sorted(state.names)
        resources = []
        for name in wanted:
            cached = available.get(name)
            value = cached.serialized if cached is not None else _empty(type_url, name)
            resources.append(any_pb2.Any(type_url=type_url, value=value))
        state.nonce = str(next(self._nonces))
        state.sent_version = snapshot.version(type_url)
        return discovery_pb2.DiscoveryResponse(
            version_info=state.sent_version, resources=resources, type_url=type_url, nonce=state.nonce
        )


def _empty(type_url: str, name: str) -> bytes:
    """A requested EDS/RDS name the snapshot lacks is still answered, so Envoy never waits on it."""
    if type_url == ENDPOINT_TYPE:
        return endpoint_pb2.ClusterLoadAssignment(cluster_name=name).SerializeToString()
    if type_url == ROUTE_TYPE:
        return route_pb2.RouteConfiguration(name=name).SerializeToString()
    raise ValueError(f"no empty form for {type_url}")
