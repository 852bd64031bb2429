"""Real Envoy on incremental ADS (`api_type: DELTA_GRPC`) against the servicer that serves both ADS variants."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc
from prometheus_client import REGISTRY

from e2e.test_ads_envoy import snapshot_for
from testing.envoy import Envoy
from testing.manifests import backend_route, gateway
from testing.ports import free_port
from testing.web import upstream, wait_for
from translators.xds.names import CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE
from xds_server.xds.cache import SnapshotCache
from xds_server.xds.server import Ads
from xds_server.xds.streams import ClientRegistry

GATEWAY = "default/gw-delta"
T = TypeVar("T")


class ControlPlane:
    """The ADS gRPC server on a fixed port, so it can be stopped and started again where Envoy looks for it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.cache = SnapshotCache()
        self.clients = ClientRegistry()
        self.server: grpc.aio.Server | None = None

    async def start(self, cache: SnapshotCache, clients: ClientRegistry) -> None:
        self.cache, self.clients = cache, clients
        self.server = grpc.aio.server()
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(Ads(cache, clients), self.server)
        assert self.server.add_insecure_port(f"127.0.0.1:{self.port}") == self.port
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)
            self.server = None


@pytest.fixture
async def control_plane() -> AsyncIterator[ControlPlane]:
    plane = ControlPlane()
    await plane.start(SnapshotCache(), ClientRegistry())
    yield plane
    await plane.stop()


@pytest.fixture
def upstreams() -> Iterator[dict[str, tuple[str, int]]]:
    """Three HTTP upstreams on their own loopback addresses, each answering its own name."""
    servers = {name: upstream(f"127.0.4.{i}", f"from-{name}") for i, name in enumerate("abc", start=1)}
    yield {name: (f"127.0.4.{i}", next(server)) for i, (name, server) in enumerate(servers.items(), start=1)}
    for server in servers.values():
        next(server, None)  # shuts it down


def manifests(listen_port: int, backends: dict[str, tuple[str, int]]) -> str:
    """A Gateway with one Backend and one HTTPRoute (path prefix /<name>) per entry of `backends`."""
    routes = (backend_route(name, a, p, f"/{name}", "gw-delta") for name, (a, p) in backends.items())
    return gateway([listen_port], "gw-delta") + "".join("---" + route for route in routes)


async def no_update_rejected(envoy: Envoy) -> None:
    status, stats = await envoy.get("/stats?filter=update_rejected")
    assert status == 200 and stats.strip(), stats
    assert all(line.endswith(": 0") for line in stats.strip().splitlines()), stats


def delta_pushes() -> float:
    return sum(
        REGISTRY.get_sample_value(
            "xds_server_pushes_total", {"gateway": GATEWAY, "type": type_url.rsplit(".", 1)[-1], "protocol": "delta"}
        )
        or 0.0
        for type_url in (CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE)
    )


async def test_envoy_follows_the_gateway_over_delta_ads(
    control_plane: ControlPlane, upstreams: dict[str, tuple[str, int]], tmp_path: Path
) -> None:
    listen_port = free_port()
    url = f"http://127.0.0.1:{listen_port}"
    control_plane.cache.set(GATEWAY, snapshot_for(manifests(listen_port, {"a": upstreams["a"], "b": upstreams["b"]})))
    envoy = Envoy(tmp_path, GATEWAY, control_plane.port, delta=True)
    try:
        await envoy.wait_live()
        assert await wait_for(f"{url}/a", (200, "from-a")) == (200, "from-a")
        assert await wait_for(f"{url}/b", (200, "from-b")) == (200, "from-b")
        assert [(s.protocol, s.key) for s in control_plane.clients.streams()] == [("delta", GATEWAY)]

        # Backend "a" moves to another address: only its cluster changes.
        control_plane.cache.set(
            GATEWAY, snapshot_for(manifests(listen_port, {"a": upstreams["c"], "b": upstreams["b"]}))
        )
        assert await wait_for(f"{url}/a", (200, "from-c")) == (200, "from-c")

        # Route and Backend "b" go: its cluster leaves Envoy (after the routes that used it, make before break).
        assert "backend/default/b" in await envoy.cluster_names()
        control_plane.cache.set(GATEWAY, snapshot_for(manifests(listen_port, {"a": upstreams["c"]})))
        for _ in range(300):
            if "backend/default/b" not in await envoy.cluster_names():
                break
            await asyncio.sleep(0.05)
        assert "backend/default/b" not in await envoy.cluster_names()
        assert "backend/default/a" in await envoy.cluster_names()
        assert (await wait_for(f"{url}/b", (404, "")))[0] == 404
        assert await wait_for(f"{url}/a", (200, "from-c")) == (200, "from-c")
        await no_update_rejected(envoy)
    finally:
        envoy.stop()


async def test_envoy_reconnects_and_is_sent_nothing_it_already_has(
    control_plane: ControlPlane, upstreams: dict[str, tuple[str, int]], tmp_path: Path
) -> None:
    listen_port = free_port()
    url = f"http://127.0.0.1:{listen_port}/a"
    config = manifests(listen_port, {"a": upstreams["a"]})
    control_plane.cache.set(GATEWAY, snapshot_for(config))
    envoy = Envoy(tmp_path, GATEWAY, control_plane.port, delta=True)
    try:
        await envoy.wait_live()
        assert await wait_for(url, (200, "from-a")) == (200, "from-a")

        await control_plane.stop()
        assert await poll(lambda: envoy.stat("control_plane.connected_state"), 0) == 0
        assert await wait_for(url, (200, "from-a")) == (200, "from-a")  # Envoy keeps its configuration

        # A restarted control plane: new cache, same content, so the same per-resource versions (content hashes).
        cache, clients = SnapshotCache(), ClientRegistry()
        cache.set(GATEWAY, snapshot_for(config))
        before = delta_pushes()
        await control_plane.start(cache, clients)
        subscribed = {CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE}
        assert await poll(lambda: reconnected_types(clients), subscribed) == subscribed
        # Each request is answered (or not) before the next is read, so by now any response would be counted.
        assert delta_pushes() == before
        nonces = [state.nonce for stream in clients.streams() for state in stream.types.values()]
        assert nonces == [0, 0, 0]  # nothing sent
        assert await poll(lambda: envoy.stat("control_plane.connected_state"), 1) == 1

        # The new stream carries changes as usual.
        cache.set(GATEWAY, snapshot_for(manifests(listen_port, {"a": upstreams["b"]})))
        assert await wait_for(url, (200, "from-b")) == (200, "from-b")
        assert delta_pushes() == before + 1  # just the changed cluster
        await no_update_rejected(envoy)
    finally:
        envoy.stop()


async def reconnected_types(clients: ClientRegistry) -> set[str]:
    return {type_url for stream in clients.streams() for type_url in stream.types}


async def poll(probe: Callable[[], Awaitable[T]], want: T, seconds: float = 20.0) -> T:
    """Calls `probe` every 50 ms until it returns `want`; returns the last value (compare it to `want`)."""
    value = await probe()
    for _ in range(int(seconds / 0.05)):
        if value == want:
            break
        await asyncio.sleep(0.05)
        value = await probe()
    return value
