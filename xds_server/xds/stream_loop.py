"""The loop every ADS stream runs, SotW or Delta: requests and snapshot changes, in order, on this stream alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Protocol, TypeVar

import grpc
from envoy.config.core.v3 import base_pb2

from xds_server.xds.streams import ClientRegistry, ClientStream


class Request(Protocol):
    @property
    def node(self) -> base_pb2.Node: ...


Req = TypeVar("Req", bound=Request)
Resp = TypeVar("Resp")
Req_contra = TypeVar("Req_contra", contravariant=True)
Resp_co = TypeVar("Resp_co", covariant=True)


class StreamHandler(Protocol[Req_contra, Resp_co]):
    """One stream's protocol logic: what to send for a request, and for a new snapshot of its Gateway."""

    def on_request(self, request: Req_contra) -> list[Resp_co]: ...

    def on_change(self) -> list[Resp_co]: ...


async def run_stream(
    request_iterator: AsyncIterator[Req],
    context: grpc.aio.ServicerContext,
    clients: ClientRegistry,
    protocol: str,
    wakeups: dict[str, set[asyncio.Queue[object]]],
    handler_for: Callable[[ClientStream], StreamHandler[Req, Resp]],
) -> AsyncIterator[Resp]:
    """Requests and snapshot changes (a `None` put on a queue in `wakeups[key]`) share one queue per stream, so
    each stream handles them in order and on its own: a slow client only fills its own gRPC send buffer."""
    events: asyncio.Queue[object] = asyncio.Queue()
    stream = clients.open(protocol)
    handler = handler_for(stream)

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
                responses = handler.on_change()
            else:
                request: Req = event  # type: ignore[assignment]  # only requests and None are queued
                if not stream.key:
                    if not request.node.id or not request.node.cluster:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first request needs node id and cluster")
                    clients.identified(stream, request.node.id, request.node.cluster)
                    wakeups.setdefault(stream.key, set()).add(events)
                responses = handler.on_request(request)
            for response in responses:
                yield response
    finally:
        reader.cancel()
        wakeups.get(stream.key, set()).discard(events)
        clients.close(stream)


def wake(wakeups: dict[str, set[asyncio.Queue[object]]], key: str) -> None:
    """Tells every stream of a Gateway that its snapshot changed."""
    for queue in wakeups.get(key, ()):
        queue.put_nowait(None)
