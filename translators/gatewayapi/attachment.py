"""Attachment of routes to Gateway listeners: which listeners a parentRef reaches, whether they admit the route,
with which hostnames; and which listeners of a Gateway are usable at all."""

from __future__ import annotations

from translators.gatewayapi.rules import Route
from translators.gatewayapi.status import StatusBook
from translators.hostnames import effective_hostnames
from translators.resources import Gateway
from translators.resources.gateway_api import Listener, ParentReference


class Attachment:
    def __init__(self, book: StatusBook, namespace_labels: dict[str, dict[str, str]]) -> None:
        self.book = book
        self.namespace_labels = namespace_labels

    def _allows(self, gateway: Gateway, listener: Listener, route: Route) -> bool:
        namespaces = listener.allowed_routes.namespaces
        if namespaces.from_ == "All":
            return True
        if namespaces.from_ == "Same":
            return route.namespace == gateway.namespace
        selector = namespaces.selector
        labels = self.namespace_labels.get(route.namespace)
        return selector is not None and labels is not None and selector.matches(labels)

    def attach(
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

    def gateway_listeners(self, gateway: Gateway) -> list[Listener]:
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
