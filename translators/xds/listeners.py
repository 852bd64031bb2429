"""ListenerIR -> Listener with an HTTP connection manager: RDS for routes, and the filter chain of docs/architecture.md.

Client-supplied internal headers are removed before any route is matched. Filter order: the AI filter (our dynamic
module: the body's `model` into x-ai-eg-model, then route again; the usage of a JSON answer or an event stream
into metadata), then content length (for chunked bodies), then picker ext_proc (InferencePool routes), then router.
All but the router are disabled here and turned on by the routes
that need them, so plain routes never buffer a body or pay for a gRPC round trip. Listeners with such routes also
get JSON local replies and, with AI routes, an access log on stdout and the usage log (`ai_listener`).
"""

from __future__ import annotations

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import address_pb2, extension_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import (
    header_mutation_pb2 as early_header_mutation_pb2,
)
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from translators.ir import ListenerIR, PickerBodyMode, TranslateOptions
from translators.xds.ai_listener import ai_access_log, local_reply_config
from translators.xds.clusters import ads_config_source
from translators.xds.extproc import extproc_config
from translators.xds.listener_tls import tls_filter_chain_parts, tls_inspector
from translators.xds.model import ai_filter_config, content_length_config
from translators.xds.names import (
    AI_FILTER,
    CONTENT_LENGTH_FILTER,
    INTERNAL_HEADER_PREFIXES,
    LB_METADATA_NAMESPACE,
    PICKER_FILTER,
    PICKER_MESSAGE_TIMEOUT_SECONDS,
    PICKER_MODES,
    ROUTER_FILTER,
    STRIP_HEADERS_EXTENSION,
    SUBSET_HINT_NAMESPACE,
    pack,
)


def _strip_internal_headers() -> extension_pb2.TypedExtensionConfig:
    """Client-supplied internal headers, removed before Envoy matches a route (an HTTP filter would be too late:
    the route a request starts on is chosen before the first filter runs, so a client's x-ai-eg-model would pick
    it)."""
    mutations = [
        mutation_rules_pb2.HeaderMutation(
            remove_on_match=mutation_rules_pb2.HeaderMutation.RemoveOnMatch(
                key_matcher=string_pb2.StringMatcher(prefix=prefix)
            )
        )
        for prefix in INTERNAL_HEADER_PREFIXES
    ]
    config = early_header_mutation_pb2.HeaderMutation(mutations=mutations)
    return extension_pb2.TypedExtensionConfig(name=STRIP_HEADERS_EXTENSION, typed_config=pack(config))


def ai_filter() -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(name=AI_FILTER, typed_config=pack(ai_filter_config()), disabled=True)


def content_length_filter() -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(name=CONTENT_LENGTH_FILTER, typed_config=pack(content_length_config()), disabled=True)


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
        allow_mode_override=True,  # a pick whose answer needs nothing from the picker turns the response phase off
        message_timeout=duration_pb2.Duration(seconds=PICKER_MESSAGE_TIMEOUT_SECONDS),
    )
    return hcm_pb2.HttpFilter(name=PICKER_FILTER, typed_config=pack(config), disabled=True)


def _router() -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=pack(router_pb2.Router()))


def http_filters(listener: ListenerIR) -> list[hcm_pb2.HttpFilter]:
    filters = []
    if listener.routes_by_model:
        filters += [
            ai_filter(),
            content_length_filter(),
        ]
    if listener.runs_picker:
        filters.append(picker_filter())
    filters.append(_router())
    return filters


def uses_extproc(listener: ListenerIR) -> bool:
    return listener.routes_by_model or listener.runs_picker


def listener(ir: ListenerIR, options: TranslateOptions) -> listener_pb2.Listener:
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=ir.name.replace("/", "_"),
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=ads_config_source(), route_config_name=ir.name),
        http_filters=http_filters(ir),
        early_header_mutation_extensions=[_strip_internal_headers()],
        use_remote_address=wrappers_pb2.BoolValue(value=True),
        normalize_path=wrappers_pb2.BoolValue(value=True),
        merge_slashes=True,
        # Slow clients (one header byte, or one body byte, every few seconds) are cut off; answers are not bounded.
        request_headers_timeout=duration_pb2.Duration(seconds=options.request_headers_timeout_seconds),
        request_timeout=duration_pb2.Duration(seconds=options.request_timeout_seconds),
        stream_idle_timeout=duration_pb2.Duration(seconds=options.stream_idle_timeout_seconds),
        # HTTP/1.0 clients (load balancers' health checks, old tools) are served, not answered 426.
        http_protocol_options=protocol_pb2.Http1ProtocolOptions(accept_http_10=True),
    )
    if uses_extproc(ir):
        manager.local_reply_config.CopyFrom(local_reply_config(options.buffer_limit_bytes))
    if ir.routes_by_model:
        manager.access_log.append(ai_access_log())
    network_filter = listener_components_pb2.Filter(
        name="envoy.filters.network.http_connection_manager", typed_config=pack(manager)
    )
    built = listener_pb2.Listener(
        name=ir.name,
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=ir.address, port_value=ir.port)),
        per_connection_buffer_limit_bytes=wrappers_pb2.UInt32Value(value=options.buffer_limit_bytes),
        # No SO_REUSEPORT: a port another process (or another Gateway's Envoy) holds is a bind error, which Envoy
        # rejects and the Gateway's status says, instead of a second socket sharing the traffic with the first.
        enable_reuse_port=wrappers_pb2.BoolValue(value=False),
    )
    if not ir.tls:
        built.filter_chains.append(listener_components_pb2.FilterChain(filters=[network_filter]))
        return built
    # HTTPS: one filter chain per Gateway listener (SNI), all with the same routes (the Host header picks among them).
    built.listener_filters.append(tls_inspector())
    for chain in ir.tls:
        match, socket = tls_filter_chain_parts(chain)
        built.filter_chains.append(
            listener_components_pb2.FilterChain(
                filter_chain_match=match, filters=[network_filter], transport_socket=socket
            )
        )
    return built
