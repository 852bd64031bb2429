"""What an HTTP connection manager serving ext_proc routes adds: JSON local replies and the AI access log.

Envoy answers some requests itself (local replies) in plain text. Two of them belong to the error contract and are
rewritten to the OpenAI error envelope: a failed or silent ext_proc service (any `ext_proc_error*` reply, 500 or
504 from Envoy, becomes 503: the gateway is unavailable, not broken) and a buffered request body over the buffer
limit (413). Every other local reply is left alone: direct responses and the services' own immediate responses
already carry JSON.
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import substitution_format_string_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import struct_pb2, wrappers_pb2

from translators.xds.names import METERING_METADATA_NAMESPACE, MODEL_HEADER, pack
from translators.xds.routes import json_error_body

CEL_FILTER = "envoy.access_loggers.extension_filters.cel"
STDOUT_LOGGER = "envoy.access_loggers.stdout"
# Response code details Envoy gives the local replies to map (ext_proc.cc ErrorPrefix; the HCM's buffer overflow).
EXTPROC_FAILED = "response.code_details.startsWith('ext_proc_error')"
BODY_TOO_LARGE = "response.code_details == 'request_payload_too_large'"
# Keys of usage metering's dynamic metadata (METERING_METADATA_NAMESPACE) printed by the access log.
METERING_METADATA_KEYS = ("response_model", "backend", "input_tokens", "output_tokens", "total_tokens")


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
        ]
    )


def ai_access_log() -> accesslog_pb2.AccessLog:
    """One JSON line per request on Envoy's stdout: the routed model, and what metering learnt (backend, tokens)."""
    fields = {
        "start_time": "%START_TIME%",
        "method": "%REQ(:METHOD)%",
        "path": "%REQ(:PATH)%",
        "authority": "%REQ(:AUTHORITY)%",
        "status": "%RESPONSE_CODE%",
        "details": "%RESPONSE_CODE_DETAILS%",
        "duration_ms": "%DURATION%",
        "route": "%ROUTE_NAME%",
        "upstream_host": "%UPSTREAM_HOST%",
        "request_id": "%REQ(X-REQUEST-ID)%",
        "model": f"%REQ({MODEL_HEADER})%",
    }
    fields.update({key: f"%DYNAMIC_METADATA({METERING_METADATA_NAMESPACE}:{key})%" for key in METERING_METADATA_KEYS})
    log_format = struct_pb2.Struct()
    log_format.update(fields)
    config = stream_pb2.StdoutAccessLog(
        log_format=substitution_format_string_pb2.SubstitutionFormatString(json_format=log_format)
    )
    return accesslog_pb2.AccessLog(name=STDOUT_LOGGER, typed_config=pack(config))
