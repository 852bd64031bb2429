"""The composition root: sources -> control plane -> ADS + ext_proc services + admin. `xds-server serve` is this with
watched manifests, `xds-server serve --kubernetes` with a cluster's objects plus the status writer, the provisioner
and the Lease.

`ControlPlaneService` is the part `xds-server up` shares: the same servers and the same build/apply path, fed
with the manifests plus the pods `up` runs. Only this module knows every piece; each piece knows only those below it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import grpc
from aiohttp import web
from envoy.service.discovery.v3 import ads_pb2_grpc

from translators.ir import TranslateOptions
from translators.loader import ResourceSet
from translators.xds.names import PICKER_POOL_METADATA, UPSTREAM_SETTINGS_METADATA
from xds_server import metrics
from xds_server.admin import ClusterView, admin_app
from xds_server.admin_grpc import AdminService
from xds_server.api import admin_pb2_grpc
from xds_server.control_plane import Build, ControlPlane
from xds_server.epp.picker import EndpointPicker
from xds_server.epp.scrape import Scraper
from xds_server.extproc.budget import LARGEST_BODIES, BodyBudget, pin_mmap_threshold
from xds_server.extproc.server import ExternalProcessor, start_server
from xds_server.extproc.upstream import UpstreamSettingsService
from xds_server.extproc.usage_log import UsageLog
from xds_server.identity import refusal
from xds_server.listen import Address, claim_socket, restrict_socket
from xds_server.sources import Source
from xds_server.sources.files import FileSource
from xds_server.tls import ServerCertificate
from xds_server.tokens import TokenMinter
from xds_server.xds.cache import SnapshotCache
from xds_server.xds.server import Ads
from xds_server.xds.streams import ClientRegistry

log = logging.getLogger(__name__)

# How long a stopping process waits for the ext_proc streams of requests in flight (Kubernetes kills a pod 30 s
# after SIGTERM by default).
SHUTDOWN_GRACE_SECONDS = 10.0

# Envoy's own receive limit is unlimited; ours must not cut a large config (the gRPC default is 4 MiB). A second
# control plane on the same port must fail, not silently share the Envoys' streams with this one (SO_REUSEPORT).
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
]


async def start_extproc(
    control_plane: ControlPlane,
    options: TranslateOptions,
    scrape_interval: float = 0.05,
    picker_debug: bool = False,
    listen: Address | None = None,
    credentials: grpc.ServerCredentials | None = None,
    picker: EndpointPicker | None = None,
    budget: BodyBudget | None = None,
) -> tuple[grpc.aio.Server, EndpointPicker]:
    """The per-request services on the address Envoy is told (`--extproc-address`: a port, or a Unix socket only this
    user may open), or on `listen` when Envoy is told another (a Service's name), each following every applied
    build's runtime tables; with `credentials`, over mutual TLS. The picker and the upstream settings hold request
    bodies within `budget` (default: room for two of the largest). Stop the picker's scraper with
    `picker.scraper.close()`."""
    # Over mutual TLS, each client gets the settings (credentials) and picks of its own Gateway's routes only.
    scoped = credentials is not None
    pin_mmap_threshold()  # large bodies' memory goes back to the system when freed (see extproc.budget)
    if budget is None:
        budget = BodyBudget(LARGEST_BODIES * options.buffer_limit_bytes)
    upstream = UpstreamSettingsService(gateway_scoped=scoped, tokens=TokenMinter(control_plane.stopping), budget=budget)
    if picker is None:
        picker = EndpointPicker(Scraper(interval=scrape_interval), debug=picker_debug)
    picker.gateway_scoped = scoped
    picker.budget = budget
    services = (upstream, picker)

    def follow(built: Build) -> None:
        for service in services:
            service.follow(built.runtime)

    control_plane.build_listeners.append(follow)
    if control_plane.current is not None:
        follow(control_plane.current)
    processor = ExternalProcessor({PICKER_POOL_METADATA: picker, UPSTREAM_SETTINGS_METADATA: upstream})
    address = listen or extproc_address(options)
    claim_socket(address)
    usage_log = UsageLog()
    server = await start_server(
        processor,
        address.target,
        options.buffer_limit_bytes,
        also=[usage_log.add_to],
        credentials=credentials,
    )
    restrict_socket(address)
    return server, picker


def extproc_address(options: TranslateOptions) -> Address:
    """Where Envoys are told the ext_proc server is."""
    if options.extproc_unix is not None:
        return Address(path=options.extproc_unix)
    return Address(options.extproc_host, options.extproc_port)


class ControlPlaneService:
    """A `ControlPlane` and its servers: ADS and the gRPC admin API, ext_proc (upstream settings, picker),
    admin HTTP."""

    def __init__(
        self,
        options: TranslateOptions,
        xds_address: Address,
        admin_address: tuple[str, int],
        picker_debug: bool = False,
        shutdown_grace_seconds: float = SHUTDOWN_GRACE_SECONDS,
        body_budget_bytes: int | None = None,
    ) -> None:
        """`body_budget_bytes`: request-body bytes the per-request services hold at once (default: room for
        `LARGEST_BODIES` bodies of `options.buffer_limit_bytes`)."""
        self.control_plane = ControlPlane(SnapshotCache(), ClientRegistry(), options)
        self.options = options
        self.xds_address = xds_address
        self.admin_address = admin_address
        self.picker_debug = picker_debug
        # Builds share the control plane's memo, so they must not overlap even when several sources publish.
        self._building = asyncio.Lock()
        self._grpc: grpc.aio.Server | None = None
        self._extproc: grpc.aio.Server | None = None
        self.budget = BodyBudget(body_budget_bytes or LARGEST_BODIES * options.buffer_limit_bytes)
        self.picker = EndpointPicker(Scraper(), debug=picker_debug, budget=self.budget)
        self._admin: web.AppRunner | None = None
        self.cluster: ClusterView | None = None  # cluster mode: whether the source synced and who leads
        self.extproc_listen: Address | None = None  # where ext_proc listens, when not where Envoys are told
        # Cluster mode: ADS and ext_proc require client certificates of our CA and present this one.
        self.server_certificate: ServerCertificate | None = None
        self.shutdown_grace_seconds = shutdown_grace_seconds

    async def publish(self, resources: ResourceSet) -> None:
        """Translates in a worker thread, then publishes on the event loop (where the ADS streams listen)."""
        async with self._building:
            built = await asyncio.to_thread(self.control_plane.build, resources)
            self.control_plane.apply(built)
        metrics.RELOADS.labels("errors" if resources.errors or built.refused else "ok").inc()

    async def start(self) -> None:
        await self.start_grpc()
        await self.start_admin()

    async def start_grpc(self) -> None:
        """ADS (and the gRPC admin API) and ext_proc; over mutual TLS with `server_certificate`."""
        server = grpc.aio.server(options=GRPC_OPTIONS)
        certificate = self.server_certificate
        # Over mutual TLS, an Envoy gets only the snapshot of the Gateway its certificate names.
        authorize = refusal if certificate is not None else None
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
            Ads(self.control_plane.cache, self.control_plane.clients, authorize), server
        )
        add_admin = admin_pb2_grpc.add_AdminServicer_to_server
        add_admin(AdminService(self.control_plane, self.cluster), server)  # type: ignore[no-untyped-call]  # generated, unannotated
        address = self.xds_address
        claim_socket(address)
        if certificate is not None:
            server.add_secure_port(address.target, certificate.credentials())
        else:
            server.add_insecure_port(address.target)
        await server.start()
        restrict_socket(address)
        self._grpc = server
        self._extproc, _ = await start_extproc(
            self.control_plane,
            self.options,
            listen=self.extproc_listen,
            credentials=certificate.credentials() if certificate is not None else None,
            picker=self.picker,
            budget=self.budget,
        )
        log.info("ADS on %s%s", address, " (mutual TLS)" if certificate is not None else "")

    async def start_admin(self) -> None:
        runner = web.AppRunner(admin_app(self.control_plane, self.picker, self.cluster), access_log=None)
        await runner.setup()
        self._admin = runner
        await web.TCPSite(runner, self.admin_address[0], self.admin_address[1]).start()
        log.info("admin on http://%s:%d", *self.admin_address)

    async def stop(self) -> None:
        """Gracefully: /readyz fails at once; ADS streams end (Envoys keep their configuration, and in a cluster
        find another replica); the ext_proc server takes no new stream and waits up to `shutdown_grace_seconds` for
        those in flight (a pick, a streamed answer being metered); then the rest."""
        self.control_plane.stopping.set()
        if self._grpc is not None:
            await self._grpc.stop(grace=0)
        if self._extproc is not None:
            await self._extproc.stop(grace=self.shutdown_grace_seconds)
        await self.picker.scraper.close()
        if self._admin is not None:
            await self._admin.cleanup()


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or Ctrl-C (SIGINT), so the caller shuts down in order instead of being killed; a
    second one, while requests in flight are being waited for, ends the process at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def signalled() -> None:
        if stop.is_set():
            log.warning("stopping now, without waiting for requests in flight")
            os._exit(1)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, signalled)
    return stop


async def serve(
    paths: Sequence[str | Path],
    options: TranslateOptions,
    xds_address: Address,
    admin_address: tuple[str, int],
    picker_debug: bool = False,
    shutdown_grace_seconds: float = SHUTDOWN_GRACE_SECONDS,
    body_budget_bytes: int | None = None,
) -> int:
    service = ControlPlaneService(
        options, xds_address, admin_address, picker_debug, shutdown_grace_seconds, body_budget_bytes
    )
    source: Source = FileSource(paths)
    await service.publish(await asyncio.to_thread(source.load))
    await service.start()
    stop = stop_on_signals()
    watcher = asyncio.create_task(source.watch(service.publish, stop))
    await stop.wait()
    log.info("shutting down")
    await watcher  # `stop` ends the watch; a reload under way finishes first
    await service.stop()
    return 0
