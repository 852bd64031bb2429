"""`xds-server serve` and one Envoy for Gateway `gw` (one HTTP listener on a free port) over the manifests a caller
gives: the setup that benchmarks and e2e tests of one Gateway share."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from testing.envoy import Envoy
from testing.manifests import gateway
from testing.ports import free_port
from testing.processes import Serve


@dataclass(frozen=True)
class GatewayRun:
    url: str  # the listener, http://127.0.0.1:PORT
    serve: Serve
    envoy: Envoy


def _serve(
    directory: Path, documents: Sequence[str], serve_args: Sequence[str], env: Mapping[str, str] | None = None
) -> tuple[str, Serve, int]:
    """The manifests written (the Gateway's listener first) and `serve` started: the listener's URL, the process and
    its ADS port."""
    listen_port, xds_port, admin_port = free_port(), free_port(), free_port()
    manifests = directory / "manifests"
    manifests.mkdir()
    (manifests / "gateway.yaml").write_text("---".join([gateway([listen_port]), *documents]))
    serve = Serve(manifests, xds_port, admin_port, directory / "serve.log", serve_args, env)
    return f"http://127.0.0.1:{listen_port}", serve, xds_port


@contextlib.asynccontextmanager
async def gateway_run(
    directory: Path, documents: Sequence[str], serve_args: Sequence[str] = ()
) -> AsyncIterator[GatewayRun]:
    """Both processes up and the Envoy LIVE (routes may still be on their way: wait for an answer); both stopped
    after, whatever happened."""
    url, serve, xds_port = _serve(directory, documents, serve_args)
    envoy: Envoy | None = None
    try:
        await serve.ready()
        envoy = Envoy(directory, "default/gw", xds_port)
        await envoy.wait_live()
        yield GatewayRun(url, serve, envoy)
    finally:
        if envoy is not None:
            envoy.stop()
        serve.terminate()


@contextlib.contextmanager
def gateway_running(
    directory: Path, documents: Sequence[str], serve_args: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> Iterator[GatewayRun]:
    """`gateway_run` for synchronous tests and fixtures; `env` adds to serve's environment."""
    url, serve, xds_port = _serve(directory, documents, serve_args, env)
    envoy: Envoy | None = None
    try:
        asyncio.run(serve.ready())
        envoy = Envoy(directory, "default/gw", xds_port)
        asyncio.run(envoy.wait_live())
        yield GatewayRun(url, serve, envoy)
    finally:
        if envoy is not None:
            envoy.stop()
        serve.terminate()
