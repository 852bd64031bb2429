"""A real Envoy process bootstrapped against an ADS server, as the e2e tests and benchmarks run it."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from testing.ports import free_port
from testing.processes import stop_process
from testing.web import http_get, wait_for
from xds_server.bootstrap import bootstrap
from xds_server.envoy import envoy_binary, envoy_environment

# Envoy's --base-id picks its shared-memory region: unique per Envoy so tests (and xdist workers) run side by side.
_base_ids = itertools.count(10_000 + (os.getpid() % 5_000) * 8)


def base_id() -> int:
    """A --base-id no other Envoy of this process (nor, most likely, of another xdist worker) uses."""
    return next(_base_ids)


class Envoy:
    """A real Envoy bootstrapped against an ADS server, with its admin on a free loopback port."""

    def __init__(
        self,
        tmp_path: Path,
        gateway: str,
        xds_port: int,
        node_id: str = "e2e",
        delta: bool = False,
        printed_bootstrap: tuple[str, int] | None = None,  # (bootstrap YAML, its admin port), as a user has them
        stdout_pipe: bool = False,  # stdout to a pipe the caller reads (or leaves full), not to `access_log`
    ) -> None:
        config = tmp_path / f"bootstrap-{node_id}.yaml"
        if printed_bootstrap is None:
            self.admin_port = free_port()
            admin = ("127.0.0.1", self.admin_port)
            config.write_text(yaml.safe_dump(bootstrap(gateway, node_id, ("127.0.0.1", xds_port), admin, delta)))
        else:
            config.write_text(printed_bootstrap[0])
            self.admin_port = printed_bootstrap[1]
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.log = tmp_path / f"envoy-{node_id}.log"
        self.access_log = tmp_path / f"envoy-{node_id}.stdout"  # access logs of AI listeners go to stdout
        command = [str(envoy_binary()), "-c", str(config), "--base-id", str(base_id())]
        command += ["-l", "warning", "--drain-time-s", "1", "--log-path", str(self.log)]
        command += ["--file-flush-interval-msec", "100"]  # logs readable at once, not after Envoy's default 10 s
        with self.access_log.open("ab") as log:
            stdout = subprocess.PIPE if stdout_pipe else log
            self.process = subprocess.Popen(command, stdout=stdout, stderr=subprocess.DEVNULL, env=envoy_environment())

    async def wait_live(self) -> None:
        answer = await wait_for(f"{self.admin}/ready", (200, "LIVE\n"))
        assert answer == (200, "LIVE\n"), f"Envoy not LIVE: {answer}; log: {self.log_tail()}"

    async def get(self, path: str) -> tuple[int, str]:
        return await asyncio.to_thread(http_get, self.admin + path)

    async def stat(self, name: str) -> int:
        """One counter or gauge from /stats (0 when Envoy does not have it yet)."""
        _, text = await self.get(f"/stats?filter=^{name}$")
        for line in text.splitlines():
            stat, _, value = line.partition(": ")
            if stat == name:
                return int(value)
        return 0

    async def stat_total(self, suffix: str) -> int:
        """The sum of every counter whose name ends with `.suffix` (e.g. one per cluster)."""
        _, text = await self.get(f"/stats?filter=\\.{suffix}$")
        total = 0
        for line in text.splitlines():
            stat, _, value = line.partition(": ")
            if stat.endswith("." + suffix) and value.isdigit():
                total += int(value)
        return total

    async def config_dump(self) -> dict[str, Any]:
        status, text = await self.get("/config_dump?include_eds")
        assert status == 200, text
        dump: dict[str, Any] = json.loads(text)
        return dump

    async def cluster_names(self) -> set[str]:
        _, text = await self.get("/clusters")
        return {line.split("::", 1)[0] for line in text.splitlines() if "::" in line}

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.process)
