"""Every wire contract between the generated configuration, the ext_proc services and clients: type URLs, filter
names, headers, metadata keys and processing modes. Both sides import them from here, so they cannot drift."""

import re

from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from translators.ir import ObjectRef

Mode = processing_mode_pb2.ProcessingMode

# The five xDS resource types a Gateway's snapshot holds (SECRET: the certificates its HTTPS listeners present).
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

STRIP_HEADERS_EXTENSION = "envoy.http.early_header_mutation.header_mutation/strip-internal-headers"
# The AI filter, an Envoy dynamic module of ours (native/ai_filter.c, built as lib<AI_MODULE>.so): copies the request
# body's `model` into MODEL_HEADER and has Envoy route the request again, and reads a JSON answer's usage into
# dynamic metadata. No Python per request.
AI_FILTER = "envoy.filters.http.dynamic_modules/ai"
AI_MODULE = "xds_server_ai"
AI_FILTER_NAME = "ai"
# For a request body sent without Content-Length (chunked): Envoy counts the body it holds and sets Content-Length,
# as backends that read only sized bodies want.
CONTENT_LENGTH_FILTER = "envoy.filters.http.buffer/content-length"
PICKER_FILTER = "envoy.filters.http.ext_proc/endpoint-picker"
ROUTER_FILTER = "envoy.filters.http.router"
# A cluster's upstream filters: the backend settings ext_proc (per attempt), then the codec Envoy requires last.
UPSTREAM_SETTINGS_FILTER = "envoy.filters.http.ext_proc/upstream-settings"
UPSTREAM_CODEC_FILTER = "envoy.filters.http.upstream_codec"
# A backend's API key, injected by Envoy on each request to its cluster from an SDS secret of that name.
CREDENTIAL_FILTER = "envoy.filters.http.credential_injector"
GENERIC_CREDENTIAL = "envoy.http.injected_credentials.generic"
CREDENTIAL_SECRET_PREFIX = "credential/"
# At most this much of a client's value is echoed in an error or written in an access log field (the model, the
# path): client-sized input never makes a client-sized log line or answer.
ECHO_LIMIT = 256
EXTPROC_CLUSTER = "xds-server/extproc"

# gRPC metadata on the embedded picker's ext_proc stream naming the pool ("<ns>/<name>") the route targets.
PICKER_POOL_METADATA = "x-inference-pool"
# InferencePool annotation: "embedded" or "reference" (PickerMode), whoever picks for the pool whatever the option.
ENDPOINT_PICKER_ANNOTATION = "xds-server.io/endpoint-picker"
# On a BackendSecurityPolicy, "true": its key may go to backends in plain HTTP over the network (by default only over
# TLS, or to loopback and unix socket endpoints).
ALLOW_PLAINTEXT_CREDENTIALS_ANNOTATION = "xds-server.io/allow-plaintext-credentials"
# gRPC metadata marking the upstream-settings filter's streams (one per attempt).
UPSTREAM_SETTINGS_METADATA = "x-ai-eg-upstream-settings"
DESTINATION_HEADER = "x-gateway-destination-endpoint"
# The header Envoy routes AI requests on: the request body's `model`, as Envoy renders it (a string as it is, any
# other JSON value as JSON text; absent when the body has no `model`, or it is null or "").
MODEL_HEADER = "x-ai-eg-model"
# Set by the model filter whenever the request body parsed as a JSON object: tells "no model" from "not JSON".
JSON_BODY_HEADER = "x-ai-eg-body"
# The paths an AI virtual host serves requests on (any other path is answered 404 before its body is read), by the
# GenAI operation name they are measured under: OpenAI's, and Anthropic's Messages API (for Anthropic backends).
OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
    "/v1/messages": "chat",
}
AI_PATHS = tuple(OPERATIONS)
MODELS_PATH = "/v1/models"
# Endpoint Picker protocol: request headers clients (or other filters) may send the picker, and its answers.
OBJECTIVE_HEADER = "x-gateway-inference-objective"
MODEL_REWRITE_HEADER = "x-gateway-model-name-rewrite"
PICKER_DEBUG_HEADER = "x-gateway-picker-debug"  # "true" asks for the scores of this pick in the response
PICKER_SCORES_HEADER = "x-gateway-picker-scores"
# Conformance plugins: the endpoints a test allows, and the endpoint that served, echoed back.
TEST_SELECTION_HEADER = "test-epp-endpoint-selection"
SERVED_ECHO_HEADER = "x-conformance-test-served-endpoint"
# Where Envoy's override_host policy reports the endpoint that served the request (in `envoy.lb` metadata); the
# picker filter forwards that namespace, so the picker learns it with the response headers.
SERVED_ENDPOINT_KEY = "x-gateway-destination-endpoint-served"
# How long Envoy waits for the picker's answer to one message. In FULL_DUPLEX_STREAMED mode the picker answers
# the request headers only after the whole body has arrived, so the wait covers the client's upload as well as
# the pick: Envoy's 200 ms default would fail any large or slow upload. Past it the request fails (or, with
# FailOpen, goes to the pool's round robin).
PICKER_MESSAGE_TIMEOUT_SECONDS = 10
LB_METADATA_NAMESPACE = "envoy.lb"
# Dynamic metadata a data plane filter may set to restrict the picker to some endpoints (Endpoint Picker protocol).
SUBSET_HINT_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_HINT_KEY = "x-gateway-destination-endpoint-subset"
# xDS metadata (routes, endpoints) read back through ext_proc request attributes.
XDS_METADATA_NAMESPACE = "aigateway.envoy.io"
# Dynamic metadata the AI filter writes (access logs, the usage log): keys of USAGE_METADATA_KEYS.
METERING_METADATA_NAMESPACE = "io.envoy.ai_gateway"
USAGE_METADATA_KEYS = ("response_model", "input_tokens", "output_tokens", "total_tokens", "first_token_ms")
# The usage log: the AI filter's record of each AI request (an OpenTelemetry log record, exported in batches to the
# control plane's logs service on EXTPROC_CLUSTER), which `serve` turns into the GenAI metrics. Its body is these
# lines, in this order (native/usage_log.h's enum usage_line), "-" where the filter has no value: the request's path
# and status; the answering endpoint's backend (its metadata, BACKEND_ATTRIBUTE's), or the cluster for an endpoint
# that names none; from the request's headers to the last byte of the answer (µs: none when the client left before
# it) and to the stream's end (whole ms); the answer's input and output tokens; an event stream's first chunk (ms
# after the request's headers); last the routed model, read as the rest of the body whatever it holds. The one
# attribute is the answer's model. What a client or a backend chose is bounded (ECHO_LIMIT).
USAGE_RECORD_LINES = (
    "path",
    "status",
    "backend",
    "cluster",
    "duration_us",
    "stream_ms",
    "input_tokens",
    "output_tokens",
    "first_token_ms",
    "model",
)
USAGE_RECORD_ATTRIBUTE = "response_model"
# Ext_proc request attribute (CEL) of the upstream phase: the backend an attempt goes to (endpoint metadata names it
# even inside a weighted cluster).
BACKEND_ATTRIBUTE = f"xds.upstream_host_metadata.filter_metadata['{XDS_METADATA_NAMESPACE}']['backend']"
# The rule ("<kind>/<ns>/<name>/rule/<i>") of the route a request took, from the route's metadata.
RULE_ATTRIBUTE = f"xds.route_metadata.filter_metadata['{XDS_METADATA_NAMESPACE}']['rule']"
# Envoy puts ext_proc attributes in ProcessingRequest.attributes under the filter's canonical name.
EXTPROC_ATTRIBUTES_KEY = "envoy.filters.http.ext_proc"
# Client-supplied headers that could steer routing; removed before any filter reads them.
INTERNAL_HEADER_PREFIXES = ("x-ai-eg-", DESTINATION_HEADER)
# Characters Envoy refuses in a header value (control characters but tab): a value with one can be neither set nor
# routed on.
HEADER_VALUE_FORBIDDEN = r"\x00-\x08\x0a-\x1f\x7f"  # a regex character range
NOT_A_HEADER_VALUE = re.compile(f"[{HEADER_VALUE_FORBIDDEN}]")

# Processing modes of the ext_proc filters. A mode override replaces the whole mode, so the services derive theirs
# from these.


def _mode(
    body: int, trailers: int = Mode.SKIP, response_headers: int = Mode.SEND
) -> processing_mode_pb2.ProcessingMode:
    """Request headers always; no response body or trailers (a service asks for a response body per response)."""
    return Mode(
        request_header_mode=Mode.SEND,
        request_body_mode=body,
        request_trailer_mode=trailers,
        response_header_mode=response_headers,
        response_body_mode=Mode.NONE,
        response_trailer_mode=Mode.SKIP,
    )


# The picker, buffered (its default) and full duplex (route override): it reads the body as it streams in and
# answers the headers once it has all of it; Envoy requires trailers in full-duplex mode (the end of a body the
# request ends without).
PICKER_MODES = {
    "BUFFERED": _mode(Mode.BUFFERED),
    "FULL_DUPLEX_STREAMED": _mode(Mode.FULL_DUPLEX_STREAMED, trailers=Mode.SEND),
}
# The buffered picker's mode for a request whose answer it has nothing to do with (no response plugin, no scores
# asked for): its pick turns the response phase off, so a pick costs two messages, the headers and the body.
PICKER_MODE_WITHOUT_RESPONSE = _mode(Mode.BUFFERED, response_headers=Mode.SKIP)
# An Endpoint Picker a pool references (the Inference Extension's EPP): everything, bodies in full duplex, as the
# Inference Extension's own Envoy configuration has it. The EPP answers the request headers only once it has the
# whole body (in any other body mode Envoy would wait for that answer before sending the body: a deadlock until the
# message timeout), echoes the response body chunk by chunk (reading usage from it) and finishes a request on the end
# of the response; full duplex needs the trailers (the end of a body the request or response ends without).
REFERENCE_PICKER_MODE = Mode(
    request_header_mode=Mode.SEND,
    request_body_mode=Mode.FULL_DUPLEX_STREAMED,
    request_trailer_mode=Mode.SEND,
    response_header_mode=Mode.SEND,
    response_body_mode=Mode.FULL_DUPLEX_STREAMED,
    response_trailer_mode=Mode.SEND,
)
# The upstream-settings filter: request headers and buffered body; responses are the router filter's.
UPSTREAM_SETTINGS_MODE = _mode(Mode.BUFFERED, response_headers=Mode.SKIP)
# Its mode override for an attempt whose settings touch headers only (a mode override replaces the whole mode).
UPSTREAM_HEADERS_ONLY_MODE = _mode(Mode.NONE, response_headers=Mode.SKIP)
# The same for a cluster with a backend whose answers are translated: their headers, and their body, buffered (an
# event stream is switched to STREAMED at its headers).
UPSTREAM_TRANSLATION_MODE = Mode(
    request_header_mode=Mode.SEND,
    request_body_mode=Mode.BUFFERED,
    request_trailer_mode=Mode.SKIP,
    response_header_mode=Mode.SEND,
    response_body_mode=Mode.BUFFERED,
    response_trailer_mode=Mode.SKIP,
)


def pack(message: Message) -> any_pb2.Any:
    """Deterministic, so a map inside (a Struct, say) packs to the same bytes in every process: versions are hashes."""
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return packed


# Resource names start with the kind of the object they come from: `<kind>/<namespace>/<name>[/...]`, so an error
# Envoy reports about a resource can be put on that object.
_KINDS_BY_PREFIX = {
    "aiservicebackend": "AIServiceBackend",
    "backend": "Backend",
    "service": "Service",
    "inferencepool": "InferencePool",
    "httproute": "HTTPRoute",
    "aigatewayroute": "AIGatewayRoute",
}
_OBJECT_IN_TEXT = re.compile(r"\b(" + "|".join(_KINDS_BY_PREFIX) + r")/([a-z0-9][a-z0-9.-]*)/([a-z0-9][a-z0-9.-]*)")


def objects_named_in(text: str) -> list[ObjectRef]:
    """Every object whose resource name appears in `text`, in order of appearance."""
    found: list[ObjectRef] = []
    for match in _OBJECT_IN_TEXT.finditer(text):
        named = ObjectRef(_KINDS_BY_PREFIX[match.group(1)], match.group(2), match.group(3))
        if named not in found:
            found.append(named)
    return found
