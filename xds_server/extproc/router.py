"""The model router: one ext_proc stream per AI request, reading `model` from the body so Envoy routes on it.

Envoy sends, in order and each waiting for its reply: the request headers, the whole request body (BUFFERED),
the response headers, then the response body if the reply to the headers asked for it. The filter's default is
no response body at all, so errors, non-JSON answers and HEAD requests cost one message; a 200 JSON answer is
switched to BUFFERED (one message with the whole body: a non-streaming client waits for all of it anyway) and a
200 event stream to STREAMED (each chunk passes on as soon as it is answered, so clients see tokens at once).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import grpc
import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb2
from google.protobuf import struct_pb2

from translators.ir import ModelIR
from translators.runtime import EMPTY_TABLES, RuntimeTables
from translators.xds.names import (
    BACKEND_ATTRIBUTE,
    CLUSTER_ATTRIBUTE,
    MODEL_HEADER,
    ROUTER_GATEWAY_METADATA,
    ROUTER_METADATA_NAMESPACE,
)
from xds_server.extproc import telemetry
from xds_server.extproc.protocol import (
    CONTINUE_REQUEST_HEADERS,
    CONTINUE_RESPONSE_BODY,
    PASS_THROUGH,
    BadRequestBody,
    Context,
    MetadataValue,
    Mode,
    ProcessingRequest,
    ProcessingResponse,
    attribute,
    error,
    header_values,
    immediate_json,
    parse_request_body,
    set_header,
)
from xds_server.extproc.sse import SseParser, Usage

# Paths the router serves, by the GenAI operation name they are measured under.
OPERATIONS = {b"/v1/chat/completions": "chat", b"/v1/completions": "text_completion", b"/v1/embeddings": "embeddings"}
MODELS_PATH = b"/v1/models"
OWNED_BY = "xds-server"

# Response headers replies that switch this response's body to the given mode (the filter sends no body by default).
# A mode override replaces the whole processing mode; only the response fields still matter at that point.
STREAM_RESPONSE_BODY = ProcessingResponse(
    response_headers=ext_proc_pb2.HeadersResponse(), mode_override=Mode(response_body_mode=Mode.STREAMED)
)
BUFFER_RESPONSE_BODY = ProcessingResponse(
    response_headers=ext_proc_pb2.HeadersResponse(), mode_override=Mode(response_body_mode=Mode.BUFFERED)
)


def add_metadata(response: ProcessingResponse, values: Mapping[str, MetadataValue]) -> ProcessingResponse:
    """Dynamic metadata for Envoy (access logs): Envoy merges it into namespace io.envoy.ai_gateway."""
    response.dynamic_metadata.fields[ROUTER_METADATA_NAMESPACE].struct_value.update(values)
    return response


def route_by_model(model: str) -> ProcessingResponse:
    """The reply to the request body: x-ai-eg-model set, so the header-match routes apply once Envoy re-routes."""
    common = ext_proc_pb2.CommonResponse(
        header_mutation=ext_proc_pb2.HeaderMutation(set_headers=[set_header(MODEL_HEADER, model.encode())]),
        clear_route_cache=True,
    )
    return add_metadata(ProcessingResponse(request_body=ext_proc_pb2.BodyResponse(response=common)), {"model": model})


def final(kind: str, values: Mapping[str, MetadataValue]) -> ProcessingResponse:
    """The last reply of a stream (`response_headers` or `response_body`) with what the access log should show."""
    response = ProcessingResponse()
    getattr(response, kind).SetInParent()
    return add_metadata(response, values)


def _model_list(models: tuple[ModelIR, ...]) -> ProcessingResponse:
    data = [{"id": m.name, "object": "model", "created": m.created, "owned_by": OWNED_BY} for m in models]
    return immediate_json(200, orjson.dumps({"object": "list", "data": data}), "model_router_models")


class RouterTables:
    """One build's runtime tables with the replies made from them, each on first use: bounded by what the
    configuration names (models, hosts), never by what clients send."""

    def __init__(self, runtime: RuntimeTables) -> None:
        self.runtime = runtime
        self._route_replies: dict[str, ProcessingResponse] = {}
        self._model_lists: dict[tuple[str, str | None], ProcessingResponse] = {}

    def models_answer(self, gateway: str, authority: str) -> ProcessingResponse:
        hosts = self.runtime.host_models(gateway)
        key = (gateway, hosts.domain(authority))
        reply = self._model_lists.get(key)
        if reply is None:
            reply = self._model_lists[key] = _model_list(hosts.models(key[1]))
        return reply

    def route_reply(self, model: str) -> ProcessingResponse:
        reply = self._route_replies.get(model)
        if reply is None:
            reply = route_by_model(model)
            if model in self.runtime.routed_models:
                self._route_replies[model] = reply
        return reply


_REQUEST_HEADERS = frozenset({":path", ":authority"})
_RESPONSE_HEADERS = frozenset({":status", "content-type", "content-encoding"})


class RouterStream:
    """The router's state for one request. `process` is synchronous and allocation-light: it runs per message."""

    __slots__ = (
        "backend",
        "clock",
        "finished",
        "first_chunk_at",
        "gateway",
        "model",
        "operation",
        "parser",
        "started",
        "status",
        "tables",
        "usage",
    )

    def __init__(self, tables: RouterTables, gateway: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.tables = tables
        self.gateway = gateway
        self.clock = clock
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
        if kind == "request_headers":
            return self.request_headers(request.request_headers)
        if kind == "request_body":
            return self.request_body(request.request_body.body)
        if kind == "response_headers":
            return self.response_headers(request.response_headers, request.attributes)
        if kind == "response_body":
            return self.response_body(request.response_body)
        return PASS_THROUGH[kind]  # trailers are not asked for; answer them unchanged all the same

    def request_headers(self, headers: ext_proc_pb2.HttpHeaders) -> ProcessingResponse:
        self.started = self.clock()
        found = header_values(headers, _REQUEST_HEADERS)
        path = found.get(":path", b"").partition(b"?")[0]
        if path == MODELS_PATH:
            return self.tables.models_answer(self.gateway, found.get(":authority", b"").decode("latin-1"))
        operation = OPERATIONS.get(path)
        if operation is None:
            return _reject(404, f"unsupported path: {path.decode('utf-8', 'replace')}", "unsupported_path")
        self.operation = operation
        if headers.end_of_stream:
            return _reject(400, "the request has no body: a JSON object with a 'model' is required", "missing_model")
        return CONTINUE_REQUEST_HEADERS

    def request_body(self, body: bytes) -> ProcessingResponse:
        try:
            _, model = parse_request_body(body)
        except BadRequestBody as bad:
            return _reject(400, bad.message, bad.code)
        self.model = model
        return self.tables.route_reply(model)

    def response_headers(
        self, headers: ext_proc_pb2.HttpHeaders, attributes: Mapping[str, struct_pb2.Struct]
    ) -> ProcessingResponse:
        found = header_values(headers, _RESPONSE_HEADERS)
        status = found.get(":status", b"0")
        self.status = int(status) if status.isdigit() else 0
        self.backend = attribute(attributes, BACKEND_ATTRIBUTE) or attribute(attributes, CLUSTER_ATTRIBUTE)
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

    def record(self) -> None:
        """Metrics of a request a backend answered (a route's direct response or an Envoy local reply has none)."""
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


def _reject(status: int, message: str, code: str) -> ProcessingResponse:
    telemetry.REJECTIONS.labels(code).inc()
    return error(status, message, code)


class ModelRouter:
    """The stream handler. `follow` swaps in each build's tables; a stream reads them once, when it starts."""

    def __init__(self, runtime: RuntimeTables = EMPTY_TABLES) -> None:
        self.tables = RouterTables(runtime)

    def follow(self, runtime: RuntimeTables) -> None:
        self.tables = RouterTables(runtime)

    async def handle(self, context: Context, metadata: Mapping[str, str]) -> None:
        stream = RouterStream(self.tables, metadata.get(ROUTER_GATEWAY_METADATA, ""))
        try:
            while (request := await context.read()) is not grpc.aio.EOF:
                await context.write(stream.process(request))
        finally:
            # A stream that ends early (client gone, trailers instead of an end-of-stream body) still counts.
            stream.record()
