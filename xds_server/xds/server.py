"""The ADS servicer Envoy talks to: state of the world and incremental (Delta) on one gRPC service.

Both protocols run the same way: `stream_loop.run_stream` drives a per-stream session (`SotwSession` or
`DeltaSession`) over the shared per-stream state of `streams.py`; the servicer only composes them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from xds_server.xds.cache import Snapshot, SnapshotCache
from xds_server.xds.delta import DeltaSession
from xds_server.xds.sotw import SotwSession
from xds_server.xds.stream_loop import Authorize, Wakeups, run_stream
from xds_server.xds.streams import ClientRegistry, ClientStream, XdsProtocol

Context = grpc.aio.ServicerContext[Any, Any]  # request and response types vary by method


class Ads(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]  # the generated base is untyped
    def __init__(self, cache: SnapshotCache, clients: ClientRegistry, authorize: Authorize | None = None) -> None:
        """`authorize` (cluster mode): whether a stream's peer may have the snapshot its node asks for."""
        self._cache = cache
        self._clients = clients
        self._authorize = authorize
        self._wakeups = Wakeups()
        cache.add_listener(self._snapshot_changed)

    def _snapshot_changed(self, key: str, _snapshot: Snapshot) -> None:
        self._wakeups.wake(key)

    def _sotw(self, stream: ClientStream) -> SotwSession:
        return SotwSession(stream, self._cache, self._clients)

    def _delta(self, stream: ClientStream) -> DeltaSession:
        return DeltaSession(stream, self._cache, self._clients)

    # Async generators themselves: grpc.aio tells stream handlers from unary ones by that.
    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: Context
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        async for response in run_stream(
            request_iterator, context, self._clients, XdsProtocol.SOTW, self._wakeups, self._sotw, self._authorize
        ):
            yield response

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest], context: Context
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        async for response in run_stream(
            request_iterator, context, self._clients, XdsProtocol.DELTA, self._wakeups, self._delta, self._authorize
        ):
            yield response
