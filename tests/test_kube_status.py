"""The status merge of cluster mode: only our entries change, nothing flaps, stale entries go."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from translators.ir import (
    Condition,
    ConditionStatus,
    ListenerStatus,
    ObjectRef,
    ObjectStatus,
    ParentRefIR,
    ParentStatus,
)
from xds_server.kube.status import Ownership, StaleObject, desired_status

OURS = "gateway.envoyproxy.io/gatewayclass-controller"
OWNERSHIP = Ownership(OURS, frozenset({("default", "foreign-gw")}))
T0 = "2026-01-01T00:00:00Z"
T1 = "2026-01-01T00:01:00Z"
TRUE, FALSE = ConditionStatus.TRUE, ConditionStatus.FALSE


def accepted(ok: bool = True, reason: str = "Accepted") -> Condition:
    return Condition("Accepted", TRUE if ok else FALSE, reason, "why")


def stored(kind: str, status: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "x/v1",
        "kind": kind,
        "metadata": {"name": "r", "namespace": "default", "generation": generation, "resourceVersion": "7"},
        "status": status,
    }


def route_status(*parents: ParentStatus, generation: int = 1) -> ObjectStatus:
    return ObjectStatus(ObjectRef("HTTPRoute", "default", "r"), (), generation, parents=parents)


GW = ParentRefIR("default", "gw")
FOREIGN_ENTRY = {
    "parentRef": {"name": "other"},
    "controllerName": "example.com/other",
    "conditions": [
        {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "observedGeneration": 1}
    ],
}


def test_route_parents_keep_other_controllers_entries_and_drop_our_stale_ones() -> None:
    stale = {"parentRef": {"name": "gone"}, "controllerName": OURS, "conditions": []}
    route = stored("HTTPRoute", {"parents": [FOREIGN_ENTRY, stale]})
    status = desired_status("HTTPRoute", route, route_status(ParentStatus(GW, (accepted(),))), OWNERSHIP, T0)
    assert status is not None
    assert status["parents"][0] == FOREIGN_ENTRY
    [ours] = status["parents"][1:]
    assert ours["controllerName"] == OURS
    assert ours["parentRef"] == {
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "namespace": "default",
        "name": "gw",
    }
    assert ours["conditions"] == [
        {
            "type": "Accepted",
            "status": "True",
            "reason": "Accepted",
            "message": "why",
            "lastTransitionTime": T0,
            "observedGeneration": 1,
        }
    ]


def test_a_route_we_say_nothing_of_loses_only_our_entries() -> None:
    ours = {"parentRef": {"name": "gw"}, "controllerName": OURS, "conditions": []}
    status = desired_status("HTTPRoute", stored("HTTPRoute", {"parents": [ours, FOREIGN_ENTRY]}), None, OWNERSHIP, T0)
    assert status == {"parents": [FOREIGN_ENTRY]}
    assert desired_status("HTTPRoute", stored("HTTPRoute", {"parents": [FOREIGN_ENTRY]}), None, OWNERSHIP, T0) is None


def test_unchanged_status_is_not_written_and_transition_time_moves_only_on_a_flip() -> None:
    ours = route_status(ParentStatus(GW, (accepted(),)))
    first = desired_status("HTTPRoute", stored("HTTPRoute", {}), ours, OWNERSHIP, T0)
    assert first is not None
    assert desired_status("HTTPRoute", stored("HTTPRoute", first), ours, OWNERSHIP, T1) is None
    reworded = route_status(ParentStatus(GW, (Condition("Accepted", TRUE, "Accepted", "other words"),)))
    second = desired_status("HTTPRoute", stored("HTTPRoute", first), reworded, OWNERSHIP, T1)
    assert second is not None and second["parents"][0]["conditions"][0]["lastTransitionTime"] == T0
    flipped = route_status(ParentStatus(GW, (accepted(False, "NotAllowedByListeners"),)))
    third = desired_status("HTTPRoute", stored("HTTPRoute", first), flipped, OWNERSHIP, T1)
    assert third is not None and third["parents"][0]["conditions"][0]["lastTransitionTime"] == T1


def test_a_parent_ref_stored_without_defaults_is_the_same_entry() -> None:
    entry = {
        "parentRef": {"name": "gw", "sectionName": "http"},
        "controllerName": OURS,
        "conditions": [
            {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "why", "lastTransitionTime": T0}
        ],
    }
    ours = route_status(ParentStatus(ParentRefIR("default", "gw", section_name="http"), (accepted(),)))
    status = desired_status("HTTPRoute", stored("HTTPRoute", {"parents": [entry]}), ours, OWNERSHIP, T1)
    assert status is not None and status["parents"][0]["conditions"][0]["lastTransitionTime"] == T0


def test_a_newer_stored_generation_means_our_copy_is_stale() -> None:
    newer = stored(
        "GatewayClass", {"conditions": [{"type": "Accepted", "status": "True", "observedGeneration": 3}]}, generation=3
    )
    ours = ObjectStatus(ObjectRef("GatewayClass", "", "c"), (accepted(),), generation=2)
    with pytest.raises(StaleObject):
        desired_status("GatewayClass", newer, ours, OWNERSHIP, T0)


def test_pool_parents_are_ours_unless_they_name_another_controllers_gateway() -> None:
    foreign = {"parentRef": {"name": "foreign-gw", "namespace": "default"}, "conditions": []}
    deleted_gateway = {"parentRef": {"name": "deleted", "namespace": "default"}, "conditions": []}
    pool = stored("InferencePool", {"parents": [foreign, deleted_gateway]})
    ours = ObjectStatus(ObjectRef("InferencePool", "default", "r"), (), 1, parents=(ParentStatus(GW, (accepted(),)),))
    status = desired_status("InferencePool", pool, ours, OWNERSHIP, T0)
    assert status is not None
    assert [p["parentRef"]["name"] for p in status["parents"]] == ["foreign-gw", "gw"]
    assert "controllerName" not in status["parents"][1]  # the v1.0.2 API has no such field
    assert status["parents"][1]["parentRef"]["namespace"] == "default"  # conformance requires it written
    unused = ObjectStatus(ObjectRef("InferencePool", "default", "r"), (), 1)
    assert desired_status("InferencePool", pool, unused, OWNERSHIP, T0) == {"parents": [foreign]}


def test_gateway_listeners_and_foreign_condition_types_and_addresses_are_kept() -> None:
    custom = {"type": "example.com/Custom", "status": "True", "reason": "Mine", "message": ""}
    addresses = [{"type": "IPAddress", "value": "10.0.0.1"}]
    gateway = stored("Gateway", {"conditions": [custom], "addresses": addresses})
    listener = ListenerStatus("http", (("gateway.networking.k8s.io", "HTTPRoute"),), 2, (accepted(),))
    ours = ObjectStatus(ObjectRef("Gateway", "default", "r"), (accepted(),), 1, listeners=(listener,))
    status = desired_status("Gateway", gateway, ours, OWNERSHIP, T0)
    assert status is not None
    assert status["addresses"] == addresses
    assert [c["type"] for c in status["conditions"]] == ["example.com/Custom", "Accepted"]
    assert status["listeners"] == [
        {
            "name": "http",
            "supportedKinds": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}],
            "attachedRoutes": 2,
            "conditions": [
                {
                    "type": "Accepted",
                    "status": "True",
                    "reason": "Accepted",
                    "message": "why",
                    "lastTransitionTime": T0,
                    "observedGeneration": 1,
                }
            ],
        }
    ]


def test_ai_gateway_kinds_get_accepted_or_not_accepted_as_envoy_ai_gateway_writes_them() -> None:
    ref = ObjectRef("AIGatewayRoute", "default", "r")
    good = desired_status(
        "AIGatewayRoute", stored("AIGatewayRoute", {}), ObjectStatus(ref, (accepted(),), 1), OWNERSHIP, T0
    )
    assert good is not None
    assert [(c["type"], c["status"], c["reason"]) for c in good["conditions"]] == [
        ("Accepted", "True", "ReconciliationSucceeded")
    ]
    broken = ObjectStatus(ref, (Condition("ResolvedRefs", FALSE, "BackendNotFound", "Service default/x not found"),), 2)
    bad = desired_status("AIGatewayRoute", stored("AIGatewayRoute", good, generation=2), broken, OWNERSHIP, T1)
    assert bad is not None
    [condition] = bad["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "NotAccepted",
        "False",
        "ReconciliationFailed",
    )
    assert "BackendNotFound" in condition["message"] and "default/x" in condition["message"]


def test_kinds_we_do_not_write_and_objects_we_do_not_manage_are_left_alone() -> None:
    assert desired_status("Service", stored("Service", {}), None, OWNERSHIP, T0) is None
    assert desired_status("Gateway", stored("Gateway", {"conditions": []}), None, OWNERSHIP, T0) is None


conditions = st.lists(
    st.builds(
        Condition,
        st.sampled_from(["Accepted", "ResolvedRefs", "Programmed"]),
        st.sampled_from([TRUE, FALSE]),
        st.sampled_from(["Accepted", "BackendNotFound", "Invalid"]),
        st.text(max_size=5),
    ),
    max_size=3,
    unique_by=lambda c: c.type,  # the translator gives one condition per type
)
parents = st.lists(
    st.builds(
        ParentStatus,
        st.builds(
            ParentRefIR, st.just("default"), st.sampled_from(["a", "b"]), section_name=st.sampled_from([None, "x"])
        ),
        conditions.map(tuple),
    ),
    max_size=3,
    unique_by=lambda p: p.parent,
)


@given(first=parents, second=parents)
def test_writing_what_we_would_write_again_is_a_no_op(first: list[ParentStatus], second: list[ParentStatus]) -> None:
    """Idempotence: after any history of our writes, the same verdict asks for no write (no status flapping)."""
    route = stored("HTTPRoute", {"parents": [FOREIGN_ENTRY]})
    for parents_now in (first, second):
        ours = route_status(*parents_now)
        status = desired_status("HTTPRoute", route, ours, OWNERSHIP, T0)
        if status is not None:
            route = {**route, "status": status}
        assert desired_status("HTTPRoute", route, ours, OWNERSHIP, T1) is None
        assert route["status"]["parents"][0] == FOREIGN_ENTRY


def test_pending_seen_by_this_replica_does_not_undo_programmed_written_for_the_same_generation() -> None:
    """In HA the Envoys may be connected to another replica: not seeing them here is no evidence."""
    written = {
        "type": "Programmed",
        "status": "True",
        "reason": "Programmed",
        "message": "held",
        "lastTransitionTime": T0,
        "observedGeneration": 2,
    }
    pending = Condition("Programmed", FALSE, "Pending", "no Envoy of this Gateway holds its current configuration yet")
    ours = ObjectStatus(ObjectRef("Gateway", "default", "r"), (pending,), generation=2)
    assert (
        desired_status("Gateway", stored("Gateway", {"conditions": [written], "listeners": []}, 2), ours, OWNERSHIP, T0)
        is None
    )
    bumped = replace(ours, generation=3)  # a new spec: nothing says an Envoy holds it yet
    status = desired_status("Gateway", stored("Gateway", {"conditions": [written]}, 3), bumped, OWNERSHIP, T0)
    assert status is not None and status["conditions"][0]["reason"] == "Pending"
    rejected = replace(ours, conditions=(Condition("Programmed", FALSE, "Invalid", "Envoy e rejected it"),))
    status = desired_status("Gateway", stored("Gateway", {"conditions": [written]}, 2), rejected, OWNERSHIP, T0)
    assert status is not None and status["conditions"][0]["status"] == "False"
