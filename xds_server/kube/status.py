"""What this controller writes into an object's `status`, merged into what the API server holds (pure: the writer in
`status_writer` does the reading and the PUTs).

The rules (Gateway API implementers guide, reference/controller.md §1-2): only our own entries change. Conditions
are a map by type: types we do not set are kept as they are. Route `parents` and policy `ancestors` are ours when
their `controllerName` is ours; InferencePool `parents` (no controllerName in the v1.0.2 API) are ours unless they name
a Gateway of another controller. Our stale entries are removed; an object that has no such list and gets no entry of
ours is not written at all. `lastTransitionTime` moves only when a condition's status flips, and a
status that did not change is not written at all, so nothing flaps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from translators.ir import (
    Condition,
    ConditionStatus,
    ListenerStatus,
    ObjectRef,
    ObjectStatus,
    ParentRefIR,
    ParentStatus,
)

MESSAGE_LIMIT = 32768  # metav1.Condition.message maxLength
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
CONDITION_LIMIT = 8  # conditions lists are MaxItems=8
PENDING = "Pending"  # the control plane's Programmed reason when it sees no Envoy holding the configuration


class StatusShape(StrEnum):
    """How a kind's status is laid out."""

    CONDITIONS = "conditions"  # GatewayClass: status.conditions
    GATEWAY = "gateway"  # status.conditions + status.listeners (+ status.addresses when provisioning)
    ROUTE_PARENTS = "route-parents"  # HTTPRoute: status.parents[] with controllerName
    POOL_PARENTS = "pool-parents"  # InferencePool: status.parents[] by Gateway, no controllerName
    AI_GATEWAY = "ai-gateway"  # AIGW kinds: status.conditions with Accepted / NotAccepted, as Envoy AI Gateway does
    # Policies (Gateway API's PolicyAncestorStatus): status.ancestors[] of {ancestorRef, controllerName, conditions}.
    POLICY_ANCESTORS = "policy-ancestors"


# The kinds whose status this controller writes.
SHAPES: Mapping[str, StatusShape] = {
    "GatewayClass": StatusShape.CONDITIONS,
    "Gateway": StatusShape.GATEWAY,
    "HTTPRoute": StatusShape.ROUTE_PARENTS,
    "InferencePool": StatusShape.POOL_PARENTS,
    "AIGatewayRoute": StatusShape.AI_GATEWAY,
    "AIServiceBackend": StatusShape.AI_GATEWAY,
    "BackendSecurityPolicy": StatusShape.AI_GATEWAY,
    # Kinds this controller does not implement (translators/gatewayapi/unsupported.py): Accepted False/Unsupported,
    # per Gateway of ours for routes and policies.
    **dict.fromkeys(("GRPCRoute", "TLSRoute", "TCPRoute", "UDPRoute"), StatusShape.ROUTE_PARENTS),
    **dict.fromkeys(
        ("SecurityPolicy", "BackendTrafficPolicy", "ClientTrafficPolicy", "EnvoyExtensionPolicy", "EnvoyPatchPolicy"),
        StatusShape.POLICY_ANCESTORS,
    ),
    # Their conditions are their parent Gateway's controller's: ours when their parent is our Gateway.
    **dict.fromkeys(("ListenerSet", "XListenerSet"), StatusShape.CONDITIONS),
    # Envoy AI Gateway's kinds keep its status layout: conditions only.
    **dict.fromkeys(("MCPRoute", "QuotaPolicy"), StatusShape.AI_GATEWAY),
}

# Envoy AI Gateway's reasons, kept so tools written against it keep working; our reason leads the message.
AI_GATEWAY_ACCEPTED = ("Accepted", "ReconciliationSucceeded")
AI_GATEWAY_REJECTED = ("NotAccepted", "ReconciliationFailed")


ADDRESS_LIMIT = 16  # Gateway status.addresses is MaxItems=16
ANCESTOR_LIMIT = 16  # PolicyStatus.ancestors is MaxItems=16


@dataclass(frozen=True)
class GatewayInfra:
    """What the provisioned Envoys of a Gateway say: its addresses (from its Service) and its available replicas."""

    addresses: tuple[tuple[str, str], ...]  # (type: IPAddress | Hostname, value)
    available_replicas: int
    replicas: int
    note: str = ""  # why there are no addresses, or where they came from when that is not obvious


def with_infrastructure(conditions: tuple[Condition, ...], infra: GatewayInfra) -> tuple[Condition, ...]:
    """A Gateway's Programmed with its provisioned Envoys taken into account (reference/controller.md §1.3).

    In order: a configuration error (translation, an Envoy's NACK, a snapshot not published: False with another
    reason than Pending) stays; else no address -> False/AddressNotAssigned; else no available replica ->
    False/NoResources; else the control plane's own verdict stays, True once an Envoy holds the current
    configuration, False/Pending until then (which `_keep_programmed` may still keep at an earlier True), its
    message prefixed with the replica count.
    """
    programmed = next((c for c in conditions if c.type == "Programmed"), None)
    if programmed is None or (programmed.status is ConditionStatus.FALSE and programmed.reason != PENDING):
        return conditions
    replicas = f"{infra.available_replicas}/{infra.replicas} Envoy replicas available"
    note = f" ({infra.note})" if infra.note else ""
    if not infra.addresses:
        message = f"No addresses have been assigned to the Gateway{note}"
        verdict = Condition("Programmed", ConditionStatus.FALSE, "AddressNotAssigned", message)
    elif infra.available_replicas < 1:
        verdict = Condition("Programmed", ConditionStatus.FALSE, "NoResources", f"{replicas}{note}")
    else:
        message = f"Address assigned to the Gateway{note}, {replicas}; {programmed.message}"
        verdict = Condition("Programmed", programmed.status, programmed.reason, message)
    return tuple(verdict if c is programmed else c for c in conditions)


def address_dicts(infra: GatewayInfra) -> list[dict[str, str]]:
    return [{"type": kind, "value": value} for kind, value in infra.addresses[:ADDRESS_LIMIT]]


@dataclass(frozen=True)
class Ownership:
    controller_name: str
    foreign_gateways: frozenset[tuple[str, str]]  # (namespace, name) of Gateways whose class is another controller's


class StaleObject(Exception):
    """The stored status was computed from a newer generation than ours: our copy lags, the watch will catch up."""


def condition_dicts(
    ours: Sequence[Condition], stored: Sequence[Mapping[str, Any]], generation: int, now: str
) -> list[dict[str, Any]]:
    """`stored` with each of `ours` set (by type), keeping lastTransitionTime unless the status flipped."""
    by_type: dict[Any, dict[str, Any]] = {c.get("type"): dict(c) for c in stored if isinstance(c, Mapping)}
    for condition in ours:
        previous = by_type.get(condition.type)
        if previous is not None and int(previous.get("observedGeneration") or 0) > generation:
            raise StaleObject(f"condition {condition.type} observed generation {previous['observedGeneration']}")
        flipped = previous is None or previous.get("status") != str(condition.status)
        by_type[condition.type] = {
            "type": condition.type,
            "status": str(condition.status),
            "reason": condition.reason,
            "message": condition.message[:MESSAGE_LIMIT],
            "lastTransitionTime": now if previous is None or flipped else previous.get("lastTransitionTime", now),
            "observedGeneration": generation,
        }
    return list(by_type.values())[:CONDITION_LIMIT]


def parent_ref_dict(ref: ParentRefIR) -> dict[str, Any]:
    document: dict[str, Any] = {"group": ref.group, "kind": ref.kind, "namespace": ref.namespace, "name": ref.name}
    if ref.section_name is not None:
        document["sectionName"] = ref.section_name
    if ref.port is not None:
        document["port"] = ref.port
    return document


def _same_ref(stored: Any, ref: Mapping[str, Any], namespace: str) -> bool:
    """A stored parentRef with the API's defaults filled in (group, kind, the object's namespace) equals `ref`."""
    if not isinstance(stored, Mapping):
        return False
    filled = {"group": GATEWAY_API_GROUP, "kind": "Gateway", "namespace": namespace, **stored}
    return {k: filled.get(k) for k in ref} == dict(ref) and set(filled) <= {*ref, "group", "kind", "namespace"}


def _parent_entries(
    ours: Sequence[ParentStatus],
    stored: Sequence[Any],
    is_ours: Callable[[Mapping[str, Any]], bool],
    namespace: str,
    generation: int,
    now: str,
    controller_name: str | None,
    ref_key: str = "parentRef",
) -> list[dict[str, Any]]:
    kept = [entry for entry in stored if isinstance(entry, Mapping) and not is_ours(entry)]
    mine = [entry for entry in stored if isinstance(entry, Mapping) and is_ours(entry)]
    entries: list[dict[str, Any]] = [dict(entry) for entry in kept]
    for parent in ours:
        ref = parent_ref_dict(parent.parent)
        previous = next((e for e in mine if _same_ref(e.get(ref_key), ref, namespace)), None)
        conditions = condition_dicts(parent.conditions, (previous or {}).get("conditions") or [], generation, now)
        entry: dict[str, Any] = {ref_key: ref}
        if controller_name is not None:
            entry["controllerName"] = controller_name
        entry["conditions"] = conditions
        entries.append(entry)
    return entries


def _listener_entries(ours: Sequence[ListenerStatus], stored: Sequence[Any], generation: int, now: str) -> list[Any]:
    by_name = {entry.get("name"): entry for entry in stored if isinstance(entry, Mapping)}
    entries = []
    for listener in ours:
        previous = by_name.get(listener.name) or {}
        entries.append(
            {
                "name": listener.name,
                "supportedKinds": [{"group": group, "kind": kind} for group, kind in listener.supported_kinds],
                "attachedRoutes": listener.attached_routes,
                "conditions": condition_dicts(listener.conditions, previous.get("conditions") or [], generation, now),
            }
        )
    return entries


def _listener_conditions(stored: Mapping[str, Any], name: str) -> Sequence[Any]:
    listener = next(
        (lis for lis in stored.get("listeners") or [] if isinstance(lis, Mapping) and lis.get("name") == name), {}
    )
    conditions: Sequence[Any] = listener.get("conditions") or []
    return conditions


def _keep_programmed(ours: tuple[Condition, ...], stored: Sequence[Any], generation: int) -> tuple[Condition, ...]:
    """Programmed=False/Pending means this replica sees no Envoy holding the configuration, which is no evidence
    when the Envoys are connected to another replica: it does not overwrite a True written for this generation."""
    pending = next((c for c in ours if c.type == "Programmed" and c.reason == PENDING), None)
    previous = next((c for c in stored if isinstance(c, Mapping) and c.get("type") == "Programmed"), None)
    if pending is None or previous is None:
        return ours
    if previous.get("status") != "True" or int(previous.get("observedGeneration") or 0) != generation:
        return ours
    kept = Condition("Programmed", ConditionStatus.TRUE, str(previous.get("reason")), str(previous.get("message")))
    return tuple(kept if c is pending else c for c in ours)


def _ai_gateway_conditions(ours: ObjectStatus) -> list[Condition]:
    failed = [c for c in ours.conditions if c.status is ConditionStatus.FALSE]
    if failed:
        message = "; ".join(f"{c.type} {c.reason}: {c.message}" for c in failed)
        return [Condition(AI_GATEWAY_REJECTED[0], ConditionStatus.FALSE, AI_GATEWAY_REJECTED[1], message)]
    message = "; ".join(c.message for c in ours.conditions) or "accepted"
    return [Condition(AI_GATEWAY_ACCEPTED[0], ConditionStatus.TRUE, AI_GATEWAY_ACCEPTED[1], message)]


def desired_status(
    kind: str,
    stored_object: Mapping[str, Any],
    ours: ObjectStatus | None,
    ownership: Ownership,
    now: str,
    infra: GatewayInfra | None = None,
) -> dict[str, Any] | None:
    """The status to write on `stored_object`, or None when it already says what we would write (or is not ours to
    write). Raises `StaleObject` when the stored status is newer than our view of the object. `infra` (a Gateway's
    provisioned Envoys; None when it is not provisioned) sets its addresses and takes part in its Programmed."""
    shape = SHAPES.get(kind)
    if shape is None:
        return None
    stored: dict[str, Any] = dict(stored_object.get("status") or {})
    metadata = stored_object.get("metadata") or {}
    namespace = str(metadata.get("namespace") or "")
    generation = ours.generation if ours is not None else int(metadata.get("generation") or 0)
    status = dict(stored)
    if shape in (StatusShape.ROUTE_PARENTS, StatusShape.POOL_PARENTS, StatusShape.POLICY_ANCESTORS):
        # An object we say nothing of has no parents of ours any more: our old entries go.
        parents = ours.parents if ours is not None else ()
        if shape is StatusShape.POOL_PARENTS:

            def is_ours(entry: Mapping[str, Any]) -> bool:
                ref = entry.get("parentRef") or {}
                gateway = (str(ref.get("namespace") or namespace), str(ref.get("name") or ""))
                return gateway not in ownership.foreign_gateways

            controller: str | None = None
        else:

            def is_ours(entry: Mapping[str, Any]) -> bool:
                return entry.get("controllerName") == ownership.controller_name

            controller = ownership.controller_name
        key, ref_key = (
            ("ancestors", "ancestorRef") if shape is StatusShape.POLICY_ANCESTORS else ("parents", "parentRef")
        )
        entries = _parent_entries(
            parents, stored.get(key) or [], is_ours, namespace, generation, now, controller, ref_key
        )
        if shape is StatusShape.POLICY_ANCESTORS:
            entries = entries[:ANCESTOR_LIMIT]
        if entries or key in stored:  # an object that had none and gets none of ours is left as it is
            status[key] = entries
    elif ours is None:
        return None  # a Gateway, class or AIGW object we do not manage: its conditions are someone else's
    elif shape is StatusShape.AI_GATEWAY:
        summary = _ai_gateway_conditions(ours)
        other = {AI_GATEWAY_ACCEPTED[0], AI_GATEWAY_REJECTED[0]} - {summary[0].type}
        kept = [c for c in stored.get("conditions") or [] if isinstance(c, Mapping) and c.get("type") not in other]
        status["conditions"] = condition_dicts(summary, kept, generation, now)
    else:
        stored_conditions = stored.get("conditions") or []
        conditions = ours.conditions
        if shape is StatusShape.GATEWAY:
            if infra is not None:
                conditions = with_infrastructure(conditions, infra)
                addresses = address_dicts(infra)
                if addresses:
                    status["addresses"] = addresses
                else:
                    status.pop("addresses", None)
            conditions = _keep_programmed(conditions, stored_conditions, generation)
            listeners = tuple(
                replace(
                    lis, conditions=_keep_programmed(lis.conditions, _listener_conditions(stored, lis.name), generation)
                )
                for lis in ours.listeners
            )
            status["listeners"] = _listener_entries(listeners, stored.get("listeners") or [], generation, now)
        status["conditions"] = condition_dicts(conditions, stored_conditions, generation, now)
    return None if status == stored else status


def invalid_object_status(
    kind: str, raw: Mapping[str, Any], problems: Sequence[str], is_our_gateway: Callable[[str, str], bool]
) -> ObjectStatus | None:
    """What to say of an object the API server stored but the translator refused (its last good version, if any,
    keeps being served): Accepted False with every problem, on the object or on each of its parents of ours."""
    shape = SHAPES.get(kind)
    metadata = raw.get("metadata") or {}
    namespace, name = str(metadata.get("namespace") or ""), str(metadata.get("name") or "")
    generation = int(metadata.get("generation") or 0)
    message = "invalid: " + "; ".join(problems)
    ref = ObjectRef(kind, namespace, name)
    if shape is StatusShape.ROUTE_PARENTS:
        parents = []
        for parent in (raw.get("spec") or {}).get("parentRefs") or []:
            if not isinstance(parent, Mapping) or parent.get("kind", "Gateway") != "Gateway":
                continue
            parent_ref = ParentRefIR(
                str(parent.get("namespace") or namespace),
                str(parent.get("name") or ""),
                section_name=parent.get("sectionName"),
                port=parent.get("port"),
            )
            if is_our_gateway(parent_ref.namespace, parent_ref.name):
                rejected = Condition("Accepted", ConditionStatus.FALSE, "UnsupportedValue", message)
                parents.append(ParentStatus(parent_ref, (rejected,)))
        return ObjectStatus(ref, (), generation, parents=tuple(parents))
    if shape in (StatusShape.CONDITIONS, StatusShape.GATEWAY, StatusShape.AI_GATEWAY):
        reason = "InvalidParameters" if shape is StatusShape.CONDITIONS else "Invalid"
        return ObjectStatus(ref, (Condition("Accepted", ConditionStatus.FALSE, reason, message),), generation)
    return None  # an InferencePool's parents stay as its last good version earned them
