"""The snapshot cache: content-hash versions per type, consistency before publishing, change notification."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.route.v3 import route_pb2

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
from translators.xds.serialized import SerializedResource
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
    https_resources = gateway_resources(https_gateway, OPTIONS)
    resources = https_resources.by_type()
    assert set(Snapshot.build(resources).resources(SECRET_TYPE)) == {
        "secret/certs/shared-cert",
        "secret/default/default-cert",
    }
    resources[SECRET_TYPE] = tuple(s for s in https_resources.secrets if s.name != "secret/default/default-cert")
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


def serialized(config: route_pb2.RouteConfiguration) -> SerializedResource[route_pb2.RouteConfiguration]:
    """The configuration as the translator hands it over: its bytes, and the clusters its routes name."""
    clusters = frozenset(r.route.cluster for v in config.virtual_hosts for r in v.routes if r.route.cluster)
    return SerializedResource(
        config.name,
        config.SerializeToString(deterministic=True),
        route_pb2.RouteConfiguration,
        {CLUSTER_TYPE: clusters},
    )


def test_a_version_hashes_each_resources_name_and_serialization_hash_in_name_order() -> None:
    """The scheme, pinned: Envoys that reconnect after an upgrade are offered the versions they already hold."""

    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()[:16]

    resources = gateway(backends=("b", "a", "c"))  # not in name order
    snapshot = build(resources)
    for type_url, messages in resources.by_type().items():
        name_field = "cluster_name" if type_url == ENDPOINT_TYPE else "name"  # by_type() gives them as Message
        names = [getattr(m, name_field) for m in messages]
        hashes = [digest(m.SerializeToString(deterministic=True)) for m in messages]
        lines = sorted(f"{name} {hashed}" for name, hashed in zip(names, hashes, strict=True))
        assert snapshot.version(type_url) == digest("\n".join(lines).encode())


def test_a_serialized_resource_is_served_as_given_and_versioned_as_its_message_would_be() -> None:
    resources = gateway()
    as_messages = build(resources)
    given = serialized(resources.routes[0])
    as_given = Snapshot.build({**resources.by_type(), ROUTE_TYPE: [given]})
    assert as_given.version(ROUTE_TYPE) == as_messages.version(ROUTE_TYPE)
    [cached] = as_given.resources(ROUTE_TYPE).values()
    assert cached.serialized is given.serialized and cached.message == resources.routes[0]


def test_the_very_same_objects_again_are_the_same_cached_resources() -> None:
    resources = gateway()
    first = build(resources)
    renewed, *others = resources.clusters
    equal = cluster_pb2.Cluster()
    equal.CopyFrom(renewed)  # another object, the same content
    second = Snapshot.build({**resources.by_type(), CLUSTER_TYPE: [equal, *others]}, first)
    before, after = first.resources(CLUSTER_TYPE), second.resources(CLUSTER_TYPE)
    assert all(after[c.name] is before[c.name] for c in others)
    assert after[renewed.name] is not before[renewed.name] and after[renewed.name].message is equal
    assert second.version(CLUSTER_TYPE) == first.version(CLUSTER_TYPE)


@pytest.mark.parametrize("as_bytes", [False, True])
def test_each_inconsistency_is_explained_as_the_first_resource_with_it_says(as_bytes: bool) -> None:
    """Found with sets of names (what each resource refers to is read once, when it is cached); said as before."""
    resources = gateway()
    by_type = {**resources.by_type(), ROUTE_TYPE: [serialized(resources.routes[0])] if as_bytes else resources.routes}
    consistent = Snapshot.build(by_type)
    cases = {
        "EDS cluster 'backend/default/a' has no ClusterLoadAssignment 'backend/default/a'": {
            ENDPOINT_TYPE: resources.endpoints[1:]
        },
        "listener 'http-10080' uses missing RouteConfiguration 'http-10080'": {ROUTE_TYPE: []},
        "route 'to-backend/default/b' in 'http-10080' uses missing cluster 'backend/default/b'": {
            CLUSTER_TYPE: [c for c in resources.clusters if c.name != backend_cluster("b")],
            ENDPOINT_TYPE: [e for e in resources.endpoints if e.cluster_name != backend_cluster("b")],
        },
    }
    for message, broken in cases.items():
        # Reusing the consistent snapshot's cached resources changes nothing to what is checked.
        with pytest.raises(InconsistentSnapshot) as raised:
            Snapshot.build({**by_type, **broken}, consistent)
        assert str(raised.value) == message
