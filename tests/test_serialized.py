"""A RouteConfiguration assembled from its routes' bytes (translators.xds.serialized, routes.route_configuration) is
byte for byte the message's own deterministic serialization, whatever its routes, and stays so across reloads that
reuse the bytes of some routes and build others."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import pytest
from envoy.config.route.v3 import route_components_pb2, route_pb2
from google.protobuf import field_mask_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testing.cases import case_names, load_xds_case, translate_case, xds_case_names
from translators.ir import (
    AiRole,
    DirectAction,
    Endpoint,
    EndpointPickerIR,
    ForwardAction,
    HeaderEditsIR,
    HeaderMatchIR,
    HeaderMatchKind,
    JsonReply,
    ListenerIR,
    ObjectRef,
    PathKind,
    PathMatchIR,
    PathRewriteIR,
    PathRewriteKind,
    PickerBodyMode,
    PoolRouteIR,
    RedirectAction,
    RouteIR,
    VirtualHostIR,
)
from translators.xds.gateway import endpoint_pickers
from translators.xds.memo import Memo
from translators.xds.names import CLUSTER_TYPE
from translators.xds.routes import route, route_configuration
from translators.xds.serialized import field_header

Pickers = Mapping[ObjectRef, EndpointPickerIR]

PROPERTY = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Lengths on either side of a varint's one-, two- and three-byte forms (127 and 16,383 bytes).
TEXTS = st.sampled_from(("", "a", "model-b", "x" * 126, "y" * 140, "z" * 17000))
NAMES = st.sampled_from(("", "r", "httproute/default/a/rule/0/match/0", "n" * 130))
POOLS = tuple(ObjectRef("InferencePool", "default", name) for name in ("pool-a", "pool-b"))


def reference(listener: ListenerIR, pickers: Pickers) -> route_pb2.RouteConfiguration:
    """The RouteConfiguration as a message, built whole: what route_configuration built before it assembled bytes."""
    in_chain = listener.runs_picker

    def picker(ir: RouteIR) -> EndpointPickerIR | None:
        found = pickers.get(ir.pool.pool) if ir.pool is not None else None
        return replace(found, endpoints=()) if found is not None else None

    return route_pb2.RouteConfiguration(
        name=listener.name,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name=v.name, domains=v.domains, routes=[route(r, in_chain, picker(r)) for r in v.routes]
            )
            for v in listener.virtual_hosts
        ],
        ignore_port_in_host_matching=True,
    )


def route_clusters(config: route_pb2.RouteConfiguration) -> frozenset[str]:
    return frozenset(
        r.route.cluster for v in config.virtual_hosts for r in v.routes if r.HasField("route") and r.route.cluster
    )


def assert_assembled(listener: ListenerIR, pickers: Pickers, memo: Memo) -> None:
    assembled = route_configuration(listener, memo, pickers)
    expected = reference(listener, pickers)
    assert assembled.serialized == expected.SerializeToString(deterministic=True)
    assert assembled.name == listener.name and assembled.message == expected
    assert assembled.references == {CLUSTER_TYPE: route_clusters(expected)}


# --- strategies: IR routes of every kind, and the pickers their pools call ---

paths = st.builds(PathMatchIR, st.sampled_from(PathKind), st.sampled_from(("/", "/v1/", "/a/b", "^/x.*$")))
headers = st.builds(HeaderMatchIR, st.sampled_from(("x-a", ":method")), TEXTS, st.sampled_from(HeaderMatchKind))
rewrites = st.none() | st.builds(PathRewriteIR, st.sampled_from(PathRewriteKind), st.sampled_from(("/", "/new")))
forwards = st.builds(
    ForwardAction,
    cluster=st.sampled_from(("", "backend/default/a", "backend/default/b", "c" * 200)),
    timeout_ms=st.none() | st.integers(0, 100_000),
    per_try_timeout_ms=st.none() | st.integers(1, 5000),
    host_rewrite=st.booleans(),
    fallback_retries=st.integers(0, 3),
    rewrite_hostname=st.none() | st.just("upstream.example.com"),
    rewrite_path=rewrites,
)
actions = st.one_of(
    forwards,
    st.builds(DirectAction, st.sampled_from((404, 500)), TEXTS, st.just("invalid_request_error"), TEXTS),
    st.builds(JsonReply, st.just(200), TEXTS),
    st.builds(RedirectAction, st.sampled_from((301, 302, 303, 307, 308)), st.none() | st.just("https"), path=rewrites),
)
edits = st.none() | st.builds(
    HeaderEditsIR,
    st.lists(st.tuples(st.just("x-set"), TEXTS), max_size=2).map(tuple),
    st.lists(st.tuples(st.just("x-add"), st.just("100%")), max_size=1).map(tuple),
    st.lists(st.just("x-gone"), max_size=1).map(tuple),
)
routes = st.builds(
    RouteIR,
    name=NAMES,
    path=paths,
    headers=st.lists(headers, max_size=2).map(tuple),
    action=actions,
    method=st.none() | st.just("POST"),
    ai=st.none() | st.sampled_from(AiRole),
    pool=st.none() | st.builds(PoolRouteIR, st.sampled_from(POOLS), st.booleans(), st.sampled_from(PickerBodyMode)),
    rule=st.sampled_from(("", "httproute/default/a/rule/0")),
    request_headers=edits,
    response_headers=edits,
)
virtual_hosts = st.builds(
    VirtualHostIR,
    st.sampled_from(("", "*", "api.example.com")),
    st.lists(st.sampled_from(("*", "api.example.com", "d" * 140)), max_size=2).map(tuple),
    st.lists(routes, max_size=6).map(tuple),
)
pickers = st.dictionaries(
    st.sampled_from(POOLS),
    st.builds(
        EndpointPickerIR,
        st.builds(ObjectRef, st.just("Service"), st.just("default"), st.sampled_from(("epp", "epp-2"))),
        st.sampled_from((9002, 9003)),
        st.lists(st.builds(Endpoint, st.sampled_from(("10.0.0.1", "10.0.0.2")), st.just(9002)), max_size=2).map(tuple),
        st.booleans(),
        st.none() | st.just("no Service default/epp"),
    ),
)
listeners = st.builds(
    ListenerIR,
    st.sampled_from(("", "default/gw/80", "l" * 130)),
    st.just("0.0.0.0"),
    st.just(80),
    st.lists(virtual_hosts, max_size=3).map(tuple),
)


@PROPERTY
@given(listener=listeners, picked=pickers)
def test_an_assembled_route_configuration_is_the_message_serialized(listener: ListenerIR, picked: Pickers) -> None:
    assert_assembled(listener, picked, Memo())


@PROPERTY
@given(first=listeners, data=st.data())
def test_a_reload_reusing_some_routes_bytes_assembles_what_a_fresh_build_would(
    first: ListenerIR, data: st.DataObject
) -> None:
    """The second build keeps some of the first's route objects (whose bytes are reused), in any order and in other
    virtual hosts, drops others and adds new ones; its pickers may change too."""
    memo = Memo()
    picked = data.draw(pickers)
    assert_assembled(first, picked, memo)
    memo.next_build()
    kept = [r for v in first.virtual_hosts for r in v.routes]
    hosts = data.draw(
        st.lists(
            st.builds(
                VirtualHostIR,
                st.sampled_from(("*", "api.example.com")),
                st.just(("*",)),
                st.lists(st.sampled_from(kept) | routes if kept else routes, max_size=6).map(tuple),
            ),
            max_size=3,
        )
    )
    assert_assembled(replace(first, virtual_hosts=tuple(hosts)), data.draw(st.just(picked) | pickers), memo)


@pytest.mark.parametrize("case", xds_case_names())
def test_the_xds_cases_route_configurations_are_the_messages_serialized(case: str) -> None:
    for gateway in load_xds_case(case).gateways:
        for listener in gateway.listeners:
            assert_assembled(listener, endpoint_pickers(gateway), Memo())


@pytest.mark.parametrize("case", case_names())
def test_the_translated_cases_route_configurations_are_the_messages_serialized(case: str) -> None:
    for gateway in translate_case(case).gateways:
        for listener in gateway.listeners:
            assert_assembled(listener, endpoint_pickers(gateway), Memo())


@pytest.mark.parametrize("length", [0, 1, 127, 128, 16_383, 16_384, 2_097_152])
def test_a_field_header_is_what_protobuf_writes_before_a_field_of_that_length(length: int) -> None:
    text = "v" * length  # a repeated field: written even when empty
    assert field_header(1, length) + text.encode() == field_mask_pb2.FieldMask(paths=[text]).SerializeToString()


def test_the_message_is_parsed_once_and_only_when_asked() -> None:
    listener = ListenerIR("l", "0.0.0.0", 80, (VirtualHostIR("*", ("*",), ()),))
    assembled = route_configuration(listener, Memo())
    assert "message" not in vars(assembled)
    assert assembled.message is assembled.message and assembled.message.name == "l"


def test_a_listener_whose_routes_did_not_change_gets_the_same_object_again() -> None:
    """Then the snapshot cache takes its cached resource as it is: no hash of a large configuration again."""
    ir = RouteIR("r", PathMatchIR(PathKind.PREFIX, "/"), (), ForwardAction("backend/default/a", None))
    memo = Memo()
    first = route_configuration(ListenerIR("l", "0.0.0.0", 80, (VirtualHostIR("*", ("*",), (ir,)),)), memo)
    memo.next_build()
    again = ListenerIR("l", "0.0.0.0", 80, (VirtualHostIR("*", ("*",), (ir,)),))  # a new IR, the same content
    assert route_configuration(again, memo) is first
