"""Model routing and usage inside Envoy: the configs of the filters an AI request meets, shared by the listener (where
the filters sit, disabled) and the AI virtual hosts' entry routes (which turn them on)."""

from __future__ import annotations

from envoy.extensions.dynamic_modules.v3 import dynamic_modules_pb2 as dynamic_modules_config_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.extensions.filters.http.dynamic_modules.v3 import dynamic_modules_pb2
from google.protobuf import wrappers_pb2

from translators.xds.names import (
    AI_FILTER_NAME,
    AI_MODULE,
    ECHO_LIMIT,
    EXTPROC_CLUSTER,
    JSON_BODY_HEADER,
    METERING_METADATA_NAMESPACE,
    MODEL_HEADER,
    XDS_METADATA_NAMESPACE,
    pack,
)

USAGE_LOG_FLUSH_MS = 250  # the usage log's export interval: metrics lag requests by at most this much
# The module also exports a batch as soon as it holds this much: at 250 ms, some 10,000 requests a second, well below
# gRPC's 4 MiB message limit. (Fewer, larger exports cost the control plane less than the records in them.)
USAGE_LOG_BATCH_BYTES = 1 << 20


def ai_filter_module() -> dynamic_modules_config_pb2.DynamicModuleConfig:
    """The shared object Envoy loads (`lib<AI_MODULE>.so`, from $ENVOY_DYNAMIC_MODULES_SEARCH_PATH: whoever starts
    Envoy sets it, xds_server.envoy.envoy_environment). Kept loaded: a listener update never reloads it."""
    return dynamic_modules_config_pb2.DynamicModuleConfig(name=AI_MODULE, do_not_close=True)


def ai_filter_config() -> dynamic_modules_pb2.DynamicModuleFilter:
    """The AI filter (native/ai_filter.c): the body's `model` into MODEL_HEADER and a JSON_BODY_HEADER marker, then a
    new route match; and the model and usage of a JSON answer or of a 200 event stream (its last `usage`, and when
    its first chunk came) into METERING_METADATA_NAMESPACE. It sets no header when the body is not one JSON object
    (malformed, another type, a repeated top-level key, or declared as another Content-Type), and no MODEL_HEADER
    when `model` is missing, null or "": the routes after the model routes tell these cases apart. A body with no
    Content-Type is read as JSON (OpenAI's API does) and gets one. At each AI request's end it writes the usage log's
    record (USAGE_RECORD_LINES), which the module exports to the control plane in batches. Its config is one value a
    line (the order native/ai_filter.c reads), so every name and limit stays defined here."""
    values = (
        *(MODEL_HEADER, JSON_BODY_HEADER, METERING_METADATA_NAMESPACE, XDS_METADATA_NAMESPACE, ECHO_LIMIT),
        *(EXTPROC_CLUSTER, USAGE_LOG_FLUSH_MS, USAGE_LOG_BATCH_BYTES),
    )
    names = "\n".join(str(value) for value in values)
    return dynamic_modules_pb2.DynamicModuleFilter(
        dynamic_module_config=ai_filter_module(),
        filter_name=AI_FILTER_NAME,
        filter_config=pack(wrappers_pb2.StringValue(value=names)),
    )


def ai_filter_route_config() -> dynamic_modules_pb2.DynamicModuleFilterPerRoute:
    """Turns the AI filter on for a route (it is disabled on the listener); it carries no settings."""
    # No per_route_config_name: Envoy 1.40 deprecates it (for filter_name, which xds-protos 1.85 lacks), and the
    # module reads no name.
    return dynamic_modules_pb2.DynamicModuleFilterPerRoute(dynamic_module_config=ai_filter_module())


def content_length_config() -> buffer_pb2.Buffer:
    """The buffer filter sets Content-Length once it holds the whole body. The model filter before it already holds
    the body (within the connection's buffer limit, 413 beyond), so this filter's own limit never applies."""
    return buffer_pb2.Buffer(max_request_bytes=wrappers_pb2.UInt32Value(value=2**32 - 1))


def content_length_route_config() -> buffer_pb2.BufferPerRoute:
    return buffer_pb2.BufferPerRoute(buffer=content_length_config())
