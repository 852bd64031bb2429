"""The ext_proc gRPC server: one `ExternalProcessor` service, each stream handed to the service it is meant for.

Envoy opens one stream per request and ext_proc filter (per attempt for the upstream filters). The filters say
whose stream it is through its initial metadata: the picker's routes add `x-inference-pool`, AI clusters' upstream
filters `x-ai-eg-upstream-settings`, everything else belongs to the model router. Handlers are registered by
metadata key, so each service plugs in without touching the others. The same server answers
`grpc.health.v1` for the services a gateway may probe (the Endpoint Picker protocol's names among them).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol, TypeAlias

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from translators.ir import TranslateOptions
from translators.xds.names import PICKER_POOL_METADATA, UPSTREAM_SETTINGS_METADATA
from xds_server.control_plane import Build, ControlPlane
from xds_server.epp.picker import EndpointPicker
from xds_server.epp.scrape import Scraper
from xds_server.extproc.responses import ProcessingResponse
from xds_server.extproc.router import ModelRouter
from xds_server.extproc.tables import RouterTables
from xds_server.extproc.upstream import UpstreamSettingsService

log = logging.getLogger(__name__)

ProcessingRequest: TypeAlias = ext_proc_pb2.ProcessingRequest
Context: TypeAlias = "grpc.aio.ServicerContext[ProcessingRequest, ProcessingResponse]"
# Room for a body as large as Envoy may buffer, plus the message around it.
MESSAGE_OVERHEAD_BYTES = 1024 * 1024


class StreamHandler(Protocol):
    async def handle(self, context: Context, metadata: Mapping[str, str]) -> None:
        """Reads the stream's requests with `context.read()` and answers each with `context.write()`."""


HEALTH_SERVICES = ("", "liveness", "readiness", "inference-extension", "envoy.service.ext_proc.v3.ExternalProcessor")


class ExternalProcessor(external_processor_pb2_grpc.ExternalProcessorServicer):  # type: ignore[misc,unused-ignore]
    def __init__(self, default: StreamHandler) -> None:
        self._default = default
        self._by_metadata: dict[str, StreamHandler] = {}

    def register(self, metadata_key: str, handler: StreamHandler) -> None:
        """Streams whose initial metadata has `metadata_key` go to `handler`."""
        self._by_metadata[metadata_key] = handler

    async def Process(self, request_iterator: object, context: Context) -> None:  # gRPC's method name
        # Read and written through `context`: one coroutine per stream, no iterator or generator between.
        metadata = {key: value for key, value in context.invocation_metadata() or ()}
        handler = next((h for key, h in self._by_metadata.items() if key in metadata), self._default)
        await handler.handle(context, metadata)


async def start(
    control_plane: ControlPlane, options: TranslateOptions, scrape_interval: float = 0.05
) -> tuple[grpc.aio.Server, EndpointPicker]:
    """Serves ext_proc on the address Envoy is told (`--extproc-address`): the router reads the current build, the
    picker follows every build's pools. Stop the scraper with `picker.scraper.close()`."""

    def tables() -> RouterTables:
        current = control_plane.current
        return current.router if current is not None else RouterTables()

    picker = EndpointPicker(Scraper(interval=scrape_interval))

    def follow(built: Build) -> None:
        picker.follow(built.translation)

    control_plane.build_listeners.append(follow)
    if control_plane.current is not None:
        follow(control_plane.current)
    processor = ExternalProcessor(default=ModelRouter(tables))
    processor.register(PICKER_POOL_METADATA, picker)
    processor.register(UPSTREAM_SETTINGS_METADATA, UpstreamSettingsService(lambda: tables().upstream))
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", options.buffer_limit_bytes + MESSAGE_OVERHEAD_BYTES),
            # A second control plane on the same port must fail, not silently share Envoy's streams with this one.
            ("grpc.so_reuseport", 0),
        ]
    )
    external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(processor, server)
    health_servicer = health.aio.HealthServicer()
    for service in HEALTH_SERVICES:
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{options.extproc_host}:{options.extproc_port}"
    server.add_insecure_port(address)
    await server.start()
    log.info("ext_proc (model router, endpoint picker) on %s", address)
    return server, picker
