"""Real Envoy fetches a Gateway over SotW ADS from the control plane's servicer and serves traffic with it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc

from testing.envoy import Envoy
from testing.manifests import backend_route, gateway
from testing.ports import free_port
from testing.web import upstream, wait_for
from translators.gatewayapi import translate
from translators.ir import TranslateOptions
from translators.loader import load_texts
from translators.xds.gateway import gateway_resources
from xds_server.xds.cache import Snapshot, SnapshotCache
from xds_server.xds.server import Ads
from xds_server.xds.streams import ClientRegistry

GATEWAY = "default/gw"


@pytest.fixture
def upstream_a() -> Iterator[int]:
    yield from upstream("127.0.3.1", "from-a")


@pytest.fixture
def upstream_b() -> Iterator[int]:
    yield from upstream("127.0.3.2", "from-b")


def manifests(listen_port: int, address: str, port: int) -> str:
    return gateway([listen_port]) + "---" + backend_route("web", address, port)


def snapshot_for(text: str) -> Snapshot:
    resources = load_texts([("m.yaml", text)])
    assert resources.errors == ()
    [gateway] = translate(resources, TranslateOptions()).gateways
    return Snapshot.build(gateway_resources(gateway, TranslateOptions()).by_type())


@pytest.fixture
async def control_plane() -> AsyncIterator[tuple[SnapshotCache, int]]:
    cache = SnapshotCache()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(Ads(cache, ClientRegistry()), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield cache, port
    await server.stop(None)


async def test_envoy_gets_the_gateway_over_ads_and_follows_changes(
    control_plane: tuple[SnapshotCache, int], upstream_a: int, upstream_b: int, tmp_path: Path
) -> None:
    cache, xds_port = control_plane
    listen_port = free_port()
    cache.set(GATEWAY, snapshot_for(manifests(listen_port, "127.0.3.1", upstream_a)))
    envoy = Envoy(tmp_path, GATEWAY, xds_port)
    try:
        await envoy.wait_live()
        gateway_url = f"http://127.0.0.1:{listen_port}/"
        assert await wait_for(gateway_url, (200, "from-a")) == (200, "from-a")
        dumped = json.dumps(await envoy.config_dump())
        assert f'"name": "default/gw/{listen_port}"' in dumped  # listener and route config
        # A new snapshot (the Backend now points elsewhere) reaches Envoy without any restart.
        cache.set(GATEWAY, snapshot_for(manifests(listen_port, "127.0.3.2", upstream_b)))
        assert await wait_for(gateway_url, (200, "from-b")) == (200, "from-b")
        status, stats = await envoy.get("/stats?filter=update_rejected")
        assert status == 200 and all(line.endswith(": 0") for line in stats.strip().splitlines()), stats
    finally:
        envoy.stop()
