"""Names shared by the generated configuration and the ext_proc services that read it."""

import re

from google.protobuf import any_pb2
from google.protobuf.message import Message

# The four xDS resource types a Gateway's snapshot holds.
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

STRIP_HEADERS_FILTER = "envoy.filters.http.header_mutation/strip-internal-headers"
MODEL_ROUTER_FILTER = "envoy.filters.http.ext_proc/model-router"
PICKER_FILTER = "envoy.filters.http.ext_proc/endpoint-picker"
ROUTER_FILTER = "envoy.filters.http.router"
# A cluster's upstream filters: the backend settings ext_proc (per attempt), then the codec Envoy requires last.
UPSTREAM_SETTINGS_FILTER = "envoy.filters.http.ext_proc/upstream-settings"
UPSTREAM_CODEC_FILTER = "envoy.filters.http.upstream_codec"
EXTPROC_CLUSTER = "xds-server/extproc"

# gRPC metadata on the picker's ext_proc stream naming the pool ("<ns>/<name>") the route targets.
PICKER_POOL_METADATA = "x-inference-pool"
# gRPC metadata on the model router's ext_proc stream naming the Gateway ("<ns>/<name>") of the listener.
ROUTER_GATEWAY_METADATA = "x-ai-eg-gateway"
# gRPC metadata marking the upstream-settings filter's streams (one per attempt).
UPSTREAM_SETTINGS_METADATA = "x-ai-eg-upstream-settings"
DESTINATION_HEADER = "x-gateway-destination-endpoint"
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
# xDS metadata (routes, endpoints) read back through ext_proc request attributes.
XDS_METADATA_NAMESPACE = "aigateway.envoy.io"
# Dynamic metadata the model router writes for access logs.
ROUTER_METADATA_NAMESPACE = "io.envoy.ai_gateway"
# Ext_proc response attributes (CEL) the model router asks for: which backend answered, through which cluster.
# Endpoint metadata names the backend even inside a weighted cluster; the cluster alone is the fallback.
BACKEND_ATTRIBUTE = f"xds.upstream_host_metadata.filter_metadata['{XDS_METADATA_NAMESPACE}']['backend']"
CLUSTER_ATTRIBUTE = "xds.cluster_name"
# The rule ("<kind>/<ns>/<name>/rule/<i>") of the route a request took, from the route's metadata.
RULE_ATTRIBUTE = f"xds.route_metadata.filter_metadata['{XDS_METADATA_NAMESPACE}']['rule']"
# Envoy puts ext_proc attributes in ProcessingRequest.attributes under the filter's canonical name.
EXTPROC_ATTRIBUTES_KEY = "envoy.filters.http.ext_proc"
# Client-supplied headers that could steer routing; removed before any filter reads them.
INTERNAL_HEADER_PREFIXES = ("x-ai-eg-", DESTINATION_HEADER)


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


def objects_named_in(text: str) -> list[tuple[str, str, str]]:
    """(kind, namespace, name) of every object whose resource name appears in `text`, in order of appearance."""
    found: list[tuple[str, str, str]] = []
    for match in _OBJECT_IN_TEXT.finditer(text):
        named = (_KINDS_BY_PREFIX[match.group(1)], match.group(2), match.group(3))
        if named not in found:
            found.append(named)
    return found
