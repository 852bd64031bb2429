"""`xds-server serve` as a process, real Envoy bootstrapped against it, manifests edited while both run."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from testing.envoy import Envoy
from testing.manifests import backend_route, gateway
from testing.ports import free_port
from testing.processes import Serve, serve_port, synced, xds_server_status
from testing.web import http_get, upstream, wait_for

GATEWAY = "default/gw"


@pytest.fixture
def upstreams() -> Iterator[dict[str, int]]:
    a, b = upstream("127.0.4.1", "from-a"), upstream("127.0.4.2", "from-b")
    ports = {"127.0.4.1": next(a), "127.0.4.2": next(b)}
    yield ports
    for server in (a, b):
        next(server, None)


@pytest.fixture
async def running(tmp_path: Path, upstreams: dict[str, int]) -> AsyncIterator[tuple[Path, Serve, Envoy, int]]:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    listen_port = free_port()
    (manifests / "10-gateway.yaml").write_text(gateway([listen_port]))
    (manifests / "20-web.yaml").write_text(backend_route("web", "127.0.4.1", upstreams["127.0.4.1"]))
    xds_port, admin_port = free_port(), free_port()
    serve = Serve(manifests, xds_port, admin_port, tmp_path / "serve.log")
    envoy = Envoy(tmp_path, GATEWAY, xds_port)
    try:
        await serve.ready()
        await envoy.wait_live()
        yield manifests, serve, envoy, listen_port
    finally:
        envoy.stop()
        if serve.process.poll() is None:
            serve.process.kill()
            serve.process.wait()


async def test_envoy_serves_the_files_and_follows_edits_additions_and_deletions(
    running: tuple[Path, Serve, Envoy, int], upstreams: dict[str, int]
) -> None:
    manifests, serve, envoy, listen_port = running
    url = f"http://127.0.0.1:{listen_port}"
    assert await wait_for(f"{url}/", (200, "from-a")) == (200, "from-a")
    dump = json.dumps(await envoy.config_dump())
    assert f'"default/gw/{listen_port}"' in dump and '"backend/default/web"' in dump

    (manifests / "20-web.yaml").write_text(backend_route("web", "127.0.4.2", upstreams["127.0.4.2"]))
    assert await wait_for(f"{url}/", (200, "from-b")) == (200, "from-b")

    (manifests / "30-extra.yaml").write_text(backend_route("extra", "127.0.4.1", upstreams["127.0.4.1"], "/extra"))
    assert await wait_for(f"{url}/extra", (200, "from-a")) == (200, "from-a")
    assert "backend/default/extra" in await envoy.cluster_names()
    (manifests / "30-extra.yaml").unlink()
    assert await wait_for(f"{url}/extra", (200, "from-b")) == (200, "from-b")  # the "/" route answers again
    for _ in range(100):  # the cluster goes too (make before break: after the routes stopped using it)
        if "backend/default/extra" not in await envoy.cluster_names():
            break
        await asyncio.sleep(0.05)
    assert "backend/default/extra" not in await envoy.cluster_names()

    # A listener added to the Gateway appears in Envoy, and goes when it is removed (LDS is full state).
    second_port = free_port()
    (manifests / "10-gateway.yaml").write_text(gateway([listen_port, second_port]))
    assert await wait_for(f"http://127.0.0.1:{second_port}/", (200, "from-b")) == (200, "from-b")
    (manifests / "10-gateway.yaml").write_text(gateway([listen_port]))
    for _ in range(100):
        _, listeners = await envoy.get("/listeners")
        if str(second_port) not in listeners:
            break
        await asyncio.sleep(0.05)
    assert listeners.strip() == f"default/gw/{listen_port}::127.0.0.1:{listen_port}"

    [client] = await synced(serve)
    snapshots = await serve.document("/debug/snapshots")
    assert client["node"] == "e2e" and client["gateway"] == GATEWAY and client["protocol"] == "sotw"
    # No EDS cluster and no HTTPS listener in this Gateway: Envoy subscribes to the three other types (not to
    # endpoints, nor to Secrets) and holds their latest versions.
    assert {name: t["acked"] for name, t in client["types"].items()} == {
        name: t["version"] for name, t in snapshots[GATEWAY].items() if name not in ("ClusterLoadAssignment", "Secret")
    }
    assert await serve.metric(f'xds_server_connected_envoys{{gateway="{GATEWAY}"}}') == 1.0
    status = await asyncio.to_thread(xds_server_status, serve)
    header, row = status.splitlines()
    assert header.split() == ["GATEWAY", "NODE", "PROTOCOL", "CDS", "EDS", "LDS", "RDS"]
    assert row.split()[:3] == [GATEWAY, "e2e", "sotw"]
    assert f"SYNCED ({client['types']['RouteConfiguration']['acked']})" in row and row.count("SYNCED") == 3
    assert await envoy.stat("cluster_manager.cds.update_rejected") == 0
    assert await envoy.stat("listener_manager.lds.update_rejected") == 0


async def test_a_broken_edit_keeps_the_last_good_object_and_is_reported(
    running: tuple[Path, Serve, Envoy, int], upstreams: dict[str, int]
) -> None:
    manifests, serve, _, listen_port = running
    url = f"http://127.0.0.1:{listen_port}/"
    assert await wait_for(url, (200, "from-a")) == (200, "from-a")
    (manifests / "20-web.yaml").write_text(backend_route("web", "127.0.4.2", 99999))
    errors: list[dict[str, Any]] = []
    for _ in range(100):
        errors = (await serve.document("/debug/status"))["errors"]
        if errors:
            break
        await asyncio.sleep(0.05)
    assert [(e["kind"], e["name"], e["field"]) for e in errors] == [("Backend", "web", "spec.endpoints[0].ip.port")], (
        errors
    )
    assert errors[0]["file"].endswith("20-web.yaml")
    assert await asyncio.to_thread(http_get, url) == (200, "from-a")  # the last good Backend is still served
    assert await serve.metric("xds_server_load_errors") == 1.0


async def test_a_rejected_config_is_a_gateway_condition_resent_only_with_a_backoff(
    running: tuple[Path, Serve, Envoy, int], tmp_path: Path
) -> None:
    """A listener whose port is taken is the one rejection sent again (the port may free up), after 1 s, then 2 s,
    4 s...: never in a loop. The rejection is the Gateway's condition and shows in `xds-server status`."""
    manifests, serve, envoy, listen_port = running
    occupied = free_port()
    blocker = __import__("socket").socket()
    blocker.bind(("127.0.0.1", occupied))
    blocker.listen()
    try:
        (manifests / "10-gateway.yaml").write_text(gateway([listen_port, occupied]))
        for _ in range(200):
            if await envoy.stat("listener_manager.lds.update_rejected") >= 1:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.5)  # room for a resend loop to show: the backoff allows at most two more
        assert 1 <= await envoy.stat("listener_manager.lds.update_rejected") <= 3, envoy.log_tail()
        [client] = await serve.document("/debug/clients")
        assert client["types"]["Listener"]["state"] == "NACKED"
        assert str(occupied) in client["types"]["Listener"]["last_error"]
        statuses = (await serve.document("/debug/status"))["status"]
        programmed = [
            c
            for s in statuses
            if (s["kind"], s["name"]) == ("Gateway", "gw")
            for c in s["conditions"]
            if c["type"] == "Programmed"
        ]
        assert programmed and programmed[0]["status"] == "False" and "rejected Listener" in programmed[0]["message"]
        status = await asyncio.to_thread(xds_server_status, serve)
        assert "NACKED" in status and "rejected: e2e Listener" in status and str(occupied) in status
        assert await serve.metric(f'xds_server_nacks_total{{gateway="{GATEWAY}",type="Listener"}}') >= 1.0
    finally:
        blocker.close()
    (manifests / "10-gateway.yaml").write_text(gateway([listen_port]))
    [client] = await synced(serve)
    assert client["types"]["Listener"]["state"] == "SYNCED"
    statuses = (await serve.document("/debug/status"))["status"]
    assert not [
        s
        for s in statuses
        if s["kind"] == "Gateway"
        and s["name"] == "gw"
        and any(c["type"] == "Programmed" and c["status"] == "False" for c in s["conditions"])
    ]


async def test_envoy_keeps_serving_while_the_control_plane_restarts_and_resyncs(
    running: tuple[Path, Serve, Envoy, int], tmp_path: Path
) -> None:
    manifests, serve, envoy, listen_port = running
    url = f"http://127.0.0.1:{listen_port}/"
    assert await wait_for(url, (200, "from-a")) == (200, "from-a")
    before = await synced(serve)
    assert serve.terminate() == 0  # clean shutdown on SIGTERM
    for _ in range(10):
        assert await asyncio.to_thread(http_get, url) == (200, "from-a")  # Envoy keeps its last config
        await asyncio.sleep(0.05)
    xds_port = int(serve_port(serve, "--xds-address"))
    again = Serve(manifests, xds_port, int(serve.admin.rsplit(":", 1)[1]), tmp_path / "serve2.log")
    try:
        await again.ready()
        after = await synced(again)
        assert after and after[0]["node"] == "e2e"  # Envoy reconnected by itself
        assert await envoy.stat("control_plane.connected_state") == 1
        assert {n: t["acked"] for n, t in after[0]["types"].items()} == {
            n: t["acked"] for n, t in before[0]["types"].items()
        }  # content-hash versions: the same versions after a restart
        assert await again.metric("xds_server_pushes_total") <= 4  # one answer per type, no re-push storm
        assert await asyncio.to_thread(http_get, url) == (200, "from-a")
    finally:
        again.terminate()


async def test_two_gateways_on_one_port_do_not_share_it(
    running: tuple[Path, Serve, Envoy, int], tmp_path: Path
) -> None:
    """Each Envoy binds its listeners without SO_REUSEPORT: a second Gateway on a port the first already holds (both
    on this machine's loopback) is refused by its Envoy and not Programmed, instead of splitting the port's traffic
    with the first."""
    manifests, serve, _first, listen_port = running
    (manifests / "11-second.yaml").write_text(gateway([listen_port], name="second").split("---", 1)[1])
    second = Envoy(tmp_path, "default/second", int(serve_port(serve, "--xds-address")), node_id="second")
    try:
        await second.wait_live()
        for _ in range(200):
            if await second.stat("listener_manager.lds.update_rejected") >= 1:
                break
            await asyncio.sleep(0.05)
        assert await second.stat("listener_manager.lds.update_rejected") >= 1, second.log_tail()
        statuses = {(s["kind"], s["name"]): s for s in (await serve.document("/debug/status"))["status"]}
        [programmed] = [c for c in statuses[("Gateway", "second")]["conditions"] if c["type"] == "Programmed"]
        assert programmed["status"] == "False" and str(listen_port) in programmed["message"], programmed
        # The first Gateway keeps its port, and all of its traffic.
        for _ in range(10):
            assert await asyncio.to_thread(http_get, f"http://127.0.0.1:{listen_port}/") == (200, "from-a")
    finally:
        second.stop()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_a_listener_whose_port_another_process_holds_is_served_once_the_port_is_free(
    running: tuple[Path, Serve, Envoy, int], upstreams: dict[str, int], tmp_path: Path, delta: bool
) -> None:
    """Envoy never retries a listener it could not bind: the control plane sends it again, with a backoff, so the
    Gateway is `Programmed: False` (saying the port is taken) while another process holds the port, and serves as
    soon as that process lets it go, with no configuration change."""
    manifests, serve, _first, _listen_port = running
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    second_route = backend_route("second", "127.0.4.1", upstreams["127.0.4.1"], gateway_name="second")
    (manifests / "11-second.yaml").write_text(gateway([port], name="second").split("---", 1)[1] + "---" + second_route)
    second = Envoy(tmp_path, "default/second", int(serve_port(serve, "--xds-address")), node_id="second", delta=delta)
    try:
        await second.wait_live()

        async def programmed() -> dict[str, str]:
            statuses = {(s["kind"], s["name"]): s for s in (await serve.document("/debug/status"))["status"]}
            conditions = statuses.get(("Gateway", "second"), {"conditions": []})["conditions"]
            return next((c for c in conditions if c["type"] == "Programmed"), {"status": "missing"})

        for _ in range(200):
            if (await programmed())["status"] == "False" and "tried again" in (await programmed())["message"]:
                break
            await asyncio.sleep(0.05)
        condition = await programmed()
        assert condition["status"] == "False", condition
        assert (
            f"127.0.0.1:{port}" in condition["message"] and "tried again until the port is free" in condition["message"]
        ), condition
        squatter.close()
        assert await wait_for(f"http://127.0.0.1:{port}/", (200, "from-a"), seconds=20) == (200, "from-a")
        for _ in range(100):
            if (await programmed())["status"] == "True":
                break
            await asyncio.sleep(0.05)
        assert (await programmed())["status"] == "True", await programmed()
    finally:
        squatter.close()
        second.stop()
