"""The loop every ADS stream runs, SotW or Delta: requests and snapshot changes, in order, on this stream alone."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

import grpc
from envoy.config.core.v3 import base_pb2

from translators.xds.names import LISTENER_TYPE
from xds_server import metrics
from xds_server.xds.streams import Answer, ClientRegistry, ClientStream, XdsProtocol, says_port_in_use

log = logging.getLogger(__name__)


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

    def on_retry(self, type_url: str) -> list[Resp]: ...


# A listener whose port is taken (by another process, or another Gateway's Envoy) is rejected by Envoy, which never
# tries it again by itself: the listeners are sent again, with a backoff, until the port is free and they are ACKed.
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0


def port_in_use(stream: ClientStream) -> bool:
    """Whether the stream's Envoy holds its listeners rejected because a port is taken (what a retry can mend)."""
    state = stream.types.get(LISTENER_TYPE)
    return state is not None and state.answer is Answer.NACK and says_port_in_use(state.last_error)


class _Retry:
    """The event a retry timer puts on a stream's queue."""


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


Context = grpc.aio.ServicerContext[Any, Any]  # the request and response types vary by protocol
# Whether a stream's peer may have a snapshot: None when it may, else (reason, message) (see `xds_server.identity`).
Authorize = Callable[[Context, str], tuple[str, str] | None]


async def run_stream(
    request_iterator: AsyncIterator[Req],
    context: Context,
    clients: ClientRegistry,
    protocol: XdsProtocol,
    wakeups: Wakeups,
    session_for: Callable[[ClientStream], Session[Req, Resp]],
    authorize: Authorize | None = None,
) -> AsyncIterator[Resp]:
    """Requests and snapshot changes (a `None` put on the stream's queue) share one queue per stream, so each stream
    handles them in order and on its own: a slow client only fills its own gRPC send buffer. With `authorize`, a
    stream whose node asks for a snapshot its peer may not have is ended with PERMISSION_DENIED before anything is
    sent. Listeners rejected for a port in use are sent again (see `port_in_use`)."""
    events: asyncio.Queue[object] = asyncio.Queue()
    stream = clients.open(protocol)
    session = session_for(stream)
    loop = asyncio.get_running_loop()
    retry: asyncio.TimerHandle | None = None
    retry_delay = RETRY_FIRST_SECONDS

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
            elif isinstance(event, _Retry):
                retry = None
                responses = session.on_retry(LISTENER_TYPE) if port_in_use(stream) else []
            else:
                request: Req = event  # type: ignore[assignment]  # only requests and None are queued
                if not stream.key:
                    if not request.node.id or not request.node.cluster:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first request needs node id and cluster")
                    refused = authorize(context, request.node.cluster) if authorize is not None else None
                    if refused is not None:
                        reason, message = refused
                        metrics.REFUSED_STREAMS.labels("ads", reason).inc()
                        log.warning("ADS stream of node %r refused: %s", request.node.id, message)
                        await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
                    clients.identified(stream, request.node.id, request.node.cluster)
                    wakeups.add(stream.key, events)
                responses = session.on_request(request)
            for response in responses:
                yield response
            if not port_in_use(stream):
                retry_delay = RETRY_FIRST_SECONDS
            elif retry is None:
                retry = loop.call_later(retry_delay, events.put_nowait, _Retry())
                retry_delay = min(2 * retry_delay, RETRY_MAX_SECONDS)
    finally:
        if retry is not None:
            retry.cancel()
        reader.cancel()
        wakeups.discard(stream.key, events)
        clients.close(stream)
