"""ListenerIR -> RouteConfiguration: virtual hosts, header matches, forward and direct-response actions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from functools import lru_cache
from itertools import accumulate, chain
from operator import add, attrgetter
from typing import NamedTuple

from envoy.config.core.v3 import base_pb2, grpc_service_pb2, substitution_format_string_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import duration_pb2, struct_pb2, wrappers_pb2
from google.protobuf.message import Message

from translators.ir import (
    AiRole,
    DirectAction,
    EndpointPickerIR,
    ForwardAction,
    HeaderEditsIR,
    HeaderMatchIR,
    HeaderMatchKind,
    JsonReply,
    ListenerIR,
    ObjectRef,
    PathKind,
    PathRewriteKind,
    PickerBodyMode,
    PoolRouteIR,
    RedirectAction,
    RouteIR,
)
from translators.xds.memo import Memo
from translators.xds.model import (
    ai_filter_route_config,
    content_length_route_config,
)
from translators.xds.names import (
    AI_FILTER,
    CLUSTER_TYPE,
    CONTENT_LENGTH_FILTER,
    PICKER_FILTER,
    PICKER_MODES,
    PICKER_POOL_METADATA,
    REFERENCE_PICKER_MODE,
    XDS_METADATA_NAMESPACE,
    pack,
)
from translators.xds.serialized import SerializedResource, field_header

# When a rule's backend fails, its lower-priority backends take the request: on a 5xx, a reset or refused
# connection, and on 429 (the provider's rate limit, the commonest reason to fall back between LLM providers).
FALLBACK_RETRY_ON = "5xx,reset,connect-failure,retriable-status-codes"
FALLBACK_STATUS_CODES = (429,)
PREVIOUS_PRIORITIES = "envoy.retry_priorities.previous_priorities"
POOL_RETRY_ON = "connect-failure,refused-stream,reset"
POOL_RETRIES = 2  # the picker's fallback endpoints (scheduler.FALLBACK_ENDPOINTS)
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
# How often a retry's load balancer may draw again to find a pod not tried yet (Envoy's draws are cheap; a pool of
# a few pods with one or two just gone needs only a few).
POOL_HOST_SELECTION_ATTEMPTS = 5


def _duration(ms: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def _string_match(value: str, regex: bool) -> string_pb2.StringMatcher:
    if regex:
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=value))
    return string_pb2.StringMatcher(exact=value)


def _header(match: HeaderMatchIR) -> route_components_pb2.HeaderMatcher:
    built = route_components_pb2.HeaderMatcher(name=match.name, invert_match=match.invert)
    if match.kind is HeaderMatchKind.PRESENT:
        built.present_match = True
    elif match.kind is HeaderMatchKind.ABSENT:
        built.present_match = False
    else:
        built.string_match.CopyFrom(_string_match(match.value, match.kind is HeaderMatchKind.REGEX))
    return built


def _match(route: RouteIR) -> route_components_pb2.RouteMatch:
    match = route_components_pb2.RouteMatch(headers=[_header(h) for h in route.headers])
    if route.path.kind is PathKind.EXACT:
        match.path = route.path.value
    elif route.path.kind is PathKind.PREFIX:
        # Gateway API prefixes match whole path segments (`/v2` takes `/v2` and `/v2/x`, never `/v2example`), and a
        # trailing `/` in the prefix changes nothing: Envoy's path_separated_prefix, which wants no trailing `/`.
        segments = route.path.value.rstrip("/")
        if segments:
            match.path_separated_prefix = segments
        else:
            match.prefix = "/"
    else:
        match.safe_regex.regex = route.path.value
    if route.method:
        match.headers.append(_header(HeaderMatchIR(":method", route.method)))
    return match


def json_error_body(
    status_message: str, error_type: str, code: str
) -> substitution_format_string_pb2.SubstitutionFormatString:
    """An OpenAI-style error body; Envoy fills in %...% commands and escapes them as JSON."""
    body = struct_pb2.Struct()
    body.update({"error": {"message": status_message, "type": error_type, "code": code}})
    return substitution_format_string_pb2.SubstitutionFormatString(json_format=body)


def _direct(action: DirectAction) -> route_components_pb2.DirectResponseAction:
    return route_components_pb2.DirectResponseAction(
        status=action.status, body_format=json_error_body(action.message, action.error_type, action.code)
    )


def _json_reply(reply: JsonReply) -> route_components_pb2.DirectResponseAction:
    """The document as it is: `%` doubled, as Envoy would read it as the start of a command."""
    body = substitution_format_string_pb2.SubstitutionFormatString(
        text_format_source=base_pb2.DataSource(inline_string=reply.body.replace("%", "%%")),
        content_type="application/json",
    )
    return route_components_pb2.DirectResponseAction(status=reply.status, body_format=body)


def _retry_elsewhere_in_the_pool(policy: route_components_pb2.RetryPolicy) -> None:
    """A pool route: a request whose pod refused or dropped it before answering goes to the picker's next endpoint
    (override_host takes the pick's comma list in order). Not on 5xx: a model server that answered has done the
    work, and its error is the client's to see.

    A picker that names fewer endpoints than there are attempts (the Inference Extension's names one) leaves the
    retries to the cluster's round robin, which knows nothing of what failed: while a pod is deleted and its
    replacement starts, it could draw the pod that just refused. So a retry never goes to a pod already tried."""
    policy.retry_on = POOL_RETRY_ON
    policy.num_retries.value = POOL_RETRIES
    policy.retry_host_predicate.add(name=PREVIOUS_HOSTS).typed_config.CopyFrom(
        pack(previous_hosts_pb2.PreviousHostsPredicate())
    )
    policy.host_selection_retry_max_attempts = POOL_HOST_SELECTION_ATTEMPTS


def _forward(action: ForwardAction) -> route_components_pb2.RouteAction:
    built = route_components_pb2.RouteAction(cluster=action.cluster)
    if action.timeout_ms is not None:
        built.timeout.CopyFrom(_duration(action.timeout_ms))
    if action.per_try_timeout_ms is not None:
        built.retry_policy.per_try_timeout.CopyFrom(_duration(action.per_try_timeout_ms))
    if action.fallback_retries:
        _fall_back(built.retry_policy, action.fallback_retries)
    if action.host_rewrite:
        built.auto_host_rewrite.value = True
    if action.rewrite_hostname is not None:
        built.host_rewrite_literal = action.rewrite_hostname
    if action.rewrite_path is not None and action.rewrite_path.kind is PathRewriteKind.FULL:
        built.regex_rewrite.pattern.regex = "^/.*$"
        built.regex_rewrite.substitution = action.rewrite_path.value
    elif action.rewrite_path is not None:
        built.prefix_rewrite = action.rewrite_path.value
    return built


def _fall_back(policy: route_components_pb2.RetryPolicy, retries: int) -> None:
    """Each retry goes to the next priority: attempted priorities are left out (update_frequency 1), so a failing
    primary is tried once and every fallback backend gets its turn, healthy or not as far as Envoy knows."""
    policy.retry_on = FALLBACK_RETRY_ON
    policy.retriable_status_codes.extend(FALLBACK_STATUS_CODES)
    policy.num_retries.value = retries
    policy.retry_priority.name = PREVIOUS_PRIORITIES
    policy.retry_priority.typed_config.CopyFrom(
        pack(previous_priorities_config_pb2.PreviousPrioritiesConfig(update_frequency=1))
    )


def _enable(config: Message) -> route_components_pb2.FilterConfig:
    """Turns on, for one route, a filter that is disabled at the HTTP connection manager.

    Envoy rejects a FilterConfig without a config, so a route that changes nothing passes empty overrides.
    """
    return route_components_pb2.FilterConfig(config=pack(config))


def _picker_config(pool: PoolRouteIR, picker: EndpointPickerIR | None) -> ext_proc_pb2.ExtProcPerRoute:
    """The embedded picker (`picker` None): the filter's own service and processing mode, which buffers the body
    (FULL_DUPLEX_STREAMED routes override it), told the pool in gRPC metadata. A referenced Endpoint Picker: its own
    cluster, in the mode the Inference Extension's EPP is written for (the route's body mode does not apply)."""
    overrides = ext_proc_pb2.ExtProcOverrides(failure_mode_allow=wrappers_pb2.BoolValue(value=pool.fail_open))
    if picker is not None:
        overrides.grpc_service.envoy_grpc.CopyFrom(
            grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=picker.cluster, authority=picker.authority)
        )
        overrides.processing_mode.CopyFrom(REFERENCE_PICKER_MODE)
        return ext_proc_pb2.ExtProcPerRoute(overrides=overrides)
    overrides.grpc_initial_metadata.append(base_pb2.HeaderValue(key=PICKER_POOL_METADATA, value=pool.pool.key))
    if pool.body_mode is not PickerBodyMode.BUFFERED:
        overrides.processing_mode.CopyFrom(PICKER_MODES[pool.body_mode])
    return ext_proc_pb2.ExtProcPerRoute(overrides=overrides)


def _no_picker(pool: PoolRouteIR, missing: str) -> DirectAction:
    """A pool whose referenced Endpoint Picker does not exist cannot route a request: a 500, as the Inference
    Extension's conformance test InferencePoolInvalidEPPService asks, saying why (as the pool's status does)."""
    message = f"InferencePool {pool.pool.key} has no Endpoint Picker to call: {missing}"
    return DirectAction(500, message, "server_error", "endpoint_picker_missing")


def _extproc_off() -> ext_proc_pb2.ExtProcPerRoute:
    """In the chain (when the route a request starts on), but off when the request ends up here."""
    return ext_proc_pb2.ExtProcPerRoute(disabled=True)


def route(
    ir: RouteIR, picker_in_chain: bool = False, picker: EndpointPickerIR | None = None
) -> route_components_pb2.Route:
    """`picker_in_chain`: the listener runs the picker filter (some route of it goes to a pool). `picker`: the
    Endpoint Picker the route's pool references (reference mode); None, the embedded picker picks.

    Envoy decides which disabled-by-default filters run from the route a request matches when it starts, and each
    filter reads its per-route config when the request reaches it. An AI request starts on the entry route (its
    model header is not set yet): that route turns on the model and usage filters, and puts the picker in the chain
    switched off; the model filter holds the request until it has the body, sets the model header and has Envoy
    match again, so the picker reads the final route's config, which turns it on where it goes to a pool.
    """
    built = route_components_pb2.Route(name=ir.name, match=_match(ir))
    missing = picker.missing if picker is not None else None  # the pool's picker cannot be called: a 500
    if ir.pool is not None and missing is not None:
        built.direct_response.CopyFrom(_direct(_no_picker(ir.pool, missing)))
    elif isinstance(ir.action, DirectAction):
        built.direct_response.CopyFrom(_direct(ir.action))
    elif isinstance(ir.action, JsonReply):
        built.direct_response.CopyFrom(_json_reply(ir.action))
    elif isinstance(ir.action, RedirectAction):
        built.redirect.CopyFrom(_redirect(ir.action))
    else:
        built.route.CopyFrom(_forward(ir.action))
        if ir.pool is not None and not built.route.retry_policy.retry_on:
            _retry_elsewhere_in_the_pool(built.route.retry_policy)
    if ir.ai in (AiRole.ENTRY, AiRole.ENTRY_UNSIZED):
        built.typed_per_filter_config[AI_FILTER].CopyFrom(pack(_enable(ai_filter_route_config())))
    if ir.ai is AiRole.ENTRY_UNSIZED:
        built.typed_per_filter_config[CONTENT_LENGTH_FILTER].CopyFrom(pack(_enable(content_length_route_config())))
    if ir.pool is not None and missing is None:
        built.typed_per_filter_config[PICKER_FILTER].CopyFrom(pack(_enable(_picker_config(ir.pool, picker))))
    elif ir.ai is not None and picker_in_chain:
        built.typed_per_filter_config[PICKER_FILTER].CopyFrom(pack(_enable(_extproc_off())))
    if ir.request_headers is not None:
        built.request_headers_to_add.extend(_header_values(ir.request_headers))
        built.request_headers_to_remove.extend(ir.request_headers.remove)
    if ir.response_headers is not None:
        built.response_headers_to_add.extend(_header_values(ir.response_headers))
        built.response_headers_to_remove.extend(ir.response_headers.remove)
    if ir.rule and isinstance(ir.action, ForwardAction) and ir.action.upstream_phase:  # what that service reads
        built.metadata.filter_metadata[XDS_METADATA_NAMESPACE].update({"rule": ir.rule})
    return built


def _header_values(edits: HeaderEditsIR) -> list[base_pb2.HeaderValueOption]:
    """`set` replaces a header the request has, `add` appends a value to it (or adds it). Envoy reads the values
    as format strings: a literal `%` is written `%%` (else `100%` would be refused, and `%UPSTREAM_HOST%` expanded)."""
    options = [
        (edits.set, base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD),
        (edits.add, base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD),
    ]
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=name, value=value.replace("%", "%%")), append_action=action
        )
        for headers, action in options
        for name, value in headers
    ]


_REDIRECT_CODES = {
    301: route_components_pb2.RedirectAction.MOVED_PERMANENTLY,
    302: route_components_pb2.RedirectAction.FOUND,
    303: route_components_pb2.RedirectAction.SEE_OTHER,
    307: route_components_pb2.RedirectAction.TEMPORARY_REDIRECT,
    308: route_components_pb2.RedirectAction.PERMANENT_REDIRECT,
}
_SCHEME_PORTS = {"http": 80, "https": 443}


def _redirect(action: RedirectAction) -> route_components_pb2.RedirectAction:
    built = route_components_pb2.RedirectAction(response_code=_REDIRECT_CODES[action.status])
    if action.scheme is not None:
        built.scheme_redirect = action.scheme
    if action.hostname is not None:
        built.host_redirect = action.hostname
    # Gateway API: without a port, a new scheme's well-known port (which the Location then leaves out).
    port = action.port if action.port is not None else _SCHEME_PORTS.get(action.scheme or "")
    if port is not None:
        built.port_redirect = port
    if action.path is not None and action.path.kind is PathRewriteKind.FULL:
        built.path_redirect = action.path.value
    elif action.path is not None:
        built.prefix_rewrite = action.path.value
    return built


class _RoutePart(NamedTuple):
    """A route as its RouteConfiguration holds it, kept between builds (Memo.each) to assemble the configuration."""

    entry: bytes  # the route as an entry of VirtualHost.routes: field header and deterministic serialization
    cluster: str  # the cluster it forwards to, "" for none (a direct response, a redirect)


def _part(built: route_components_pb2.Route) -> _RoutePart:
    serialized = built.SerializeToString(deterministic=True)
    entry = field_header(route_components_pb2.VirtualHost.ROUTES_FIELD_NUMBER, len(serialized)) + serialized
    return _RoutePart(entry, built.route.cluster if built.HasField("route") else "")


def _memo_route(
    ir: RouteIR, picker_in_chain: bool, pickers: Mapping[ObjectRef, EndpointPickerIR], memo: Memo
) -> route_components_pb2.Route:
    """The route's pool's Endpoint Picker is part of the key, without its endpoints (EDS carries those, not routes),
    so the EPP's pods coming and going rebuild no route."""
    picker = pickers.get(ir.pool.pool) if ir.pool is not None else None
    picker = replace(picker, endpoints=()) if picker is not None else None
    return memo.get(("route", ir, (picker_in_chain, picker)), lambda: route(ir, picker_in_chain, picker))


# Every field of a RouteConfiguration after its virtual hosts (field 2), whatever its listener: its own encoding.
# Hostnames match without the Host header's port, which the backend still gets as the client sent it.
_CONFIGURATION_TAIL = route_pb2.RouteConfiguration(ignore_port_in_host_matching=True).SerializeToString(
    deterministic=True
)
_VIRTUAL_HOSTS = route_pb2.RouteConfiguration.VIRTUAL_HOSTS_FIELD_NUMBER
_NAME, _DOMAINS, _ROUTES = attrgetter("name"), attrgetter("domains"), attrgetter("routes")
_ENTRY, _CLUSTER = attrgetter("entry"), attrgetter("cluster")


def _virtual_host_head(name_and_domains: tuple[str, tuple[str, ...]]) -> bytes:
    """A virtual host's fields before its routes (field 3): its name and domains."""
    name, domains = name_and_domains
    head: bytes = route_components_pb2.VirtualHost(name=name, domains=domains).SerializeToString(deterministic=True)
    return head


@lru_cache(maxsize=4096)  # many virtual hosts have the same length (one route each, names alike)
def _virtual_host_header(length: int) -> bytes:
    return field_header(_VIRTUAL_HOSTS, length)


def route_configuration(
    listener: ListenerIR, memo: Memo, pickers: Mapping[ObjectRef, EndpointPickerIR] | None = None
) -> SerializedResource[route_pb2.RouteConfiguration]:
    """`pickers`: the Endpoint Picker of each pool in reference mode; a pool not in it uses the embedded one.

    Assembled from the bytes of each route (see serialized.py): a reload that changed one route of 10,000 builds and
    serializes that one, and joins the bytes of the others, which it finds in bulk (Memo.each), as it does each
    virtual host's name and domains (a listener may have a virtual host per hostname)."""
    in_chain, pickers = listener.runs_picker, pickers or {}
    # A route depends on its pool's picker, without the picker's endpoints (see _memo_route): a change of some
    # picker's other fields (its Service appearing, say) builds the listener's routes again, through the memo.
    variant = (in_chain, frozenset((pool, replace(p, endpoints=())) for pool, p in pickers.items()))
    parts = memo.each(
        "route_part", listener.routes, variant, lambda ir: _part(_memo_route(ir, in_chain, pickers, memo))
    )
    hosts = listener.virtual_hosts
    names_and_domains = list(zip(map(_NAME, hosts), map(_DOMAINS, hosts), strict=True))
    heads = memo.each_equal("virtual_host_head", names_and_domains, _virtual_host_head)
    layout = (listener.name, tuple(heads), tuple(map(len, map(_ROUTES, hosts))), tuple(map(_ENTRY, parts)))
    # The same as the last build's (a reload that changed no route of it): the same object, which the snapshot
    # cache then neither hashes nor checks again.
    return memo.get(("route_configuration", layout), lambda: _assembled(*layout, parts))


def _assembled(
    name: str, heads: tuple[bytes, ...], counts: tuple[int, ...], entries: tuple[bytes, ...], parts: list[_RoutePart]
) -> SerializedResource[route_pb2.RouteConfiguration]:
    """The RouteConfiguration's bytes: its name, each virtual host (`counts[i]` routes of `entries` after the
    previous ones') and its other fields. Joined by `map`s in C, as there may be thousands of virtual hosts."""
    ends = list(accumulate(counts))
    routes = list(map(b"".join, map(entries.__getitem__, map(slice, [0, *ends[:-1]], ends))))
    headers = map(_virtual_host_header, map(add, map(len, heads), map(len, routes)))
    virtual_hosts = map(b"".join, zip(headers, heads, routes, strict=True))
    head = route_pb2.RouteConfiguration(name=name).SerializeToString(deterministic=True)
    serialized = b"".join(chain((head,), virtual_hosts, (_CONFIGURATION_TAIL,)))
    clusters = frozenset(map(_CLUSTER, parts)) - {""}
    return SerializedResource(name, serialized, route_pb2.RouteConfiguration, {CLUSTER_TYPE: clusters})
