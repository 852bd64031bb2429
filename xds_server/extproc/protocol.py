"""The ext_proc protocol kernel the per-request services share (and the only module they share): the stream
handler contract, reading headers, attributes and the request body's `model`, and building replies.

Replies that never vary are built once and shared: gRPC serializes a message when it is written, and nothing here
mutates a message after building it, so sharing is safe and saves an allocation per message on the request path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeAlias

import grpc
import orjson
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

from translators.xds.names import (
    EXTPROC_ATTRIBUTES_KEY,
    NOT_A_HEADER_VALUE,
)

ProcessingRequest: TypeAlias = ext_proc_pb2.ProcessingRequest
ProcessingResponse: TypeAlias = ext_proc_pb2.ProcessingResponse
Context: TypeAlias = "grpc.aio.ServicerContext[ProcessingRequest, ProcessingResponse]"
Mode: TypeAlias = processing_mode_pb2.ProcessingMode
MetadataValue = str | int


class StreamHandler(Protocol):
    """A per-request service: handles one ext_proc stream, given the stream's initial gRPC metadata."""

    async def handle(self, context: Context, metadata: Mapping[str, str]) -> None:
        """Reads the stream's requests with `context.read()` and answers each with `context.write()`."""


# --- reading what Envoy sends ------------------------------------------------------------------------------------


def header_values(headers: ext_proc_pb2.HttpHeaders, wanted: frozenset[str]) -> dict[str, bytes]:
    """The wanted headers' values (Envoy sends raw_value; `value` is the older form)."""
    found: dict[str, bytes] = {}
    for header in headers.headers.headers:
        if header.key in wanted:
            found[header.key] = header.raw_value or header.value.encode()
    return found


def attribute(attributes: Mapping[str, struct_pb2.Struct], name: str) -> str:
    """A request or response attribute's string value; "" when Envoy did not send it (e.g. no such metadata).
    Envoy puts the attributes under the filter's canonical name, one Struct per filter."""
    found = attributes.get(EXTPROC_ATTRIBUTES_KEY)
    value = found.fields.get(name) if found is not None else None
    return value.string_value if value is not None else ""


class BadRequestBody(Exception):
    """A request body no model can be read from: answered 400 with `code`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_request_body(body: bytes) -> tuple[dict[str, Any], str]:
    """The JSON object of an OpenAI-style request body and its `model`: a non-empty string that can go in a header.
    Raises BadRequestBody (codes invalid_json, missing_model, invalid_model)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestBody("invalid_json", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequestBody("invalid_json", "the request body must be a JSON object")
    model = payload.get("model")
    if model is None or model == "":
        raise BadRequestBody("missing_model", "'model' is required: name the model to use")
    if not isinstance(model, str):
        raise BadRequestBody("invalid_model", "'model' must be a string")
    if NOT_A_HEADER_VALUE.search(model):
        raise BadRequestBody("invalid_model", "'model' must not contain control characters")
    return payload, model


# --- the end of a stream -----------------------------------------------------------------------------------------

# The phases of an exchange in the order Envoy sends them, with whether a mode sends each.
_PHASES: tuple[tuple[str, Callable[[Mode], bool]], ...] = (
    ("request_headers", lambda m: m.request_header_mode != Mode.SKIP),
    ("request_body", lambda m: m.request_body_mode != Mode.NONE),
    ("request_trailers", lambda m: m.request_trailer_mode == Mode.SEND),
    ("response_headers", lambda m: m.response_header_mode != Mode.SKIP),
    ("response_body", lambda m: m.response_body_mode != Mode.NONE),
    ("response_trailers", lambda m: m.response_trailer_mode == Mode.SEND),
)
_LATER = {phase: _PHASES[index + 1 :] for index, (phase, _) in enumerate(_PHASES)}


def ends_phase(request: ProcessingRequest) -> bool:
    """Whether the message ends its phase: headers and trailers always, a body with its last chunk."""
    kind = request.WhichOneof("request")
    return not kind.endswith("_body") or bool(getattr(request, kind).end_of_stream)


class Exchange:
    """Whether a stream's exchange is over once a reply is written: an immediate response, or a reply after which
    the mode in effect (the filter's, as the stream's replies override it) sends no later phase (a body's phase ends
    with its last chunk).

    A service returns then instead of waiting for Envoy to end the stream: Envoy cancels a stream still open when its
    request ends, and grpcio's asyncio server keeps about 120 bytes of native memory for every cancelled call (grpc
    issue 43360); a pool's soak grew by that much per request. Envoy takes a server's close as the end of processing.
    `mode` None: the filter's mode is not known, so only an immediate response or an overriding reply says."""

    __slots__ = ("bodiless", "mode")

    def __init__(self, mode: Mode | None) -> None:
        self.mode = mode
        self.bodiless = False  # the request ended with its headers: no request body or trailers will come

    def saw_request_headers(self, headers: ext_proc_pb2.HttpHeaders) -> None:
        self.bodiless = headers.end_of_stream

    def over_after(self, reply: ProcessingResponse, phase_ended: bool = True) -> bool:
        """`phase_ended`: the message answered ended its phase (a body's last chunk; always for headers)."""
        phase = reply.WhichOneof("response")
        if phase == "immediate_response":
            return True
        if reply.HasField("mode_override"):
            self.mode = reply.mode_override
        mode = self.mode
        if mode is None or phase not in _LATER or not phase_ended:
            return False
        later = _LATER[phase]
        return not any(sends(mode) for name, sends in later if not (self.bodiless and name.startswith("request_")))


# --- replies -----------------------------------------------------------------------------------------------------


def set_header(key: str, value: bytes) -> base_pb2.HeaderValueOption:
    """Sets (replaces) a header: the default append action would add a second value next to a client's one."""
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


_JSON = set_header("content-type", b"application/json")

CONTINUE_REQUEST_HEADERS = ProcessingResponse(request_headers=ext_proc_pb2.HeadersResponse())
CONTINUE_RESPONSE_HEADERS = ProcessingResponse(response_headers=ext_proc_pb2.HeadersResponse())
CONTINUE_RESPONSE_BODY = ProcessingResponse(response_body=ext_proc_pb2.BodyResponse())
# "Carry on unchanged" for each kind of message Envoy sends, by the ProcessingRequest oneof name.
PASS_THROUGH: Mapping[str, ProcessingResponse] = {
    "request_headers": CONTINUE_REQUEST_HEADERS,
    "request_body": ProcessingResponse(request_body=ext_proc_pb2.BodyResponse()),
    "request_trailers": ProcessingResponse(request_trailers=ext_proc_pb2.TrailersResponse()),
    "response_headers": CONTINUE_RESPONSE_HEADERS,
    "response_body": CONTINUE_RESPONSE_BODY,
    "response_trailers": ProcessingResponse(response_trailers=ext_proc_pb2.TrailersResponse()),
}


def replaced_body(
    phase: str, body: bytes, headers: Iterable[base_pb2.HeaderValueOption] = (), content_length: bool = True
) -> ProcessingResponse:
    """A reply to a `phase` body message (`request_body`, `response_body`) replacing the body, setting `headers` and,
    when `content_length` (a buffered body: Envoy holds the headers until then), the body's Content-Length.

    Built in place, so the body is copied into the message once: nested constructors copy it again at each level
    (a 45 MiB body took 140 ms instead of 17)."""
    reply = ProcessingResponse()
    common = getattr(reply, phase).response
    if content_length:
        common.header_mutation.set_headers.append(set_header("content-length", str(len(body)).encode()))
    common.header_mutation.set_headers.extend(headers)
    common.body_mutation.body = body
    return reply


def immediate_json(status: int, body: bytes, details: str) -> ProcessingResponse:
    """Envoy answers the client with this instead of going on; `details` shows as %RESPONSE_CODE_DETAILS%."""
    return ProcessingResponse(
        immediate_response=ext_proc_pb2.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),  # type: ignore[arg-type,unused-ignore]  # enum takes an int
            headers=ext_proc_pb2.HeaderMutation(set_headers=[_JSON]),
            body=body,
            details=details,
        )
    )


def error_body(message: str, error_type: str, code: str) -> bytes:
    """The project's error envelope (docs/architecture.md), the same as the translator's direct responses."""
    return orjson.dumps({"error": {"message": message, "type": error_type, "code": code}})


def error(status: int, message: str, code: str, service: str) -> ProcessingResponse:
    """An immediate JSON error; `service` (endpoint_picker, upstream_settings) prefixes its %RESPONSE_CODE_DETAILS%."""
    error_types = {429: "rate_limit_error"}
    error_type = error_types.get(status, "invalid_request_error" if status < 500 else "server_error")
    return immediate_json(status, error_body(message, error_type, code), f"{service}_{code}")
