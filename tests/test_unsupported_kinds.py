"""Objects of kinds this controller does not implement (SecurityPolicy, GRPCRoute, ...): the references they make,
which of them concern this controller (its Gateways, or a route attached to one) and get Accepted False/Unsupported
per Gateway, how the cluster source stores and publishes them, and the status a cluster gets (route `parents`,
policy `ancestors`, only our entries). The real API server's part is e2e/kube/test_unsupported_kinds.py."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest

from translators.gatewayapi import translate
from translators.ir import (
    Condition,
    ConditionStatus,
    ObjectRef,
    ObjectStatus,
    ParentRefIR,
    ParentStatus,
    TranslateOptions,
)
from translators.loader import Origin, Reference, UnknownObject, load_texts, parse_document
from xds_server.kube.status import SHAPES, Ownership, StatusShape, desired_status
from xds_server.sources.kubernetes.client import ApiError, RawApi
from xds_server.sources.kubernetes.kinds import BY_NAME, watched_kinds
from xds_server.sources.kubernetes.objects import strip, translation_input_changed
from xds_server.sources.kubernetes.reflector import Reflector, Timing
from xds_server.sources.kubernetes.store import Store

OURS = "example.com/ours"
OPTIONS = TranslateOptions(controller_names=frozenset({OURS}))
GATEWAY_API = "gateway.networking.k8s.io"
EG = "gateway.envoyproxy.io/v1alpha1"

BASE = f"""
apiVersion: {GATEWAY_API}/v1
kind: GatewayClass
metadata: {{name: ours}}
spec: {{controllerName: {OURS}}}
---
apiVersion: {GATEWAY_API}/v1
kind: GatewayClass
metadata: {{name: theirs}}
spec: {{controllerName: example.com/theirs}}
---
apiVersion: {GATEWAY_API}/v1
kind: Gateway
metadata: {{name: gw, namespace: ns}}
spec: {{gatewayClassName: ours, listeners: [{{name: http, port: 80, protocol: HTTP}}]}}
---
apiVersion: {GATEWAY_API}/v1
kind: Gateway
metadata: {{name: foreign, namespace: ns}}
spec: {{gatewayClassName: theirs, listeners: [{{name: http, port: 80, protocol: HTTP}}]}}
---
apiVersion: {GATEWAY_API}/v1
kind: HTTPRoute
metadata: {{name: on-ours, namespace: ns}}
spec: {{parentRefs: [{{name: gw}}], rules: [{{}}]}}
---
apiVersion: {GATEWAY_API}/v1
kind: HTTPRoute
metadata: {{name: on-foreign, namespace: ns}}
spec: {{parentRefs: [{{name: foreign}}], rules: [{{}}]}}
"""


def unknown(kind: str, spec: dict[str, Any], namespace: str = "ns", generation: int = 3) -> UnknownObject:
    group = EG if kind.endswith("Policy") else f"{GATEWAY_API}/v1"
    raw = {
        "apiVersion": group,
        "kind": kind,
        "metadata": {"name": "x", "namespace": namespace, "generation": generation},
        "spec": spec,
    }
    parsed = parse_document(raw, Origin("test", 1))
    assert isinstance(parsed, UnknownObject)
    return parsed


def statuses(extra: str) -> dict[tuple[str, str], ObjectStatus]:
    resources = load_texts([("in.yaml", BASE + "---\n" + extra)])
    assert not resources.errors, resources.errors
    return {(s.ref.kind, s.ref.name): s for s in translate(resources, OPTIONS).statuses}


def policy(name: str, targets: str, kind: str = "SecurityPolicy") -> str:
    return f"apiVersion: {EG}\nkind: {kind}\nmetadata: {{name: {name}, namespace: ns}}\nspec: {targets}\n"


def grpc_route(name: str, parents: str) -> str:
    return (
        f"apiVersion: {GATEWAY_API}/v1\nkind: GRPCRoute\nmetadata: {{name: {name}, namespace: ns}}\nspec: {parents}\n"
    )


UNSUPPORTED = ("Accepted", ConditionStatus.FALSE, "Unsupported")


def unsupported(status: ObjectStatus) -> bool:
    return [(c.type, c.status, c.reason) for c in status.conditions] == [UNSUPPORTED] and all(
        [(c.type, c.status, c.reason) for c in p.conditions] == [UNSUPPORTED] for p in status.parents
    )


# --- the references ------------------------------------------------------------------------------------------------


def test_references_take_the_api_defaults_and_the_objects_namespace() -> None:
    route = unknown(
        "GRPCRoute",
        {"parentRefs": [{"name": "gw"}, {"name": "o", "namespace": "other", "sectionName": "grpc", "port": 8080}]},
    )
    assert route.references == (
        Reference(True, GATEWAY_API, "Gateway", "ns", "gw"),
        Reference(True, GATEWAY_API, "Gateway", "other", "o", "grpc", 8080),
    )
    assert route.generation == 3
    targets = unknown(
        "SecurityPolicy",
        {
            "targetRef": {"group": GATEWAY_API, "kind": "Gateway", "name": "gw"},
            "targetRefs": [{"group": GATEWAY_API, "kind": "HTTPRoute", "name": "r", "sectionName": "rule-1"}],
        },
    )
    assert targets.references == (
        Reference(False, GATEWAY_API, "Gateway", "ns", "gw"),
        Reference(False, GATEWAY_API, "HTTPRoute", "ns", "r", "rule-1"),
    )
    listener_set = unknown("ListenerSet", {"parentRef": {"name": "gw"}})
    assert listener_set.references == (Reference(True, GATEWAY_API, "Gateway", "ns", "gw"),)


def test_malformed_references_are_skipped_and_files_default_the_namespace() -> None:
    odd = unknown(
        "SecurityPolicy",
        {"targetRefs": ["gw", {"kind": "Gateway"}, {"kind": "Gateway", "name": ""}, {"kind": "Gateway", "name": "g"}]},
        namespace="",
    )
    assert odd.references == (Reference(False, GATEWAY_API, "Gateway", "default", "g"),)
    assert unknown("GRPCRoute", {"parentRefs": "gw"}).references == ()
    assert unknown("GRPCRoute", {"parentRefs": [{"name": "gw", "port": True}]}).references[0].port is None
    assert parse_document({"apiVersion": EG, "kind": "SecurityPolicy", "spec": "x"}, Origin("t", 1)) == UnknownObject(
        EG, "SecurityPolicy", "", "", Origin("t", 1)
    )


# --- which objects concern this controller --------------------------------------------------------------------------


def test_a_policy_targeting_our_gateway_is_unsupported_there_and_one_targeting_anothers_gets_nothing() -> None:
    found = statuses(
        policy("mine", f"{{targetRefs: [{{group: {GATEWAY_API}, kind: Gateway, name: gw, sectionName: http}}]}}")
        + "---\n"
        + policy("theirs", f"{{targetRefs: [{{group: {GATEWAY_API}, kind: Gateway, name: foreign}}]}}")
    )
    mine = found[("SecurityPolicy", "mine")]
    assert unsupported(mine) and mine.generation == 0  # files: no generation
    assert [p.parent for p in mine.parents] == [ParentRefIR("ns", "gw", section_name="http")]
    assert "authentication" in mine.conditions[0].message
    assert ("SecurityPolicy", "theirs") not in found


def test_a_policy_targeting_a_route_has_the_routes_gateways_of_ours_as_ancestors() -> None:
    found = statuses(
        policy("on-route", f"{{targetRefs: [{{group: {GATEWAY_API}, kind: HTTPRoute, name: on-ours}}]}}")
        + "---\n"
        + policy("on-foreign-route", f"{{targetRef: {{group: {GATEWAY_API}, kind: HTTPRoute, name: on-foreign}}}}")
        + "---\n"
        + policy("on-missing-route", f"{{targetRefs: [{{group: {GATEWAY_API}, kind: HTTPRoute, name: nope}}]}}")
        + "---\n"
        + grpc_route("grpc", "{parentRefs: [{name: gw}]}")
        + "---\n"
        + policy(
            "on-grpc", f"{{targetRefs: [{{group: {GATEWAY_API}, kind: GRPCRoute, name: grpc}}]}}", "ClientTrafficPolicy"
        )
    )
    assert [p.parent for p in found[("SecurityPolicy", "on-route")].parents] == [ParentRefIR("ns", "gw")]
    assert [p.parent for p in found[("ClientTrafficPolicy", "on-grpc")].parents] == [ParentRefIR("ns", "gw")]
    assert ("SecurityPolicy", "on-foreign-route") not in found
    assert ("SecurityPolicy", "on-missing-route") not in found


def test_a_route_of_an_unsupported_kind_gets_an_entry_per_parent_ref_of_ours() -> None:
    found = statuses(
        grpc_route("both", "{parentRefs: [{name: foreign}, {name: gw, sectionName: http}, {name: gw, port: 80}]}")
        + "---\n"
        + grpc_route("foreign-only", "{parentRefs: [{name: foreign}, {name: missing}]}")
        + "---\n"
        + f"apiVersion: {GATEWAY_API}/v1\nkind: ListenerSet\nmetadata: {{name: extra, namespace: ns}}\n"
        + "spec: {parentRef: {name: gw}}\n---\n"
        + grpc_route("via-listener-set", f"{{parentRefs: [{{group: {GATEWAY_API}, kind: ListenerSet, name: extra}}]}}")
    )
    both = found[("GRPCRoute", "both")]
    assert unsupported(both)
    assert [p.parent for p in both.parents] == [
        ParentRefIR("ns", "gw", section_name="http"),
        ParentRefIR("ns", "gw", port=80),
    ]
    assert ("GRPCRoute", "foreign-only") not in found
    assert [p.parent for p in found[("ListenerSet", "extra")].parents] == [ParentRefIR("ns", "gw")]
    [via] = found[("GRPCRoute", "via-listener-set")].parents
    assert via.parent == ParentRefIR("ns", "extra", GATEWAY_API, "ListenerSet")


AI_ROUTE = """apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIGatewayRoute
metadata: {name: ai, namespace: ns}
spec:
  parentRefs: [{name: gw}]
  rules: [{matches: [{headers: [{name: x-ai-eg-model, value: m}]}], backendRefs: [{name: used}]}]
---
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIGatewayRoute
metadata: {name: ai-foreign, namespace: ns}
spec:
  parentRefs: [{name: foreign}]
  rules: [{matches: [{headers: [{name: x-ai-eg-model, value: m}]}], backendRefs: [{name: theirs}]}]
"""


def quota(name: str, backend: str) -> str:
    return (
        f"apiVersion: aigateway.envoyproxy.io/v1alpha1\nkind: QuotaPolicy\nmetadata: {{name: {name}, namespace: ns}}\n"
        f"spec: {{targetRefs: [{{group: aigateway.envoyproxy.io, kind: AIServiceBackend, name: {backend}}}]}}\n"
    )


def test_a_quota_on_a_backend_our_ai_routes_use_is_unsupported_on_their_gateways_and_an_mcp_route_on_ours() -> None:
    mcp = (
        "apiVersion: aigateway.envoyproxy.io/v1beta1\nkind: MCPRoute\nmetadata: {name: tools, namespace: ns}\n"
        "spec: {parentRefs: [{name: gw}]}\n"
    )
    found = statuses(AI_ROUTE + "---\n" + quota("q", "used") + "---\n" + quota("q2", "theirs") + "---\n" + mcp)
    assert (
        unsupported(found[("QuotaPolicy", "q")]) and "token quotas" in found[("QuotaPolicy", "q")].conditions[0].message
    )
    assert [p.parent for p in found[("QuotaPolicy", "q")].parents] == [ParentRefIR("ns", "gw")]
    assert ("QuotaPolicy", "q2") not in found  # a backend only another controller's Gateway uses
    assert [p.parent for p in found[("MCPRoute", "tools")].parents] == [ParentRefIR("ns", "gw")]


def test_in_files_an_object_that_references_nothing_is_still_reported() -> None:
    found = statuses(policy("nothing", "{}") + "---\n" + grpc_route("orphan", "{}"))
    assert unsupported(found[("SecurityPolicy", "nothing")]) and found[("SecurityPolicy", "nothing")].parents == ()
    assert unsupported(found[("GRPCRoute", "orphan")])


# --- the cluster source --------------------------------------------------------------------------------------------

SECURITY_POLICY = BY_NAME["SecurityPolicy"]


def stored_policy(version: str, generation: int = 1, spec: dict[str, Any] | None = None, **extra: Any) -> Any:
    return {
        "apiVersion": EG,
        "kind": "SecurityPolicy",
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "generation": generation,
            "resourceVersion": version,
            "annotations": {"big": "x" * 100},
            "managedFields": [{}],
        },
        "spec": spec if spec is not None else {"targetRefs": [{"group": GATEWAY_API, "kind": "Gateway", "name": "gw"}]},
        **extra,
    }


def test_the_report_only_kinds_are_watched_namespaced_with_status() -> None:
    reported = {kind.kind for kind in watched_kinds() if kind.report_only}
    assert reported == {
        "SecurityPolicy",
        "BackendTrafficPolicy",
        "ClientTrafficPolicy",
        "EnvoyExtensionPolicy",
        "EnvoyPatchPolicy",
        "GRPCRoute",
        "TLSRoute",
        "TCPRoute",
        "UDPRoute",
        "ListenerSet",
        "XListenerSet",
        "MCPRoute",
        "QuotaPolicy",
    }
    for name in reported:
        kind = BY_NAME[name]
        assert kind.namespaced and kind.status_subresource and kind.model is None
        assert name in SHAPES, f"{name}: its status is not written"
    assert SECURITY_POLICY.path("ns") == "/apis/gateway.envoyproxy.io/v1alpha1/namespaces/ns/securitypolicies"
    assert BY_NAME["XListenerSet"].path(None) == "/apis/gateway.networking.x-k8s.io/v1alpha1/xlistenersets"


def test_an_object_of_a_report_only_kind_is_kept_as_metadata_references_and_status() -> None:
    status = {"ancestors": [{"controllerName": "example.com/theirs"}]}
    raw = stored_policy("1", spec={"targetRef": {"kind": "Gateway", "name": "gw"}, "jwt": {"providers": []}})
    kept = strip(SECURITY_POLICY, {**raw, "status": status})
    assert kept["spec"] == {"targetRef": {"kind": "Gateway", "name": "gw"}}
    assert kept["status"] == status
    assert set(kept["metadata"]) == {"name", "namespace", "generation", "resourceVersion"}
    assert strip(SECURITY_POLICY, kept) == kept


def test_only_generation_labels_and_references_make_a_new_translation() -> None:
    def changed(new: dict[str, Any]) -> bool:
        return translation_input_changed(
            SECURITY_POLICY, strip(SECURITY_POLICY, stored_policy("1")), strip(SECURITY_POLICY, new)
        )

    assert not changed(stored_policy("2", status={"ancestors": []}))  # a status write
    annotated = stored_policy("2")
    annotated["metadata"]["annotations"] = {"other": "y"}
    assert not changed(annotated)
    assert changed(stored_policy("2", generation=2))
    labelled = stored_policy("2")
    labelled["metadata"]["labels"] = {"a": "b"}
    assert changed(labelled)
    assert changed(stored_policy("2", spec={"targetRefs": []}))


def test_the_store_publishes_objects_that_reference_something_as_unknown() -> None:
    changes: list[int] = []
    store = Store(on_change=lambda: changes.append(1))
    assert store.upsert(SECURITY_POLICY, stored_policy("1"))
    [found] = store.resource_set().unknown
    assert (found.kind, found.namespace, found.name, found.generation) == ("SecurityPolicy", "ns", "p", 1)
    assert found.references == (Reference(False, GATEWAY_API, "Gateway", "ns", "gw"),)
    assert store.resource_set().objects == {}
    assert not store.upsert(SECURITY_POLICY, stored_policy("2", status={"ancestors": []}))  # our status write
    assert store.get("SecurityPolicy", "ns", "p")["status"] == {"ancestors": []}  # type: ignore[index]
    assert len(changes) == 1
    # Referencing nothing, it may be another controller's: it leaves the ResourceSet, and then is not published.
    assert store.upsert(SECURITY_POLICY, stored_policy("3", generation=2, spec={}))
    assert store.resource_set().unknown == ()
    assert not store.upsert(SECURITY_POLICY, stored_policy("4", generation=3, spec={"targetSelectors": []}))
    assert not store.delete(SECURITY_POLICY, "ns", "p")
    assert len(changes) == 2
    assert store.upsert(SECURITY_POLICY, stored_policy("5"))
    assert store.delete(SECURITY_POLICY, "ns", "p") and store.resource_set().unknown == ()


def test_a_report_only_kind_that_is_absent_or_forbidden_is_synced_empty_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Refusing:
        def __init__(self, code: int) -> None:
            self.code = code
            self.calls = 0

        async def get_json(self, path: str, query: Any, timeout_s: float) -> dict[str, Any]:
            self.calls += 1
            raise ApiError.from_status(self.code, b'{"kind":"Status","code":%d,"reason":"No"}' % self.code)

    async def run(code: int) -> int:
        api = Refusing(code)
        reflector = Reflector(cast(RawApi, api), SECURITY_POLICY, None, Store(), Timing(absent_retry_s=0.01))
        reflector.start()
        try:
            await asyncio.wait_for(reflector.synced.wait(), 30)
            while api.calls < 4:
                await asyncio.sleep(0.01)
        finally:
            await reflector.stop()
        return api.calls

    for code in (404, 403):
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="xds_server.sources.kubernetes.reflector"):
            assert asyncio.run(run(code)) >= 4
        levels = [r.levelno for r in caplog.records if "SecurityPolicy" in r.getMessage()]
        assert levels[0] == logging.INFO and set(levels[1:]) == {logging.DEBUG}, (code, levels)


# --- the status written in a cluster -------------------------------------------------------------------------------

OWNERSHIP = Ownership(OURS, frozenset({("ns", "foreign")}))
T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"
REFUSED = Condition("Accepted", ConditionStatus.FALSE, "Unsupported", "SecurityPolicy is not implemented")
THEIRS = {
    "ancestorRef": {"group": GATEWAY_API, "kind": "Gateway", "namespace": "ns", "name": "foreign"},
    "controllerName": "example.com/theirs",
    "conditions": [
        {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "observedGeneration": 2}
    ],
}


def stored_object(kind: str, status: dict[str, Any] | None) -> dict[str, Any]:
    raw: dict[str, Any] = {"kind": kind, "metadata": {"name": "p", "namespace": "ns", "generation": 2}}
    if status is not None:
        raw["status"] = status
    return raw


def verdict(kind: str, *gateways: ParentRefIR) -> ObjectStatus:
    parents = tuple(ParentStatus(g, (REFUSED,)) for g in gateways)
    return ObjectStatus(ObjectRef(kind, "ns", "p"), (REFUSED,), 2, parents)


def test_a_policy_gets_our_ancestor_entries_beside_other_controllers() -> None:
    assert SHAPES["SecurityPolicy"] is StatusShape.POLICY_ANCESTORS
    stale = {**THEIRS, "controllerName": OURS, "ancestorRef": {"name": "old", "kind": "Gateway"}}
    status = desired_status(
        "SecurityPolicy",
        stored_object("SecurityPolicy", {"ancestors": [stale, THEIRS]}),
        verdict("SecurityPolicy", ParentRefIR("ns", "gw", section_name="http")),
        OWNERSHIP,
        T0,
    )
    assert status is not None
    assert status["ancestors"] == [
        THEIRS,
        {
            "ancestorRef": {
                "group": GATEWAY_API,
                "kind": "Gateway",
                "namespace": "ns",
                "name": "gw",
                "sectionName": "http",
            },
            "controllerName": OURS,
            "conditions": [
                {
                    "type": "Accepted",
                    "status": "False",
                    "reason": "Unsupported",
                    "message": "SecurityPolicy is not implemented",
                    "lastTransitionTime": T0,
                    "observedGeneration": 2,
                }
            ],
        },
    ]
    assert "parents" not in status and "conditions" not in status
    again = desired_status(
        "SecurityPolicy",
        stored_object("SecurityPolicy", status),
        verdict("SecurityPolicy", ParentRefIR("ns", "gw", section_name="http")),
        OWNERSHIP,
        T1,
    )
    assert again is None  # unchanged: no write
    # No longer ours (it targets another Gateway now): our entry goes, theirs stays.
    gone = desired_status("SecurityPolicy", stored_object("SecurityPolicy", status), None, OWNERSHIP, T1)
    assert gone == {"ancestors": [THEIRS]}


def test_a_route_of_an_unsupported_kind_gets_parents_entries_of_ours() -> None:
    status = desired_status(
        "GRPCRoute", stored_object("GRPCRoute", None), verdict("GRPCRoute", ParentRefIR("ns", "gw")), OWNERSHIP, T0
    )
    assert status is not None
    [entry] = status["parents"]
    assert entry["controllerName"] == OURS and entry["parentRef"]["name"] == "gw"
    assert entry["conditions"][0]["reason"] == "Unsupported"


@pytest.mark.parametrize("kind", ["GRPCRoute", "SecurityPolicy", "HTTPRoute", "InferencePool"])
def test_an_object_that_is_not_ours_and_has_no_status_is_not_written(kind: str) -> None:
    assert desired_status(kind, stored_object(kind, None), None, OWNERSHIP, T0) is None
    assert desired_status(kind, stored_object(kind, {}), None, OWNERSHIP, T0) is None


def test_the_ancestors_stay_within_the_apis_limit() -> None:
    many = [ParentRefIR("ns", f"gw{i}") for i in range(20)]
    status = desired_status(
        "SecurityPolicy",
        stored_object("SecurityPolicy", {"ancestors": [THEIRS]}),
        verdict("SecurityPolicy", *many),
        OWNERSHIP,
        T0,
    )
    assert status is not None and len(status["ancestors"]) == 16 and status["ancestors"][0] == THEIRS


def test_a_listener_set_on_our_gateway_gets_the_condition_itself() -> None:
    status = desired_status(
        "ListenerSet", stored_object("ListenerSet", {}), verdict("ListenerSet", ParentRefIR("ns", "gw")), OWNERSHIP, T0
    )
    assert status is not None and [(c["type"], c["reason"]) for c in status["conditions"]] == [
        ("Accepted", "Unsupported")
    ]
    assert desired_status("ListenerSet", stored_object("ListenerSet", {}), None, OWNERSHIP, T0) is None
