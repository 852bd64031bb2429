"""`xds-server up`: the orchestration. Load the manifests, run the pods, serve the control plane, start one Envoy
per Gateway, say when each Gateway is ready and what runs, follow edits, stop everything on SIGTERM or Ctrl-C.

Every change that translation can see, a manifest edit or a pod turning Ready, requests a rebuild (`publisher`);
what is printed and written to the ready file follows the control plane's current build.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from translators.gatewayapi.unsupported import unsupported_message
from translators.ir import TranslateOptions
from translators.loader import ResourceSet
from translators.resources.rbac import ClusterRole, ClusterRoleBinding, Role, RoleBinding, ServiceAccount
from xds_server.control_plane import Build, ControlPlane
from xds_server.envoy import EnvoyNotFound, envoy_binary
from xds_server.listen import EXTPROC_SOCKET, XDS_SOCKET, Address, default_socket
from xds_server.logs import configure
from xds_server.serve import ControlPlaneService, stop_on_signals
from xds_server.sources.files import FileSource, manifest_files
from xds_server.up.addresses import free_port, port_free
from xds_server.up.envoys import Envoys
from xds_server.up.pods import with_pods
from xds_server.up.publisher import Publisher
from xds_server.up.report import PodRow, Reporter, status_table
from xds_server.up.workloads import RunContext, Workloads
from xds_server.xds.sync import gateway_synced, rejections, wait_synced

CONTROL_HOST = "127.0.0.1"  # the admin serves the person at this machine only
DEFAULT_ADMIN_PORT = 19000
FIRST_ENVOY_ADMIN_PORT = 19901
DRAIN_SYNC_SECONDS = 2.0  # how long a stopping pod waits for the Envoys to take the configuration without it
DRAIN_GRACE_SECONDS = 0.5  # then for requests already routed to it (a picker's choice just before the change)
POLL_SECONDS = 0.1
TABLE_WAIT_SECONDS = 10.0  # after an edit, the status table waits this long at most for pods to be ready
RBAC_KINDS = (ServiceAccount, Role, RoleBinding, ClusterRole, ClusterRoleBinding)


@dataclass(frozen=True)
class UpConfig:
    paths: Sequence[Path]
    listen_host: str = "127.0.0.1"
    privileged_port_offset: int = 10000
    buffer_limit_bytes: int = TranslateOptions.buffer_limit_bytes
    max_model_length: int = TranslateOptions.max_model_length
    ready_file: Path | None = None
    log_dir: Path | None = None
    # Admin ports chosen free at random and the gRPC sockets in a directory of the run's (tests, several runs).
    free_ports: bool = False
    wait_seconds: float = 120.0  # startup gives up waiting for pods and Envoys after this long, and says why
    picker_debug: bool = False  # the picker answers x-gateway-picker-debug: true with the pick's scores
    body_budget_bytes: int | None = None  # request-body bytes ext_proc holds at once (default: two of the largest)
    envoy_max_heap_bytes: int | None = None  # each Envoy's overload-manager heap limit (none by default)
    # ADS and ext_proc: by default Unix sockets in a directory of the run only this user may enter (xds_server.listen)
    xds_address: Address | None = None
    extproc_address: Address | None = None


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


class Runner:
    def __init__(self, config: UpConfig, out: TextIO = sys.stdout) -> None:
        self.config = config
        self.run_id = secrets.token_hex(4)
        directory = config.log_dir or Path(tempfile.mkdtemp(prefix=f"xds-server-up-{self.run_id}-"))
        directory.mkdir(parents=True, exist_ok=True)
        self.reporter = Reporter(out, interactive=out.isatty())
        self.run = RunContext(self.run_id, directory.resolve(), self.reporter)
        self.admin_port = free_port(CONTROL_HOST) if config.free_ports else DEFAULT_ADMIN_PORT
        # Short (a socket path has at most 107 bytes) and private: mkdtemp makes it 0700.
        # ADS and ext_proc on Unix sockets by default: this user's (`xds-server status` and `bootstrap` find them),
        # or with --free-ports a new directory of the run's, as free as a free port (mkdtemp makes it 0700; short,
        # for a socket path has at most 107 bytes).
        self.socket_dir: Path | None = None
        xds, extproc = config.xds_address, config.extproc_address
        if config.free_ports and (xds is None or extproc is None):
            self.socket_dir = sockets = Path(tempfile.mkdtemp(prefix=f"xds-server-up-{self.run_id}-"))
            xds = xds or Address(path=str(sockets / XDS_SOCKET))
            extproc = extproc or Address(path=str(sockets / EXTPROC_SOCKET))
        self.xds: Address = xds or default_socket(XDS_SOCKET)
        self.extproc: Address = extproc or default_socket(EXTPROC_SOCKET)
        self.options = TranslateOptions(
            listener_address=config.listen_host,
            privileged_port_offset=config.privileged_port_offset,
            extproc_host=self.extproc.host or CONTROL_HOST,
            extproc_port=self.extproc.port,
            extproc_unix=self.extproc.path,
            resolve_cluster_local=True,  # Backend FQDNs <svc>.<ns>.svc.cluster.local reach the local pods
            buffer_limit_bytes=config.buffer_limit_bytes,
            max_model_length=config.max_model_length,
        )
        self.service = ControlPlaneService(
            self.options,
            self.xds,
            (CONTROL_HOST, self.admin_port),
            config.picker_debug,
            body_budget_bytes=config.body_budget_bytes,
        )
        self.source = FileSource(config.paths)
        self.files = ResourceSet()
        self.publisher = Publisher(
            self._publish, lambda error: self.reporter.warn(f"rebuild failed ({error}); see control-plane.log")
        )
        self.workloads = Workloads(self.run, self._changed, self._drained)
        self.envoys = Envoys(self.run, self.xds, self._envoy_admin_port, config.envoy_max_heap_bytes)
        self._serving = False
        self._next_admin_port = FIRST_ENVOY_ADMIN_PORT
        self.announced: dict[str, list[str]] = {}
        self._ready_text = ""
        self._table_due: float | None = None  # when manifests changed: the status table is shown again once settled

    # -- plumbing between the parts

    def _changed(self) -> None:
        self.publisher.request()

    async def _publish(self) -> None:
        await self.service.publish(with_pods(self.files, self.workloads.pod_objects()))
        if self._serving:
            self.envoys.reconcile(self.gateway_urls().keys())

    async def _drained(self) -> None:
        """Returns once the Envoys have the configuration built after this call (bounded), plus a grace period."""
        await self.publisher.wait(self.publisher.request())
        control_plane = self.control_plane
        await wait_synced(control_plane.clients, control_plane.cache, list(self.envoys.by_gateway), DRAIN_SYNC_SECONDS)
        await asyncio.sleep(DRAIN_GRACE_SECONDS)

    def _synced(self, gateway: str) -> bool:
        return gateway_synced(self.control_plane.clients, self.control_plane.cache, gateway)

    def _envoys_synced(self) -> bool:
        return all(self._synced(key) for key in self.envoys.by_gateway)

    def _envoy_admin_port(self) -> int:
        if self.config.free_ports:
            return free_port(CONTROL_HOST)
        while not port_free(CONTROL_HOST, self._next_admin_port):
            self._next_admin_port += 1
        self._next_admin_port += 1
        return self._next_admin_port - 1

    @property
    def control_plane(self) -> ControlPlane:
        return self.service.control_plane

    @property
    def current(self) -> Build | None:
        return self.service.control_plane.current

    def gateway_urls(self) -> dict[str, list[str]]:
        if self.current is None:
            return {}
        host = _url_host(self.config.listen_host)
        return {
            gateway.key: [f"{listener.scheme}://{host}:{listener.port}" for listener in gateway.listeners]
            for gateway in self.current.translation.gateways
        }

    def _apply_manifests(self, resources: ResourceSet) -> None:
        self.files = resources
        problems = [f"invalid object: {error}" for error in resources.errors]
        problems += [f"warning: {warning}" for warning in resources.warnings]
        rbac = [o for kind in RBAC_KINDS for o in resources.of_kind(kind)]
        if rbac:
            problems.append(f"{len(rbac)} RBAC object(s) (ServiceAccount, Role, ...) have no effect on one machine")
        for unknown in resources.unknown:
            what = unsupported_message(unknown) or f"{unknown.api_version} {unknown.kind} is not read"
            problems.append(f"{unknown.kind} {unknown.namespace}/{unknown.name}: {what}")
        self.reporter.set_manifest_warnings(problems)
        self.workloads.reconcile(resources)

    async def _reload(self, resources: ResourceSet) -> None:
        self.reporter.info("manifests changed: applying")
        self._apply_manifests(resources)
        self._table_due = time.monotonic()

    # -- what the person sees

    def pod_rows(self) -> list[PodRow]:
        return [
            PodRow(
                f"{pod.identity.namespace}/{pod.identity.name}",
                pod.identity.address,
                pod.ready,
                sum(c.process.restarts for c in pod.containers),
                " ".join(str(path) for path in pod.logs),
            )
            for pod in sorted(self.workloads.pods(), key=lambda p: (p.identity.namespace, p.identity.name))
            if not pod.terminating
        ]

    def render_status(self) -> str:
        if self.current is None:
            return ""
        return status_table(
            self.current.translation,
            self.control_plane.statuses(),
            self.gateway_urls(),
            self.pod_rows(),
            self.reporter.table_warnings(),
        )

    def _progress(self) -> tuple[str, bool]:
        pods = [p for p in self.workloads.pods() if not p.terminating]
        ready = sum(p.ready for p in pods)
        parts = [f"pods ready {ready}/{len(pods)}"]
        done = ready == len(pods) and self.publisher.idle and self.current is not None
        for key, envoy in sorted(self.envoys.by_gateway.items()):
            in_sync = envoy.live and self._synced(key)
            rejected = bool(rejections(self.control_plane.clients, key))  # said in a warning; waiting would not help
            state = ("LIVE" if in_sync else "LIVE (syncing)") if envoy.live else "starting"
            parts.append(f"envoy {key} {'REJECTED its configuration' if rejected else state}")
            done = done and (in_sync or rejected)
        return " | ".join(parts), done

    def _announce(self) -> None:
        """`gateway NS/NAME ready at URL` once a Gateway's Envoy is LIVE with its configuration."""
        urls = self.gateway_urls()
        for key in sorted(urls):
            envoy = self.envoys.by_gateway.get(key)
            if self.announced.get(key) == urls[key] or envoy is None or not urls[key]:
                continue
            if envoy.live and self._synced(key):
                self.reporter.info(f"gateway {key} ready at {urls[key][0]}")
                self.announced[key] = urls[key]
        for key in self.announced.keys() - urls.keys():
            del self.announced[key]

    def _write_ready_file(self) -> None:
        """The announced Gateways as JSON, with the control plane's addresses and the pods; rewritten on change."""
        if self.config.ready_file is None:
            return
        document = {
            "gateways": [
                {
                    "gateway": key,
                    "url": urls[0],
                    "urls": urls,
                    "envoy_admin": self.envoys.by_gateway[key].admin if key in self.envoys.by_gateway else None,
                }
                for key, urls in sorted(self.announced.items())
            ],
            "control_plane": {
                "xds": str(self.xds),
                "admin": f"http://{CONTROL_HOST}:{self.admin_port}",
                "extproc": str(self.extproc),
            },
            "run_id": self.run_id,
            "pid": os.getpid(),
            "log_dir": str(self.run.directory),
            "pods": [
                {"name": row.name, "address": row.address, "ready": row.ready, "log": row.logs}
                for row in self.pod_rows()
            ],
        }
        text = json.dumps(document, indent=2) + "\n"
        if text == self._ready_text:
            return
        self._ready_text = text
        temporary = self.config.ready_file.with_name(self.config.ready_file.name + ".tmp")
        temporary.write_text(text)
        temporary.replace(self.config.ready_file)  # readers never see half a file

    # -- the run

    async def _start(self, stop: asyncio.Event) -> bool:
        """Until every pod is Ready and every Envoy LIVE with the latest configuration; False if stopped first."""
        deadline = time.monotonic() + self.config.wait_seconds
        while not stop.is_set():
            await self.envoys.poll()
            text, done = self._progress()
            self.reporter.progress(text)
            for key in self.envoys.by_gateway:
                for rejection in rejections(self.control_plane.clients, key):
                    self.reporter.warn(f"the Envoy of gateway {key} rejected its configuration: {rejection}")
            if done:
                break
            if time.monotonic() > deadline:
                self.reporter.end_progress()
                self.reporter.warn(f"not everything was ready after {self.config.wait_seconds:.0f}s: {text}")
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_SECONDS)
        self.reporter.end_progress()
        return not stop.is_set()

    def _settled(self) -> bool:
        pods = self.workloads.pods()
        return self.publisher.idle and all(p.ready for p in pods) and self._envoys_synced()

    async def _follow(self) -> None:
        """After startup: announce Gateways as their Envoys come up, show the status table again after an edit."""
        shown = self.render_status()
        while True:
            await asyncio.sleep(POLL_SECONDS * 5)
            await self.envoys.poll()
            self._announce()
            self._write_ready_file()
            due = self._table_due
            if due is not None and (self._settled() or time.monotonic() - due > TABLE_WAIT_SECONDS):
                self._table_due = None
                rendered = self.render_status()
                self.reporter.info("changes applied" + (":" if rendered != shown else "; the status table is the same"))
                if rendered != shown:
                    self.reporter.info(rendered)
                    shown = rendered

    def _check(self) -> int | None:
        """The exit status for what makes a run impossible, said plainly; None when it can start."""
        missing = [str(path) for path in self.config.paths if not path.exists()]
        if missing or not manifest_files(self.config.paths):
            self.reporter.info(f"error: no manifests in {', '.join(missing or map(str, self.config.paths))}")
            return 2
        try:
            envoy_binary()
        except EnvoyNotFound as error:
            self.reporter.info(f"error: {error}")
            return 1
        return None

    async def _serve(self) -> bool:
        """The first build, then the control plane's servers; False when they cannot start (a port in use)."""
        self.files = await asyncio.to_thread(self.source.load)
        await self.publisher.wait(self.publisher.request())
        try:
            await self.service.start()
        except (RuntimeError, OSError) as error:
            self.reporter.info(
                f"error: cannot start the control plane (ADS {self.xds}, ext_proc {self.extproc}, admin port "
                f"{self.admin_port}): {error}\nIs another `xds-server serve` or `up` running? `--free-ports` picks "
                "a free admin port and sockets of this run's."
            )
            return False
        self.reporter.info(
            f"control plane: ADS {self.xds}, ext_proc {self.extproc} (only this user may open its sockets), admin "
            f"http://{CONTROL_HOST}:{self.admin_port} (/debug/status)"
        )
        self._serving = True
        return True

    def _show_ready(self, seconds: float) -> None:
        self._announce()
        self._write_ready_file()  # written even when no Gateway is served: the run is up
        self.reporter.info(f"started in {seconds:.1f}s\n")
        self.reporter.info(self.render_status())
        for key, envoy in sorted(self.envoys.by_gateway.items()):
            self.reporter.info(f"envoy {key}: admin {envoy.admin}, log {envoy.log}")
        self.reporter.info("Ctrl-C stops everything; edits to the manifests apply while it runs.")

    async def run_until_stopped(self) -> int:
        with (self.run.directory / "control-plane.log").open("a", buffering=1) as control_log:
            configure(json=False, stream=control_log)
            self.reporter.info(f"xds-server up: logs in {self.run.directory} (control plane: control-plane.log)")
            impossible = self._check()
            return impossible if impossible is not None else await self._run()

    async def _run(self) -> int:
        stop = stop_on_signals()
        tasks: list[asyncio.Task[Any]] = [asyncio.create_task(self.publisher.run())]
        try:
            started = time.monotonic()
            if not await self._serve():
                return 1
            self._apply_manifests(self.files)  # the pods start once the control plane could start
            self.envoys.reconcile(self.gateway_urls().keys())
            tasks.append(asyncio.create_task(self.source.watch(self._reload, stop)))
            if await self._start(stop):
                self._show_ready(time.monotonic() - started)
                self.workloads.announce = True
                tasks.append(asyncio.create_task(self._follow()))
            await stop.wait()
            self.reporter.info("stopping")
            return 0
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(self.envoys.stop_all(), self.workloads.stop_all())
            await self.service.stop()
            if self.config.ready_file is not None:
                self.config.ready_file.unlink(missing_ok=True)
            if self.socket_dir is not None:
                shutil.rmtree(self.socket_dir, ignore_errors=True)
            self.reporter.info("stopped")


async def up(config: UpConfig) -> int:
    return await Runner(config).run_until_stopped()
