"""What an HTTP connection manager serving ext_proc routes adds: JSON local replies and the AI access log.

Envoy answers some requests itself (local replies) in plain text. Those of the error contract are rewritten to the
OpenAI error envelope: a backend that cannot be reached (no healthy endpoint, connection failure or reset,
overflow: 503 with codes `no_healthy_upstream` and `upstream_unavailable`; a timeout: 504 `upstream_timeout`), a
failed or silent ext_proc service (any `ext_proc_error*` reply, 500 or 504 from Envoy, becomes 503: the gateway is
unavailable, not broken) and a buffered request body over the buffer limit (413). Every other local reply is left
alone: direct responses and the services' own immediate responses already carry JSON.
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2, substitution_format_string_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import struct_pb2, wrappers_pb2

from translators.xds.names import (
    ECHO_LIMIT,
    JSON_BODY_HEADER,
    METERING_METADATA_NAMESPACE,
    MODEL_HEADER,
    USAGE_METADATA_KEYS,
    XDS_METADATA_NAMESPACE,
    pack,
)
from translators.xds.routes import json_error_body

CEL_FILTER = "envoy.access_loggers.extension_filters.cel"
STDOUT_LOGGER = "envoy.access_loggers.stdout"
# Response code details Envoy gives the local replies to map (ext_proc.cc ErrorPrefix; the HCM's buffer overflow).
EXTPROC_FAILED = "response.code_details.startsWith('ext_proc_error')"
BODY_TOO_LARGE = "response.code_details == 'request_payload_too_large'"
# The usage keys of METERING_METADATA_NAMESPACE the access log prints (first_token_ms is the usage log's).
LOGGED_USAGE_KEYS = tuple(key for key in USAGE_METADATA_KEYS if key != "first_token_ms")


def _cel(expression: str) -> accesslog_pb2.AccessLogFilter:
    return accesslog_pb2.AccessLogFilter(
        extension_filter=accesslog_pb2.ExtensionFilter(
            name=CEL_FILTER, typed_config=pack(cel_pb2.ExpressionFilter(expression=expression))
        )
    )


def local_reply_config(buffer_limit_bytes: int) -> hcm_pb2.LocalReplyConfig:
    return hcm_pb2.LocalReplyConfig(
        mappers=[
            hcm_pb2.ResponseMapper(
                filter=_cel(EXTPROC_FAILED),
                status_code=wrappers_pb2.UInt32Value(value=503),
                body_format_override=json_error_body(
                    "the gateway cannot process requests right now; retry later", "server_error", "service_unavailable"
                ),
            ),
            hcm_pb2.ResponseMapper(
                filter=_cel(BODY_TOO_LARGE),
                body_format_override=json_error_body(
                    f"request body is larger than the gateway's limit of {buffer_limit_bytes} bytes",
                    "invalid_request_error",
                    "request_too_large",
                ),
            ),
            *(
                hcm_pb2.ResponseMapper(
                    filter=_response_flags(*flags),
                    status_code=wrappers_pb2.UInt32Value(value=status),
                    body_format_override=json_error_body(message, "server_error", code),
                )
                for flags, status, message, code in UPSTREAM_FAILURES
            ),
        ]
    )


# Envoy's own answers when the backend cannot be reached (by response flag), as OpenAI-style errors with a stable
# code instead of its plain text ("upstream connect error or disconnect/reset before headers...").
UPSTREAM_FAILURES = (
    (("UH",), 503, "no backend of this model is available right now; retry later", "no_healthy_upstream"),
    (
        ("UF", "URX", "UR", "UC", "UO"),
        503,
        "the model's backend could not be reached or dropped the request; retry later",
        "upstream_unavailable",
    ),
    (("UT",), 504, "the model's backend did not answer in time", "upstream_timeout"),
    # A backend that broke the protocol (a response cut before it was whole, a malformed one).
    (("UPE",), 502, "the model's backend sent a malformed or incomplete response", "upstream_protocol_error"),
)


def _response_flags(*flags: str) -> accesslog_pb2.AccessLogFilter:
    return accesslog_pb2.AccessLogFilter(response_flag_filter=accesslog_pb2.ResponseFlagFilter(flags=list(flags)))


def _refused_or_failed() -> accesslog_pb2.AccessLogFilter:
    """An answer with a status of 400 or more, Envoy's or a backend's."""
    at_least = base_pb2.RuntimeUInt32(default_value=400, runtime_key="xds_server.access_log.error_status")
    comparison = accesslog_pb2.ComparisonFilter(op=accesslog_pb2.ComparisonFilter.GE, value=at_least)
    return accesslog_pb2.AccessLogFilter(status_code_filter=accesslog_pb2.StatusCodeFilter(comparison=comparison))


# The access log's JSON keys and what Envoy writes for each. The AI filter writes the same line for AI requests
# (native/access_log.c, AI_ACCESS_LOG_FIELDS's keys, sorted as Envoy's JSON formatter writes them); Envoy, for the
# listener's other requests refused or failed. What the client chose is written bounded (ECHO_LIMIT), so a
# client-sized value never makes a client-sized line.
AI_ACCESS_LOG_FIELDS = {
    "start_time": "%START_TIME%",
    "method": f"%REQ(:METHOD):{ECHO_LIMIT}%",
    "path": f"%REQ(:PATH):{ECHO_LIMIT}%",
    "authority": f"%REQ(:AUTHORITY):{ECHO_LIMIT}%",
    "status": "%RESPONSE_CODE%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "duration_ms": "%DURATION%",
    "route": "%ROUTE_NAME%",
    "upstream_host": "%UPSTREAM_HOST%",
    "request_id": f"%REQ(X-REQUEST-ID):{ECHO_LIMIT}%",
    "model": f"%REQ({MODEL_HEADER}):{ECHO_LIMIT}%",
    "backend": f"%UPSTREAM_METADATA({XDS_METADATA_NAMESPACE}:backend)%",
    **{key: f"%DYNAMIC_METADATA({METERING_METADATA_NAMESPACE}:{key})%" for key in LOGGED_USAGE_KEYS},
}


def ai_access_log() -> accesslog_pb2.AccessLog:
    """The listener's JSON access log on Envoy's stdout: one line per AI request (the routed model, the backend, the
    answer's usage), which the AI filter writes, and one per other request of the listener refused or failed, which
    Envoy writes here (not the AI requests: those have JSON_BODY_HEADER). A plain route's answered requests are not
    written: they are not AI requests, the listeners without AI routes write none either, and the line would add
    some 5% to what Envoy spends on such a request (bench.instructions)."""
    log_format = struct_pb2.Struct()
    log_format.update(AI_ACCESS_LOG_FIELDS)
    config = stream_pb2.StdoutAccessLog(
        log_format=substitution_format_string_pb2.SubstitutionFormatString(json_format=log_format)
    )
    not_ai = accesslog_pb2.AccessLogFilter(
        header_filter=accesslog_pb2.HeaderFilter(
            header=route_components_pb2.HeaderMatcher(name=JSON_BODY_HEADER, present_match=True, invert_match=True)
        )
    )
    both = accesslog_pb2.AndFilter(filters=[not_ai, _refused_or_failed()])
    return accesslog_pb2.AccessLog(
        name=STDOUT_LOGGER, filter=accesslog_pb2.AccessLogFilter(and_filter=both), typed_config=pack(config)
    )
