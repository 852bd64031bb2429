"""Resources -> IR: Gateways, their listeners, the routes attached to them and the clusters they use.

Deterministic by construction: every collection is walked in key order, never in document order, and route
precedence follows the Gateway API rules with the route's namespace/name as the final tie-breaker.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from translators.backends import BackendResolver, ReferenceGrants
from translators.gatewayapi.assembly import DomainRoutes, match_key
from translators.gatewayapi.attachment import Attachment, parent_ref
from translators.gatewayapi.incremental import GatewayKey, Placement, RouteFragment, TranslationCache, routes_in_order
from translators.gatewayapi.listener_tls import ListenerTls
from translators.gatewayapi.model_routes import guarded_routes, trailing_routes
from translators.gatewayapi.rules import Route, RuleRoutes, RuleTranslator, created_of, rule_id_of
from translators.gatewayapi.status import StatusBook, condition, ref_of
from translators.gatewayapi.unsupported import report_unsupported
from translators.gatewayapi.verdicts import Verdicts
from translators.ir import (
    AiRole,
    CertificateIR,
    ClusterIR,
    DirectAction,
    GatewayIR,
    HeaderMatchKind,
    ListenerIR,
    ModelIR,
    ObjectRef,
    ParentRefIR,
    RouteIR,
    TlsChainIR,
    TranslateOptions,
    Translation,
    VirtualHostIR,
)
from translators.loader import ResourceSet
from translators.resources import (
    Gateway,
    GatewayClass,
    HTTPRoute,
    InferencePool,
    Namespace,
)
from translators.resources.gateway_api import GATEWAY_API_GROUP, Listener, ParentReference
from translators.tracking import Reads
from translators.upstream import UpstreamSettings
from translators.xds.names import MODEL_HEADER

# A Gateway's TLS: the filter chains of each Envoy port, and the certificates they present by name.
_Tls = tuple[dict[int, list[TlsChainIR]], dict[str, CertificateIR]]


class _Translator:
    def __init__(self, resources: ResourceSet, options: TranslateOptions, cache: TranslationCache) -> None:
        cache.start(resources, options)
        self.cache = cache
        self.resources = resources = resources.tracked()
        assert resources.tracker is not None
        self.tracker = resources.tracker
        self.options = options
        self.book = StatusBook()
        grants = ReferenceGrants(resources)
        self.backends = BackendResolver(resources, options.resolve_cluster_local, grants, options.endpoint_picker)
        # Settings first: where each credential would go (plain HTTP to loopback only, unless TLS) needs the backends.
        upstream = UpstreamSettings(resources, self.book.report, grants, self.backends)
        cache.shared_value("upstream settings", upstream.summary())
        self.backends.upstream_backends = frozenset(upstream.backends)
        self.rules = RuleTranslator(self.book, upstream, self.backends)
        namespace_labels = {ns.name: ns.metadata.labels for ns in resources.of_kind(Namespace)}
        self.attachment = Attachment(self.book, namespace_labels, ListenerTls(resources, grants))
        self.verdicts = Verdicts(self.book, resources, self.backends)
        self._rule_routes: Mapping[str, Route] = {}  # rule id -> the route it belongs to
        self._shadowed: set[tuple[str, str]] = set()  # (rule id, domain) already reported
        self._shadow_messages: dict[tuple[str, str, str], tuple[Route, list[str]]] = {}  # by route

    def translate(self) -> Translation:
        gateways, unserved = self._gateways()
        listeners = {(g.namespace, g.name): self.attachment.gateway_listeners(g) for g in gateways}
        context = _RouteContext(gateways, unserved, listeners, self.attachment.unserved)
        self.tracker.context_done()  # what follows the routes is done again every time
        pending = self.cache.pending(self.resources)
        for route in pending:
            self.cache.put(self._fragment(route, context))
        self.cache.reused = self.cache.size - len(pending)
        assembly = self.cache.assembly
        self.book.adopt_all(assembly.entries, assembly.statuses, assembly.ignored)
        self._rule_routes = assembly.rule_routes
        self.rules.created.update(assembly.created)
        for (gateway_key, listener_name), refs in assembly.attached.items():
            self.book.attach(context.by_key[gateway_key], listener_name, refs)
        pool_parents: dict[ObjectRef, set[ParentRefIR]] = defaultdict(set)  # pool -> Gateways of accepted routes
        gateway_irs = []
        for gateway in gateways:
            key = (gateway.namespace, gateway.name)
            placed = assembly.gateways.get(key)
            # Gateway listeners sharing a port share an Envoy listener; a listener with no routes still listens.
            ports = {self.options.envoy_port(listener.port) for listener in context.served[key]}
            vhosts = {port: placed.ports.get(port, {}) if placed else {} for port in ports}
            for pool in placed.pools if placed else ():
                pool_parents[pool].add(ParentRefIR(gateway.namespace, gateway.name))
            clusters = placed.clusters() if placed else ()
            gateway_irs.append(self._gateway_ir(gateway, vhosts, clusters, self._tls(gateway, listeners[key])))
            if context.served[key]:
                self.book.report(gateway, "Programmed", True, "Programmed", f"{len(vhosts)} Envoy listener(s)")
            else:
                self.book.report(gateway, "Programmed", False, "Invalid", "no listener is valid")
        for route, messages in self._shadow_messages.values():
            self.book.report(route, SHADOWED, True, "ShadowedByPrecedence", "; ".join(messages))
        self.verdicts.pool_statuses(pool_parents)
        self.verdicts.ai_backend_statuses()
        # Every route is read only when there are objects of unsupported kinds.
        report_unsupported(self.book, self.resources.unknown, self._our_gateways(), routes_in_order(self.resources))
        self._report_ignored_fields()
        pools = tuple(self.backends.pool(p) for p in self.resources.of_kind(InferencePool))
        self.cache.finish(self.tracker)
        return Translation(tuple(gateway_irs), self.book.statuses(), pools, tuple(assembly.backend_settings()))

    def _fragment(self, route: Route, context: _RouteContext) -> RouteFragment:
        """Everything translated of one route, reported in a book of its own (see incremental.py)."""
        book = StatusBook()
        shared = self.book
        parts = (self.rules, self.attachment, self.verdicts)
        for part in parts:  # each reports to the book it holds: this route's, for now
            part.book = book
        try:
            with self.tracker.reading() as reads:
                self.resources.read(type(route), route.namespace, route.name)
                return self._translate_route(route, context, book, reads)
        finally:
            for part in parts:
                part.book = shared

    def _translate_route(self, route: Route, context: _RouteContext, book: StatusBook, reads: Reads) -> RouteFragment:
        parents = self._route_parents(route, context, book)
        rules: tuple[RuleRoutes, ...] | None = None
        placements: list[Placement] = []
        attached: list[tuple[GatewayKey, str]] = []
        for gateway in context.gateways:
            key = (gateway.namespace, gateway.name)
            served = context.served[key]
            for parent in parents.get(key, ()):
                for listener, domains in self.attachment.attach(gateway, route, parent, context.listeners[key]):
                    attached.append((key, listener.name))
                    if listener not in served:
                        continue  # attached (and counted) where nothing is served
                    if rules is None:
                        rules = self._rules(route)
                    entries = tuple((listener.name, k, r) for rule in rules for k, r in rule.routes)
                    placements.append(Placement(key, listener, tuple(domains), entries))
        if rules is None:  # routes attached nowhere still report their unresolved references
            rules = self._rules(route)
        self.verdicts.route_verdict(route)
        entry, ignored = book.entry_of(route)
        ref = ref_of(route)
        status = entry.status(ref) if entry is not None and not ignored else None
        rule_ids = tuple(rule_id_of(route, index) for index in range(len(route.spec.rules)))
        clusters = tuple(cluster for rule in rules for cluster in rule.clusters)
        return RouteFragment(
            route,
            ref,
            created_of(route),
            rules,
            rule_ids,
            clusters,
            tuple(placements),
            tuple(attached),
            entry,
            ignored,
            status,
            frozenset(reads.keys),
        )

    def _rules(self, route: Route) -> tuple[RuleRoutes, ...]:
        return tuple(self.rules.rule_routes(route, index) for index in range(len(route.spec.rules)))

    def _gateways(self) -> tuple[list[Gateway], dict[tuple[str, str], str | None]]:
        """The Gateways this controller serves, and the others: why they are not served, or None for those of
        another controller's class (those, and their classes, get no status at all)."""
        classes = {gc.name: gc for gc in self.resources.of_kind(GatewayClass)}
        ours = {name for name, gc in classes.items() if gc.spec.controller_name in self.options.controller_names}
        for name in sorted(ours):
            self.verdicts.class_status(classes[name])
        served: list[Gateway] = []
        unserved: dict[tuple[str, str], str | None] = {}
        for gateway in self.resources.of_kind(Gateway):
            class_name = gateway.spec.gateway_class_name
            invalid_parameters = self.verdicts.gateway_parameters_problem(gateway) if class_name in ours else None
            if invalid_parameters is not None:
                self.book.report(gateway, "Accepted", False, "InvalidParameters", invalid_parameters)
                self.book.report(gateway, "Programmed", False, "Invalid", "the Gateway is not accepted")
                unserved[(gateway.namespace, gateway.name)] = (
                    f"Gateway {gateway.ref} is not served: {invalid_parameters}"
                )
            elif class_name in ours:
                served.append(gateway)
            elif class_name in classes:
                unserved[(gateway.namespace, gateway.name)] = None
            else:
                message = f"GatewayClass {class_name} not found"
                self.book.report(gateway, "Accepted", False, "InvalidGatewayClass", message)
                self.book.report(gateway, "Programmed", False, "Invalid", "the Gateway is not accepted")
                unserved[(gateway.namespace, gateway.name)] = f"Gateway {gateway.ref} is not served: {message}"
        return served, unserved

    def _report_ignored_fields(self) -> None:
        """An object an API server stored with fields this controller does not read (its CRD is of another version
        than ours) is served without them, and says so: on the object, or on each of its parents where the status is
        per parent (HTTPRoute, InferencePool)."""
        for key, paths in sorted(self.resources.ignored.items()):
            obj = self.resources.objects.get(key)
            if obj is None:
                continue
            message = (
                f"fields this controller does not read, ignored: {', '.join(paths)} (the cluster's CRD has them, the "
                "CRDs this controller was built with do not: remove them, or install the CRDs of its chart)"
            )
            if isinstance(obj, HTTPRoute | InferencePool):
                for parent in self.book.parent_conditions(obj):
                    self.book.report_parent(obj, parent, condition(IGNORED_FIELDS, True, "UnknownFields", message))
            else:
                self.book.report(obj, IGNORED_FIELDS, True, "UnknownFields", message)

    def _our_gateways(self) -> set[tuple[str, str]]:
        """(namespace, name) of every Gateway of this controller's classes, served or not."""
        classes = {
            gc.name
            for gc in self.resources.of_kind(GatewayClass)
            if gc.spec.controller_name in self.options.controller_names
        }
        return {(g.namespace, g.name) for g in self.resources.of_kind(Gateway) if g.spec.gateway_class_name in classes}

    def _route_parents(
        self, route: Route, context: _RouteContext, book: StatusBook
    ) -> dict[GatewayKey, list[ParentReference]]:
        """The route's parentRefs to each served Gateway. A parentRef to a missing or unserved Gateway is a condition
        of the route itself; a route that names none of this controller's Gateways gets no status."""
        by_gateway: dict[GatewayKey, list[ParentReference]] = defaultdict(list)
        in_scope = False
        for parent in route.spec.parent_refs:
            if (parent.group, parent.kind) != (GATEWAY_API_GROUP, "Gateway"):
                continue  # a parent of another kind (a mesh's Service) is not this controller's
            key = (parent.namespace or route.namespace, parent.name)
            if key in context.by_key:
                by_gateway[key].append(parent)
                book.add_parent(route, parent_ref(route, parent))  # entries in spec order
                in_scope = True
                continue
            problem = context.unserved[key] if key in context.unserved else f"Gateway {key[0]}/{key[1]} not found"
            if problem is not None:  # None: another controller's Gateway
                book.report(route, "Accepted", False, "NoMatchingParent", problem)
                in_scope = True
        if not in_scope:
            book.ignore(route)
        return by_gateway

    def _tls(self, gateway: Gateway, listeners: list[Listener]) -> _Tls:
        """Per Envoy port, the TLS filter chain of each HTTPS listener there (one per hostname: its SNI name; a
        listener without one takes every other name, and clients sending none), and the certificates they present."""
        chains: dict[int, list[TlsChainIR]] = defaultdict(list)
        certificates: dict[str, CertificateIR] = {}
        for listener in listeners:
            presented = self.attachment.certificates.get((gateway.namespace, gateway.name, listener.name))
            if presented is not None:
                names = (listener.hostname,) if listener.hostname else ()
                chain = TlsChainIR(names, tuple(c.name for c in presented))
                chains[self.options.envoy_port(listener.port)].append(chain)
                certificates.update((c.name, c) for c in presented)
        return chains, certificates

    def _gateway_ir(
        self,
        gateway: Gateway,
        vhosts: dict[int, dict[str, DomainRoutes]],
        clusters: tuple[ClusterIR, ...],
        tls: _Tls,
    ) -> GatewayIR:
        chains, certificates = tls
        listeners = []
        for port, domains in sorted(vhosts.items()):
            name = f"{gateway.namespace}/{gateway.name}/{port}"
            virtual_hosts = []
            wildcards = [domain for domain in domains if domain.startswith("*")]  # few: not one look at each domain
            for domain in sorted(domains):
                vhost_name = f"{name}/{domain}"
                ordered, contested, has_ai = _virtual_host_routes(domain, domains, wildcards)
                self._report_shadowed(contested, domain)
                models = self._models(ordered) if has_ai else ()
                if has_ai:
                    guarded = guarded_routes(vhost_name, ordered, self.options.max_model_length)
                    ordered = [*guarded, *trailing_routes(vhost_name, models)]
                virtual_hosts.append(VirtualHostIR(vhost_name, (domain,), tuple(ordered), models))
            port_chains = tuple(sorted(chains.get(port, ()), key=lambda c: c.server_names))
            listeners.append(ListenerIR(name, self.options.listener_address, port, tuple(virtual_hosts), port_chains))
        return GatewayIR(
            gateway.namespace,
            gateway.name,
            tuple(listeners),
            clusters,
            tuple(certificate for _, certificate in sorted(certificates.items())),
        )

    def _report_shadowed(self, routes: list[RouteIR], domain: str) -> None:
        """A route whose match an earlier route of the virtual host has already (a second AIGatewayRoute for the same
        model, a repeated rule) never gets a request: Gateway API precedence gave it to the other (older, then first
        by namespace/name). Said on the losing route, naming the winner, once per rule."""
        seen: dict[tuple[object, ...], RouteIR] = {}
        for route in routes:
            winner = seen.setdefault(match_key(route), route)
            owner = self._rule_routes.get(route.rule)
            if winner is route or owner is None or (route.rule, domain) in self._shadowed:
                continue
            self._shadowed.add((route.rule, domain))
            what = _match_text(route)
            rule = route.rule.rsplit("/", 1)[-1]
            message = f"rule {rule}: {what} on {domain} goes to {_rule_text(winner.rule)}, which takes precedence"
            self._shadow_messages.setdefault((owner.kind, owner.namespace, owner.name), (owner, []))[1].append(message)

    def _models(self, routes: list[RouteIR]) -> tuple[ModelIR, ...]:
        """The models a virtual host names exactly, in route order, once each. Regex matches are not listable, and
        neither is a model whose route (the first for it: the one requests get) has no backend to send to."""
        models: dict[str, ModelIR | None] = {}
        for route in routes:
            if route.ai is AiRole.MODEL:
                for match in route.headers:
                    if match.name == MODEL_HEADER and match.kind is HeaderMatchKind.EXACT and match.value not in models:
                        served = not isinstance(route.action, DirectAction)
                        listed = ModelIR(match.value, self.rules.created.get(route.rule, 0)) if served else None
                        models[match.value] = listed
        return tuple(model for model in models.values() if model is not None)


# A route's condition when one of its rules is never reached (a custom type: Gateway API has none for it).
SHADOWED = "xds-server.io/Shadowed"
# An object read from a cluster with fields the translator does not read (a warning: the object is served).
IGNORED_FIELDS = "xds-server.io/IgnoredFields"


def _match_text(route: RouteIR) -> str:
    model = next((h.value for h in route.headers if h.name == MODEL_HEADER), None)
    if model is not None:
        return f"model {model}"
    return f"{route.method + ' ' if route.method else ''}{route.path.kind} {route.path.value}"


def _rule_text(rule: str) -> str:
    """`aigatewayroute/ns/name/rule/0` -> `AIGatewayRoute ns/name rule 0`."""
    kind, namespace, name, _, index = rule.split("/")
    kinds = {"aigatewayroute": "AIGatewayRoute", "httproute": "HTTPRoute"}
    return f"{kinds.get(kind, kind)} {namespace}/{name} rule {index}"


def _covers(wildcard: str, domain: str) -> bool:
    if wildcard == domain:
        return False
    return wildcard == "*" or (wildcard.startswith("*.") and domain.endswith(wildcard[1:]))


def _virtual_host_routes(
    domain: str, domains: dict[str, DomainRoutes], wildcards: list[str]
) -> tuple[list[RouteIR], list[RouteIR], bool]:
    """Routes for requests to `domain`: its own first, then those of wildcard domains that also match it; with the
    routes another of them may shadow (in order), and whether any is an AI route.

    Envoy picks one virtual host per request, while Gateway API merges every route whose hostname matches,
    ranking a more specific hostname first. Only routes of the same Gateway listeners are merged: a request
    belongs to the listener with the most specific hostname, never to its neighbours on the same port.
    """
    own = domains[domain]
    covering = sorted((w for w in wildcards if _covers(w, domain)), key=lambda w: (w == "*", -len(w), w))
    if not covering and own.simple:  # the common case, kept in order from one translation to the next
        return own.routes(), own.contested(), own.ai > 0
    listeners = set(own.listeners)
    ordered: list[RouteIR] = []
    seen: set[str] = set()
    for source in (domain, *covering):
        for _, _, route in (e for e in domains[source].entries if e[0] in listeners):
            if route.name not in seen:
                seen.add(route.name)
                ordered.append(route)
    return ordered, ordered, any(r.ai is not None for r in ordered)


class _RouteContext:
    """What every route's translation reads of the Gateways: those served, why the others are not, their listeners
    (valid ones) and of those, the ones served."""

    def __init__(
        self,
        gateways: list[Gateway],
        unserved: dict[GatewayKey, str | None],
        listeners: dict[GatewayKey, list[Listener]],
        unserved_listeners: set[tuple[str, str, str]],
    ) -> None:
        self.gateways = gateways
        self.by_key = {(g.namespace, g.name): g for g in gateways}
        self.unserved = unserved
        self.listeners = listeners
        self.served = {
            key: [lis for lis in found if (*key, lis.name) not in unserved_listeners]
            for key, found in listeners.items()
        }


def translate(
    resources: ResourceSet, options: TranslateOptions | None = None, cache: TranslationCache | None = None
) -> Translation:
    """Resources -> one GatewayIR per Gateway this project controls, plus conditions for every object involved.
    `cache` (kept by a caller that translates again and again) reuses what did not change since its last use."""
    return _Translator(
        resources, options or TranslateOptions(), cache if cache is not None else TranslationCache()
    ).translate()
