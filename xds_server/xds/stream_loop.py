"""The loop every ADS stream runs, SotW or Delta: requests and snapshot changes, in order, on this stream alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

import grpc
from envoy.config.core.v3 import base_pb2

from xds_server.xds.streams import ClientRegistry, ClientStream, XdsProtocol


class Request(Protocol):
    @property
    def node(self) -> base_pb2.Node: ...


Req = TypeVar("Req", bound=Request)
Resp = TypeVar("Resp")
ReqT = TypeVar("ReqT", contravariant=True)


class Session(Protocol[ReqT, Resp]):
    """One stream's protocol logic (SotW or Delta): what to send for a request, and for a new snapshot."""

    def on_request(self, request: ReqT) -> list[Resp]: ...

    def on_change(self) -> list[Resp]: ...


class Wakeups:
    """The queues of the streams of each Gateway, to tell them its snapshot changed."""

    def __init__(self) -> None:
        self._queues: dict[str, set[asyncio.Queue[object]]] = {}

    def add(self, key: str, queue: asyncio.Queue[object]) -> None:
        self._queues.setdefault(key, set()).add(queue)

    def discard(self, key: str, queue: asyncio.Queue[object]) -> None:
        self._queues.get(key, set()).discard(queue)

    def wake(self, key: str) -> None:
        for queue in self._queues.get(key, ()):
            queue.put_nowait(None)


async def run_stream(
    request_iterator: AsyncIterator[Req],
    context: grpc.aio.ServicerContext[Any, Any],  # the request and response types vary by protocol
    clients: ClientRegistry,
    protocol: XdsProtocol,
    wakeups: Wakeups,
    session_for: Callable[[ClientStream], Session[Req, Resp]],
) -> AsyncIterator[Resp]:
    """Requests and snapshot changes (a `None` put on the stream's queue) share one queue per stream, so each stream
    handles them in order and on its own: a slow client only fills its own gRPC send buffer."""
    events: asyncio.Queue[object] = asyncio.Queue()
    stream = clients.open(protocol)
    session = session_for(stream)

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
            if event is None:
                responses = session.on_change()
            else:
                request: Req = event  # type: ignore[assignment]  # only requests and None are queued
                if not stream.key:
                    if not request.node.id or not request.node.cluster:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first request needs node id and cluster")
                    clients.identified(stream, request.node.id, request.node.cluster)
                    wakeups.add(stream.key, events)
                responses = session.on_request(request)
            for response in responses:
                yield response
    finally:
        reader.cancel()
        wakeups.discard(stream.key, events)
        clients.close(stream)
