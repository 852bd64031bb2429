"""`xds-server serve`: watched manifests -> translation -> snapshots -> ADS, with the admin HTTP server beside it."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from pathlib import Path

import grpc
from aiohttp import web
from envoy.service.discovery.v3 import ads_pb2_grpc

from translators.ir import TranslateOptions
from translators.loader import ResourceSet
from xds_server import metrics
from xds_server.admin import admin_app
from xds_server.admin_grpc import AdminService
from xds_server.ads import Ads
from xds_server.api import admin_pb2_grpc
from xds_server.cache import SnapshotCache
from xds_server.clients import ClientRegistry
from xds_server.control_plane import ControlPlane
from xds_server.extproc import server as extproc
from xds_server.sources.files import FileSource

log = logging.getLogger(__name__)

# Envoy's own receive limit is unlimited; ours must not cut a large config (the gRPC default is 4 MiB).
GRPC_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", 64 * 1024 * 1024)]


async def serve(
    paths: Sequence[str | Path],
    options: TranslateOptions,
    xds_address: tuple[str, int],
    admin_address: tuple[str, int],
) -> int:
    control_plane = ControlPlane(SnapshotCache(), ClientRegistry(), options)
    source = FileSource(paths)

    async def publish(resources: ResourceSet) -> None:
        built = await asyncio.to_thread(control_plane.build, resources)
        control_plane.apply(built)
        metrics.RELOADS.labels("errors" if resources.errors or built.refused else "ok").inc()

    await publish(await asyncio.to_thread(source.load))

    server = grpc.aio.server(options=GRPC_OPTIONS)
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
        Ads(control_plane.cache, control_plane.clients), server
    )
    admin_pb2_grpc.add_AdminServicer_to_server(AdminService(control_plane), server)
    server.add_insecure_port(f"{xds_address[0]}:{xds_address[1]}")
    await server.start()
    extproc_server = await extproc.start(control_plane, options)
    runner = web.AppRunner(admin_app(control_plane), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, admin_address[0], admin_address[1]).start()
    log.info("ADS on %s:%d, admin on http://%s:%d", *xds_address, *admin_address)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    watcher = asyncio.create_task(source.watch(publish, stop))
    await stop.wait()
    log.info("shutting down")
    watcher.cancel()
    await server.stop(grace=1.0)
    await extproc_server.stop(grace=1.0)
    await runner.cleanup()
    return 0
