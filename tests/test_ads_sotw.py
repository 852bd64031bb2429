"""SotW ADS protocol rules, driven by a Python ADS client over real gRPC on loopback (cases Envoy cannot be made
to produce on demand; the same rules are exercised with real Envoy in e2e/)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2

from testing.ads_client import AdsClient
from testing.xds_fixtures import Resources, gateway, pointed_at
from translators.xds.names import CLUSTER_TYPE, ENDPOINT_TYPE, EXTPROC_CLUSTER, ROUTE_TYPE
from xds_server.xds.cache import Snapshot, SnapshotCache
from xds_server.xds.server import Ads
from xds_server.xds.streams import ClientRegistry, Nack

KEY = "default/gw"
M = TypeVar("M", bound=Message)


def build(resources: Resources) -> Snapshot:
    return Snapshot.build(resources.by_type())


class Client(AdsClient[discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse]):
    def __init__(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub) -> None:
        super().__init__(stub.StreamAggregatedResources, discovery_pb2.DiscoveryRequest)


NODE = base_pb2.Node(id="envoy-1", cluster=KEY)


@pytest.fixture
async def setup() -> AsyncIterator[tuple[SnapshotCache, list[Nack], Client]]:
    cache = SnapshotCache()
    nacks: list[Nack] = []
    clients = ClientRegistry()
    clients.add_nack_listener(nacks.append)
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(Ads(cache, clients), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    cache.set(KEY, build(gateway()))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        client = Client(ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel))
        yield cache, nacks, client
        client.close()


async def test_first_request_gets_everything_and_an_ack_gets_silence(
    setup: tuple[SnapshotCache, list[Nack], Client],
) -> None:
    cache, _, client = setup
    await client.send(node=NODE, type_url=CLUSTER_TYPE)
    response = await client.receive()
    assert response.type_url == CLUSTER_TYPE and response.nonce
    assert response.version_info == cache.get(KEY).version(CLUSTER_TYPE)  # type: ignore[union-attr]
    assert len(response.resources) == len(gateway().clusters)
    await client.send(type_url=CLUSTER_TYPE, version_info=response.version_info, response_nonce=response.nonce)
    assert await client.silent()


async def test_missing_node_is_rejected(setup: tuple[SnapshotCache, list[Nack], Client]) -> None:
    _, _, client = setup
    await client.send(type_url=CLUSTER_TYPE)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await client.receive()
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_nack_is_recorded_never_answered_and_the_next_change_is_sent(
    setup: tuple[SnapshotCache, list[Nack], Client],
) -> None:
    cache, nacks, client = setup
    await client.send(node=NODE, type_url=CLUSTER_TYPE)
    first = await client.receive()
    await client.send(
        type_url=CLUSTER_TYPE,
        version_info="",
        response_nonce=first.nonce,
        error_detail=status_pb2.Status(code=3, message="bad cluster"),
    )
    assert await client.silent()
    assert [(n.node_id, n.type_url, n.version, n.message) for n in nacks] == [
        ("envoy-1", CLUSTER_TYPE, first.version_info, "bad cluster")
    ]
    changed = gateway()
    changed.clusters = [c for c in changed.clusters if c.name != EXTPROC_CLUSTER]
    changed.listeners = []  # nothing uses the ext_proc cluster any more
    cache.set(KEY, build(changed))
    second = await client.receive()
    assert second.type_url == CLUSTER_TYPE and second.version_info != first.version_info
    assert len(second.resources) == len(first.resources) - 1


async def test_stale_nonce_ignored_but_current_nonce_with_new_names_answered(
    setup: tuple[SnapshotCache, list[Nack], Client],
) -> None:
    _, _, client = setup
    names = sorted(a.cluster_name for a in gateway().endpoints)
    await client.send(node=NODE, type_url=ENDPOINT_TYPE, resource_names=names[:1])
    first = await client.receive()
    assert [first.resources[0].type_url] == [ENDPOINT_TYPE] and len(first.resources) == 1
    await client.send(type_url=ENDPOINT_TYPE, resource_names=names, response_nonce="stale-nonce")
    assert await client.silent()
    await client.send(
        type_url=ENDPOINT_TYPE,
        resource_names=[*names, "not-yet"],
        version_info=first.version_info,
        response_nonce=first.nonce,
    )
    second = await client.receive()
    assert len(second.resources) == len(names) + 1  # an unknown name is answered with an empty CLA
    assert second.version_info == first.version_info


async def test_equal_content_is_never_pushed_again(setup: tuple[SnapshotCache, list[Nack], Client]) -> None:
    cache, _, client = setup
    await client.send(node=NODE, type_url=CLUSTER_TYPE)
    first = await client.receive()
    await client.send(type_url=CLUSTER_TYPE, version_info=first.version_info, response_nonce=first.nonce)
    cache.set(KEY, build(gateway()))
    assert await client.silent()


async def ack(client: Client, response: discovery_pb2.DiscoveryResponse, names: list[str] | None = None) -> None:
    await client.send(
        type_url=response.type_url,
        version_info=response.version_info,
        response_nonce=response.nonce,
        resource_names=names or [],
    )


async def test_routes_wait_for_new_clusters_and_removed_clusters_stay_until_the_routes_are_acked(
    setup: tuple[SnapshotCache, list[Nack], Client],
) -> None:
    cache, _, client = setup
    cache.set(KEY, build(pointed_at("old")))
    await client.send(node=NODE, type_url=CLUSTER_TYPE)
    await ack(client, await client.receive())
    await client.send(type_url=ENDPOINT_TYPE, resource_names=["old"])
    await ack(client, await client.receive(), ["old"])
    await client.send(type_url=ROUTE_TYPE, resource_names=["routes"])
    await ack(client, await client.receive(), ["routes"])
    assert await client.silent()

    cache.set(KEY, build(pointed_at("new")))  # the route moves from "old" to "new" in one snapshot
    clusters, assignments = [await client.receive() for _ in range(2)]
    assert [r.type_url for r in (clusters, assignments)] == [CLUSTER_TYPE, ENDPOINT_TYPE]
    assert names_of(clusters) == ["new", "old"]  # make before break: "old" is still there
    assert names_of(assignments) == ["old"]  # the client's current subscription, still answered with the real CLA
    assert unpacked(assignments, endpoint_pb2.ClusterLoadAssignment)[0].endpoints
    assert await client.silent()  # no routes to "new" while it has no CLA: Envoy would still be warming it
    await ack(client, clusters)
    await ack(client, assignments, ["new", "old"])  # Envoy subscribes to the new cluster's CLA
    both, routes = await client.receive(), await client.receive()
    assert names_of(both) == ["new", "old"] and routes.type_url == ROUTE_TYPE
    await ack(client, both, ["new", "old"])
    assert await client.silent()  # routes not ACKed yet: "old" stays
    await ack(client, routes, ["routes"])
    final = await client.receive()
    assert final.type_url == CLUSTER_TYPE and names_of(final) == ["new"]
    assert final.version_info == cache.get(KEY).version(CLUSTER_TYPE)  # type: ignore[union-attr]


def unpacked(response: discovery_pb2.DiscoveryResponse, message_type: type[M]) -> list[M]:
    messages = []
    for resource in response.resources:
        message = message_type()
        resource.Unpack(message)
        messages.append(message)
    return messages


def names_of(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    if response.type_url == ENDPOINT_TYPE:
        return [a.cluster_name for a in unpacked(response, endpoint_pb2.ClusterLoadAssignment)]
    return [c.name for c in unpacked(response, cluster_pb2.Cluster)]
