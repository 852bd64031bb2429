"""The translator's status book: conditions per object, per (object, parent) and per (Gateway, listener), merged
the way Kubernetes shows them (one condition per type; any False wins and carries every False message)."""

from __future__ import annotations

from collections.abc import Sequence
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
class _Entry:
    generation: int
    conditions: list[Condition] = field(default_factory=list)
    parents: dict[ParentRefIR, list[Condition]] = field(default_factory=dict)  # in the order added or first reported
    listeners: dict[str, _Listener] = field(default_factory=dict)  # in spec order


class StatusBook:
    """What the translator says of each object. Objects never reported (or `ignore`d) get no status at all."""

    def __init__(self) -> None:
        self._entries: dict[ObjectRef, _Entry] = {}
        self._ignored: set[ObjectRef] = set()

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
        entry = self._entries.setdefault(ref, _Entry(generation))
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

    def attach(self, gateway: Resource, listener: str, route: Resource) -> None:
        """`route` is Accepted on the listener: it counts in the listener's attachedRoutes (once per route)."""
        self._entry(gateway).listeners[listener].routes.add(ref_of(route))

    def take(self, obj: Resource, type_: str) -> Condition | None:
        """Removes the object's own conditions of one type and returns them merged (None if there were none)."""
        entry = self._entries.get(ref_of(obj))
        if entry is None:
            return None
        taken = [c for c in entry.conditions if c.type == type_]
        entry.conditions = [c for c in entry.conditions if c.type != type_]
        return merge(taken)[0] if taken else None

    def parent_conditions(self, obj: Resource) -> dict[ParentRefIR, tuple[Condition, ...]]:
        entry = self._entries.get(ref_of(obj))
        return {parent: merge(found) for parent, found in entry.parents.items()} if entry else {}

    def statuses(self) -> tuple[ObjectStatus, ...]:
        return tuple(
            ObjectStatus(
                ref,
                merge(entry.conditions),
                entry.generation,
                tuple(ParentStatus(parent, merge(found)) for parent, found in entry.parents.items()),
                tuple(
                    ListenerStatus(name, lis.supported_kinds, len(lis.routes), merge(lis.conditions))
                    for name, lis in entry.listeners.items()
                ),
            )
            for ref, entry in sorted(self._entries.items())
            if ref not in self._ignored
        )

    def _entry(self, obj: Resource) -> _Entry:
        ref = ref_of(obj)
        if ref not in self._entries:
            self._entries[ref] = _Entry(obj.metadata.generation)
        return self._entries[ref]


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
