"""Incremental ADS protocol rules, driven by a Python delta client over real gRPC on loopback (the same rules run
against real Envoy in e2e/test_ads_delta_envoy.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2
from prometheus_client import REGISTRY

from testing.ads_client import AdsClient
from testing.xds_fixtures import Resources, gateway, pointed_at, with_unrouted
from translators.xds.names import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE
from xds_server.xds.cache import Snapshot, SnapshotCache
from xds_server.xds.server import Ads
from xds_server.xds.streams import Answer, ClientRegistry, ClientStream, Nack

KEY = "default/delta-tests"
NODE = base_pb2.Node(id="envoy-1", cluster=KEY)


def build(resources: Resources) -> Snapshot:
    return Snapshot.build(resources.by_type())


class DeltaClient(AdsClient[discovery_pb2.DeltaDiscoveryRequest, discovery_pb2.DeltaDiscoveryResponse]):
    def __init__(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub) -> None:
        super().__init__(stub.DeltaAggregatedResources, discovery_pb2.DeltaDiscoveryRequest)

    async def ack(self, response: discovery_pb2.DeltaDiscoveryResponse, **fields: object) -> None:
        await self.send(type_url=response.type_url, response_nonce=response.nonce, **fields)


@dataclass
class Setup:
    cache: SnapshotCache
    clients: ClientRegistry
    nacks: list[Nack]
    client: DeltaClient
    stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub

    def stream(self) -> ClientStream:
        [stream] = [s for s in self.clients.streams() if s.protocol == "delta"]
        return stream


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    cache = SnapshotCache()
    clients = ClientRegistry()
    nacks: list[Nack] = []
    clients.add_nack_listener(nacks.append)
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(Ads(cache, clients), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    cache.set(KEY, build(gateway()))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        setup = Setup(cache, clients, nacks, DeltaClient(stub), stub)
        yield setup
        setup.client.close()  # tests may have replaced it
    await server.stop(None)


def names(response: discovery_pb2.DeltaDiscoveryResponse) -> list[str]:
    return [resource.name for resource in response.resources]


def versions(response: discovery_pb2.DeltaDiscoveryResponse) -> dict[str, str]:
    return {resource.name: resource.version for resource in response.resources}


def two_clusters(endpoint: str = "127.0.3.9") -> Resources:
    """EDS clusters "a" and "b"; the only route goes to "a"; `endpoint` is b's address."""
    return with_unrouted(pointed_at("a"), "b", endpoint)


def pushes(type_name: str) -> float:
    value = REGISTRY.get_sample_value(
        "xds_server_pushes_total", {"gateway": KEY, "type": type_name, "protocol": "delta"}
    )
    return value or 0.0


def push_bytes(type_name: str) -> float:
    return REGISTRY.get_sample_value("xds_server_push_bytes_total", {"type": type_name, "protocol": "delta"}) or 0.0


async def test_first_subscription_gets_every_resource_and_an_ack_gets_silence(setup: Setup) -> None:
    snapshot = setup.cache.get(KEY)
    assert snapshot is not None
    for type_url in (CLUSTER_TYPE, LISTENER_TYPE):  # wildcard: the first request names nothing
        await setup.client.send(node=NODE, type_url=type_url)
        response = await setup.client.receive()
        assert response.type_url == type_url and response.nonce
        assert response.system_version_info == snapshot.version(type_url)
        assert versions(response) == {name: c.version for name, c in snapshot.resources(type_url).items()}
        assert all(r.resource.type_url == type_url for r in response.resources)
        assert not response.removed_resources
        await setup.client.ack(response)
    assignments = sorted(snapshot.resources(ENDPOINT_TYPE))
    await setup.client.send(type_url=ENDPOINT_TYPE, resource_names_subscribe=assignments)
    response = await setup.client.receive()
    assert names(response) == assignments
    await setup.client.ack(response)
    assert await setup.client.silent()
    state = setup.stream().state(ENDPOINT_TYPE)
    assert state.acked_version == snapshot.version(ENDPOINT_TYPE) and state.answer is Answer.ACK
    assert state.names == frozenset(assignments) and setup.stream().state(CLUSTER_TYPE).names is None


async def test_missing_node_is_rejected(setup: Setup) -> None:
    await setup.client.send(type_url=CLUSTER_TYPE)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await setup.client.receive()
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_nack_is_recorded_never_answered_and_the_next_change_is_sent(setup: Setup) -> None:
    setup.cache.set(KEY, build(two_clusters()))
    await setup.client.send(node=NODE, type_url=CLUSTER_TYPE)
    first = await setup.client.receive()
    await setup.client.ack(first, error_detail=status_pb2.Status(code=3, message="bad cluster"))
    assert await setup.client.silent()
    assert [(n.node_id, n.type_url, n.version, n.message) for n in setup.nacks] == [
        ("envoy-1", CLUSTER_TYPE, first.system_version_info, "bad cluster")
    ]
    changed = two_clusters()
    changed.clusters[1].connect_timeout.seconds = 7
    setup.cache.set(KEY, build(changed))
    second = await setup.client.receive()
    assert second.type_url == CLUSTER_TYPE and names(second) == ["b"]  # "a" is unchanged: the client has it
    assert second.nonce != first.nonce and second.system_version_info != first.system_version_info


async def test_only_the_changed_resource_is_sent(setup: Setup) -> None:
    snapshot = setup.cache.get(KEY)
    assert snapshot is not None
    assignments = sorted(snapshot.resources(ENDPOINT_TYPE))
    await setup.client.send(node=NODE, type_url=CLUSTER_TYPE)
    await setup.client.ack(await setup.client.receive())
    await setup.client.send(type_url=ENDPOINT_TYPE, resource_names_subscribe=assignments)
    await setup.client.ack(await setup.client.receive())
    before = (pushes("Cluster"), pushes("ClusterLoadAssignment"), push_bytes("ClusterLoadAssignment"))

    changed = gateway()
    [assignment] = [a for a in changed.endpoints if a.cluster_name == assignments[0]]
    assignment.endpoints[0].lb_endpoints.add().endpoint.address.socket_address.address = "10.9.9.9"
    new = build(changed)
    setup.cache.set(KEY, new)
    response = await setup.client.receive()
    assert response.type_url == ENDPOINT_TYPE and names(response) == [assignments[0]]
    assert response.resources[0].version == new.resources(ENDPOINT_TYPE)[assignments[0]].version
    await setup.client.ack(response)
    assert await setup.client.silent()  # clusters did not change: no CDS response
    sent = len(new.resources(ENDPOINT_TYPE)[assignments[0]].serialized)
    sotw_would_send = sum(len(c.serialized) for c in new.resources(ENDPOINT_TYPE).values())
    assert sent < sotw_would_send  # SotW sends every subscribed CLA again
    after = (pushes("Cluster"), pushes("ClusterLoadAssignment"), push_bytes("ClusterLoadAssignment"))
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (0, 1, sent)


async def test_removed_resources_name_what_the_snapshot_no_longer_has(setup: Setup) -> None:
    setup.cache.set(KEY, build(two_clusters()))
    await setup.client.send(node=NODE, type_url=CLUSTER_TYPE)
    await setup.client.ack(await setup.client.receive())
    await setup.client.send(type_url=ENDPOINT_TYPE, resource_names_subscribe=["a", "b"])
    await setup.client.ack(await setup.client.receive())
    setup.cache.set(KEY, build(pointed_at("a")))  # "b" goes; nothing routed to it, so nothing is withheld
    clusters, assignments = await setup.client.receive(), await setup.client.receive()
    assert (clusters.type_url, names(clusters), list(clusters.removed_resources)) == (CLUSTER_TYPE, [], ["b"])
    assert (assignments.type_url, names(assignments), list(assignments.removed_resources)) == (ENDPOINT_TYPE, [], ["b"])
    assert set(setup.stream().state(CLUSTER_TYPE).sent) == {"a"}


async def test_unsubscribed_names_get_no_more_updates(setup: Setup) -> None:
    setup.cache.set(KEY, build(two_clusters()))
    await setup.client.send(node=NODE, type_url=ENDPOINT_TYPE, resource_names_subscribe=["a", "b"])
    await setup.client.ack(await setup.client.receive())
    await setup.client.send(type_url=ENDPOINT_TYPE, resource_names_unsubscribe=["b"])
    assert await setup.client.silent()  # no wildcard: an unsubscription needs no answer
    setup.cache.set(KEY, build(two_clusters(endpoint="127.0.3.10")))  # only b's CLA changes
    assert await setup.client.silent()
    setup.cache.set(KEY, build(pointed_at("a")))  # b is gone: the client forgot it, so no removed_resources either
    assert await setup.client.silent()
    assert setup.stream().state(ENDPOINT_TYPE).names == frozenset({"a"})


async def test_subscription_change_with_a_stale_nonce_is_honoured(setup: Setup) -> None:
    setup.cache.set(KEY, build(two_clusters()))
    await setup.client.send(node=NODE, type_url=ENDPOINT_TYPE, resource_names_subscribe=["a"])
    first = await setup.client.receive()
    await setup.client.send(type_url=ENDPOINT_TYPE, response_nonce="stale-nonce", resource_names_subscribe=["b"])
    second = await setup.client.receive()
    assert names(second) == ["b"]
    assert setup.stream().state(ENDPOINT_TYPE).acked_version == ""  # a stale nonce is no ACK
    await setup.client.send(
        type_url=ENDPOINT_TYPE,
        response_nonce=first.nonce,  # stale too: `second` superseded it
        error_detail=status_pb2.Status(code=3, message="late"),
    )
    assert await setup.client.silent()
    assert setup.nacks == []


async def test_an_unknown_assignment_gets_an_empty_one_then_the_real_one(setup: Setup) -> None:
    setup.cache.set(KEY, build(pointed_at("a")))
    await setup.client.send(node=NODE, type_url=ENDPOINT_TYPE, resource_names_subscribe=["a", "b"])
    first = await setup.client.receive()
    assert names(first) == ["a", "b"]
    empty = endpoint_pb2.ClusterLoadAssignment()
    first.resources[1].resource.Unpack(empty)
    assert empty == endpoint_pb2.ClusterLoadAssignment(cluster_name="b")
    await setup.client.ack(first)
    setup.cache.set(KEY, build(two_clusters()))
    second = await setup.client.receive()
    assert names(second) == ["b"]
    real = endpoint_pb2.ClusterLoadAssignment()
    second.resources[0].resource.Unpack(real)
    assert real.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address == "127.0.3.9"


async def test_an_unknown_route_configuration_is_answered_empty(setup: Setup) -> None:
    await setup.client.send(node=NODE, type_url=ROUTE_TYPE, resource_names_subscribe=["nowhere"])
    response = await setup.client.receive()
    routes = route_pb2.RouteConfiguration()
    response.resources[0].resource.Unpack(routes)
    assert names(response) == ["nowhere"] and routes == route_pb2.RouteConfiguration(name="nowhere")


async def test_a_reconnect_with_initial_versions_gets_only_what_changed(setup: Setup) -> None:
    setup.cache.set(KEY, build(two_clusters()))
    await setup.client.send(node=NODE, type_url=CLUSTER_TYPE)
    held = versions(await setup.client.receive())
    await setup.client.send(type_url=ENDPOINT_TYPE, resource_names_subscribe=["a", "b"])
    held_assignments = versions(await setup.client.receive())
    setup.client.close()  # the stream breaks; meanwhile "a" changes and "b" goes (nothing routed to it)
    changed = pointed_at("a")
    changed.clusters[0].connect_timeout.seconds = 7
    setup.cache.set(KEY, build(changed))

    client = setup.client = DeltaClient(setup.stub)
    await client.send(node=NODE, type_url=CLUSTER_TYPE, initial_resource_versions=held)
    clusters = await client.receive()
    assert (names(clusters), list(clusters.removed_resources)) == (["a"], ["b"])
    await client.ack(clusters)
    await client.send(
        type_url=ENDPOINT_TYPE, resource_names_subscribe=["a"], initial_resource_versions={"a": held_assignments["a"]}
    )
    assert await client.silent()  # a's CLA is unchanged


async def test_wildcard_and_explicit_names(setup: Setup) -> None:
    setup.cache.set(KEY, build(two_clusters()))
    await setup.client.send(node=NODE, type_url=CLUSTER_TYPE)
    await setup.client.ack(await setup.client.receive())
    await setup.client.send(type_url=CLUSTER_TYPE, resource_names_subscribe=["a", "ghost"])
    response = await setup.client.receive()  # named subscriptions are answered even if held; "ghost" does not exist
    assert (names(response), list(response.removed_resources)) == (["a"], ["ghost"])
    await setup.client.ack(response)
    # Unsubscribing a name under the wildcard: the client must learn whether the wildcard still covers it.
    await setup.client.send(type_url=CLUSTER_TYPE, resource_names_unsubscribe=["a", "ghost"])
    response = await setup.client.receive()
    assert (names(response), list(response.removed_resources)) == (["a"], ["ghost"])
    await setup.client.ack(response)
    await setup.client.send(type_url=CLUSTER_TYPE, resource_names_unsubscribe=["*"])
    assert await setup.client.silent()
    setup.cache.set(KEY, build(pointed_at("c")))  # "a" and "b" go, "c" comes: none of the client's business now
    assert await setup.client.silent()
    assert setup.stream().state(CLUSTER_TYPE).names == frozenset() and not setup.stream().state(CLUSTER_TYPE).sent
    await setup.client.send(type_url=ENDPOINT_TYPE, resource_names_subscribe=["*"])  # explicit wildcard, any type
    assert names(await setup.client.receive()) == ["c"]


async def test_routes_wait_for_new_clas_and_removed_clusters_are_withheld_until_the_routes_are_acked(
    setup: Setup,
) -> None:
    setup.cache.set(KEY, build(pointed_at("old")))
    await setup.client.send(node=NODE, type_url=CLUSTER_TYPE)
    await setup.client.ack(await setup.client.receive())
    await setup.client.send(type_url=ENDPOINT_TYPE, resource_names_subscribe=["old"])
    await setup.client.ack(await setup.client.receive())
    await setup.client.send(type_url=ROUTE_TYPE, resource_names_subscribe=["routes"])
    await setup.client.ack(await setup.client.receive())
    assert await setup.client.silent()

    setup.cache.set(KEY, build(pointed_at("new")))  # the route moves from "old" to "new" in one snapshot
    clusters = await setup.client.receive()
    assert (clusters.type_url, names(clusters), list(clusters.removed_resources)) == (CLUSTER_TYPE, ["new"], [])
    assert await setup.client.silent()  # no routes to "new" before its CLA: Envoy would still be warming it
    await setup.client.ack(clusters)
    await setup.client.send(type_url=ENDPOINT_TYPE, resource_names_subscribe=["new", "old"])  # "old" asked again
    assignments, routes = await setup.client.receive(), await setup.client.receive()
    assert names(assignments) == ["new", "old"]
    assert routes.type_url == ROUTE_TYPE and names(routes) == ["routes"]
    retained = endpoint_pb2.ClusterLoadAssignment()
    assignments.resources[1].resource.Unpack(retained)
    assert retained.endpoints, "the withheld cluster's CLA must stay the real one"
    await setup.client.ack(assignments)
    assert await setup.client.silent()  # routes not ACKed yet: "old" stays
    await setup.client.ack(routes)
    final_clusters, final_assignments = await setup.client.receive(), await setup.client.receive()
    assert (final_clusters.type_url, names(final_clusters), list(final_clusters.removed_resources)) == (
        CLUSTER_TYPE,
        [],
        ["old"],
    )
    assert (final_assignments.type_url, list(final_assignments.removed_resources)) == (ENDPOINT_TYPE, ["old"])
    assert not setup.stream().retention.of(CLUSTER_TYPE)


async def test_a_nacked_route_update_keeps_clusters_until_a_later_one_is_acked(setup: Setup) -> None:
    setup.cache.set(KEY, build(pointed_at("old")))
    await setup.client.send(node=NODE, type_url=CLUSTER_TYPE)
    await setup.client.ack(await setup.client.receive())
    await setup.client.send(type_url=ROUTE_TYPE, resource_names_subscribe=["routes"])
    await setup.client.ack(await setup.client.receive())
    setup.cache.set(KEY, build(pointed_at("new")))
    clusters, routes = await setup.client.receive(), await setup.client.receive()
    await setup.client.ack(clusters)
    await setup.client.ack(routes, error_detail=status_pb2.Status(code=3, message="bad route"))
    assert await setup.client.silent()  # the client still routes to "old"
    fixed = pointed_at("new")
    fixed.routes[0].virtual_hosts[0].domains.append("example.com")
    setup.cache.set(KEY, build(fixed))
    routes = await setup.client.receive()
    assert routes.type_url == ROUTE_TYPE
    await setup.client.ack(routes)
    released = await setup.client.receive()
    assert (released.type_url, list(released.removed_resources)) == (CLUSTER_TYPE, ["old"])


async def test_clusters_removed_while_a_release_is_pending_wait_for_it(setup: Setup) -> None:
    setup.cache.set(KEY, build(with_unrouted(pointed_at("old"), "spare")))
    await setup.client.send(node=NODE, type_url=CLUSTER_TYPE)
    await setup.client.ack(await setup.client.receive())
    await setup.client.send(type_url=ROUTE_TYPE, resource_names_subscribe=["routes"])
    await setup.client.ack(await setup.client.receive())
    setup.cache.set(KEY, build(with_unrouted(pointed_at("new"), "spare")))
    clusters, routes = await setup.client.receive(), await setup.client.receive()
    assert list(clusters.removed_resources) == []
    await setup.client.ack(clusters)
    setup.cache.set(KEY, build(pointed_at("new")))  # "spare" goes; no route changes, but "routes" is not ACKed yet
    assert await setup.client.silent()
    await setup.client.ack(routes)
    released = await setup.client.receive()
    assert (released.type_url, list(released.removed_resources)) == (CLUSTER_TYPE, ["old", "spare"])
