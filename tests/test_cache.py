"""The snapshot cache: content-hash versions per type, consistency before publishing, change notification."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from envoy.config.core.v3 import address_pb2

from testing.cases import OPTIONS, translate_case
from testing.xds_fixtures import Resources, backend_cluster, gateway
from translators.xds.gateway import gateway_resources
from translators.xds.names import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
)
from xds_server.xds.cache import InconsistentSnapshot, Snapshot, SnapshotCache

ROOT = Path(__file__).resolve().parent.parent


def build(resources: Resources) -> Snapshot:
    return Snapshot.build(resources.by_type())


def test_equal_content_equal_versions_and_per_type_independence() -> None:
    first, second = build(gateway()), build(gateway())
    assert all(first.version(t) == second.version(t) for t in first.types)
    changed = gateway()
    endpoint = changed.endpoints[0].endpoints[0].lb_endpoints.add()
    endpoint.endpoint.address.socket_address.CopyFrom(address_pb2.SocketAddress(address="10.9.9.9", port_value=8000))
    third = build(changed)
    assert third.version(ENDPOINT_TYPE) != first.version(ENDPOINT_TYPE)
    assert [t for t in first.types if first.version(t) != third.version(t)] == [ENDPOINT_TYPE]


def test_versions_are_the_same_in_another_process() -> None:
    """Content hashes, not counters: a restarted control plane offers Envoy the versions it already has."""
    code = (
        "from testing.xds_fixtures import gateway\n"
        "from xds_server.xds.cache import Snapshot\n"
        "s = Snapshot.build(gateway().by_type())\n"
        "print(','.join(s.version(t) for t in s.types))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    here = build(gateway())
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
    resources = gateway()
    build(resources)  # whole, it is consistent
    if breakage == "drop-endpoints":
        resources.endpoints = []
    elif breakage == "drop-routes":
        resources.routes = []
    elif breakage == "drop-cluster":
        resources.clusters = [c for c in resources.clusters if c.name != backend_cluster("a")]
    else:
        resources.clusters = [*resources.clusters, resources.clusters[0]]
    with pytest.raises(InconsistentSnapshot, match=message):
        build(resources)


def test_a_listener_presenting_a_certificate_the_snapshot_lacks_is_refused() -> None:
    """Envoy would keep such a listener warming, never serving it: the snapshot carries each certificate it names."""
    [https_gateway] = translate_case("https-listeners").gateways
    resources = gateway_resources(https_gateway, OPTIONS).by_type()
    assert set(Snapshot.build(resources).resources(SECRET_TYPE)) == {
        "secret/certs/shared-cert",
        "secret/default/default-cert",
    }
    resources[SECRET_TYPE] = tuple(s for s in resources[SECRET_TYPE] if s.name != "secret/default/default-cert")
    with pytest.raises(InconsistentSnapshot, match="uses missing Secret 'secret/default/default-cert'"):
        Snapshot.build(resources)


def test_cache_reports_changed_types_in_push_order_and_ignores_equal_content() -> None:
    cache = SnapshotCache()
    heard: list[str] = []
    cache.add_listener(lambda key, snapshot: heard.append(key))
    snapshot = build(gateway())
    assert cache.set("default/gw", snapshot) == [CLUSTER_TYPE, ENDPOINT_TYPE, SECRET_TYPE, LISTENER_TYPE, ROUTE_TYPE]
    assert cache.set("default/gw", build(gateway())) == []
    assert heard == ["default/gw"]
    assert cache.get("default/gw") is snapshot and cache.snapshot_keys() == ["default/gw"]
    assert cache.remove("default/gw") and cache.get("default/gw") is None and not cache.remove("default/gw")
