"""The ext_proc gRPC server: one `ExternalProcessor` service, each stream handed to the service it is meant for.

Envoy opens one stream per request and ext_proc filter (per attempt for the upstream filters). The filters say
whose stream it is through its initial metadata: the picker's routes add `x-inference-pool`, AI clusters' upstream
filters `x-ai-eg-upstream-settings`; a stream that names neither is refused (INVALID_ARGUMENT: no filter we
configure opens one). Handlers are registered by metadata key by the composition root, so this module knows none
of them. The same server answers
`grpc.health.v1` for the services a gateway may probe (the Endpoint Picker protocol's names among them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from xds_server.extproc.protocol import Context, StreamHandler

log = logging.getLogger(__name__)

# Room for a body as large as Envoy may buffer, plus the message around it.
MESSAGE_OVERHEAD_BYTES = 1024 * 1024
HEALTH_SERVICES = ("", "liveness", "readiness", "inference-extension", "envoy.service.ext_proc.v3.ExternalProcessor")


class ExternalProcessor(external_processor_pb2_grpc.ExternalProcessorServicer):  # type: ignore[misc]  # untyped stub
    def __init__(self, by_metadata: Mapping[str, StreamHandler]) -> None:
        """Streams whose initial metadata has one of `by_metadata`'s keys go to its handler."""
        self._by_metadata = dict(by_metadata)

    async def Process(self, request_iterator: object, context: Context) -> None:  # gRPC's method name
        # Read and written through `context`: one coroutine per stream, no iterator or generator between.
        metadata = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
        handler = next((h for key, h in self._by_metadata.items() if key in metadata), None)
        if handler is None:
            names = " or ".join(self._by_metadata)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the stream names no service: send {names}")
            return
        await handler.handle(context, metadata)


async def start_server(
    processor: ExternalProcessor,
    address: str,
    max_body_bytes: int,
    also: Iterable[Callable[[grpc.aio.Server], None]] = (),
    credentials: grpc.ServerCredentials | None = None,
) -> grpc.aio.Server:
    """Serves `processor` and gRPC health on `address` (what Envoy is told as `--extproc-address`), and whatever
    services `also` adds (the usage log); over TLS with `credentials` (cluster mode: mutual TLS)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_body_bytes + MESSAGE_OVERHEAD_BYTES),
            # A second control plane on the same port must fail, not silently share Envoy's streams with this one.
            ("grpc.so_reuseport", 0),
        ]
    )
    external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(processor, server)
    health_servicer = health.aio.HealthServicer()
    for service in HEALTH_SERVICES:
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for add in also:
        add(server)
    if credentials is not None:
        server.add_secure_port(address, credentials)
    else:
        server.add_insecure_port(address)
    await server.start()
    log.info("ext_proc on %s%s", address, " (mutual TLS)" if credentials is not None else "")
    return server
