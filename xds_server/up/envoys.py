"""One Envoy per Gateway, from the bundled binary and a generated bootstrap, supervised like the pods."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection

import yaml

from xds_server.bootstrap import bootstrap
from xds_server.envoy import envoy_binary, envoy_environment
from xds_server.listen import Address
from xds_server.up.processes import Supervised
from xds_server.up.readiness import Probe, probe_once
from xds_server.up.workloads import RunContext

ADMIN_HOST = "127.0.0.1"


class GatewayEnvoy:
    def __init__(
        self, key: str, run: RunContext, xds: Address, admin_port: int, max_heap_bytes: int | None = None
    ) -> None:
        self.key = key
        self.run = run
        self.admin_port = admin_port
        self.live = False
        stem = "envoy_" + key.replace("/", "_")
        self.log = run.directory / f"{stem}.log"
        config = run.directory / f"{stem}.yaml"
        node_id = f"up-{key.replace('/', '-')}"
        document = bootstrap(key, node_id, xds, (ADMIN_HOST, admin_port), max_heap_bytes=max_heap_bytes)
        config.write_text(yaml.safe_dump(document, sort_keys=False))
        argv = [str(envoy_binary()), "-c", str(config), "--log-level", "info", "--drain-time-s", "1"]
        # A base id of its own, so this Envoy's shared memory never meets another's (other runs, other tests).
        argv += ["--use-dynamic-base-id", "--base-id-path", str(run.directory / f"{stem}.base-id")]
        self.process = Supervised(argv, envoy_environment(run.child_env({})), self.log, self._started, self._exited)

    @property
    def admin(self) -> str:
        return f"http://{ADMIN_HOST}:{self.admin_port}"

    def _started(self, _pid: int) -> None:
        self.live = False

    def _exited(self, code: int, restart_in: float) -> None:
        self.live = False
        self.run.reporter.info(
            f"envoy for gateway {self.key} exited with code {code}; restarting in {restart_in:.0f}s; log {self.log}"
        )

    async def poll(self) -> bool:
        """Whether Envoy is LIVE (its admin /ready answers 200)."""
        self.live = await probe_once(Probe("httpGet", self.admin_port, path="/ready", timeout=1.0), ADMIN_HOST)
        return self.live


class Envoys:
    def __init__(
        self, run: RunContext, xds: Address, admin_port: Callable[[], int], max_heap_bytes: int | None = None
    ) -> None:
        self.max_heap_bytes = max_heap_bytes
        self.run = run
        self.xds = xds
        self._admin_port = admin_port
        self.by_gateway: dict[str, GatewayEnvoy] = {}
        self._stopping: set[asyncio.Task[None]] = set()

    def reconcile(self, gateways: Collection[str]) -> None:
        """An Envoy for every Gateway served, none for one that went away. A listener port another process holds
        is the control plane's to report and retry: that Envoy rejects the listener, and gets it again until it
        binds."""
        wanted = set(gateways)
        for key in sorted(wanted - self.by_gateway.keys()):
            envoy = GatewayEnvoy(key, self.run, self.xds, self._admin_port(), self.max_heap_bytes)
            self.by_gateway[key] = envoy
            envoy.process.start()
        for key in sorted(self.by_gateway.keys() - wanted):
            self.run.reporter.info(f"gateway {key} removed: stopping its Envoy")
            task = asyncio.create_task(self.by_gateway.pop(key).process.stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    async def poll(self) -> None:
        await asyncio.gather(*(envoy.poll() for envoy in self.by_gateway.values()))

    async def stop_all(self) -> None:
        await asyncio.gather(*(envoy.process.stop() for envoy in self.by_gateway.values()), *self._stopping)
