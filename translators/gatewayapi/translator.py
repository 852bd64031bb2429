"""Resources -> IR: Gateways, their listeners, the routes attached to them and the clusters they use.

Deterministic by construction: every collection is walked in key order, never in document order, and route
precedence follows the Gateway API rules with the route's namespace/name as the final tie-breaker.
"""

from __future__ import annotations

from collections import defaultdict

from translators.backends import BackendResolver, ReferenceGrants
from translators.gatewayapi.attachment import Attachment, parent_ref
from translators.gatewayapi.listener_tls import ListenerTls
from translators.gatewayapi.model_routes import leading_routes, trailing_routes
from translators.gatewayapi.rules import Route, RuleRoutes, RuleTranslator, rule_id_of
from translators.gatewayapi.status import StatusBook, condition
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
    AIGatewayRoute,
    Gateway,
    GatewayClass,
    HTTPRoute,
    InferencePool,
    Namespace,
)
from translators.resources.gateway_api import GATEWAY_API_GROUP, Listener, ParentReference
from translators.upstream import UpstreamSettings
from translators.xds.names import MODEL_HEADER

# A route placed on a virtual host: (Gateway listener name, precedence key, route).
_Entry = tuple[str, tuple[object, ...], RouteIR]
# A Gateway's TLS: the filter chains of each Envoy port, and the certificates they present by name.
_Tls = tuple[dict[int, list[TlsChainIR]], dict[str, CertificateIR]]


class _Translator:
    def __init__(self, resources: ResourceSet, options: TranslateOptions) -> None:
        self.resources = resources
        self.options = options
        self.book = StatusBook()
        grants = ReferenceGrants(resources)
        self.backends = BackendResolver(resources, options.resolve_cluster_local, grants, options.endpoint_picker)
        # Settings first: where each credential would go (plain HTTP to loopback only, unless TLS) needs the backends.
        upstream = UpstreamSettings(resources, self.book.report, grants, self.backends)
        self.backends.upstream_backends = frozenset(upstream.backends)
        self.rules = RuleTranslator(self.book, upstream, self.backends)
        namespace_labels = {ns.name: ns.metadata.labels for ns in resources.of_kind(Namespace)}
        self.attachment = Attachment(self.book, namespace_labels, ListenerTls(resources, grants))
        self.verdicts = Verdicts(self.book, resources, self.backends)
        self._rule_routes: dict[str, Route] = {}  # rule id -> the route it belongs to
        self._shadowed: set[tuple[str, str]] = set()  # (rule id, domain) already reported
        self._shadow_messages: dict[tuple[str, str, str], tuple[Route, list[str]]] = {}  # by route

    def _envoy_port(self, port: int) -> int:
        return port + self.options.privileged_port_offset if port < 1024 else port

    def translate(self) -> Translation:
        gateways, unserved = self._gateways()
        routes: list[Route] = [*self.resources.of_kind(AIGatewayRoute), *self.resources.of_kind(HTTPRoute)]
        rule_cache: dict[tuple[str, str, str, int], RuleRoutes] = {}

        def rules_of(route: Route) -> list[RuleRoutes]:
            found = []
            for index in range(len(route.spec.rules)):
                key = (route.kind, route.namespace, route.name, index)
                if key not in rule_cache:
                    rule_cache[key] = self.rules.rule_routes(route, index)
                    self._rule_routes[rule_id_of(route, index)] = route
                found.append(rule_cache[key])
            return found

        by_gateway = self._route_parents(routes, {(g.namespace, g.name) for g in gateways}, unserved)
        pool_parents: dict[ObjectRef, set[ParentRefIR]] = defaultdict(set)  # pool -> Gateways of accepted routes
        gateway_irs = []
        for gateway in gateways:
            listeners = self.attachment.gateway_listeners(gateway)
            # (port, domain) -> precedence-keyed routes; Gateway listeners sharing a port share an Envoy listener.
            vhosts: dict[int, dict[str, list[_Entry]]] = defaultdict(dict)
            served = [
                lis for lis in listeners if (gateway.namespace, gateway.name, lis.name) not in self.attachment.unserved
            ]
            for listener in served:  # a listener with no routes still listens
                vhosts.setdefault(self._envoy_port(listener.port), {})
            clusters: dict[str, ClusterIR] = {}
            for route, parent in by_gateway[(gateway.namespace, gateway.name)]:
                for listener, domains in self.attachment.attach(gateway, route, parent, listeners):
                    if listener not in served:
                        continue  # attached (and counted) where nothing is served
                    port_vhosts = vhosts[self._envoy_port(listener.port)]
                    for rule in rules_of(route):
                        for cluster in rule.clusters:
                            clusters[cluster.name] = cluster
                            if cluster.pool is not None:
                                pool_parents[cluster.pool.pool].add(ParentRefIR(gateway.namespace, gateway.name))
                        for domain in domains:
                            port_vhosts.setdefault(domain, []).extend((listener.name, key, r) for key, r in rule.routes)
            gateway_irs.append(self._gateway_ir(gateway, vhosts, clusters, self._tls(gateway, listeners)))
            if served:
                self.book.report(gateway, "Programmed", True, "Programmed", f"{len(vhosts)} Envoy listener(s)")
            else:
                self.book.report(gateway, "Programmed", False, "Invalid", "no listener is valid")
        for route, messages in self._shadow_messages.values():
            self.book.report(route, SHADOWED, True, "ShadowedByPrecedence", "; ".join(messages))
        for route in routes:
            rules_of(route)  # routes attached nowhere still report their unresolved references
            self.verdicts.route_verdict(route)
        self.verdicts.pool_statuses(pool_parents)
        self.verdicts.ai_backend_statuses()
        report_unsupported(self.book, self.resources.unknown, self._our_gateways(), routes)
        self._report_ignored_fields()
        pools = tuple(self.backends.pool(p) for p in self.resources.of_kind(InferencePool))
        settings = sorted((s for rule in rule_cache.values() for s in rule.settings), key=lambda s: (s.rule, s.backend))
        return Translation(tuple(gateway_irs), self.book.statuses(), pools, tuple(settings))

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
        self, routes: list[Route], served: set[tuple[str, str]], unserved: dict[tuple[str, str], str | None]
    ) -> dict[tuple[str, str], list[tuple[Route, ParentReference]]]:
        """Each served Gateway's (route, parentRef) pairs. A parentRef to a missing or unserved Gateway is a
        condition of the route itself; a route that names none of this controller's Gateways gets no status."""
        by_gateway: dict[tuple[str, str], list[tuple[Route, ParentReference]]] = defaultdict(list)
        for route in routes:
            in_scope = False
            for parent in route.spec.parent_refs:
                if (parent.group, parent.kind) != (GATEWAY_API_GROUP, "Gateway"):
                    continue  # a parent of another kind (a mesh's Service) is not this controller's
                key = (parent.namespace or route.namespace, parent.name)
                if key in served:
                    by_gateway[key].append((route, parent))
                    self.book.add_parent(route, parent_ref(route, parent))  # entries in spec order
                    in_scope = True
                    continue
                problem = unserved[key] if key in unserved else f"Gateway {key[0]}/{key[1]} not found"
                if problem is not None:  # None: another controller's Gateway
                    self.book.report(route, "Accepted", False, "NoMatchingParent", problem)
                    in_scope = True
            if not in_scope:
                self.book.ignore(route)
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
                chains[self._envoy_port(listener.port)].append(TlsChainIR(names, tuple(c.name for c in presented)))
                certificates.update((c.name, c) for c in presented)
        return chains, certificates

    def _gateway_ir(
        self, gateway: Gateway, vhosts: dict[int, dict[str, list[_Entry]]], clusters: dict[str, ClusterIR], tls: _Tls
    ) -> GatewayIR:
        chains, certificates = tls
        listeners = []
        for port, domains in sorted(vhosts.items()):
            name = f"{gateway.namespace}/{gateway.name}/{port}"
            virtual_hosts = []
            for domain in sorted(domains):
                vhost_name = f"{name}/{domain}"
                ordered = _virtual_host_routes(domain, domains)
                self._report_shadowed(ordered, domain)
                models = self._models(ordered)
                if any(r.ai is not None for r in ordered):
                    ordered = [*leading_routes(vhost_name), *ordered, *trailing_routes(vhost_name, models)]
                virtual_hosts.append(VirtualHostIR(vhost_name, (domain,), tuple(ordered), models))
            port_chains = tuple(sorted(chains.get(port, ()), key=lambda c: c.server_names))
            listeners.append(ListenerIR(name, self.options.listener_address, port, tuple(virtual_hosts), port_chains))
        return GatewayIR(
            gateway.namespace,
            gateway.name,
            tuple(listeners),
            tuple(cluster for _, cluster in sorted(clusters.items())),
            tuple(certificate for _, certificate in sorted(certificates.items())),
        )

    def _report_shadowed(self, routes: list[RouteIR], domain: str) -> None:
        """A route whose match an earlier route of the virtual host has already (a second AIGatewayRoute for the same
        model, a repeated rule) never gets a request: Gateway API precedence gave it to the other (older, then first
        by namespace/name). Said on the losing route, naming the winner, once per rule."""
        seen: dict[tuple[object, ...], RouteIR] = {}
        for route in routes:
            key = (route.path, route.headers, route.method)
            winner = seen.setdefault(key, route)
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


def translate(resources: ResourceSet, options: TranslateOptions | None = None) -> Translation:
    """Resources -> one GatewayIR per Gateway this project controls, plus conditions for every object involved."""
    return _Translator(resources, options or TranslateOptions()).translate()
