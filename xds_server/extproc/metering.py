"""Usage metering: token usage and GenAI metrics of every routed AI request, read from its response.

Envoy routes by model itself (the transform filter), so no Python runs on the request path. This filter starts at
the response headers, with attributes saying what was routed where (model, backend, cluster) and when the request
started. Errors, non-JSON answers and HEAD requests cost that one message; a 200 JSON answer is switched to
BUFFERED (one message with the whole body: a non-streaming client waits for all of it anyway) and a 200 event stream
to STREAMED (each chunk passes on as soon as it is answered, so clients see tokens at once). The filter fails open:
with the control plane away, responses pass unmetered. The last reply carries the usage as dynamic metadata for
the access log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb2
from google.protobuf import struct_pb2

from translators.xds.names import (
    BACKEND_ATTRIBUTE,
    CLUSTER_ATTRIBUTE,
    METERING_METADATA_NAMESPACE,
    MODEL_ATTRIBUTE,
    PATH_ATTRIBUTE,
    REQUEST_TIME_ATTRIBUTE,
)
from xds_server.extproc import telemetry
from xds_server.extproc.protocol import (
    CONTINUE_RESPONSE_BODY,
    PASS_THROUGH,
    Context,
    MetadataValue,
    Mode,
    ProcessingRequest,
    ProcessingResponse,
    attribute,
    header_values,
)
from xds_server.extproc.sse import SseParser, Usage

# Paths by the GenAI operation name they are measured under.
OPERATIONS = {"/v1/chat/completions": "chat", "/v1/completions": "text_completion", "/v1/embeddings": "embeddings"}
_RESPONSE_HEADERS = frozenset({":status", "content-type", "content-encoding"})

# Response headers replies that switch this response's body to the given mode (the filter sends no body by default).
# A mode override replaces the whole processing mode; only the response fields still matter at that point.
STREAM_RESPONSE_BODY = ProcessingResponse(
    response_headers=ext_proc_pb2.HeadersResponse(), mode_override=Mode(response_body_mode=Mode.STREAMED)
)
BUFFER_RESPONSE_BODY = ProcessingResponse(
    response_headers=ext_proc_pb2.HeadersResponse(), mode_override=Mode(response_body_mode=Mode.BUFFERED)
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
    """One response's state. `process` is synchronous and allocation-light: it runs per message."""

    __slots__ = (
        "backend",
        "clock",
        "finished",
        "first_chunk_at",
        "model",
        "operation",
        "parser",
        "started",
        "status",
        "usage",
        "wall",
    )

    def __init__(self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.wall = wall
        self.started = 0.0
        self.operation = ""
        self.model = ""
        self.backend = ""
        self.status = 0
        self.first_chunk_at: float | None = None
        self.parser: SseParser | None = None  # set when the response body is streamed
        self.usage = Usage()
        self.finished = False

    def process(self, request: ProcessingRequest) -> ProcessingResponse:
        kind = request.WhichOneof("request")
        if kind == "response_headers":
            return self.response_headers(request.response_headers, request.attributes)
        if kind == "response_body":
            return self.response_body(request.response_body)
        return PASS_THROUGH[kind]  # nothing else is asked for; answer it unchanged all the same

    def response_headers(
        self, headers: ext_proc_pb2.HttpHeaders, attributes: Mapping[str, struct_pb2.Struct]
    ) -> ProcessingResponse:
        self.started = request_started(attributes, self.wall(), self.clock())
        self.model = attribute(attributes, MODEL_ATTRIBUTE)
        self.operation = OPERATIONS.get(attribute(attributes, PATH_ATTRIBUTE), "")
        self.backend = attribute(attributes, BACKEND_ATTRIBUTE) or attribute(attributes, CLUSTER_ATTRIBUTE)
        found = header_values(headers, _RESPONSE_HEADERS)
        status = found.get(":status", b"0")
        self.status = int(status) if status.isdigit() else 0
        # Compressed bodies are passed by unread (no usage): decoding them would cost more than the counts are worth.
        if self.status == 200 and self.operation and not headers.end_of_stream and "content-encoding" not in found:
            content_type = found.get("content-type", b"")
            if content_type.startswith(b"text/event-stream"):
                self.parser = SseParser()
                return STREAM_RESPONSE_BODY
            if content_type.startswith(b"application/json"):
                return BUFFER_RESPONSE_BODY
        return self.finish("response_headers")

    def response_body(self, body: ext_proc_pb2.HttpBody) -> ProcessingResponse:
        if self.parser is None:  # BUFFERED: the whole body in one message
            self.usage.read_body(body.body)
            return self.finish("response_body")
        if self.first_chunk_at is None and body.body:
            self.first_chunk_at = self.clock()
        for event in self.parser.feed(body.body):
            self.usage.read_event(event)
        if not body.end_of_stream:
            return CONTINUE_RESPONSE_BODY
        for event in self.parser.finish():
            self.usage.read_event(event)
        return self.finish("response_body")

    def finish(self, kind: str) -> ProcessingResponse:
        """The reply to the last message Envoy sends: records the metrics, returns the access log's metadata."""
        self.record()
        usage = self.usage
        values: dict[str, MetadataValue] = {"backend": self.backend, "response_model": usage.response_model}
        if usage.input_tokens is not None:
            values["input_tokens"] = usage.input_tokens
        if usage.output_tokens is not None:
            values["output_tokens"] = usage.output_tokens
        if usage.total_tokens is not None:
            values["total_tokens"] = usage.total_tokens
        return final(kind, {k: v for k, v in values.items() if v != ""})

    def end(self) -> None:
        """The stream ended early (client gone, trailers instead of an end-of-stream body): what was read counts,
        the last event too, unterminated as it is."""
        if self.parser is not None and not self.finished:
            for event in self.parser.finish():
                self.usage.read_event(event)
        self.record()

    def record(self) -> None:
        """Metrics of a request a backend answered (a local reply of Envoy's has no backend)."""
        if self.finished or not self.backend or not self.operation:
            return
        self.finished = True
        now = self.clock()
        usage = self.usage
        error_type = "" if 200 <= self.status < 300 else str(self.status)
        labels = (self.operation, self.model, usage.response_model, self.backend, error_type)
        telemetry.REQUEST_DURATION.labels(*labels).observe(now - self.started)
        if usage.input_tokens is not None:
            telemetry.TOKEN_USAGE.labels(*labels, "input").observe(usage.input_tokens)
        if usage.output_tokens is not None:
            telemetry.TOKEN_USAGE.labels(*labels, "output").observe(usage.output_tokens)
        if self.first_chunk_at is not None:
            ttft = self.first_chunk_at - self.started
            telemetry.TIME_TO_FIRST_TOKEN.labels(*labels).observe(ttft)
            if usage.output_tokens is not None and usage.output_tokens > 1:
                per_token = (now - self.first_chunk_at) / (usage.output_tokens - 1)
                telemetry.TIME_PER_OUTPUT_TOKEN.labels(*labels).observe(per_token)


class UsageMeter:
    """The stream handler: one MeteringStream per response."""

    async def handle(self, context: Context, metadata: Mapping[str, str]) -> None:
        stream = MeteringStream()
        try:
            while (request := await context.read()) is not grpc.aio.EOF:
                await context.write(stream.process(request))
        finally:
            stream.end()
