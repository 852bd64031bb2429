"""ListenerIR -> Listener with an HTTP connection manager: RDS for routes, and the filter chain of docs/architecture.md.

Filter order: strip client-supplied internal headers -> model router ext_proc (AI routes) -> picker ext_proc
(InferencePool routes) -> router. Both ext_proc filters are disabled here and enabled per route, so plain
routes never pay for a gRPC round trip. Listeners with such routes also get JSON local replies and, with AI
routes, an access log (`ai_listener`).
"""

from __future__ import annotations

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from translators.ir import ListenerIR, PickerBodyMode, TranslateOptions
from translators.xds.ai_listener import ai_access_log, local_reply_config
from translators.xds.clusters import ads_config_source
from translators.xds.extproc import QUICK_MESSAGE_TIMEOUT, extproc_config
from translators.xds.names import (
    BACKEND_ATTRIBUTE,
    CLUSTER_ATTRIBUTE,
    INTERNAL_HEADER_PREFIXES,
    LB_METADATA_NAMESPACE,
    MODEL_ROUTER_FILTER,
    PICKER_FILTER,
    PICKER_MESSAGE_TIMEOUT_SECONDS,
    PICKER_MODES,
    ROUTER_FILTER,
    ROUTER_GATEWAY_METADATA,
    ROUTER_METADATA_NAMESPACE,
    ROUTER_MODE,
    STRIP_HEADERS_FILTER,
    SUBSET_HINT_NAMESPACE,
    pack,
)


def _strip_internal_headers() -> hcm_pb2.HttpFilter:
    mutations = [
        mutation_rules_pb2.HeaderMutation(
            remove_on_match=mutation_rules_pb2.HeaderMutation.RemoveOnMatch(
                key_matcher=string_pb2.StringMatcher(prefix=prefix)
            )
        )
        for prefix in INTERNAL_HEADER_PREFIXES
    ]
    config = header_mutation_pb2.HeaderMutation(mutations=header_mutation_pb2.Mutations(request_mutations=mutations))
    return hcm_pb2.HttpFilter(name=STRIP_HEADERS_FILTER, typed_config=pack(config))


def model_router_filter(gateway: str) -> hcm_pb2.HttpFilter:
    """Reads `model` from the buffered body and sets x-ai-eg-model; the response mode is chosen per response.

    The stream's gRPC metadata names the Gateway (its model list answers /v1/models); the response attributes
    name the backend that answered, for the token metrics.
    """
    config = extproc_config(
        ROUTER_MODE, [ROUTER_METADATA_NAMESPACE], [], allow_mode_override=True, message_timeout=QUICK_MESSAGE_TIMEOUT
    )
    config.grpc_service.initial_metadata.append(base_pb2.HeaderValue(key=ROUTER_GATEWAY_METADATA, value=gateway))
    config.response_attributes.extend([CLUSTER_ATTRIBUTE, BACKEND_ATTRIBUTE])
    return hcm_pb2.HttpFilter(name=MODEL_ROUTER_FILTER, typed_config=pack(config), disabled=True)


def picker_filter() -> hcm_pb2.HttpFilter:
    """Picks the pool endpoint; the route names the pool (gRPC metadata), may fail open and may stream the body.

    It may write `envoy.lb` dynamic metadata (the pick). It receives `envoy.lb.subset_hint` (endpoints another
    filter allows) and, with the response headers, `envoy.lb` (the endpoint that served, which the pool cluster's
    override_host policy writes there).
    """
    config = extproc_config(
        PICKER_MODES[PickerBodyMode.BUFFERED],
        [LB_METADATA_NAMESPACE],
        [LB_METADATA_NAMESPACE, SUBSET_HINT_NAMESPACE],
        allow_mode_override=False,
        message_timeout=duration_pb2.Duration(seconds=PICKER_MESSAGE_TIMEOUT_SECONDS),
    )
    return hcm_pb2.HttpFilter(name=PICKER_FILTER, typed_config=pack(config), disabled=True)


def _router() -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=pack(router_pb2.Router()))


def http_filters(listener: ListenerIR, gateway: str) -> list[hcm_pb2.HttpFilter]:
    filters = [_strip_internal_headers()]
    if uses_model_router(listener):
        filters.append(model_router_filter(gateway))
    if listener.runs_picker:
        filters.append(picker_filter())
    filters.append(_router())
    return filters


def uses_extproc(listener: ListenerIR) -> bool:
    return any(r.model_router or r.pool is not None for r in listener.routes)


def uses_model_router(listener: ListenerIR) -> bool:
    return any(r.model_router for r in listener.routes)


def listener(ir: ListenerIR, options: TranslateOptions, gateway: str) -> listener_pb2.Listener:
    """`gateway` is the "<ns>/<name>" of the Gateway the listener belongs to."""
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=ir.name.replace("/", "_"),
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=ads_config_source(), route_config_name=ir.name),
        http_filters=http_filters(ir, gateway),
        use_remote_address=wrappers_pb2.BoolValue(value=True),
        normalize_path=wrappers_pb2.BoolValue(value=True),
        merge_slashes=True,
        strip_any_host_port=True,
    )
    if uses_extproc(ir):
        manager.local_reply_config.CopyFrom(local_reply_config(options.buffer_limit_bytes))
    if uses_model_router(ir):
        manager.access_log.append(ai_access_log())
    network_filter = listener_components_pb2.Filter(
        name="envoy.filters.network.http_connection_manager", typed_config=pack(manager)
    )
    return listener_pb2.Listener(
        name=ir.name,
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=ir.address, port_value=ir.port)),
        per_connection_buffer_limit_bytes=wrappers_pb2.UInt32Value(value=options.buffer_limit_bytes),
        filter_chains=[listener_components_pb2.FilterChain(filters=[network_filter])],
    )
