"""SotW ADS protocol rules, driven by a Python ADS client over real gRPC on loopback (cases Envoy cannot be made
to produce on demand; the same rules are exercised with real Envoy in e2e/)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from tests.test_cache import build, by_type, tutorial_resources
from translators.xds import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE
from xds_server.ads_sotw import Nack, SotwAds
from xds_server.cache import SnapshotCache

KEY = "default/inference-pool-with-aigwroute"


class Client:
    """An ADS client stream; responses are read in the background (cancelling a gRPC read cancels the call)."""

    def __init__(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub) -> None:
        self.requests: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()
        self.responses: asyncio.Queue[discovery_pb2.DiscoveryResponse | grpc.aio.AioRpcError] = asyncio.Queue()
        self.call = stub.StreamAggregatedResources(self._requests())
        self.reader = asyncio.create_task(self._read())

    async def _requests(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while True:
            yield await self.requests.get()

    async def _read(self) -> None:
        try:
            async for response in self.call:
                await self.responses.put(response)
        except grpc.aio.AioRpcError as error:
            await self.responses.put(error)

    async def send(self, **fields: object) -> None:
        await self.requests.put(discovery_pb2.DiscoveryRequest(**fields))  # type: ignore[arg-type]

    async def receive(self, timeout: float = 2.0) -> discovery_pb2.DiscoveryResponse:
        item = await asyncio.wait_for(self.responses.get(), timeout)
        if isinstance(item, grpc.aio.AioRpcError):
            raise item
        return item

    async def silent(self, seconds: float = 0.3) -> bool:
        await asyncio.sleep(seconds)
        return self.responses.empty()


NODE = base_pb2.Node(id="envoy-1", cluster=KEY)


@pytest.fixture
async def setup() -> AsyncIterator[tuple[SnapshotCache, list[Nack], Client]]:
    cache = SnapshotCache()
    nacks: list[Nack] = []
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(SotwAds(cache, nacks.append), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    cache.set(KEY, build(by_type(tutorial_resources())))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        client = Client(ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel))
        yield cache, nacks, client
        client.call.cancel()
        client.reader.cancel()
    await server.stop(None)


async def test_first_request_gets_everything_and_an_ack_gets_silence(
    setup: tuple[SnapshotCache, list[Nack], Client],
) -> None:
    cache, _, client = setup
    await client.send(node=NODE, type_url=CLUSTER_TYPE)
    response = await client.receive()
    assert response.type_url == CLUSTER_TYPE and response.nonce
    assert response.version_info == cache.get(KEY).version(CLUSTER_TYPE)  # type: ignore[union-attr]
    assert len(response.resources) == len(tutorial_resources().clusters)
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
    changed = by_type(tutorial_resources())
    changed[CLUSTER_TYPE] = [c for c in changed[CLUSTER_TYPE] if "extproc" not in c.name]  # type: ignore[attr-defined]
    changed[LISTENER_TYPE] = []  # nothing uses the ext_proc cluster any more
    cache.set(KEY, build(changed))
    second = await client.receive()
    assert second.type_url == CLUSTER_TYPE and second.version_info != first.version_info
    assert len(second.resources) == len(first.resources) - 1


async def test_stale_nonce_ignored_but_current_nonce_with_new_names_answered(
    setup: tuple[SnapshotCache, list[Nack], Client],
) -> None:
    _, _, client = setup
    names = sorted(a.cluster_name for a in tutorial_resources().endpoints)
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
    cache.set(KEY, build(by_type(tutorial_resources())))
    assert await client.silent()
