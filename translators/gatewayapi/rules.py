"""Route rules -> Envoy routes (IR): matches, precedence, backends and their clusters, the picker and the
upstream-phase settings. Computed once per rule and shared by every Gateway the route attaches to."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from translators.backends import BackendResolver, Unresolved, WeightedCluster, ai_backend_id, combine
from translators.gatewayapi.filters import RuleFilters, UnsupportedFilter, rule_filters
from translators.gatewayapi.status import StatusBook, ref_of
from translators.ir import (
    AiRole,
    BackendSettingsIR,
    ClusterIR,
    DirectAction,
    Discovery,
    ForwardAction,
    HeaderMatchIR,
    HeaderMatchKind,
    ObjectRef,
    PathKind,
    PathMatchIR,
    PickerBodyMode,
    PoolRouteIR,
    RedirectAction,
    RouteIR,
)
from translators.resources import AIGatewayRoute, HTTPRoute, parse_duration_ms
from translators.resources.aigateway import AIGATEWAY_GROUP, AIGatewayRouteBackendRef
from translators.resources.gateway_api import HeaderMatch, HTTPBackendRef
from translators.resources.inference import INFERENCE_GROUP
from translators.upstream import UpstreamSettings, isolate_attempts, place_settings
from translators.xds.names import JSON_BODY_HEADER

AI_DEFAULT_TIMEOUT_MS = 60_000
# On an HTTPRoute or AIGatewayRoute: how the picker of its InferencePool rules gets the request body.
PICKER_BODY_MODE_ANNOTATION = "xds-server.io/picker-body-mode"
PICKER_BODY_MODE_CONDITION = "xds-server.io/PickerBodyMode"

Route = HTTPRoute | AIGatewayRoute
# On every AIGatewayRoute match: the body has been read. A request never starts on a model route, so a rule that
# names no model (a default backend) cannot take requests before their body says which model they are for.
BODY_READ = HeaderMatchIR(JSON_BODY_HEADER, kind=HeaderMatchKind.PRESENT)


@dataclass(frozen=True)
class RuleRoutes:
    """The Envoy routes one rule produces (one per match), with their precedence keys, and its clusters."""

    routes: tuple[tuple[tuple[object, ...], RouteIR], ...]
    clusters: tuple[ClusterIR, ...]
    settings: tuple[BackendSettingsIR, ...] = ()


def _headers(matches: list[HeaderMatch]) -> tuple[HeaderMatchIR, ...]:
    kinds = {"Exact": HeaderMatchKind.EXACT, "RegularExpression": HeaderMatchKind.REGEX}
    return tuple(HeaderMatchIR(h.name.lower(), h.value, kinds[h.type]) for h in matches)


def _precedence(
    route: Route, path: PathMatchIR, method: str | None, headers: int, rule: int, match: int
) -> tuple[object, ...]:
    """Gateway API precedence: exact path, longer prefix, method, more headers; then the route's identity."""
    path_rank = {PathKind.EXACT: 0, PathKind.PREFIX: 1, PathKind.REGEX: 2}[path.kind]
    return (
        path_rank,
        -len(path.value),
        method is None,
        -headers,
        *route.seniority,
        rule,
        match,
    )


# An AIGatewayRoute backendRef without a group: the group of its kind.
_AI_REF_GROUPS = {"AIServiceBackend": AIGATEWAY_GROUP, "InferencePool": INFERENCE_GROUP}
_PATH_KINDS = {"Exact": PathKind.EXACT, "PathPrefix": PathKind.PREFIX, "RegularExpression": PathKind.REGEX}


def created_of(route: Route) -> int:
    """The route's creation time in Unix seconds (0 when it has none, or not in RFC 3339)."""
    stamp = route.metadata.creation_timestamp
    try:
        return int(datetime.fromisoformat(stamp).timestamp()) if stamp else 0
    except ValueError:
        return 0


def rule_id_of(route: Route, index: int) -> str:
    """`<kind>/<ns>/<name>/rule/<index>`: how routes, settings and statuses name a rule."""
    return f"{route.kind.lower()}/{route.namespace}/{route.name}/rule/{index}"


class RuleTranslator:
    def __init__(self, book: StatusBook, upstream: UpstreamSettings, backends: BackendResolver) -> None:
        self.book = book
        self.upstream = upstream
        self.backends = backends
        self.body_modes: dict[ObjectRef, PickerBodyMode] = {}
        self.created: dict[str, int] = {}  # rule id -> its route's creation time, for /v1/models

    @staticmethod
    def _forward(
        refs: list[WeightedCluster], timeout_ms: int | None, per_try_ms: int | None
    ) -> tuple[ForwardAction, tuple[ClusterIR, ...]]:
        cluster = combine(refs)
        action = ForwardAction(
            cluster.name,
            timeout_ms,
            per_try_ms,
            host_rewrite=cluster.discovery is Discovery.STRICT_DNS,
            fallback_retries=max((g.priority for g in cluster.groups), default=0),
        )
        return action, (cluster,)

    def rule_routes(self, route: Route, rule_index: int) -> RuleRoutes:
        is_ai = isinstance(route, AIGatewayRoute)
        rule = route.spec.rules[rule_index]
        rule_id = rule_id_of(route, rule_index)
        timeouts = rule.timeouts
        timeout_ms = parse_duration_ms(timeouts.request) if timeouts and timeouts.request else None
        if is_ai and timeout_ms is None:
            timeout_ms = AI_DEFAULT_TIMEOUT_MS
        per_try_ms = parse_duration_ms(timeouts.backend_request) if timeouts and timeouts.backend_request else None
        self.created[rule_id] = created_of(route)
        clusters: tuple[ClusterIR, ...] = ()
        settings: tuple[BackendSettingsIR, ...] = ()
        pool: PoolRouteIR | None = None
        action: ForwardAction | DirectAction | RedirectAction
        filters = RuleFilters()
        try:
            if isinstance(route, HTTPRoute):
                filters = rule_filters(route.spec.rules[rule_index])
            if filters.redirect is not None:
                action = filters.redirect  # Envoy answers: the rule's backends are never called
            elif not rule.backend_refs:
                # Valid, and nothing to resolve: Gateway API answers such a rule's requests with a 500.
                action = DirectAction(500, f"{rule_id} has no backendRefs", "server_error", "backend_unavailable")
            else:
                refs = [self._weighted(route, ref) for ref in rule.backend_refs]
                if isinstance(route, AIGatewayRoute):
                    ai_refs = self._without_refused(route, rule_index, route.spec.rules[rule_index].backend_refs)
                    refs = [refs[i] for i, ref in enumerate(rule.backend_refs) if ref in ai_refs]
                    settings = self._settings(route, rule_id, ai_refs)
                action, clusters = self._forward(refs, timeout_ms, per_try_ms)
                if isinstance(route, AIGatewayRoute):
                    placed = place_settings(settings, clusters[0])
                    clusters = (placed.cluster,)
                    action = replace(
                        action, cluster=placed.cluster.name, upstream_phase=placed.cluster.upstream_settings
                    )
                    filters = replace(filters, request_headers=placed.headers)
                if filters.rewrite_hostname or filters.rewrite_path:
                    action = replace(
                        action, rewrite_hostname=filters.rewrite_hostname, rewrite_path=filters.rewrite_path
                    )
                balancing = clusters[0].pool
                if balancing is not None:
                    pool = PoolRouteIR(balancing.pool, balancing.fail_open, self._body_mode(route))
        except UnsupportedFilter as exc:
            self.book.report(route, "ResolvedRefs", False, "UnsupportedValue", f"rule {rule_index}: {exc}")
            action = DirectAction(500, f"{rule_id} is not served as written", "server_error", "backend_unavailable")
        except Unresolved as exc:
            self.book.report(route, "ResolvedRefs", False, exc.reason, f"rule {rule_index}: {exc.message}")
            # The client learns which rule failed, not why: the reason is in the route's status for the operator.
            action = DirectAction(500, f"{rule_id} has no usable backend", "server_error", "backend_unavailable")
        matches: list[tuple[PathMatchIR, tuple[HeaderMatchIR, ...], str | None]]
        if isinstance(route, AIGatewayRoute):
            matches = [
                (PathMatchIR(PathKind.PREFIX, "/"), _headers(m.headers), None)
                for m in route.spec.rules[rule_index].matches
            ] or [(PathMatchIR(PathKind.PREFIX, "/"), (), None)]
        else:
            matches = [
                (
                    PathMatchIR(_PATH_KINDS[m.path.type], m.path.value),
                    _headers(m.headers),
                    m.method,
                )
                for m in route.spec.rules[rule_index].matches
            ]
        routes = tuple(
            (
                _precedence(route, path, method, len(headers), rule_index, match_index),
                RouteIR(
                    name=f"{rule_id}/match/{match_index}",
                    path=path,
                    headers=(*headers, BODY_READ) if is_ai else headers,
                    method=method,
                    action=action,
                    ai=AiRole.MODEL if is_ai else None,
                    pool=pool,
                    rule=rule_id,
                    request_headers=filters.request_headers,
                    response_headers=filters.response_headers,
                ),
            )
            for match_index, (path, headers, method) in enumerate(matches)
        )
        return RuleRoutes(routes, clusters, settings)

    def _without_refused(
        self, route: AIGatewayRoute, rule_index: int, refs: list[AIGatewayRouteBackendRef]
    ) -> list[AIGatewayRouteBackendRef]:
        """The rule's refs less those whose backend's credentials are unusable, when others remain.

        Envoy does not retry the upstream phase's refusal of such a backend, so left in, it would stop the rule from
        falling back past it. A rule with no other backend keeps it, and refuses its requests with the reason.
        """
        usable = [
            r for r in refs if r.is_inference_pool or not self.upstream.refused(r.namespace or route.namespace, r.name)
        ]
        if usable and len(usable) < len(refs):
            for ref in refs:
                if ref not in usable:
                    message = f"AIServiceBackend {ref.name} left out: its BackendSecurityPolicy is not usable"
                    self.book.report(route, "ResolvedRefs", False, "RefNotPermitted", f"rule {rule_index}: {message}")
            return usable
        return refs

    def _settings(
        self, route: AIGatewayRoute, rule_id: str, refs: list[AIGatewayRouteBackendRef]
    ) -> tuple[BackendSettingsIR, ...]:
        """The upstream-phase settings of the rule's AIServiceBackends (the first ref wins a repeated backend)."""
        backends: dict[str, None] = {}
        found: dict[str, BackendSettingsIR] = {}
        for ref in refs:
            if ref.is_inference_pool or ref.weight == 0:
                continue
            namespace = ref.namespace or route.namespace
            backends.setdefault(ai_backend_id(namespace, ref.name))
            settings = self.upstream.settings(rule_id, namespace, ref)
            if settings is not None:
                found.setdefault(settings.backend, settings)
        return isolate_attempts(rule_id, list(backends), found)

    def _weighted(self, route: Route, ref: AIGatewayRouteBackendRef | HTTPBackendRef) -> WeightedCluster:
        if isinstance(ref, AIGatewayRouteBackendRef):
            kind = ref.kind or "AIServiceBackend"
            group = ref.group if ref.group is not None else _AI_REF_GROUPS.get(kind, "")
            cluster = self.backends.resolve(route, group, kind, ref.name, ref.namespace, None)
            return WeightedCluster(cluster, ref.weight, ref.priority)
        cluster = self.backends.resolve(route, ref.group, ref.kind, ref.name, ref.namespace, ref.port)
        return WeightedCluster(cluster, ref.weight, 0)

    def _body_mode(self, route: Route) -> PickerBodyMode:
        """The route's picker body mode; an invalid annotation is reported once and means the default."""
        key = ref_of(route)
        if key not in self.body_modes:
            value = route.metadata.annotations.get(PICKER_BODY_MODE_ANNOTATION, PickerBodyMode.BUFFERED)
            if value not in set(PickerBodyMode):
                self.book.report(
                    route,
                    PICKER_BODY_MODE_CONDITION,
                    False,
                    "InvalidAnnotation",
                    f"annotation {PICKER_BODY_MODE_ANNOTATION}: {value!r} is not one of "
                    f"{', '.join(PickerBodyMode)}; using {PickerBodyMode.BUFFERED}",
                )
                value = PickerBodyMode.BUFFERED
            self.body_modes[key] = PickerBodyMode(value)
        return self.body_modes[key]
