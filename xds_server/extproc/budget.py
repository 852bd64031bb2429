"""Large request bodies in the per-request services: the budget of bytes they hold at once, the memory given back
after, and their parsing kept off the event loop.

A service that Envoy will send a whole request body (the upstream-settings service when a backend's settings
change the body or its schema is translated; the embedded picker) takes the body's Content-Length from the budget
when the request headers arrive, before Envoy sends the body, and gives it back once it has answered the body.
Without a Content-Length the body's bytes are taken as they arrive. A request that does not fit is refused there
and then, and Envoy never sends its body:

- 503 `server_overloaded` with `retry-after: 1` when the bodies in hand fill the budget: the gateway is busy, not
  the client over a quota (429 would say the client sent too much), and the OpenAI SDKs retry a 503 with backoff;
- 413 `request_too_large` for a body larger than the whole budget, which no retry can help.

Parsing and rewriting a body copies it a few times (gRPC's buffers, the protobuf message, the JSON document, the
rewritten body), so the process's peak is a small multiple of the budget; the budget is what makes it bounded.

glibc keeps what the process freed in its heaps, in holes it does not give back on its own: after a burst of large
bodies `serve` stayed 130-180 MiB above its baseline for good. Once large bodies have been given back, the memory
is returned to the system (`malloc_trim`), in a worker thread a second after their streams end, so one trim follows
a burst; and allocations of a MiB or more are mapped on their own (`pin_mmap_threshold`), so freeing them returns
them at once.

Parsing and rewriting a body holds the event loop about 1-2 ms per MiB (orjson, protobuf): a larger body is
handled in a worker thread (`off_the_loop`), so the other streams' messages are answered meanwhile.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
from collections.abc import Callable
from typing import Final, TypeVar

from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb2

from translators.ir import TranslateOptions
from xds_server.extproc.protocol import ProcessingResponse, error, header_values, set_header

log = logging.getLogger(__name__)

# The default budget: room for this many of the largest bodies Envoy lets through (--buffer-limit-bytes) at once.
LARGEST_BODIES: Final = 2
# Bytes given back before a trim is worth it (a chat request is a few KiB; this is a burst of large bodies).
TRIM_AFTER_BYTES: Final = 16 * 1024 * 1024
TRIM_DELAY_SECONDS: Final = 1.0
RETRY_AFTER_SECONDS: Final = 1
_CONTENT_LENGTH = frozenset({"content-length"})
# A body from which size on is parsed in a worker thread (below it, the thread's hand-off costs more than it saves).
OFF_THE_LOOP_BYTES: Final = 1024 * 1024
T = TypeVar("T")


async def off_the_loop(size: int, work: Callable[[], T]) -> T:
    """`work` on a body of `size` bytes: at once when it is small, else in a worker thread (nothing else may touch
    what it uses meanwhile: the stream awaits it)."""
    if size < OFF_THE_LOOP_BYTES:
        return work()
    return await asyncio.to_thread(work)


def _glibc_trim() -> Callable[[], object] | None:
    """glibc's `malloc_trim(0)`: unmaps free memory in every heap, holes included; None on another libc (musl)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


GLIBC_TRIM: Final = _glibc_trim()
# glibc's mallopt parameter, and the size from which on an allocation gets a mapping of its own.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES: Final = 1024 * 1024


def pin_mmap_threshold() -> bool:
    """Makes glibc serve every allocation of MMAP_THRESHOLD_BYTES or more (a body, its copies) from a mapping of
    its own, unmapped when freed. By default glibc raises that threshold to the largest block freed so far (up to
    32 MiB), after which the next bodies' copies come from its heaps, where a few live blocks around them kept
    60-70 MiB after a burst of 20 MiB bodies that no trim could return. False on another libc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


class BodyBudget:
    """Bytes of request bodies held by this process's ext_proc streams, at most `limit_bytes`. Used on the event
    loop only (no lock)."""

    def __init__(
        self,
        limit_bytes: int = LARGEST_BODIES * TranslateOptions.buffer_limit_bytes,
        trim: Callable[[], object] | None = GLIBC_TRIM,
        trim_delay: float = TRIM_DELAY_SECONDS,
    ) -> None:
        self.limit_bytes = limit_bytes
        self.trim_delay = trim_delay
        self.held = 0
        self._trim = trim
        self._given_back = 0  # since the last trim
        self._trim_pending = False

    def hold(self, service: str) -> BodyHold:
        """One stream's share, empty until it takes some; `service` names it in a refusal's details."""
        return BodyHold(self, service)

    def take(self, size: int, body_size: int, service: str) -> ProcessingResponse | None:
        """Takes `size` more bytes for a body of (at least) `body_size`; the refusal when they do not fit."""
        if body_size > self.limit_bytes:
            message = (
                f"the request body ({body_size} bytes) is larger than the gateway may hold ({self.limit_bytes} bytes)"
            )
            return error(413, message, "request_too_large", service)
        if self.held + size > self.limit_bytes:
            message = "the gateway is holding as many request bodies as it may at once; retry shortly"
            return _busy(error(503, message, "server_overloaded", service))
        self.held += size
        return None

    def give_back(self, size: int) -> None:
        self.held -= size

    def freed(self, size: int) -> None:
        """A stream that held `size` bytes of bodies has ended: what gRPC and the services kept of them is free now,
        so a trim a second later returns it (not at `give_back`: a stream's messages live as long as the stream)."""
        self._given_back += size
        if self._trim is not None and self._given_back >= TRIM_AFTER_BYTES and not self._trim_pending:
            self._trim_pending = True
            asyncio.get_running_loop().call_later(self.trim_delay, self._start_trim)

    def _start_trim(self) -> None:
        self._given_back = 0
        task = asyncio.get_running_loop().run_in_executor(None, self._trim_now)
        task.add_done_callback(self._trimmed)

    def _trimmed(self, _: object) -> None:
        self._trim_pending = False
        self.freed(0)  # what was freed while it trimmed gets its own trim

    def _trim_now(self) -> None:
        if self._trim is not None:  # a worker thread: it takes each heap's lock in turn, never the event loop
            self._trim()


def _busy(refusal: ProcessingResponse) -> ProcessingResponse:
    refusal.immediate_response.headers.set_headers.append(set_header("retry-after", str(RETRY_AFTER_SECONDS).encode()))
    return refusal


class BodyHold:
    """What one stream holds of the budget: its body's declared length, or what has arrived of it."""

    __slots__ = ("budget", "received", "service", "size", "taken")

    def __init__(self, budget: BodyBudget, service: str) -> None:
        self.budget = budget
        self.service = service
        self.size = 0  # taken from the budget, not given back yet
        self.taken = 0  # all it ever took
        self.received = 0

    def before_body(self, headers: ext_proc_pb2.HttpHeaders) -> ProcessingResponse | None:
        """At the request headers of a stream whose body will be sent: takes its Content-Length; the refusal when it
        does not fit (None when it does, or when the length is not known yet)."""
        length = header_values(headers, _CONTENT_LENGTH).get("content-length", b"")
        if not length.isdigit():
            return None
        return self._grow(int(length))

    def arrived(self, size: int) -> ProcessingResponse | None:
        """`size` more bytes of the body arrived: takes whatever the declared length did not cover; the refusal when
        that does not fit."""
        self.received += size
        return self._grow(self.received)

    def _grow(self, total: int) -> ProcessingResponse | None:
        if total <= self.size:
            return None
        refusal = self.budget.take(total - self.size, total, self.service)
        if refusal is None:
            self.taken += total - self.size
            self.size = total
        return refusal

    def release(self) -> None:
        """Gives everything back (again: nothing), once the body is answered."""
        if self.size:
            self.budget.give_back(self.size)
            self.size = 0

    def close(self) -> None:
        """The stream has ended: a large body's memory is worth a trim (a small one's is reused from the heap)."""
        self.release()
        if self.taken >= OFF_THE_LOOP_BYTES:
            self.budget.freed(self.taken)
        self.taken = 0
