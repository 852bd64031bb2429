"""`xds-server serve` and `xds-server up` in processes of their own, as a user runs them, and what tests ask them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from testing.ports import free_port, loopback_address
from testing.web import http_get


def rss_kib(pid: int | str = "self") -> int:
    """A process's resident set size (VmRSS), in KiB; this process's by default."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


class Serve:
    """`xds-server serve` in its own process: `--resources manifests`, or `--kubernetes --kubeconfig` when `manifests`
    is a kubeconfig file. In cluster mode the Envoys it provisions are told to find their certificate in `tls_dir`
    (`--envoy-tls-dir`), where a test runs them (testing/kube_envoy.py) instead of in a pod's /certs."""

    def __init__(
        self,
        manifests: Path,
        xds_port: int,
        admin_port: int,
        log: Path,
        extra: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.admin = f"http://127.0.0.1:{admin_port}"
        self.log = log
        kubernetes = manifests.is_file() and manifests.suffix not in (".yaml", ".yml", ".json")
        source = ["--kubernetes", "--kubeconfig", str(manifests)] if kubernetes else ["--resources", str(manifests)]
        command = [sys.executable, "-m", "xds_server.cli", "serve", *source]
        command += ["--xds-address", f"127.0.0.1:{xds_port}", "--admin-address", f"127.0.0.1:{admin_port}", *extra]
        if "--extproc-address" not in extra:  # serve listens there: never the shared default port 1063
            command += ["--extproc-address", f"127.0.0.1:{free_port()}"]
        self.tls_dir: Path | None = None
        if kubernetes:
            given = [extra[i + 1] for i, arg in enumerate(extra[:-1]) if arg == "--envoy-tls-dir"]
            self.tls_dir = Path(given[0]) if given else log.parent / f"{log.stem}-certs"
            if not given:
                command += ["--envoy-tls-dir", str(self.tls_dir)]
        environment = {**os.environ, **env} if env is not None else None
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("a"), env=environment)

    async def ready(self, seconds: float = 15.0) -> str:
        """Waits for /readyz; returns its text (in a cluster it says whether this replica leads)."""
        deadline = time.monotonic() + seconds
        answer: tuple[int, str] = (0, "")
        while time.monotonic() < deadline and self.process.poll() is None:
            answer = await asyncio.to_thread(http_get, f"{self.admin}/readyz")
            if answer[0] == 200:
                return answer[1]
            await asyncio.sleep(0.05)
        raise AssertionError(f"serve not ready: {answer}\n{self.log.read_text()[-3000:]}")

    async def document(self, path: str) -> Any:
        status, text = await asyncio.to_thread(http_get, self.admin + path)
        assert status == 200, text
        return json.loads(text)

    async def metric(self, line_start: str) -> float:
        _, text = await asyncio.to_thread(http_get, self.admin + "/metrics")
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
        return sum(values)

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=10)


async def synced(serve: Serve) -> list[dict[str, Any]]:
    """Waits until every connected Envoy has ACKed the latest version of every type; returns /debug/clients."""
    clients: list[dict[str, Any]] = []
    for _ in range(200):
        clients = await serve.document("/debug/clients")
        if clients and all(t["state"] == "SYNCED" for c in clients for t in c["types"].values()):
            return clients
        await asyncio.sleep(0.05)
    return clients


def xds_server_status(serve: Serve, extra: Sequence[str] = ()) -> str:
    """`xds-server status` as a user runs it, against the serve process's gRPC admin API (`extra`: its TLS flags in
    cluster mode)."""
    command = [
        sys.executable,
        "-m",
        "xds_server.cli",
        "status",
        "--xds-address",
        f"127.0.0.1:{serve_port(serve, '--xds-address')}",
        *extra,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    return result.stdout


def serve_port(serve: Serve, flag: str) -> str:
    args = serve.process.args
    assert isinstance(args, list)
    return str(args[args.index(flag) + 1]).rsplit(":", 1)[1]


class Up:
    """`xds-server up` as a user runs it, in its own process: random free control-plane ports, the Gateways on a
    loopback address of their own (so runs side by side never share a listener), output and logs under `directory`."""

    def __init__(self, paths: Sequence[Path], directory: Path, listen_host: str | None = None) -> None:
        self.directory = directory
        self.ready_file = directory / "ready.json"
        self.output = directory / "up.out"
        self.listen_host = listen_host or loopback_address()[0]
        command = [sys.executable, "-m", "xds_server.cli", "up", *map(str, paths), "--free-ports"]
        command += ["--listen-host", self.listen_host, "--ready-file", str(self.ready_file)]
        command += ["--log-dir", str(directory / "logs")]
        with self.output.open("ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        self.document: dict[str, Any] = {}

    def ready(self, seconds: float = 60.0) -> dict[str, Any]:
        """The ready file's document, once `up` has written it."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"up exited with {self.process.returncode}:\n{self.tail()}"
            if self.ready_file.exists():
                self.document = json.loads(self.ready_file.read_text())
                return self.document
            time.sleep(0.05)
        raise AssertionError(f"up was not ready after {seconds}s:\n{self.tail()}")

    def refresh(self) -> dict[str, Any]:
        """The ready file again: `up` rewrites it when Gateways or pods change."""
        self.document = json.loads(self.ready_file.read_text())
        return self.document

    @property
    def url(self) -> str:
        url: str = self.document["gateways"][0]["url"]
        return url

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output.read_text(errors="replace").splitlines()[-lines:])

    def processes(self) -> list[int]:
        """Every live process of this run (the children carry the run's id in their environment)."""
        return run_processes(self.document["run_id"]) if self.document else []

    def stop(self, signum: int = signal.SIGTERM, seconds: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def stop_process(process: subprocess.Popen[bytes], seconds: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `seconds`; always reaps it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_processes(run_id: str) -> list[int]:
    """Live processes whose environment has `XDS_SERVER_UP_RUN=<run_id>` (zombies, already dead, are left out)."""
    marker = f"XDS_SERVER_UP_RUN={run_id}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0") and " Z " not in (proc / "stat").read_text():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def listening_tcp_ports(pid: int) -> set[int]:
    """The TCP ports a process listens on (its sockets in LISTEN state, IPv4 and IPv6, as /proc shows them)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports
