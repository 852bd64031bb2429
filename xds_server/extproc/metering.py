"""Stream metering: the usage of a streamed AI answer, which Envoy cannot read itself (it is events, not one JSON).

Envoy routes by model itself and reads the usage of JSON answers itself (json_to_metadata), so Python runs on no
request's path: Envoy starts this filter only for requests whose body asked for a stream, at the response headers,
with attributes saying when the request started. A 200 event stream is switched to STREAMED (each chunk passes on
as soon as it is answered, so clients see tokens at once) and its events are followed for the last `usage`;
anything else finishes at its headers. The filter fails open: with the control plane away, answers pass
unmetered. The last reply carries the usage and when the first chunk came as dynamic metadata, which the access log
and the usage log (`usage_log`, where the metrics are recorded) read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb2
from google.protobuf import struct_pb2

from translators.xds.names import (
    METERING_METADATA_NAMESPACE,
    METERING_MODE,
    OPERATIONS,
    PATH_ATTRIBUTE,
    REQUEST_TIME_ATTRIBUTE,
)
from xds_server.extproc.protocol import (
    CONTINUE_RESPONSE_BODY,
    PASS_THROUGH,
    Context,
    Exchange,
    MetadataValue,
    Mode,
    ProcessingRequest,
    ProcessingResponse,
    attribute,
    ends_phase,
    header_values,
)
from xds_server.extproc.sse import SseParser, Usage

_RESPONSE_HEADERS = frozenset({":status", "content-type", "content-encoding"})

# The response headers reply that switches this answer's body to STREAMED (the filter sends no body by default).
# A mode override replaces the whole processing mode; only the response fields still matter at that point.
STREAM_RESPONSE_BODY = ProcessingResponse(
    response_headers=ext_proc_pb2.HeadersResponse(), mode_override=Mode(response_body_mode=Mode.STREAMED)
)


def final(kind: str, values: Mapping[str, MetadataValue]) -> ProcessingResponse:
    """The last reply of a stream (`response_headers` or `response_body`) with what the access log should show."""
    response = ProcessingResponse()
    getattr(response, kind).SetInParent()
    response.dynamic_metadata.fields[METERING_METADATA_NAMESPACE].struct_value.update(values)
    return response


def request_started(attributes: Mapping[str, struct_pb2.Struct], wall: float, monotonic: float) -> float:
    """When the request started, on the monotonic clock: Envoy's `request.time` (RFC 3339) moved by the time since;
    `monotonic` (now) when Envoy did not send it."""
    stamp = attribute(attributes, REQUEST_TIME_ATTRIBUTE)
    try:
        started = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None
    except ValueError:
        started = None
    return monotonic - max(0.0, wall - started) if started is not None else monotonic


class MeteringStream:
    """One answer's state. `process` is synchronous and allocation-light: it runs per message."""

    __slots__ = ("clock", "ended", "first_chunk_at", "parser", "started", "usage", "wall")

    def __init__(self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.wall = wall
        self.started = 0.0
        self.first_chunk_at: float | None = None
        self.parser: SseParser | None = None  # set when the answer is an event stream
        self.usage = Usage()
        self.ended = False

    def process(self, request: ProcessingRequest) -> ProcessingResponse:
        kind = request.WhichOneof("request")
        if kind == "response_headers":
            return self.response_headers(request.response_headers, request.attributes)
        if kind == "response_body":
            return self.response_body(request.response_body)
        if kind == "response_trailers" and self.parser is not None and not self.ended:
            return self.finish(kind)  # trailers end the answer: its body never said end of stream
        return PASS_THROUGH[kind]  # nothing else is asked for; answer it unchanged all the same

    def response_headers(
        self, headers: ext_proc_pb2.HttpHeaders, attributes: Mapping[str, struct_pb2.Struct]
    ) -> ProcessingResponse:
        self.started = request_started(attributes, self.wall(), self.clock())
        found = header_values(headers, _RESPONSE_HEADERS)
        operation = OPERATIONS.get(attribute(attributes, PATH_ATTRIBUTE), "")
        # Compressed bodies are passed by unread (no usage): decoding them would cost more than the counts are worth.
        if (
            found.get(":status") == b"200"
            and operation
            and not headers.end_of_stream
            and "content-encoding" not in found
            and found.get("content-type", b"").startswith(b"text/event-stream")
        ):
            self.parser = SseParser()
            return STREAM_RESPONSE_BODY
        return self.finish("response_headers")

    def response_body(self, body: ext_proc_pb2.HttpBody) -> ProcessingResponse:
        if self.parser is None:
            return CONTINUE_RESPONSE_BODY
        if self.first_chunk_at is None and body.body:
            self.first_chunk_at = self.clock()
        for event in self.parser.feed(body.body):
            self.usage.read_event(event)
        if not body.end_of_stream:
            return CONTINUE_RESPONSE_BODY
        return self.finish("response_body")

    def finish(self, kind: str) -> ProcessingResponse:
        """The reply to the last message Envoy sends: the usage (and when the first chunk came) as metadata."""
        self.end()
        return final(kind, self.metadata())

    def end(self) -> None:
        """No more body: an unterminated last event counts too (the stream may also have ended early)."""
        if self.parser is not None and not self.ended:
            for event in self.parser.finish():
                self.usage.read_event(event)
        self.ended = True

    def metadata(self) -> dict[str, MetadataValue]:
        usage = self.usage
        values: dict[str, MetadataValue] = {}
        if usage.response_model:
            values["response_model"] = usage.response_model
        if usage.input_tokens is not None:
            values["input_tokens"] = usage.input_tokens
        if usage.output_tokens is not None:
            values["output_tokens"] = usage.output_tokens
        if usage.total_tokens is not None:
            values["total_tokens"] = usage.total_tokens
        if self.first_chunk_at is not None:
            values["first_token_ms"] = round((self.first_chunk_at - self.started) * 1000)
        return values


class UsageMeter:
    """The stream handler: one MeteringStream per answer."""

    async def handle(self, context: Context, metadata: Mapping[str, str]) -> None:
        stream = MeteringStream()
        exchange = Exchange(METERING_MODE)
        while (request := await context.read()) is not grpc.aio.EOF:
            reply = stream.process(request)
            await context.write(reply)
            # An event stream's last chunk ends it (its mode override sends no trailers): the stream ends here
            # rather than being cancelled by Envoy (Exchange).
            if exchange.over_after(reply, ends_phase(request)):
                return
