"""Pieces every e2e test uses: free ports, small HTTP upstreams, HTTP polling, and a real Envoy process."""

from __future__ import annotations

import asyncio
import base64
import http.client
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from xds_server.bootstrap import bootstrap
from xds_server.envoy import envoy_binary

# Envoy's --base-id picks its shared-memory region: unique per Envoy so tests (and xdist workers) run side by side.
_base_ids = itertools.count(10_000 + (os.getpid() % 5_000) * 8)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def upstream(host: str, answer: str) -> Iterator[int]:
    """A tiny threaded HTTP server on `host` that answers every GET with `answer`; yields its port."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = answer.encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """(status, body); status 0 with the error text when the connection fails."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


async def wait_for(url: str, want: tuple[int, str], seconds: float = 15.0) -> tuple[int, str]:
    """Polls `url` every 50 ms until it answers `want`; returns the last answer (compare it to `want`)."""
    last: tuple[int, str] = (0, "")
    for _ in range(int(seconds / 0.05)):
        last = await asyncio.to_thread(http_get, url)
        if last == want:
            return last
        await asyncio.sleep(0.05)
    return last


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
        command = [str(envoy_binary()), "-c", str(config), "--base-id", str(next(_base_ids))]
        command += ["-l", "warning", "--drain-time-s", "1", "--log-path", str(self.log)]
        command += ["--file-flush-interval-msec", "100"]  # logs readable at once, not after Envoy's default 10 s
        with self.access_log.open("ab") as stdout:
            self.process = subprocess.Popen(command, stdout=stdout, stderr=subprocess.DEVNULL)

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
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Serve:
    """`xds-server serve` in its own process."""

    def __init__(self, manifests: Path, xds_port: int, admin_port: int, log: Path, extra: Sequence[str] = ()) -> None:
        self.admin = f"http://127.0.0.1:{admin_port}"
        self.log = log
        command = [sys.executable, "-m", "xds_server.cli", "serve", "--resources", str(manifests)]
        command += ["--xds-address", f"127.0.0.1:{xds_port}", "--admin-address", f"127.0.0.1:{admin_port}", *extra]
        if "--extproc-address" not in extra:  # serve listens there: never the shared default port 1063
            command += ["--extproc-address", f"127.0.0.1:{free_port()}"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("a"))

    async def ready(self) -> None:
        answer = await wait_for(f"{self.admin}/readyz", (200, "ready\n"))
        assert answer == (200, "ready\n"), self.log.read_text()[-3000:]

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


def xds_server_status(serve: Serve) -> str:
    """`xds-server status` as a user runs it, against the serve process's gRPC admin API."""
    command = [
        sys.executable,
        "-m",
        "xds_server.cli",
        "status",
        "--xds-address",
        f"127.0.0.1:{serve_port(serve, '--xds-address')}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    return result.stdout


def serve_port(serve: Serve, flag: str) -> str:
    args = serve.process.args
    assert isinstance(args, list)
    return str(args[args.index(flag) + 1]).rsplit(":", 1)[1]


def loopback_address() -> tuple[str, int]:
    """A random 127.x.y.z of the kind `up` gives pods (never 127.0.0.1), and a port free on it."""
    host = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
    return host, free_port(host)


def port_free_on(hosts: list[str]) -> int:
    """One port that is free on every host (pods of a pool share their targetPort)."""
    while True:
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket() as probe:
                    probe.bind((host, port))
            return port
        except OSError:
            continue


@dataclass(frozen=True)
class SimProcess:
    """`xds-server sim NAME` as a process, listening on its own loopback address."""

    host: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_sim(
    name: str, args: Sequence[str], host: str, port: int, log: Path, env: dict[str, str] | None = None
) -> SimProcess:
    """Starts `xds-server sim NAME ARGS...` (the args place it on host:port) and waits until /health answers 200."""
    command = [sys.executable, "-m", "xds_server.cli", "sim", name, *args]
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    sim = SimProcess(host, port, process, log)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        if http_get(f"{sim.url}/health", timeout=1)[0] == 200:
            return sim
        time.sleep(0.05)
    sim.kill()
    raise AssertionError(f"sim {name} did not become healthy:\n{log.read_text()}")


def start_testupstream(upstream_id: str, host: str, log: Path) -> SimProcess:
    """A testupstream answering at once (no gaps between SSE events) on its own address."""
    port = free_port(host)
    args = ["--host", host, "--port", str(port), "--id", upstream_id, "--sse-gap-ms", "0"]
    return start_sim("testupstream", args, host, port, log)


def b64(text: str | bytes) -> str:
    """Base64 for the testupstream's x-expected-* and x-response-* headers."""
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text `text`, 0 when absent."""
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = dict(pair.split("=", 1) for pair in line[len(name) + 1 : line.rindex("}")].split(","))
            if all(found.get(k) == json.dumps(v) for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


SECONDS = 20.0  # how long anything may take to become true on a loaded machine; never a timing assertion


@dataclass
class Response:
    status_code: int
    headers: Message
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


def request(
    url: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> Response:
    """One HTTP/1.1 request with the standard library (no client-side retries, no added headers but Host)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=SECONDS)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        answer = connection.getresponse()
        return Response(answer.status, answer.headers, answer.read())
    finally:
        connection.close()


def eventually(check: Any, what: str) -> Any:
    """Polls `check()` until it returns something truthy."""
    deadline = time.monotonic() + SECONDS
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            assert result, f"not reached: {what}"
            return result
        time.sleep(0.05)


class Up:
    """`xds-server up` as a user runs it, in its own process: random free control-plane ports, the Gateways on a
    loopback address of their own (so runs side by side never share a listener), output and logs under `directory`."""

    def __init__(self, paths: Sequence[Path], directory: Path) -> None:
        self.directory = directory
        self.ready_file = directory / "ready.json"
        self.output = directory / "up.out"
        self.listen_host = loopback_address()[0]
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
