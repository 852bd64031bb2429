"""Statuses in the shape Kubernetes wants: Gateway listeners with attachedRoutes, route and pool parents, GatewayClass
acceptance, controller names, observedGeneration, and the status book's merge rule."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from translators.gatewayapi import translate
from translators.gatewayapi.status import StatusBook, condition
from translators.ir import ConditionStatus, ObjectStatus, ParentRefIR, PickerMode, TranslateOptions, Translation
from translators.loader import load_texts
from translators.resources import HTTPRoute
from translators.resources.base import ObjectMeta
from translators.resources.gateway_api import HTTPRouteSpec
from translators.xds.render import status_dict
from xds_server.up.report import conditions_text, route_conditions

Doc = dict[str, Any]
EG = "gateway.envoyproxy.io/gatewayclass-controller"
HTTP_KINDS = (("gateway.networking.k8s.io", "HTTPRoute"), ("aigateway.envoyproxy.io", "AIGatewayRoute"))


def _doc(api_version: str, kind: str, name: str, namespace: str | None = None, **fields: Any) -> Doc:
    metadata: Doc = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **fields}


def _class(name: str = "eg", controller: str = EG) -> Doc:
    return _doc("gateway.networking.k8s.io/v1", "GatewayClass", name, spec={"controllerName": controller})


def _gateway(name: str = "gw", listeners: list[Doc] | None = None, class_name: str = "eg", **meta: Any) -> Doc:
    doc = _doc(
        "gateway.networking.k8s.io/v1",
        "Gateway",
        name,
        spec={
            "gatewayClassName": class_name,
            "listeners": listeners or [{"name": "http", "protocol": "HTTP", "port": 80}],
        },
    )
    doc["metadata"].update(meta)
    return doc


def _backend(name: str = "upstream") -> Doc:
    return _doc(
        "gateway.envoyproxy.io/v1alpha1",
        "Backend",
        name,
        spec={"endpoints": [{"ip": {"address": "10.0.0.1", "port": 8080}}]},
    )


def _route(name: str, parents: list[Doc], namespace: str | None = None, backend: Doc | None = None) -> Doc:
    ref = backend or {"group": "gateway.envoyproxy.io", "kind": "Backend", "name": "upstream", "namespace": "default"}
    return _doc(
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        name,
        namespace,
        spec={"parentRefs": parents, "rules": [{"backendRefs": [ref]}]},
    )


def _pool(name: str = "pool", picker: Doc | None = None) -> Doc:
    spec: Doc = {"selector": {"matchLabels": {"app": name}}, "targetPorts": [{"number": 8000}]}
    spec["endpointPickerRef"] = picker if picker is not None else {"name": f"{name}-epp", "port": {"number": 9002}}
    return _doc("inference.networking.k8s.io/v1", "InferencePool", name, spec=spec)


def _service(name: str) -> Doc:
    return _doc("v1", "Service", name, spec={"selector": {"app": name}, "ports": [{"port": 9002}]})


def _pool_route(name: str, gateway: str, pool: str = "pool") -> Doc:
    ref = {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": pool}
    return _route(name, [{"name": gateway}], backend=ref)


def _translate(docs: list[Doc], options: TranslateOptions | None = None) -> Translation:
    resources = load_texts([("all.yaml", yaml.safe_dump_all(docs))])
    assert not resources.errors, resources.errors
    return translate(resources, options)


def _status(translation: Translation, kind: str, name: str) -> ObjectStatus:
    [found] = [s for s in translation.statuses if (s.ref.kind, s.ref.name) == (kind, name)]
    return found


def _types(conditions: Any) -> dict[str, tuple[str, str]]:
    return {c.type: (str(c.status), c.reason) for c in conditions}


TWO_LISTENERS = [
    {"name": "same", "protocol": "HTTP", "port": 80},
    {"name": "all", "protocol": "HTTP", "port": 8080, "allowedRoutes": {"namespaces": {"from": "All"}}},
]


def test_attached_routes_count_the_routes_accepted_on_each_listener() -> None:
    translation = _translate(
        [
            _class(),
            _doc("v1", "Namespace", "team"),
            _gateway(listeners=TWO_LISTENERS),
            _backend(),
            _route("everywhere", [{"name": "gw"}]),
            _route("twice", [{"name": "gw", "sectionName": "all"}, {"name": "gw"}]),  # counted once per listener
            _route("outsider", [{"name": "gw", "namespace": "default"}], namespace="team"),
            _route("nowhere", [{"name": "gw", "port": 9999}]),
        ]
    )
    gateway = _status(translation, "Gateway", "gw")
    assert [(lis.name, lis.attached_routes) for lis in gateway.listeners] == [("same", 2), ("all", 3)]
    assert all(lis.supported_kinds == HTTP_KINDS for lis in gateway.listeners)
    assert _types(gateway.conditions) == {"Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed")}
    for listener in gateway.listeners:
        assert _types(listener.conditions) == {
            "Accepted": ("True", "Accepted"),
            "Programmed": ("True", "Programmed"),
            "ResolvedRefs": ("True", "ResolvedRefs"),
            "Conflicted": ("False", "NoConflicts"),
        }


def test_one_parent_entry_per_parent_ref_with_its_defaults_filled_in() -> None:
    translation = _translate(
        [
            _class(),
            _gateway(listeners=TWO_LISTENERS),
            _backend(),
            _route(
                "r",
                [
                    {"name": "gw", "sectionName": "same"},
                    {"name": "gw", "sectionName": "all"},
                    {"name": "gw", "port": 1},
                ],
            ),
        ]
    )
    route = _status(translation, "HTTPRoute", "r")
    assert route.conditions == ()
    assert [p.parent for p in route.parents] == [
        ParentRefIR("default", "gw", section_name="same"),
        ParentRefIR("default", "gw", section_name="all"),
        ParentRefIR("default", "gw", port=1),
    ]
    assert [p.parent.group for p in route.parents] == ["gateway.networking.k8s.io"] * 3
    verdicts = [_types(p.conditions) for p in route.parents]
    assert verdicts[0] == verdicts[1] == {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}
    assert verdicts[2] == {"Accepted": ("False", "NoMatchingParent"), "ResolvedRefs": ("True", "ResolvedRefs")}


def test_the_backend_verdict_is_on_every_parent_entry() -> None:
    missing = {"name": "no-such-service", "port": 80}
    translation = _translate(
        [
            _class(),
            _gateway(listeners=TWO_LISTENERS),
            _route("r", [{"name": "gw"}, {"name": "gw", "sectionName": "all"}], backend=missing),
        ]
    )
    route = _status(translation, "HTTPRoute", "r")
    assert [_types(p.conditions)["ResolvedRefs"] for p in route.parents] == [("False", "BackendNotFound")] * 2


def test_a_missing_gateway_is_a_condition_of_the_route_and_no_parent_entry() -> None:
    parents: list[Doc] = [{"name": "gone"}, {"name": "gw"}, {"name": "gw", "port": 9}]
    translation = _translate([_class(), _gateway(), _backend(), _route("r", parents)])
    route = _status(translation, "HTTPRoute", "r")
    assert [p.parent.name for p in route.parents] == ["gw", "gw"]
    [accepted] = route.conditions
    assert (accepted.status, accepted.reason) == ("False", "NoMatchingParent") and "default/gone" in accepted.message
    # `up` shows the route's own condition and each parent's verdict, a parent's problem naming its Gateway.
    text = conditions_text(route_conditions(route))
    assert "Gateway default/gone not found" in text
    assert "Gateway default/gw: no listener matches" in text
    assert "Accepted=True" in text


def test_listener_problems_are_on_the_listener_and_sum_up_on_the_gateway() -> None:
    listeners = [
        {"name": "a", "protocol": "HTTP", "port": 80, "hostname": "x.example.com"},
        {"name": "b", "protocol": "HTTP", "port": 80, "hostname": "x.example.com"},
        {"name": "c", "protocol": "UDP", "port": 53},
        {"name": "d", "protocol": "HTTP", "port": 81, "allowedRoutes": {"kinds": [{"kind": "GRPCRoute"}]}},
    ]
    translation = _translate([_class(), _gateway(listeners=listeners)])
    gateway = _status(translation, "Gateway", "gw")
    by_name = {lis.name: lis for lis in gateway.listeners}
    assert list(by_name) == ["a", "b", "c", "d"]
    assert _types(by_name["b"].conditions)["Conflicted"] == ("True", "HostnameConflict")
    assert _types(by_name["b"].conditions)["Accepted"][0] == "False"
    assert _types(by_name["c"].conditions)["Accepted"] == ("False", "UnsupportedProtocol")
    assert by_name["c"].supported_kinds == ()
    assert by_name["d"].supported_kinds == ()  # conformance GatewayInvalidRouteKind: only invalid kinds -> none
    assert _types(by_name["d"].conditions)["ResolvedRefs"] == ("False", "InvalidRouteKinds")
    accepted = next(c for c in gateway.conditions if c.type == "Accepted")
    assert (accepted.status, accepted.reason) == ("True", "ListenersNotValid")
    assert accepted.message == "listeners not valid: b, c"


def test_a_gateway_without_a_valid_listener_is_not_accepted() -> None:
    translation = _translate([_class(), _gateway(listeners=[{"name": "t", "protocol": "TCP", "port": 9000}])])
    gateway = _status(translation, "Gateway", "gw")
    assert _types(gateway.conditions) == {
        "Accepted": ("False", "ListenersNotValid"),
        "Programmed": ("False", "Invalid"),
    }


def test_pool_parents_are_the_gateways_of_accepted_routes_and_go_with_them() -> None:
    base = [
        _class(),
        _gateway("gw-a"),
        _gateway("gw-b", listeners=[{"name": "http", "protocol": "HTTP", "port": 81}]),
        _pool(),
        _service("pool-epp"),
    ]
    both = _translate([*base, _pool_route("a", "gw-a"), _pool_route("b", "gw-b")])
    pool = _status(both, "InferencePool", "pool")
    assert [p.parent for p in pool.parents] == [ParentRefIR("default", "gw-a"), ParentRefIR("default", "gw-b")]
    for parent in pool.parents:
        assert _types(parent.conditions) == {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}
    one = _translate([*base, _pool_route("b", "gw-b")])
    assert [p.parent.name for p in _status(one, "InferencePool", "pool").parents] == ["gw-b"]
    none = _status(_translate(base), "InferencePool", "pool")
    assert (none.parents, none.conditions) == ((), ())  # still listed: the writer then removes our old entries


def test_a_route_not_accepted_on_a_gateway_makes_no_pool_parent() -> None:
    translation = _translate(
        [
            _class(),
            _gateway(),
            _pool(),
            _service("pool-epp"),
            _route(
                "r",
                [{"name": "gw", "sectionName": "nope"}],
                backend={"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "pool"},
            ),
        ]
    )
    assert _status(translation, "InferencePool", "pool").parents == ()


def test_a_missing_or_unsupported_endpoint_picker_is_an_invalid_extension_ref() -> None:
    docs = [
        _class(),
        _gateway(),
        _pool("missing"),
        _pool("odd", picker={"group": "example.com", "kind": "Picker", "name": "p"}),
    ]
    docs += [_pool_route("m", "gw", "missing"), _pool_route("o", "gw", "odd")]
    translation = _translate(docs, TranslateOptions(endpoint_picker=PickerMode.REFERENCE))
    for name in ("missing", "odd"):
        [parent] = _status(translation, "InferencePool", name).parents
        assert _types(parent.conditions)["ResolvedRefs"] == ("False", "InvalidExtensionRef")
        assert _types(parent.conditions)["Accepted"] == ("True", "Accepted")
    # Picked by the embedded picker, the pool does not depend on the Service it names.
    embedded = _translate(docs)
    for name in ("missing", "odd"):
        [parent] = _status(embedded, "InferencePool", name).parents
        assert _types(parent.conditions)["ResolvedRefs"] == ("True", "ResolvedRefs")


def test_generation_is_carried_as_observed_generation() -> None:
    route = _route("r", [{"name": "gw"}])
    route["metadata"]["generation"] = 7
    pool = _pool()
    pool["metadata"]["generation"] = 2
    translation = _translate([_class(), _gateway(generation=5), _backend(), route, pool, _service("pool-epp")])
    assert _status(translation, "Gateway", "gw").generation == 5
    assert _status(translation, "HTTPRoute", "r").generation == 7
    assert _status(translation, "InferencePool", "pool").generation == 2
    assert _status(translation, "GatewayClass", "eg").generation == 0  # from a file: no generation


def test_classes_of_other_controllers_their_gateways_and_routes_get_no_status() -> None:
    docs = [
        _class(),
        _class("other", "example.com/other"),
        _gateway(),
        _gateway("theirs", class_name="other", listeners=[{"name": "http", "protocol": "HTTP", "port": 81}]),
        _backend(),
        _route("theirs-only", [{"name": "theirs"}]),
        _route("both", [{"name": "theirs"}, {"name": "gw"}]),
    ]
    translation = _translate(docs)
    listed = {(s.ref.kind, s.ref.name) for s in translation.statuses}
    assert not listed & {("GatewayClass", "other"), ("Gateway", "theirs"), ("HTTPRoute", "theirs-only")}
    assert [p.parent.name for p in _status(translation, "HTTPRoute", "both").parents] == ["gw"]
    assert [g.name for g in translation.gateways] == ["gw"]
    # Claiming only the other controller's name swaps the roles.
    swapped = _translate(docs, TranslateOptions(controller_names=frozenset({"example.com/other"})))
    listed = {(s.ref.kind, s.ref.name) for s in swapped.statuses}
    assert ("GatewayClass", "eg") not in listed and ("Gateway", "gw") not in listed
    assert [p.parent.name for p in _status(swapped, "HTTPRoute", "both").parents] == ["theirs"]
    assert [g.name for g in swapped.gateways] == ["theirs"]


def test_the_default_controller_names_serve_envoy_gateway_s_and_the_project_s() -> None:
    names = TranslateOptions().controller_names
    assert names == {EG, "xds-server.dev/gateway-controller"}
    translation = _translate([_class("own", "xds-server.dev/gateway-controller"), _gateway(class_name="own")])
    assert _types(_status(translation, "GatewayClass", "own").conditions) == {"Accepted": ("True", "Accepted")}


def test_a_class_with_bad_parameters_is_not_accepted() -> None:
    bad = _class("bad")
    bad["spec"]["parametersRef"] = {"group": "gateway.envoyproxy.io", "kind": "EnvoyProxy", "name": "p"}  # no namespace
    missing = _class("missing")
    missing["spec"]["parametersRef"] = {**bad["spec"]["parametersRef"], "namespace": "x"}
    translation = _translate([bad, missing])
    for name in ("bad", "missing"):
        assert _types(_status(translation, "GatewayClass", name).conditions) == {
            "Accepted": ("False", "InvalidParameters")
        }


def _ai_route(name: str, parents: list[Doc], backend: str) -> Doc:
    rule = {"matches": [{"headers": [{"name": "x-ai-eg-model", "value": "m"}]}], "backendRefs": [{"name": backend}]}
    return _doc(
        "aigateway.envoyproxy.io/v1beta1", "AIGatewayRoute", name, spec={"parentRefs": parents, "rules": [rule]}
    )


def _ai_backend(name: str) -> Doc:
    ref = {"group": "gateway.envoyproxy.io", "kind": "Backend", "name": "upstream"}
    return _doc(
        "aigateway.envoyproxy.io/v1beta1",
        "AIServiceBackend",
        name,
        spec={"schema": {"name": "OpenAI"}, "backendRef": ref},
    )


def test_an_ai_gateway_route_sums_up_its_parents_and_backends_in_one_accepted() -> None:
    docs = [_class(), _gateway(), _backend(), _ai_backend("b")]
    good = _translate([*docs, _ai_route("r", [{"name": "gw"}, {"name": "gone"}], "b")])
    assert _types(_status(good, "AIGatewayRoute", "r").conditions) == {"Accepted": ("True", "Accepted")}
    unresolved = _translate([*docs, _ai_route("r", [{"name": "gw"}], "missing")])
    [accepted] = _status(unresolved, "AIGatewayRoute", "r").conditions
    assert (accepted.status, accepted.reason) == ("False", "BackendNotFound")
    detached = _translate([*docs, _ai_route("r", [{"name": "gw", "sectionName": "x"}, {"name": "gone"}], "missing")])
    [accepted] = _status(detached, "AIGatewayRoute", "r").conditions
    assert (accepted.status, accepted.reason) == ("False", "NoMatchingParent")
    assert "default/gone" in accepted.message and "default/gw/x" in accepted.message
    assert "AIServiceBackend default/missing" in accepted.message
    assert _types(_status(good, "AIServiceBackend", "b").conditions) == {"Accepted": ("True", "Accepted")}


def test_status_dict_shows_parents_and_listeners() -> None:
    translation = _translate(
        [_class(), _gateway(generation=3), _backend(), _route("r", [{"name": "gw", "sectionName": "http"}])]
    )
    gateway = status_dict(_status(translation, "Gateway", "gw"))
    assert gateway["generation"] == 3
    [listener] = gateway["listeners"]
    assert listener["attached_routes"] == 1
    assert listener["supported_kinds"][0] == {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}
    [parent] = status_dict(_status(translation, "HTTPRoute", "r"))["parents"]
    assert parent["parent_ref"] == {
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "namespace": "default",
        "name": "gw",
        "section_name": "http",
    }
    assert [c["type"] for c in parent["conditions"]] == ["Accepted", "ResolvedRefs"]


def _route_object(name: str) -> HTTPRoute:
    return HTTPRoute(metadata=ObjectMeta(name=name, namespace="default", generation=4), spec=HTTPRouteSpec())


def test_the_book_merges_one_condition_per_type_and_a_false_wins() -> None:
    book = StatusBook()
    route = _route_object("r")
    book.report(route, "Accepted", True, "Accepted", "fine")
    book.report(route, "Accepted", False, "A", "first")
    book.report(route, "Accepted", False, "B", "second")
    book.report(route, "Accepted", False, "B", "first")
    parent = ParentRefIR("default", "gw")
    book.report_parent(route, parent, condition("Accepted", True, "Accepted", "ok"))
    [status] = book.statuses()
    [accepted] = status.conditions
    assert (accepted.status, accepted.reason, accepted.message) == (ConditionStatus.FALSE, "A", "first; second")
    assert status.generation == 4 and status.parents[0].parent == parent
    taken = book.take(route, "Accepted")
    assert taken == accepted and book.statuses()[0].conditions == ()
    book.ignore(route)
    assert book.statuses() == ()


RICH = [
    _class(),
    _class("other", "example.com/other"),
    _doc("v1", "Namespace", "team"),
    _gateway(listeners=[*TWO_LISTENERS, {"name": "t", "protocol": "TCP", "port": 9}]),
    _gateway("theirs", class_name="other"),
    _backend(),
    _pool(),
    _service("pool-epp"),
    _pool_route("p", "gw"),
    _route("a", [{"name": "gw"}, {"name": "theirs"}, {"name": "gone"}]),
    _route("b", [{"name": "gw", "sectionName": "all"}, {"name": "gw", "port": 80}]),
    _route("c", [{"name": "gw", "namespace": "default"}], namespace="team"),
]


@settings(max_examples=25, deadline=None)
@given(order=st.permutations(RICH))
def test_statuses_do_not_depend_on_document_order(order: list[Doc]) -> None:
    assert _translate(order).statuses == _translate(RICH).statuses


def test_parent_entries_follow_the_spec_order() -> None:
    second = _gateway("a-second", listeners=[{"name": "http", "protocol": "HTTP", "port": 81}])
    translation = _translate(
        [_class(), _gateway("z-first"), second, _backend(), _route("r", [{"name": "z-first"}, {"name": "a-second"}])]
    )
    assert [p.parent.name for p in _status(translation, "HTTPRoute", "r").parents] == ["z-first", "a-second"]
