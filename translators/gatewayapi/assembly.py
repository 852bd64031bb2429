"""What a translation puts together from its routes' fragments, kept from one translation to the next.

Once each route is translated (a `RouteFragment`, see incremental.py), a translation still gathers every fragment:
each virtual host's routes in precedence order, each Gateway's clusters by name, the statuses, the listeners'
attached routes, the rule ids. Done again on each reload, that is work over every route however small the change:
at 10,000 routes, most of a one-route reload. The `Assembly` keeps those collections and moves only what a fragment
added or dropped changes: sorted lists take a route by bisection, collections are handed out as copies made in C.

What it hands out must be exactly what gathering every fragment in route order gives (tests/test_incremental.py
compares with translations from scratch): ties in precedence keep route order, the last route to name a cluster
gives it, and a virtual host whose routes need more than one list (wildcard hostnames covering others, a route
placed twice) is left to the translator's general path.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING

from translators.gatewayapi.status import Entry, SortedStatuses
from translators.ir import BackendSettingsIR, ClusterIR, ObjectRef, RouteIR

if TYPE_CHECKING:
    from translators.gatewayapi.incremental import GatewayKey, RouteFragment, VhostEntry
    from translators.gatewayapi.rules import Route

# How routes come in a translation: AIGatewayRoutes, then HTTPRoutes, each kind in (namespace, name) order.
KIND_RANKS = {"AIGatewayRoute": 0, "HTTPRoute": 1}

RouteOrder = tuple[int, str, str]
Placed = tuple[RouteOrder, int]  # a route's placement: the route's order, the placement's index
MatchKey = tuple[object, ...]


def route_order(ref: ObjectRef) -> RouteOrder:
    return (KIND_RANKS[ref.kind], ref.namespace, ref.name)


def match_key(route: RouteIR) -> MatchKey:
    """What two routes of one virtual host must share for the first to take every request of the second."""
    return (route.path, route.headers, route.method)


_route_of = itemgetter(2)


@dataclass
class DomainRoutes:
    """The routes placed on one domain of one Envoy listener, in precedence order (ties in route order)."""

    keys: list[tuple[object, ...]] = field(default_factory=list)  # (precedence, route order, placement, entry)
    entries: list[VhostEntry] = field(default_factory=list)
    placements: int = 0  # a domain a route is placed on exists, even with no routes
    listeners: Counter[str] = field(default_factory=Counter)  # the Gateway listeners of its entries
    names: Counter[str] = field(default_factory=Counter)  # route names: one placed twice is listed once
    ai: int = 0  # entries of AI routes (the virtual host then lists its models)
    matches: dict[MatchKey, dict[tuple[object, ...], RouteIR]] = field(default_factory=dict)
    colliding: set[MatchKey] = field(default_factory=set)  # matches more than one entry has

    def add(self, key: tuple[object, ...], entry: VhostEntry) -> None:
        at = bisect_left(self.keys, key)
        self.keys.insert(at, key)
        self.entries.insert(at, entry)
        listener, _, route = entry
        self.listeners[listener] += 1
        self.names[route.name] += 1
        self.ai += route.ai is not None
        group = self.matches.setdefault(match_key(route), {})
        group[key] = route
        if len(group) > 1:
            self.colliding.add(match_key(route))

    def remove(self, key: tuple[object, ...], entry: VhostEntry) -> None:
        at = bisect_left(self.keys, key)
        assert self.keys[at] == key, "an entry removed that was never added"
        del self.keys[at]
        del self.entries[at]
        listener, _, route = entry
        _decrement(self.listeners, listener)
        _decrement(self.names, route.name)
        self.ai -= route.ai is not None
        matched = match_key(route)
        group = self.matches[matched]
        del group[key]
        if len(group) < 2:
            self.colliding.discard(matched)
        if not group:
            del self.matches[matched]

    @property
    def simple(self) -> bool:
        """Each route once: its routes in order are its entries' routes."""
        return len(self.names) == len(self.entries)

    def routes(self) -> list[RouteIR]:
        return list(map(_route_of, self.entries))

    def contested(self) -> list[RouteIR]:
        """The routes whose match another route also has, in precedence order: the only ones that can be shadowed."""
        found = sorted(chain.from_iterable(self.matches[m].items() for m in self.colliding), key=itemgetter(0))
        return [route for _, route in found]


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if not counter[key]:
        del counter[key]


@dataclass
class GatewayRoutes:
    """One Gateway's placed routes by Envoy port and domain, and the clusters they use."""

    ports: dict[int, dict[str, DomainRoutes]] = field(default_factory=dict)
    # Cluster name -> each placement naming it (route order, placement) -> its cluster; the last in order gives it.
    contributions: dict[str, dict[Placed, ClusterIR]] = field(default_factory=dict)
    winners: dict[str, ClusterIR] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)  # sorted
    pools: Counter[ObjectRef] = field(default_factory=Counter)  # pool -> clusters of routes placed here using it

    def add_cluster(self, order: Placed, cluster: ClusterIR) -> None:
        named = self.contributions.get(cluster.name)
        if named is None:
            named = self.contributions[cluster.name] = {}
            self.names.insert(bisect_left(self.names, cluster.name), cluster.name)
        named[order] = cluster
        self.winners[cluster.name] = named[max(named)]
        if cluster.pool is not None:
            self.pools[cluster.pool.pool] += 1

    def remove_cluster(self, order: Placed, cluster: ClusterIR) -> None:
        named = self.contributions[cluster.name]
        del named[order]
        if named:
            self.winners[cluster.name] = named[max(named)]
        else:
            del self.contributions[cluster.name], self.winners[cluster.name]
            del self.names[bisect_left(self.names, cluster.name)]
        if cluster.pool is not None:
            self.pools[cluster.pool.pool] -= 1
            if not self.pools[cluster.pool.pool]:
                del self.pools[cluster.pool.pool]

    def clusters(self) -> tuple[ClusterIR, ...]:
        return tuple(map(self.winners.__getitem__, self.names))


class Assembly:
    """The collections of one translation's fragments, kept up to date as fragments come and go."""

    def __init__(self, envoy_port: Callable[[int], int]) -> None:
        self.envoy_port = envoy_port
        self.gateways: dict[GatewayKey, GatewayRoutes] = {}
        # The status book's part that comes from fragments (see StatusBook.adopt_all).
        self.entries: dict[ObjectRef, Entry] = {}
        self.statuses = SortedStatuses()
        self.ignored: dict[ObjectRef, None] = {}
        self.attached: dict[tuple[GatewayKey, str], dict[ObjectRef, None]] = {}  # listener -> routes counted there
        self.rule_routes: dict[str, Route] = {}  # rule id -> its route
        self.created: dict[str, int] = {}  # rule id -> its route's creation time
        self.settings: dict[RouteOrder, tuple[BackendSettingsIR, ...]] = {}  # route -> its rules' settings

    def add(self, fragment: RouteFragment) -> None:
        self._move(fragment, adding=True)

    def remove(self, fragment: RouteFragment) -> None:
        self._move(fragment, adding=False)

    def _move(self, fragment: RouteFragment, adding: bool) -> None:
        ref = fragment.ref
        order = route_order(ref)
        if adding:
            self._add_book(fragment, order)
        else:
            self.entries.pop(ref, None)
            self.statuses.discard(ref)
            self.ignored.pop(ref, None)
            self.settings.pop(order, None)
        for rule_id in fragment.rule_ids:
            if adding:
                self.rule_routes[rule_id] = fragment.route
                self.created[rule_id] = fragment.created
            else:
                self.rule_routes.pop(rule_id, None)
                self.created.pop(rule_id, None)
        for listener_key in fragment.attached:
            routes = self.attached.setdefault(listener_key, {})
            if adding:
                routes[ref] = None
            else:
                routes.pop(ref, None)
                if not routes:
                    del self.attached[listener_key]
        # A cluster counts once per placement, as gathering placements would name it; the last of a name wins.
        last = {cluster.name: cluster for cluster in fragment.clusters}
        for index, placement in enumerate(fragment.placements):
            gateway = self.gateways.setdefault(placement.gateway, GatewayRoutes())
            domains = gateway.ports.setdefault(self.envoy_port(placement.listener.port), {})
            for domain in placement.domains:
                routes_here = domains.setdefault(domain, DomainRoutes())
                routes_here.placements += 1 if adding else -1
                for position, entry in enumerate(placement.entries):
                    key = (entry[1], order, index, position)
                    if adding:
                        routes_here.add(key, entry)
                    else:
                        routes_here.remove(key, entry)
                if not routes_here.placements:
                    del domains[domain]
            for cluster in last.values():
                if adding:
                    gateway.add_cluster((order, index), cluster)
                else:
                    gateway.remove_cluster((order, index), cluster)

    def _add_book(self, fragment: RouteFragment, order: RouteOrder) -> None:
        ref = fragment.ref
        if fragment.ignored:
            self.ignored[ref] = None
        if fragment.entry is not None:
            self.entries[ref] = fragment.entry
            if fragment.status is not None:
                self.statuses.put(ref, fragment.status)
        settings = tuple(s for rule in fragment.rules for s in rule.settings)
        if settings:
            self.settings[order] = settings

    def backend_settings(self) -> list[BackendSettingsIR]:
        """Every rule's settings, by (rule, backend); ties in route order, as gathering fragments in order gives."""
        in_route_order = (settings for _, settings in sorted(self.settings.items()))
        return sorted(chain.from_iterable(in_route_order), key=attrgetter("rule", "backend"))
