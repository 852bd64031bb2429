"""ProcessingResponse builders for the ext_proc services.

Replies that never vary are built once and shared: gRPC serializes a message when it is written, and nothing here
mutates a message after building it, so sharing is safe and saves an allocation per message on the request path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb2
from envoy.type.v3 import http_status_pb2

from translators.gatewayapi import MODEL_HEADER
from translators.xds.names import ROUTER_METADATA_NAMESPACE

ProcessingResponse: TypeAlias = ext_proc_pb2.ProcessingResponse
Mode: TypeAlias = processing_mode_pb2.ProcessingMode
MetadataValue = str | int


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
# Response headers replies that switch this response's body to the given mode (the filter sends no body by default).
# A mode override replaces the whole processing mode; only the response fields still matter at that point.
STREAM_RESPONSE_BODY = ProcessingResponse(
    response_headers=ext_proc_pb2.HeadersResponse(), mode_override=Mode(response_body_mode=Mode.STREAMED)
)
BUFFER_RESPONSE_BODY = ProcessingResponse(
    response_headers=ext_proc_pb2.HeadersResponse(), mode_override=Mode(response_body_mode=Mode.BUFFERED)
)

# "Carry on unchanged" for each kind of message Envoy sends, by the ProcessingRequest oneof name.
PASS_THROUGH: Mapping[str, ProcessingResponse] = {
    "request_headers": CONTINUE_REQUEST_HEADERS,
    "request_body": ProcessingResponse(request_body=ext_proc_pb2.BodyResponse()),
    "request_trailers": ProcessingResponse(request_trailers=ext_proc_pb2.TrailersResponse()),
    "response_headers": CONTINUE_RESPONSE_HEADERS,
    "response_body": CONTINUE_RESPONSE_BODY,
    "response_trailers": ProcessingResponse(response_trailers=ext_proc_pb2.TrailersResponse()),
}


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
    """The project's error envelope (DESIGN.md contracts), the same as the translator's direct responses."""
    return orjson.dumps({"error": {"message": message, "type": error_type, "code": code}})


def error(status: int, message: str, code: str, service: str = "model_router") -> ProcessingResponse:
    """An immediate JSON error; `service` (model_router, endpoint_picker) prefixes its %RESPONSE_CODE_DETAILS%."""
    error_types = {429: "rate_limit_error"}
    error_type = error_types.get(status, "invalid_request_error" if status < 500 else "server_error")
    return immediate_json(status, error_body(message, error_type, code), f"{service}_{code}")


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
