"""Reusing the previous build's messages and bytes is invisible in the output, and does happen."""

from __future__ import annotations

from testing.bulk_manifests import http_routes
from testing.manifests import gateway
from translators.ir import TranslateOptions
from translators.loader import load_texts
from translators.xds.names import CLUSTER_TYPE, ROUTE_TYPE
from xds_server.control_plane import ControlPlane, build
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
