"""Attachment of routes to Gateway listeners: which listeners a parentRef reaches, whether they admit the route,
with which hostnames; and which listeners of a Gateway are usable at all. Each verdict goes in the status book: the
route's parent entry, the listener's status and its attachedRoutes, the Gateway's Accepted."""

from __future__ import annotations

from functools import partial

from translators.gatewayapi.listener_tls import ListenerCertificates, ListenerTls, RefProblem
from translators.gatewayapi.rules import Route
from translators.gatewayapi.status import StatusBook, condition
from translators.hostnames import effective_hostnames
from translators.ir import CertificateIR, ParentRefIR
from translators.resources import Gateway
from translators.resources.aigateway import AIGATEWAY_GROUP
from translators.resources.gateway_api import GATEWAY_API_GROUP, Listener, ParentReference

# The route kinds an HTTP listener takes, as its status lists them: AIGatewayRoutes attach to Gateways directly.
HTTP_ROUTE_KINDS = ((GATEWAY_API_GROUP, "HTTPRoute"), (AIGATEWAY_GROUP, "AIGatewayRoute"))
HTTP_PROTOCOLS = ("HTTP", "HTTPS")  # HTTPS: TLS terminated by Envoy with the listener's certificates


def parent_ref(route: Route, parent: ParentReference) -> ParentRefIR:
    """The parentRef as the route's status echoes it, defaults filled in."""
    return ParentRefIR(
        parent.namespace or route.namespace, parent.name, parent.group, parent.kind, parent.section_name, parent.port
    )


def route_kinds(listener: Listener) -> tuple[tuple[tuple[str, str], ...], list[str]]:
    """The (group, kind) of the routes the listener takes, and the kinds its allowedRoutes names that it cannot."""
    supported = HTTP_ROUTE_KINDS if listener.protocol in HTTP_PROTOCOLS else ()
    if not listener.allowed_routes.kinds:
        return supported, []
    named = [(k.group, k.kind) for k in listener.allowed_routes.kinds]
    invalid = [f"{group}/{kind}" if group else kind for group, kind in named if (group, kind) not in supported]
    return tuple(k for k in dict.fromkeys(named) if k in supported), invalid


class Attachment:
    def __init__(self, book: StatusBook, namespace_labels: dict[str, dict[str, str]], tls: ListenerTls) -> None:
        self.book = book
        self.namespace_labels = namespace_labels
        self.tls = tls
        # The certificates of each HTTPS listener served, by (Gateway namespace, Gateway name, listener name).
        self.certificates: dict[tuple[str, str, str], tuple[CertificateIR, ...]] = {}
        # Listeners that are valid, so routes attach to them and count in attachedRoutes, but have nothing to serve
        # with (an HTTPS listener with no usable certificate): no Envoy listener or virtual host comes of them.
        self.unserved: set[tuple[str, str, str]] = set()

    def _refusal(self, gateway: Gateway, listener: Listener, route: Route) -> str | None:
        """Why the listener does not admit the route (its allowedRoutes), or None when it does."""
        if (route.group, route.kind) not in route_kinds(listener)[0]:
            return f"listener {listener.name} does not take {route.kind}s"
        namespaces = listener.allowed_routes.namespaces
        if namespaces.from_ == "All":
            return None
        if namespaces.from_ == "Same":
            allowed = route.namespace == gateway.namespace
        else:
            selector = namespaces.selector
            labels = self.namespace_labels.get(route.namespace)
            allowed = selector is not None and labels is not None and selector.matches(labels)
        return None if allowed else f"listener {listener.name} does not admit routes from namespace {route.namespace}"

    def attach(
        self, gateway: Gateway, route: Route, parent: ParentReference, listeners: list[Listener]
    ) -> list[tuple[Listener, list[str]]]:
        """The listeners a parentRef attaches the route to, each with the route's domains there; the verdict goes on
        the route's parent entry."""
        entry = parent_ref(route, parent)
        candidates = [
            lis for lis in listeners if (parent.section_name in (None, lis.name)) and (parent.port in (None, lis.port))
        ]
        if not candidates:
            refused = condition("Accepted", False, "NoMatchingParent", "no listener matches sectionName/port")
            self.book.report_parent(route, entry, refused)
            return []
        refusals = {lis.name: self._refusal(gateway, lis, route) for lis in candidates}
        allowed = [lis for lis in candidates if refusals[lis.name] is None]
        if not allowed:
            message = "; ".join(m for m in refusals.values() if m)
            self.book.report_parent(route, entry, condition("Accepted", False, "NotAllowedByListeners", message))
            return []
        attached = [(lis, effective_hostnames(lis.hostname, route.spec.hostnames)) for lis in allowed]
        attached = [(lis, hosts) for lis, hosts in attached if hosts]
        if not attached:
            refused = condition(
                "Accepted", False, "NoMatchingListenerHostname", "no hostname is shared with the listener"
            )
            self.book.report_parent(route, entry, refused)
            return []
        self.book.report_parent(route, entry, condition("Accepted", True, "Accepted", "attached to the Gateway"))
        return attached  # the caller counts the route in each listener's attachedRoutes (StatusBook.attach)

    def _certificates(self, gateway: Gateway, listener: Listener) -> ListenerCertificates:
        """An HTTPS listener's certificates; those it can present are kept for the translator."""
        resolved = self.tls.certificates(gateway, listener)
        if resolved.certificates:
            self.certificates[(gateway.namespace, gateway.name, listener.name)] = resolved.certificates
        return resolved

    def gateway_listeners(self, gateway: Gateway) -> list[Listener]:
        """The listeners that are valid (routes attach to them; `unserved` says which have nothing to serve with);
        every listener's status, and the Gateway's Accepted, go in the book.

        Listeners sharing a port share one Envoy listener: they must speak the same protocol, and differ by
        hostname (for HTTPS, the SNI name that selects the listener's certificates)."""
        usable: list[Listener] = []
        seen: dict[tuple[int, str | None], str] = {}  # (port, hostname) of the listeners served
        protocols: dict[int, str] = {}  # the protocol of each port, as its first listener says
        not_valid: list[str] = []
        for listener in gateway.spec.listeners:
            kinds, invalid_kinds = route_kinds(listener)
            self.book.add_listener(gateway, listener.name, kinds)
            report = partial(self.book.report_listener, gateway, listener.name)
            served_protocol = listener.protocol in HTTP_PROTOCOLS
            clash = seen.get((listener.port, listener.hostname)) if served_protocol else None
            other_protocol = protocols.get(listener.port, listener.protocol) if served_protocol else listener.protocol
            refusal: tuple[str, str] | None = None  # (reason, message) of Accepted=False
            conflict: tuple[str, str] | None = None  # (reason, message) of Conflicted=True
            unprogrammed: str | None = None  # why a valid listener is not served
            tls_problems: tuple[RefProblem, ...] = ()
            if not served_protocol:
                refusal = ("UnsupportedProtocol", f"protocol {listener.protocol} is not supported")
            elif other_protocol != listener.protocol:
                message = f"not served: port {listener.port} is already {other_protocol}"
                refusal = conflict = ("ProtocolConflict", message)
            elif clash is not None:
                refusal = conflict = ("HostnameConflict", f"not served: same port and hostname as listener {clash}")
            elif listener.protocol == "HTTPS" and (listener.tls is None or listener.tls.mode != "Terminate"):
                message = "an HTTPS listener needs tls with mode Terminate (Passthrough takes TLSRoutes: not supported)"
                refusal = ("UnsupportedValue", message)
            elif listener.protocol == "HTTPS":
                resolved = self._certificates(gateway, listener)
                tls_problems = resolved.problems
                unprogrammed = None if resolved.certificates else "no certificate can be served"
            if refusal is None:
                seen[(listener.port, listener.hostname)] = listener.name
                protocols.setdefault(listener.port, listener.protocol)
                usable.append(listener)
                report("Accepted", True, "Accepted", "the listener is valid")
                if unprogrammed is None:
                    report("Programmed", True, "Programmed", "served by Envoy")
                else:
                    self.unserved.add((gateway.namespace, gateway.name, listener.name))
                    report("Programmed", False, "Invalid", f"not served: {unprogrammed}")
            else:
                not_valid.append(listener.name)
                report("Accepted", False, *refusal)
                report("Programmed", False, "Invalid", "the listener is not valid")
            for problem in tls_problems:
                report("ResolvedRefs", False, problem.reason, problem.message)
            if invalid_kinds:
                message = f"route kinds not supported: {', '.join(invalid_kinds)}"
                report("ResolvedRefs", False, "InvalidRouteKinds", message)
            else:
                report("ResolvedRefs", True, "ResolvedRefs", "every reference resolved")  # any False above wins
            if conflict is not None:
                report("Conflicted", True, *conflict)
            else:
                report("Conflicted", False, "NoConflicts", "no conflict with another listener")
        if not not_valid:
            self.book.report(gateway, "Accepted", True, "Accepted", "every listener is valid")
        else:
            message = f"listeners not valid: {', '.join(not_valid)}"
            self.book.report(gateway, "Accepted", bool(usable), "ListenersNotValid", message)
        return usable
