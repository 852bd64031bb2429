"""The translator's status book: conditions per object, merged the way Kubernetes shows them."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from translators.ir import Condition, ConditionStatus, ObjectRef, ObjectStatus
from translators.resources import Resource


@dataclass
class StatusBook:
    conditions: dict[ObjectRef, list[Condition]] = field(default_factory=lambda: defaultdict(list))

    def report(self, obj: Resource, type_: str, ok: bool, reason: str, message: str, parent: str = "") -> None:
        status = ConditionStatus.TRUE if ok else ConditionStatus.FALSE
        self.conditions[ref_of(obj)].append(Condition(type_, status, reason, message, parent))

    def has(self, obj: Resource, type_: str) -> bool:
        return any(c.type == type_ for c in self.conditions.get(ref_of(obj), []))

    def statuses(self) -> tuple[ObjectStatus, ...]:
        return tuple(ObjectStatus(ref, _merge(conds)) for ref, conds in sorted(self.conditions.items()))


def ref_of(obj: Resource) -> ObjectRef:
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
