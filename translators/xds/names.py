"""Names shared by the generated configuration and the ext_proc services that read it."""

from google.protobuf import any_pb2
from google.protobuf.message import Message

STRIP_HEADERS_FILTER = "envoy.filters.http.header_mutation/strip-internal-headers"
MODEL_ROUTER_FILTER = "envoy.filters.http.ext_proc/model-router"
PICKER_FILTER = "envoy.filters.http.ext_proc/endpoint-picker"
ROUTER_FILTER = "envoy.filters.http.router"
EXTPROC_CLUSTER = "xds-server/extproc"

# gRPC metadata on the picker's ext_proc stream naming the pool ("<ns>/<name>") the route targets.
PICKER_POOL_METADATA = "x-inference-pool"
DESTINATION_HEADER = "x-gateway-destination-endpoint"
LB_METADATA_NAMESPACE = "envoy.lb"
# xDS metadata (routes, endpoints) read back through ext_proc request attributes.
XDS_METADATA_NAMESPACE = "aigateway.envoy.io"
# Dynamic metadata the model router writes for access logs.
ROUTER_METADATA_NAMESPACE = "io.envoy.ai_gateway"
# Client-supplied headers that could steer routing; removed before any filter reads them.
INTERNAL_HEADER_PREFIXES = ("x-ai-eg-", DESTINATION_HEADER)


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed
