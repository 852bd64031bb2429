"""Leader election against a real API server: one leader at a time, takeover after a crash (lease expiry) and after a
graceful stop (release), and a leader that notices at once when it no longer holds the Lease.

Nothing asserts how fast things happen beyond "sooner than the lease would have expired"; every wait polls with a
generous bound, for a loaded 2-core machine.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from kubernetes_asyncio import client, config
from prometheus_client import REGISTRY

from testing.kube_cluster import KubeCluster
from xds_server.kube.leader import LeaderElector

LEASE = "xds-server"  # the elector's default Lease name
WAIT = 30.0  # bound on anything that should happen within a few retry periods
FAST = {"lease_duration": 3.0, "renew_deadline": 2.0, "retry_period": 0.5}

ClientFactory = Callable[[], Awaitable[client.ApiClient]]
Start = Callable[..., Awaitable["Running"]]


@pytest.fixture
async def new_client(kube_cluster: KubeCluster) -> AsyncIterator[ClientFactory]:
    """An ApiClient per elector, as separate replicas would have; all closed at the end."""
    made: list[client.ApiClient] = []

    async def make() -> client.ApiClient:
        cfg = client.Configuration()
        await config.load_kube_config(config_file=str(kube_cluster.kubeconfig), client_configuration=cfg)
        made.append(client.ApiClient(cfg))
        return made[-1]

    yield make
    for api in made:
        await api.close()


class Running:
    """An elector running in a task; stopped gracefully (stop) or abruptly (kill), at the latest by the fixture."""

    def __init__(self, elector: LeaderElector, api: client.ApiClient) -> None:
        self.elector = elector
        self.api = api
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(elector.run(self.stop_event))
        self.events: list[str] = []
        elector.on_started_leading(lambda: self.events.append("started"))
        elector.on_stopped_leading(lambda: self.events.append("stopped"))

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, WAIT)

    async def kill(self) -> None:
        """Like a killed process: no release, the Lease is left to expire."""
        self.task.cancel()
        with suppress(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def running(new_client: ClientFactory) -> AsyncIterator[Start]:
    """Start an elector on a client of its own."""
    started: list[Running] = []

    async def start(
        namespace: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
    ) -> Running:
        api = await new_client()
        elector = LeaderElector(
            api,
            namespace,
            identity=identity,
            lease_duration=lease_duration,
            renew_deadline=renew_deadline,
            retry_period=retry_period,
        )
        started.append(Running(elector, api))
        return started[-1]

    yield start
    for run in started:
        await run.kill()


async def until(condition: Callable[[], bool], timeout: float = WAIT, what: str = "condition") -> float:
    """Poll until `condition` holds; returns how long it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} not reached within {timeout:g} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def read_lease(api: client.ApiClient, namespace: str) -> tuple[int, dict[str, Any]]:
    """The Lease as the server sent it (the typed model would turn MicroTimes into datetimes)."""
    request = client.CoordinationV1Api(api).read_namespaced_lease(LEASE, namespace, _preload_content=False)
    response = cast(aiohttp.ClientResponse, await request)
    async with response:
        return response.status, await response.json()


async def lease_spec(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    status, lease = await read_lease(api, namespace)
    assert status == 200, lease
    return dict(lease["spec"])


async def test_a_single_elector_leads_and_the_lease_names_it(namespace: str, running: Start) -> None:
    run = await running(namespace, "only-one", retry_period=0.5)
    api = run.api
    await asyncio.wait_for(run.elector.wait_until_leader(), WAIT)
    assert run.elector.is_leader and run.elector.holder == "only-one"
    assert REGISTRY.get_sample_value("xds_server_leader") == 1
    spec = await lease_spec(api, namespace)
    assert spec["holderIdentity"] == "only-one"
    assert spec["leaseDurationSeconds"] == 15
    assert spec["leaseTransitions"] == 0
    assert spec["renewTime"].endswith("Z") and len(spec["renewTime"]) == len("2025-01-02T03:04:05.678901Z")
    start = time.monotonic()
    while (renewed := await lease_spec(api, namespace))["renewTime"] == spec["renewTime"]:
        assert time.monotonic() - start < WAIT, "no renewal"
        await asyncio.sleep(0.2)
    assert renewed["acquireTime"] == spec["acquireTime"]
    assert run.events == ["started"]

    await run.stop()
    assert not run.elector.is_leader and run.events == ["started", "stopped"]
    assert REGISTRY.get_sample_value("xds_server_leader") == 0
    released = await lease_spec(api, namespace)
    assert released.get("holderIdentity", "") == "" and released["leaseDurationSeconds"] == 1


async def test_one_leader_at_a_time_and_takeover_after_a_crash(namespace: str, running: Start) -> None:
    runs = [await running(namespace, f"replica-{i}", **FAST) for i in (0, 1)]

    def leaders() -> list[Running]:
        return [r for r in runs if r.elector.is_leader]

    await until(lambda: len(leaders()) == 1, what="a leader")
    most = 0
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        most = max(most, len(leaders()))
        await asyncio.sleep(0.02)
    assert most == 1
    await until(lambda: len(leaders()) == 1, what="a leader after sampling")

    (crashed,) = leaders()
    (survivor,) = [r for r in runs if r is not crashed]
    await until(lambda: survivor.elector.holder == crashed.elector.identity, what="the follower seeing the leader")
    await crashed.kill()
    assert not crashed.elector.is_leader and crashed.events[-1] == "stopped"

    await until(lambda: survivor.elector.is_leader, timeout=20.0, what="takeover after the lease expired")
    spec = await lease_spec(survivor.api, namespace)
    assert spec["holderIdentity"] == survivor.elector.identity
    assert spec["leaseTransitions"] >= 1
    assert survivor.events[-1] == "started"


async def test_graceful_stop_hands_over_before_the_lease_would_expire(namespace: str, running: Start) -> None:
    lease = {"lease_duration": 60.0, "renew_deadline": 40.0, "retry_period": 0.5}
    first = await running(namespace, "first", **lease)
    await asyncio.wait_for(first.elector.wait_until_leader(), WAIT)
    second = await running(namespace, "second", **lease)
    await until(lambda: second.elector.holder == "first", what="the second elector seeing the first lead")

    await first.stop()
    assert first.events == ["started", "stopped"]
    took = await until(lambda: second.elector.is_leader, timeout=45.0, what="takeover after release")
    # Without the release it could not have happened before the 60 s lease expired.
    assert took < 45.0
    spec = await lease_spec(second.api, namespace)
    assert (spec["holderIdentity"], spec["leaseDurationSeconds"], spec["leaseTransitions"]) == ("second", 60, 1)


async def test_leader_replaced_behind_its_back_stops_at_once(namespace: str, running: Start) -> None:
    run = await running(namespace, "ousted", lease_duration=60.0, renew_deadline=40.0, retry_period=0.5)
    api = run.api
    await asyncio.wait_for(run.elector.wait_until_leader(), WAIT)

    leases = client.CoordinationV1Api(api)
    await leases.delete_namespaced_lease(LEASE, namespace)
    usurper = {
        "metadata": {"name": LEASE},
        "spec": {"holderIdentity": "usurper", "leaseDurationSeconds": 3600},
    }
    response = cast(
        aiohttp.ClientResponse,
        await leases.create_namespaced_lease(namespace, cast(Any, usurper), _preload_content=False),
    )
    async with response:
        assert response.status == 201

    # Well before the 40 s renew deadline: the next renewal gets 409, re-reads and sees the other holder.
    await until(lambda: "stopped" in run.events, timeout=20.0, what="loss noticed")
    assert not run.elector.is_leader and run.elector.holder == "usurper"
    await asyncio.sleep(2.0)  # several retry periods: it must not take a live foreign lease
    assert not run.elector.is_leader and run.events == ["started", "stopped"]


async def test_leader_that_cannot_renew_steps_down_by_the_deadline_and_recovers(namespace: str, running: Start) -> None:
    run = await running(namespace, "cut-off", **FAST)
    api = run.api
    await asyncio.wait_for(run.elector.wait_until_leader(), WAIT)

    # A server that accepts connections and never answers: requests hang rather than fail, so only the elector's
    # own deadline can end them.
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with suppress(Exception):
            await reader.read()
        writer.close()

    black_hole = await asyncio.start_server(swallow, "127.0.0.1", 0)
    real_host = api.configuration.host
    api.configuration.host = f"https://127.0.0.1:{black_hole.sockets[0].getsockname()[1]}"
    try:
        await until(lambda: "stopped" in run.events, timeout=20.0, what="loss after the renew deadline")
        assert not run.elector.is_leader
    finally:
        api.configuration.host = real_host
        black_hole.close()

    # Nobody else wrote the Lease meanwhile; it still names us, so we take it straight back, no transition counted.
    await until(lambda: run.elector.is_leader, what="leading again")
    assert run.events == ["started", "stopped", "started"]
    spec = await lease_spec(api, namespace)
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("cut-off", 0)


ELECTOR_PROCESS = """
import asyncio, sys
from kubernetes_asyncio import client, config
from xds_server.kube.leader import LeaderElector

async def main() -> None:
    cfg = client.Configuration()
    await config.load_kube_config(config_file=sys.argv[1], client_configuration=cfg)
    async with client.ApiClient(cfg) as api:
        elector = LeaderElector(api, sys.argv[2], identity=sys.argv[3], lease_duration=3.0, renew_deadline=2.0,
                                retry_period=0.5)
        elector.on_started_leading(lambda: print("leading", flush=True))
        await elector.run(asyncio.Event())

asyncio.run(main())
"""


async def test_killed_leader_process_is_replaced(
    kube_cluster: KubeCluster, namespace: str, new_client: ClientFactory, tmp_path: Path
) -> None:
    """Separate processes and SIGKILL: nothing of the dead leader runs after it, not even a finally block."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    logs = {name: tmp_path / f"{name}.log" for name in ("proc-a", "proc-b")}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    for name, log in logs.items():
        with log.open("wb") as out:
            processes[name] = subprocess.Popen(
                [sys.executable, "-c", ELECTOR_PROCESS, str(kube_cluster.kubeconfig), namespace, name],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
    api = await new_client()

    async def holder() -> str:
        status, lease = await read_lease(api, namespace)
        return str(lease["spec"].get("holderIdentity", "")) if status == 200 else ""

    try:
        start = time.monotonic()
        while (leader := await holder()) not in processes:
            assert time.monotonic() - start < 60.0, f"no process took the Lease: {logs}"
            await asyncio.sleep(0.2)
        processes[leader].send_signal(signal.SIGKILL)
        processes[leader].wait(timeout=WAIT)
        (survivor,) = [name for name in processes if name != leader]

        start = time.monotonic()
        while (current := await holder()) != survivor:
            assert time.monotonic() - start < 30.0, f"the Lease still names {current!r}"
            await asyncio.sleep(0.2)
        await until(lambda: "leading" in logs[survivor].read_text(), what="the survivor's callback")
        assert processes[survivor].poll() is None
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait(timeout=WAIT)
