"""The translator's status book: conditions per object, per (object, parent) and per (Gateway, listener), merged
the way Kubernetes shows them (one condition per type; any False wins and carries every False message)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from translators.ir import (
    Condition,
    ConditionStatus,
    ListenerStatus,
    ObjectRef,
    ObjectStatus,
    ParentRefIR,
    ParentStatus,
)
from translators.resources import Resource


def ref_of(obj: Resource) -> ObjectRef:
    return ObjectRef(obj.kind, obj.namespace, obj.name)


def condition(type_: str, ok: bool, reason: str, message: str) -> Condition:
    return Condition(type_, ConditionStatus.TRUE if ok else ConditionStatus.FALSE, reason, message)


@dataclass
class _Listener:
    supported_kinds: tuple[tuple[str, str], ...]
    routes: set[ObjectRef] = field(default_factory=set)  # routes Accepted on it
    conditions: list[Condition] = field(default_factory=list)


@dataclass
class Entry:
    """What has been reported of one object so far."""

    generation: int
    conditions: list[Condition] = field(default_factory=list)
    parents: dict[ParentRefIR, list[Condition]] = field(default_factory=dict)  # in the order added or first reported
    listeners: dict[str, _Listener] = field(default_factory=dict)  # in spec order

    def copy(self) -> Entry:
        parents = {parent: list(found) for parent, found in self.parents.items()}
        listeners = {
            name: _Listener(lis.supported_kinds, set(lis.routes), list(lis.conditions))
            for name, lis in self.listeners.items()
        }
        return Entry(self.generation, list(self.conditions), parents, listeners)

    def status(self, ref: ObjectRef) -> ObjectStatus:
        return ObjectStatus(
            ref,
            merge(self.conditions),
            self.generation,
            tuple(ParentStatus(parent, merge(found)) for parent, found in self.parents.items()),
            tuple(
                ListenerStatus(name, lis.supported_kinds, len(lis.routes), merge(lis.conditions))
                for name, lis in self.listeners.items()
            ),
        )


class StatusBook:
    """What the translator says of each object. Objects never reported (or `ignore`d) get no status at all."""

    def __init__(self) -> None:
        self._entries: dict[ObjectRef, Entry] = {}
        self._ignored: set[ObjectRef] = set()
        # Entries taken whole from another book (a route's, translated in an earlier build), with their status: shared
        # with that book until something is reported here (then copied), so their status needs no building.
        self._adopted: dict[ObjectRef, ObjectStatus] = {}
        self._own: dict[ObjectRef, None] = {}  # entries reported here (not adopted, or adopted and then copied)
        self._base: SortedStatuses | None = None  # the adopted statuses, kept sorted by whoever adopted them

    def entry_of(self, obj: Resource) -> tuple[Entry | None, bool]:
        """The object's entry (None: nothing reported), and whether it is ignored."""
        ref = ref_of(obj)
        return self._entries.get(ref), ref in self._ignored

    def adopt_all(
        self, entries: Mapping[ObjectRef, Entry], statuses: SortedStatuses, ignored: Iterable[ObjectRef]
    ) -> None:
        """Takes objects' entries from other books (each route's, translated in this build or an earlier one), in C,
        with the statuses built from them, in order: listing the statuses then sorts only what is reported here. The
        entries are not modified (see `_entry`). Once per book."""
        assert self._base is None, "adopt_all once"
        self._ignored.update(ignored)
        self._entries.update(entries)
        self._adopted.update(statuses.by_ref)
        self._base = statuses

    def track(self, obj: Resource) -> None:
        """The object gets a status even with nothing in it (a pool no route uses: its old parents go)."""
        self._entry(obj)

    def ignore(self, obj: Resource) -> None:
        """The object is not this controller's to judge: whatever was reported on it is left out."""
        self._ignored.add(ref_of(obj))

    def report_unread(
        self,
        ref: ObjectRef,
        type_: str,
        ok: bool,
        reason: str,
        message: str,
        generation: int = 0,
        parents: Sequence[ParentRefIR] = (),
    ) -> None:
        """A condition on an object no model reads (an unsupported kind), known by reference only; the same condition
        goes on each of `parents` (the Gateways of this controller a route attaches to, or a policy applies to)."""
        entry = self._entries.setdefault(ref, Entry(generation))
        self._own[ref] = None
        found = condition(type_, ok, reason, message)
        entry.conditions.append(found)
        for parent in parents:
            entry.parents.setdefault(parent, []).append(found)

    def report(self, obj: Resource, type_: str, ok: bool, reason: str, message: str) -> None:
        self._entry(obj).conditions.append(condition(type_, ok, reason, message))

    def add_parent(self, obj: Resource, parent: ParentRefIR) -> None:
        """Places the object's entry for `parent` (parents are listed in the order they are added)."""
        self._entry(obj).parents.setdefault(parent, [])

    def report_parent(self, obj: Resource, parent: ParentRefIR, found: Condition) -> None:
        self._entry(obj).parents.setdefault(parent, []).append(found)

    def add_listener(self, gateway: Resource, name: str, supported_kinds: tuple[tuple[str, str], ...]) -> None:
        self._entry(gateway).listeners[name] = _Listener(supported_kinds)

    def report_listener(self, gateway: Resource, name: str, type_: str, ok: bool, reason: str, message: str) -> None:
        self._entry(gateway).listeners[name].conditions.append(condition(type_, ok, reason, message))

    def attach(self, gateway: Resource, listener: str, routes: Iterable[ObjectRef]) -> None:
        """`routes` are Accepted on the listener: they count in the listener's attachedRoutes (once per route)."""
        self._entry(gateway).listeners[listener].routes.update(routes)

    def take(self, obj: Resource, type_: str) -> Condition | None:
        """Removes the object's own conditions of one type and returns them merged (None if there were none)."""
        if ref_of(obj) not in self._entries:
            return None
        entry = self._entry(obj)
        taken = [c for c in entry.conditions if c.type == type_]
        entry.conditions = [c for c in entry.conditions if c.type != type_]
        return merge(taken)[0] if taken else None

    def parent_conditions(self, obj: Resource) -> dict[ParentRefIR, tuple[Condition, ...]]:
        entry = self._entries.get(ref_of(obj))
        return {parent: merge(found) for parent, found in entry.parents.items()} if entry else {}

    def statuses(self) -> tuple[ObjectStatus, ...]:
        if self._base is not None:
            return self._merged(self._base)
        # Sorted by plain string tuples: ObjectRef's own ordering compares in Python, far slower on a large book.
        ordered = sorted(self._entries.items(), key=lambda item: (item[0].kind, item[0].namespace, item[0].name))
        adopted = self._adopted
        return tuple(adopted.get(ref) or entry.status(ref) for ref, entry in ordered if ref not in self._ignored)

    def _merged(self, base: SortedStatuses) -> tuple[ObjectStatus, ...]:
        """The adopted statuses (already in order), with this book's own entries placed among them."""
        keys, statuses = list(base.keys), list(base.statuses)
        for ref in self._own:
            if ref in self._ignored:
                continue
            key = _sort_key(ref)
            at = bisect_left(keys, key)
            if ref in base.by_ref:
                statuses[at] = self._entries[ref].status(ref)
            else:
                keys.insert(at, key)
                statuses.insert(at, self._entries[ref].status(ref))
        return tuple(statuses)

    def _entry(self, obj: Resource) -> Entry:
        ref = ref_of(obj)
        entry = self._entries.get(ref)
        if entry is None:
            entry = self._entries[ref] = Entry(obj.metadata.generation)
            self._own[ref] = None
        elif ref in self._adopted:  # shared with the book it came from: this one's own copy, from now on
            del self._adopted[ref]
            entry = self._entries[ref] = entry.copy()
            self._own[ref] = None
        return entry


def _sort_key(ref: ObjectRef) -> tuple[str, str, str]:
    """Statuses are listed in this order: plain string tuples, since ObjectRef's own ordering compares in Python."""
    return (ref.kind, ref.namespace, ref.name)


class SortedStatuses:
    """Statuses by object, and their objects in status order, kept up to date one object at a time."""

    def __init__(self) -> None:
        self.by_ref: dict[ObjectRef, ObjectStatus] = {}
        self.keys: list[tuple[str, str, str]] = []  # sorted
        self.statuses: list[ObjectStatus] = []  # the status of each key

    def put(self, ref: ObjectRef, status: ObjectStatus) -> None:
        at = bisect_left(self.keys, _sort_key(ref))
        if ref in self.by_ref:
            self.statuses[at] = status
        else:
            self.keys.insert(at, _sort_key(ref))
            self.statuses.insert(at, status)
        self.by_ref[ref] = status

    def discard(self, ref: ObjectRef) -> None:
        if self.by_ref.pop(ref, None) is not None:
            at = bisect_left(self.keys, _sort_key(ref))
            del self.keys[at], self.statuses[at]


def merge(conditions: list[Condition]) -> tuple[Condition, ...]:
    """One condition per type, in the order types were first reported: any False wins and carries every False
    message; otherwise the first True stands."""
    grouped: dict[str, list[Condition]] = {}
    for found in conditions:
        grouped.setdefault(found.type, []).append(found)
    merged = []
    for same in grouped.values():
        failed = [c for c in same if c.status is ConditionStatus.FALSE]
        if failed:
            message = "; ".join(dict.fromkeys(c.message for c in failed))
            merged.append(Condition(failed[0].type, ConditionStatus.FALSE, failed[0].reason, message))
        else:
            merged.append(same[0])
    return tuple(merged)
