"""Translation again after a change, redoing only the routes the change concerns.

Most of a translation is per route: its parents, its attachment to each listener, its rules and their clusters, its
verdict. A `RouteFragment` is that work for one route, with everything it read (see translators.tracking). The
`TranslationCache` keeps the fragments of the last translation and, when the next one starts, drops those whose
reads changed; the rest are reused as they are. The shared part of a translation (the Gateways, their listeners, the
policies, whatever was read of a whole kind) is computed every time; when anything it read changed, every fragment
goes, which is then a full translation.

Reusing a fragment is only right if it is exactly what translating the route again would give: tests compare each
translation through the cache with one from scratch, after random sequences of edits (tests/test_incremental.py).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass
from itertools import chain

from translators.gatewayapi.assembly import KIND_RANKS, Assembly
from translators.gatewayapi.rules import Route, RuleRoutes
from translators.gatewayapi.status import Entry
from translators.ir import ClusterIR, ObjectRef, ObjectStatus, RouteIR, TranslateOptions
from translators.loader import ObjectKey, ResourceSet
from translators.resources import AIGatewayRoute, HTTPRoute, Resource
from translators.resources.gateway_api import Listener
from translators.tracking import Key, Tracker, kind_key, selects

GatewayKey = tuple[str, str]  # (namespace, name)


# A route placed on a virtual host: (Gateway listener name, precedence key, route).
VhostEntry = tuple[str, tuple[object, ...], RouteIR]


@dataclass(frozen=True)
class Placement:
    """A route attached to a served listener of a Gateway: its domains there, and its rules' routes as the listener's
    virtual hosts take them."""

    gateway: GatewayKey
    listener: Listener
    domains: tuple[str, ...]
    entries: tuple[VhostEntry, ...]


@dataclass(frozen=True)
class RouteFragment:
    route: Route
    ref: ObjectRef
    created: int  # the route's creation time, for /v1/models
    rules: tuple[RuleRoutes, ...]
    rule_ids: tuple[str, ...]
    clusters: tuple[ClusterIR, ...]  # of every rule, in order
    placements: tuple[Placement, ...]
    attached: tuple[tuple[GatewayKey, str], ...]  # the listeners whose attachedRoutes count it (served or not)
    entry: Entry | None  # its status book entry, verdict included; None: nothing reported
    ignored: bool  # names none of this controller's Gateways: no status
    status: ObjectStatus | None  # built from `entry`
    reads: frozenset[Key]  # the objects it read, itself included


def changed_keys(before: Mapping[ObjectKey, Resource], after: Mapping[ObjectKey, Resource]) -> set[Key]:
    """The objects added, removed or replaced (a new object, even with the same content: sources replace an object
    only when its document or its API version changed)."""
    changed: set[Key] = {key for key, obj in after.items() if before.get(key) is not obj}
    changed.update(before.keys() - after.keys())
    return changed


def routes_in_order(resources: ResourceSet) -> Iterator[Route]:
    """Every route, in translation order (KIND_RANKS), read without a dependency on their kinds: a route is its own
    fragment's business."""
    return chain[Route](resources.untracked_of_kind(AIGatewayRoute), resources.untracked_of_kind(HTTPRoute))


class TranslationCache:
    def __init__(self) -> None:
        self._fragments: dict[Key, RouteFragment] = {}
        self._readers: dict[Key, set[Key]] = {}  # object -> the routes whose fragments read it
        self._previous: ResourceSet | None = None
        self._options: TranslateOptions | None = None
        self._shared: frozenset[Key] = frozenset()  # what the shared part read
        self._selectors: dict[Key, Mapping[str, str]] = {}  # the labels of each selection someone read
        # The selections by each (kind, namespace, label, value) they require: an object can only be selected by
        # those of its own labels.
        self._by_label: dict[tuple[str, str, str, str], set[Key]] = {}
        self._shared_kinds: frozenset[str] = frozenset()  # kinds read whole
        self.assembly = Assembly(lambda port: port)
        self._values: dict[str, Hashable] = {}  # see shared_value
        # The routes to translate (those without a fragment), or None: every route.
        self._pending: set[Key] | None = None
        self.reused = 0  # fragments reused by the latest translation (for tests and benchmarks)

    def start(self, resources: ResourceSet, options: TranslateOptions) -> None:
        """Drops the fragments the change since the previous translation may have made wrong."""
        previous, self._previous = self._previous, resources
        if previous is None or options != self._options:
            self._options = options
            self.clear()
            return
        known = resources.changed_since(previous)  # a source that kept track of its changes says which
        changed: set[Key] = set(known) if known is not None else changed_keys(previous.objects, resources.objects)
        resources.index_from(previous, changed)
        changed |= self._selections_changed(changed, previous, resources)
        changed |= {kind_key(kind) for kind, _, _ in changed}  # the routes that read a whole kind
        if not changed.isdisjoint(self._shared) or any(kind in self._shared_kinds for kind, _, _ in changed):
            self.clear()
            return
        pending = {key for key in changed if key[0] in KIND_RANKS}  # new, edited and deleted routes
        for key in changed:
            for route in self._readers.pop(key, ()):
                self._drop(route)
                pending.add(route)
        self._pending = pending

    def shared_value(self, name: str, value: Hashable) -> None:
        """A value the shared part computed from objects it read without a dependency (a summary of every route,
        say): when it differs from the last translation's, every fragment goes (call it before any route)."""
        if self._values.get(name, value) != value:
            self.clear()
        self._values[name] = value

    def pending(self, resources: ResourceSet) -> list[Route]:
        """The routes to translate, in translation order: those the change since the last translation concerns, or
        every route after a change to what every route reads."""
        if self._pending is None:
            return list(routes_in_order(resources))
        found = []
        for kind, namespace, name in sorted(self._pending, key=lambda key: (KIND_RANKS[key[0]], key[1], key[2])):
            route = resources.objects.get(ObjectKey(kind, namespace, name))
            if isinstance(route, HTTPRoute | AIGatewayRoute) and (kind, namespace, name) not in self._fragments:
                found.append(route)
        return found

    def _selections_changed(self, changed: set[Key], before: ResourceSet, after: ResourceSet) -> set[Key]:
        """The selections (see translators.tracking) that a changed object was or is now selected by."""
        found: set[Key] = set()
        if not self._by_label:
            return found
        for kind, namespace, name in changed:
            key = ObjectKey(kind, namespace, name)
            for version in (before.objects.get(key), after.objects.get(key)):
                if version is None:
                    continue
                labels = version.metadata.labels
                for label, value in labels.items():
                    for selection in self._by_label.get((kind, namespace, label, value), ()):
                        if selection not in found and selects(labels, self._selectors[selection]):
                            found.add(selection)
        return found

    def put(self, fragment: RouteFragment) -> None:
        key = (fragment.ref.kind, fragment.ref.namespace, fragment.ref.name)
        self._drop(key)
        self._fragments[key] = fragment
        self.assembly.add(fragment)
        for read in fragment.reads:
            self._readers.setdefault(read, set()).add(key)

    @property
    def size(self) -> int:
        """How many routes' fragments it holds."""
        return len(self._fragments)

    def finish(self, tracker: Tracker) -> None:
        """After a translation: what its shared part read. Every fragment kept is of a route that exists: a deleted
        route's fragment went with the route (a fragment reads its route)."""
        self._pending = set()
        self._shared = frozenset(tracker.shared.keys)
        self._shared_kinds = frozenset(tracker.kinds)
        for key, labels in tracker.selectors.items():
            if key not in self._selectors:
                self._selectors[key] = labels
                for label, value in labels.items():
                    self._by_label.setdefault((key[0], key[1], label, value), set()).add(key)

    def clear(self) -> None:
        self._fragments.clear()
        self._pending = None
        self.assembly = Assembly((self._options or TranslateOptions()).envoy_port)
        self._readers.clear()
        self._selectors.clear()
        self._by_label.clear()

    def _drop(self, key: Key) -> None:
        fragment = self._fragments.pop(key, None)
        if fragment is not None:
            self.assembly.remove(fragment)
            for read in fragment.reads:
                readers = self._readers.get(read)
                if readers is not None:
                    readers.discard(key)
                    if not readers:
                        del self._readers[read]
