"""The snapshot cache: content-hash versions per type, consistency before publishing, change notification."""

from __future__ import annotations

import subprocess
import sys

import pytest
from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2

from tests.golden import OPTIONS, load_case
from translators.gatewayapi import translate
from translators.xds.gateway import XdsResources, gateway_resources
from translators.xds.names import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
)
from xds_server.xds.cache import InconsistentSnapshot, Snapshot, SnapshotCache


def tutorial_resources() -> XdsResources:
    [gateway] = translate(load_case("tutorial"), OPTIONS).gateways
    return gateway_resources(gateway, OPTIONS)


def by_type(xds: XdsResources) -> dict[str, list[object]]:
    """Mutable lists, so tests can break a snapshot on purpose."""
    return {type_url: list(resources) for type_url, resources in xds.by_type().items()}


def build(resources: dict[str, list[object]]) -> Snapshot:
    return Snapshot.build(resources)  # type: ignore[arg-type]


def test_equal_content_equal_versions_and_per_type_independence() -> None:
    first, second = build(by_type(tutorial_resources())), build(by_type(tutorial_resources()))
    assert all(first.version(t) == second.version(t) for t in first.types)
    changed = by_type(tutorial_resources())
    assignment = changed[ENDPOINT_TYPE][0]
    endpoint = endpoint_components_pb2.LbEndpoint()
    endpoint.endpoint.address.socket_address.CopyFrom(address_pb2.SocketAddress(address="10.9.9.9", port_value=8000))
    assignment.endpoints[0].lb_endpoints.append(endpoint)  # type: ignore[attr-defined]
    third = build(changed)
    assert third.version(ENDPOINT_TYPE) != first.version(ENDPOINT_TYPE)
    assert [t for t in first.types if first.version(t) != third.version(t)] == [ENDPOINT_TYPE]


def test_versions_are_the_same_in_another_process() -> None:
    """Content hashes, not counters: a restarted control plane offers Envoy the versions it already has."""
    code = (
        "from tests.test_cache import build, by_type, tutorial_resources\n"
        "s = build(by_type(tutorial_resources()))\n"
        "print(','.join(s.version(t) for t in s.types))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    here = build(by_type(tutorial_resources()))
    assert result.stdout.strip() == ",".join(here.version(t) for t in here.types)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("drop-endpoints", "has no ClusterLoadAssignment"),
        ("drop-routes", "missing RouteConfiguration"),
        ("drop-cluster", "uses missing cluster"),
        ("duplicate-cluster", "duplicate Cluster"),
    ],
)
def test_inconsistent_snapshots_are_refused(breakage: str, message: str) -> None:
    resources = by_type(tutorial_resources())
    if breakage == "drop-endpoints":
        resources[ENDPOINT_TYPE] = []
    elif breakage == "drop-routes":
        resources[ROUTE_TYPE] = []
    elif breakage == "drop-cluster":
        resources[CLUSTER_TYPE] = [c for c in resources[CLUSTER_TYPE] if "basic" not in c.name]  # type: ignore[attr-defined]
    else:
        resources[CLUSTER_TYPE] = [*resources[CLUSTER_TYPE], resources[CLUSTER_TYPE][0]]
    with pytest.raises(InconsistentSnapshot, match=message):
        build(resources)


def test_cache_reports_changed_types_in_push_order_and_ignores_equal_content() -> None:
    cache = SnapshotCache()
    heard: list[str] = []
    cache.add_listener(lambda key, snapshot: heard.append(key))
    snapshot = build(by_type(tutorial_resources()))
    assert cache.set("default/gw", snapshot) == [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE]
    assert cache.set("default/gw", build(by_type(tutorial_resources()))) == []
    assert heard == ["default/gw"]
    assert cache.get("default/gw") is snapshot and cache.snapshot_keys() == ["default/gw"]
    assert cache.remove("default/gw") and cache.get("default/gw") is None and not cache.remove("default/gw")
