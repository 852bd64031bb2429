"""Resources -> IR: Gateways, their listeners, the routes attached to them and the clusters they use.

Deterministic by construction: every collection is walked in key order, never in document order, and route
precedence follows the Gateway API rules with the route's namespace/name as the final tie-breaker.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from translators.backends import BackendResolver, Unresolved, WeightedCluster, ai_backend_id, combine
from translators.hostnames import effective_hostnames
from translators.ir import (
    BackendSettingsIR,
    ClusterIR,
    Condition,
    ConditionStatus,
    DirectAction,
    Discovery,
    ForwardAction,
    GatewayIR,
    HeaderMatchIR,
    ListenerIR,
    ModelIR,
    ObjectRef,
    ObjectStatus,
    PathKind,
    PathMatchIR,
    PickerBodyMode,
    PoolRouteIR,
    RouteIR,
    TranslateOptions,
    Translation,
    VirtualHostIR,
)
from translators.loader import ResourceSet
from translators.resources import (
    AIGatewayRoute,
    Gateway,
    GatewayClass,
    HTTPRoute,
    InferencePool,
    Namespace,
    Resource,
    parse_duration_ms,
)
from translators.resources.aigateway import AIGatewayRouteBackendRef
from translators.resources.gateway_api import (
    GATEWAY_API_GROUP,
    HeaderMatch,
    HTTPBackendRef,
    Listener,
    ParentReference,
)
from translators.resources.inference import INFERENCE_GROUP
from translators.upstream import UpstreamSettings, isolate_attempts
from translators.xds.names import MODEL_HEADER

# GatewayClass controllers this project serves: Envoy Gateway's (the tutorial uses it) and its own.
CONTROLLER_NAMES = frozenset({"gateway.envoyproxy.io/gatewayclass-controller", "xds-server.dev/gateway-controller"})
AI_DEFAULT_TIMEOUT_MS = 60_000
# On an HTTPRoute or AIGatewayRoute: how the picker of its InferencePool rules gets the request body.
PICKER_BODY_MODE_ANNOTATION = "xds-server.io/picker-body-mode"
PICKER_BODY_MODE_CONDITION = "xds-server.io/PickerBodyMode"

Route = HTTPRoute | AIGatewayRoute
# A route placed on a virtual host: (Gateway listener name, precedence key, route).
_Entry = tuple[str, tuple[object, ...], RouteIR]


@dataclass(frozen=True)
class _RuleRoutes:
    """The Envoy routes one rule produces (one per match), with their precedence keys, and its clusters."""

    routes: tuple[tuple[tuple[object, ...], RouteIR], ...]
    clusters: tuple[ClusterIR, ...]
    settings: tuple[BackendSettingsIR, ...] = ()


@dataclass
class _StatusBook:
    conditions: dict[ObjectRef, list[Condition]] = field(default_factory=lambda: defaultdict(list))

    def report(self, obj: Resource, type_: str, ok: bool, reason: str, message: str, parent: str = "") -> None:
        status = ConditionStatus.TRUE if ok else ConditionStatus.FALSE
        self.conditions[_ref(obj)].append(Condition(type_, status, reason, message, parent))

    def has(self, obj: Resource, type_: str) -> bool:
        return any(c.type == type_ for c in self.conditions.get(_ref(obj), []))

    def statuses(self) -> tuple[ObjectStatus, ...]:
        return tuple(ObjectStatus(ref, _merge(conds)) for ref, conds in sorted(self.conditions.items()))


def _ref(obj: Resource) -> ObjectRef:
    return ObjectRef(obj.kind, obj.namespace, obj.name)


def _merge(conditions: list[Condition]) -> tuple[Condition, ...]:
    """One condition per type and parent, as Kubernetes has it: any False wins and carries every False message."""
    grouped: dict[tuple[str, str], list[Condition]] = {}
    for condition in conditions:
        grouped.setdefault((condition.type, condition.parent), []).append(condition)
    merged = []
    for same in grouped.values():
        failed = [c for c in same if c.status is ConditionStatus.FALSE]
        if failed:
            message = "; ".join(dict.fromkeys(c.message for c in failed))
            merged.append(Condition(failed[0].type, ConditionStatus.FALSE, failed[0].reason, message, failed[0].parent))
        else:
            merged.append(same[0])
    return tuple(merged)


def _headers(matches: list[HeaderMatch]) -> tuple[HeaderMatchIR, ...]:
    return tuple(HeaderMatchIR(h.name.lower(), h.value, h.type == "RegularExpression") for h in matches)


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
        route.metadata.creation_timestamp or "",
        route.namespace,
        route.name,
        rule,
        match,
    )


class _Translator:
    def __init__(self, resources: ResourceSet, options: TranslateOptions) -> None:
        self.resources = resources
        self.options = options
        self.book = _StatusBook()
        self.upstream = UpstreamSettings(resources, self.book.report)
        self.backends = BackendResolver(resources, options.resolve_cluster_local, frozenset(self.upstream.backends))
        self.namespace_labels = {ns.name: ns.metadata.labels for ns in resources.of_kind(Namespace)}
        self.body_modes: dict[ObjectRef, PickerBodyMode] = {}
        self.created: dict[str, int] = {}  # rule id -> its route's creation time, for /v1/models

    # --- routes -> Envoy routes, computed once per route and shared by every Gateway it attaches to ---

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

    def _rule_routes(self, route: Route, rule_index: int) -> _RuleRoutes:
        is_ai = isinstance(route, AIGatewayRoute)
        rule = route.spec.rules[rule_index]
        rule_id = f"{route.kind.lower()}/{route.namespace}/{route.name}/rule/{rule_index}"
        timeouts = rule.timeouts
        timeout_ms = parse_duration_ms(timeouts.request) if timeouts and timeouts.request else None
        if is_ai and timeout_ms is None:
            timeout_ms = AI_DEFAULT_TIMEOUT_MS
        per_try_ms = parse_duration_ms(timeouts.backend_request) if timeouts and timeouts.backend_request else None
        self.created[rule_id] = _created(route)
        clusters: tuple[ClusterIR, ...] = ()
        settings: tuple[BackendSettingsIR, ...] = ()
        pool: PoolRouteIR | None = None
        action: ForwardAction | DirectAction
        try:
            if not rule.backend_refs:
                raise Unresolved("BackendNotFound", "the rule has no backendRefs")
            refs = [self._weighted(route, ref) for ref in rule.backend_refs]
            if isinstance(route, AIGatewayRoute):
                ai_refs = self._without_refused(route, rule_index, route.spec.rules[rule_index].backend_refs)
                refs = [refs[i] for i, ref in enumerate(rule.backend_refs) if ref in ai_refs]
                settings = self._settings(route, rule_id, ai_refs)
            action, clusters = self._forward(refs, timeout_ms, per_try_ms)
            balancing = clusters[0].pool
            if balancing is not None:
                pool = PoolRouteIR(balancing.pool, balancing.fail_open, self._body_mode(route))
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
                    headers=headers,
                    method=method,
                    action=action,
                    model_router=is_ai,
                    pool=pool,
                    rule=rule_id,
                ),
            )
            for match_index, (path, headers, method) in enumerate(matches)
        )
        return _RuleRoutes(routes, clusters, settings)

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
            group = ref.group if ref.group is not None else (INFERENCE_GROUP if ref.is_inference_pool else "")
            kind = ref.kind or "AIServiceBackend"
            cluster = self.backends.resolve(route.namespace, group, kind, ref.name, ref.namespace, None)
            return WeightedCluster(cluster, ref.weight, ref.priority)
        cluster = self.backends.resolve(route.namespace, ref.group, ref.kind, ref.name, ref.namespace, ref.port)
        return WeightedCluster(cluster, ref.weight, 0)

    def _body_mode(self, route: Route) -> PickerBodyMode:
        """The route's picker body mode; an invalid annotation is reported once and means the default."""
        key = _ref(route)
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

    # --- attachment of routes to Gateway listeners ---

    def _allows(self, gateway: Gateway, listener: Listener, route: Route) -> bool:
        namespaces = listener.allowed_routes.namespaces
        if namespaces.from_ == "All":
            return True
        if namespaces.from_ == "Same":
            return route.namespace == gateway.namespace
        selector = namespaces.selector
        labels = self.namespace_labels.get(route.namespace)
        return selector is not None and labels is not None and selector.matches(labels)

    def _attach(
        self, gateway: Gateway, route: Route, parent: ParentReference, listeners: list[Listener]
    ) -> list[tuple[Listener, list[str]]]:
        """The listeners a parentRef attaches the route to, each with the route's domains there."""
        parent_name = f"{gateway.namespace}/{gateway.name}" + (f"/{parent.section_name}" if parent.section_name else "")
        candidates = [
            lis for lis in listeners if (parent.section_name in (None, lis.name)) and (parent.port in (None, lis.port))
        ]
        if not candidates:
            self.book.report(
                route, "Accepted", False, "NoMatchingParent", "no listener matches sectionName/port", parent_name
            )
            return []
        allowed = [lis for lis in candidates if self._allows(gateway, lis, route)]
        if not allowed:
            self.book.report(
                route,
                "Accepted",
                False,
                "NotAllowedByListeners",
                f"the listener does not admit routes from namespace {route.namespace}",
                parent_name,
            )
            return []
        attached = [(lis, effective_hostnames(lis.hostname, route.spec.hostnames)) for lis in allowed]
        attached = [(lis, hosts) for lis, hosts in attached if hosts]
        if not attached:
            self.book.report(
                route,
                "Accepted",
                False,
                "NoMatchingListenerHostname",
                "no hostname is shared with the listener",
                parent_name,
            )
            return []
        self.book.report(route, "Accepted", True, "Accepted", "attached to the Gateway", parent_name)
        return attached

    def _gateway_listeners(self, gateway: Gateway) -> list[Listener]:
        usable: list[Listener] = []
        seen: dict[tuple[int, str | None], str] = {}
        for listener in gateway.spec.listeners:
            if listener.protocol != "HTTP":
                self.book.report(
                    gateway,
                    "Accepted",
                    False,
                    "UnsupportedProtocol",
                    f"listener {listener.name}: protocol {listener.protocol} is not supported (HTTP only)",
                )
                continue
            clash = seen.get((listener.port, listener.hostname))
            if clash is not None:
                self.book.report(
                    gateway,
                    "Accepted",
                    False,
                    "HostnameConflict",
                    f"listener {listener.name}: same port and hostname as listener {clash}",
                )
                continue
            seen[(listener.port, listener.hostname)] = listener.name
            usable.append(listener)
        return usable

    def _envoy_port(self, port: int) -> int:
        return port + self.options.privileged_port_offset if port < 1024 else port

    def translate(self) -> Translation:
        classes = {gc.name: gc for gc in self.resources.of_kind(GatewayClass)}
        gateways: list[Gateway] = []
        for gateway in self.resources.of_kind(Gateway):
            gateway_class = classes.get(gateway.spec.gateway_class_name)
            if gateway_class is None:
                self.book.report(
                    gateway,
                    "Accepted",
                    False,
                    "InvalidGatewayClass",
                    f"GatewayClass {gateway.spec.gateway_class_name} not found",
                )
            elif gateway_class.spec.controller_name in CONTROLLER_NAMES:
                gateways.append(gateway)
        routes: list[Route] = [*self.resources.of_kind(AIGatewayRoute), *self.resources.of_kind(HTTPRoute)]
        rule_cache: dict[tuple[str, str, str, int], _RuleRoutes] = {}

        def rules_of(route: Route) -> list[_RuleRoutes]:
            found = []
            for index in range(len(route.spec.rules)):
                key = (route.kind, route.namespace, route.name, index)
                if key not in rule_cache:
                    rule_cache[key] = self._rule_routes(route, index)
                found.append(rule_cache[key])
            return found

        by_gateway: dict[tuple[str, str], list[tuple[Route, ParentReference]]] = defaultdict(list)
        known = {(g.namespace, g.name) for g in gateways}
        for route in routes:
            for parent in route.spec.parent_refs:
                key = (parent.namespace or route.namespace, parent.name)
                if parent.group == GATEWAY_API_GROUP and parent.kind == "Gateway" and key in known:
                    by_gateway[key].append((route, parent))
                else:
                    self.book.report(
                        route,
                        "Accepted",
                        False,
                        "NoMatchingParent",
                        f"Gateway {key[0]}/{key[1]} not found",
                        f"{key[0]}/{key[1]}",
                    )

        gateway_irs = []
        for gateway in gateways:
            listeners = self._gateway_listeners(gateway)
            # (port, domain) -> precedence-keyed routes; Gateway listeners sharing a port share an Envoy listener.
            vhosts: dict[int, dict[str, list[_Entry]]] = defaultdict(dict)
            for listener in listeners:  # a listener with no routes still listens
                vhosts.setdefault(self._envoy_port(listener.port), {})
            clusters: dict[str, ClusterIR] = {}
            for route, parent in by_gateway[(gateway.namespace, gateway.name)]:
                for listener, domains in self._attach(gateway, route, parent, listeners):
                    port_vhosts = vhosts[self._envoy_port(listener.port)]
                    for rule in rules_of(route):
                        for cluster in rule.clusters:
                            clusters[cluster.name] = cluster
                        for domain in domains:
                            port_vhosts.setdefault(domain, []).extend((listener.name, key, r) for key, r in rule.routes)
            gateway_irs.append(self._gateway_ir(gateway, vhosts, clusters))
            self.book.report(gateway, "Accepted", True, "Accepted", "served by this controller")
            self.book.report(gateway, "Programmed", True, "Programmed", f"{len(vhosts)} Envoy listener(s)")
        for route in routes:
            rules_of(route)  # routes attached nowhere still report their unresolved references
        for route in routes:
            if not self.book.has(route, "ResolvedRefs"):
                self.book.report(route, "ResolvedRefs", True, "ResolvedRefs", "every backendRef resolved")
        pools = tuple(self.backends.pool(p) for p in self.resources.of_kind(InferencePool))
        settings = sorted((s for rule in rule_cache.values() for s in rule.settings), key=lambda s: (s.rule, s.backend))
        return Translation(tuple(gateway_irs), self.book.statuses(), pools, tuple(settings))

    def _gateway_ir(
        self, gateway: Gateway, vhosts: dict[int, dict[str, list[_Entry]]], clusters: dict[str, ClusterIR]
    ) -> GatewayIR:
        listeners = []
        for port, domains in sorted(vhosts.items()):
            name = f"{gateway.namespace}/{gateway.name}/{port}"
            virtual_hosts = []
            for domain in sorted(domains):
                vhost_name = f"{name}/{domain}"
                ordered = _virtual_host_routes(domain, domains)
                if any(r.model_router for r in ordered):
                    ordered.append(_route_not_found(vhost_name))
                virtual_hosts.append(VirtualHostIR(vhost_name, (domain,), tuple(ordered), self._models(ordered)))
            listeners.append(ListenerIR(name, self.options.listener_address, port, tuple(virtual_hosts)))
        return GatewayIR(
            gateway.namespace,
            gateway.name,
            tuple(listeners),
            tuple(cluster for _, cluster in sorted(clusters.items())),
        )

    def _models(self, routes: list[RouteIR]) -> tuple[ModelIR, ...]:
        """The models a virtual host names exactly, in route order, once each. Regex matches are not listable."""
        models: dict[str, ModelIR] = {}
        for route in routes:
            if route.model_router:
                for match in route.headers:
                    if match.name == MODEL_HEADER and not match.regex and match.value not in models:
                        models[match.value] = ModelIR(match.value, self.created.get(route.rule, 0))
        return tuple(models.values())


_PATH_KINDS = {"Exact": PathKind.EXACT, "PathPrefix": PathKind.PREFIX, "RegularExpression": PathKind.REGEX}


def _created(route: Route) -> int:
    """The route's creation time in Unix seconds (0 when it has none, or not in RFC 3339)."""
    stamp = route.metadata.creation_timestamp
    try:
        return int(datetime.fromisoformat(stamp).timestamp()) if stamp else 0
    except ValueError:
        return 0


def _covers(wildcard: str, domain: str) -> bool:
    if wildcard == domain:
        return False
    return wildcard == "*" or (wildcard.startswith("*.") and domain.endswith(wildcard[1:]))


def _virtual_host_routes(domain: str, domains: dict[str, list[_Entry]]) -> list[RouteIR]:
    """Routes for requests to `domain`: its own first, then those of wildcard domains that also match it.

    Envoy picks one virtual host per request, while Gateway API merges every route whose hostname matches,
    ranking a more specific hostname first. Only routes of the same Gateway listeners are merged: a request
    belongs to the listener with the most specific hostname, never to its neighbours on the same port.
    """
    own = domains[domain]
    listeners = {listener for listener, _, _ in own}
    covering = sorted((w for w in domains if _covers(w, domain)), key=lambda w: (w == "*", -len(w), w))
    ordered: list[RouteIR] = []
    seen: set[str] = set()
    for source in (domain, *covering):
        entries = [e for e in domains[source] if e[0] in listeners]
        for _, _, route in sorted(entries, key=lambda e: e[1]):
            if route.name not in seen:
                seen.add(route.name)
                ordered.append(route)
    return ordered


def _route_not_found(vhost_name: str) -> RouteIR:
    """Last route of an AI virtual host: the router ext_proc runs here too, then unknown models get a JSON 404."""
    return RouteIR(
        name=f"{vhost_name}/route-not-found",
        path=PathMatchIR(PathKind.PREFIX, "/"),
        headers=(),
        action=DirectAction(
            404,
            f"model '%REQ({MODEL_HEADER})%' is not served by this gateway: no route matches it",
            "invalid_request_error",
            "model_not_found",
        ),
        model_router=True,
    )


def translate(resources: ResourceSet, options: TranslateOptions | None = None) -> Translation:
    """Resources -> one GatewayIR per Gateway this project controls, plus conditions for every object involved."""
    return _Translator(resources, options or TranslateOptions()).translate()
