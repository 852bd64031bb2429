"""Reusing the previous build's messages and bytes is invisible in the output, and does happen."""

from __future__ import annotations

import pytest
from envoy.config.route.v3 import route_components_pb2

from testing.bulk_manifests import http_routes
from testing.manifests import gateway
from translators.ir import EndpointPickerIR, RouteIR, TranslateOptions
from translators.loader import load_texts
from translators.xds import routes as xds_routes
from translators.xds.memo import Memo
from translators.xds.names import CLUSTER_TYPE, ROUTE_TYPE
from xds_server.control_plane import ControlPlane, build
from xds_server.xds import cache
from xds_server.xds.cache import SnapshotCache
from xds_server.xds.streams import ClientRegistry

BASE = [("gw.yaml", gateway([10080])), ("routes.yaml", http_routes(20, "127.0.6.1", 8080))]


def test_a_reload_reuses_unchanged_messages_and_builds_exactly_what_a_fresh_build_would() -> None:
    control_plane = ControlPlane(SnapshotCache(), ClientRegistry(), TranslateOptions())
    first = control_plane.build(load_texts(BASE))
    control_plane.apply(first)
    edited = load_texts([*BASE, ("new.yaml", http_routes(1, "127.0.6.2", 9090, prefix="new"))])
    second = control_plane.build(edited)
    fresh = build(edited, TranslateOptions())  # no memo, no previous snapshot
    [(key, reused)] = second.snapshots.items()
    for type_url, type_snapshot in fresh.snapshots[key].types.items():
        assert reused.version(type_url) == type_snapshot.version
        assert {n: c.serialized for n, c in reused.resources(type_url).items()} == {
            n: c.serialized for n, c in type_snapshot.resources.items()
        }
    before = first.snapshots[key].resources(CLUSTER_TYPE)
    after = reused.resources(CLUSTER_TYPE)
    assert after["backend/default/r0"] is before["backend/default/r0"]  # not built nor serialized again
    assert "backend/default/new0" in after and "backend/default/new0" not in before
    assert reused.version(ROUTE_TYPE) != first.snapshots[key].version(ROUTE_TYPE)


def test_each_builds_only_the_values_the_last_build_did_not_have() -> None:
    """By identity: an equal value that is another object is built (its `build` may `get` to reuse by equality)."""
    memo, built = Memo(), []

    def build(value: list[str]) -> str:
        built.append(value[0])
        return value[0].upper()

    a, b, c = ["a"], ["b"], ["c"]
    assert memo.each("test", (a, b), None, build) == ["A", "B"]
    memo.next_build()
    assert memo.each("test", (c, b, ["a"]), None, build) == ["C", "B", "A"]
    assert built == ["a", "b", "c", "a"]
    assert memo.each("test", (a,), "another variant", build) == ["A"] and built[-1] == "a"
    memo.next_build()
    memo.next_build()  # a build that used nothing: everything is forgotten
    assert memo.each("test", (b,), None, build) == ["B"] and built[-1] == "b"


def test_a_one_route_reload_builds_and_serializes_only_what_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Of 20 routes and clusters, the new route is built and the new cluster serialized; the others are found in
    bulk, and the snapshot cache takes their cached resources as they are."""
    control_plane = ControlPlane(SnapshotCache(), ClientRegistry(), TranslateOptions())
    control_plane.apply(control_plane.build(load_texts(BASE)))
    routes_built: list[str] = []
    cached: list[str] = []
    build_route, cache_resource = xds_routes.route, cache._cached

    def route_noted(
        ir: RouteIR, picker_in_chain: bool = False, picker: EndpointPickerIR | None = None
    ) -> route_components_pb2.Route:
        routes_built.append(ir.name)
        return build_route(ir, picker_in_chain, picker)

    def cached_noted(type_url: str, resource: cache.Resource) -> cache.CachedResource:
        cached.append(type_url.rsplit(".", 1)[-1])
        return cache_resource(type_url, resource)

    monkeypatch.setattr(xds_routes, "route", route_noted)
    monkeypatch.setattr(cache, "_cached", cached_noted)
    edited = load_texts([*BASE, ("new.yaml", http_routes(1, "127.0.6.2", 9090, prefix="new"))])
    control_plane.build(edited)
    assert routes_built == ["httproute/default/new0/rule/0/match/0"]
    # The listener is built again at each reload (one message), and the RouteConfiguration assembled anew.
    assert sorted(cached) == ["Cluster", "Listener", "RouteConfiguration"]


def test_each_equal_builds_only_the_keys_the_last_build_did_not_have() -> None:
    memo, built = Memo(), []

    def build(key: tuple[str, int]) -> str:
        built.append(key)
        return f"{key[0]}{key[1]}"

    assert memo.each_equal("test", [("a", 1), ("b", 2)], build) == ["a1", "b2"]
    memo.next_build()
    assert memo.each_equal("test", [("b", 2), ("c", 3)], build) == ["b2", "c3"]  # an equal key, another tuple
    memo.next_build()
    assert memo.each_equal("test", [("a", 1)], build) == ["a1"]  # forgotten: the last build did not use it
    assert built == [("a", 1), ("b", 2), ("c", 3), ("a", 1)]
