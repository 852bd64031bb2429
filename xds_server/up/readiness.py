"""readinessProbes run against a local pod: httpGet, grpc, tcpSocket; no probe means ready once it listens.

Timing follows Kubernetes (initialDelaySeconds, periodSeconds, timeoutSeconds, success and failure thresholds), with
one change for a local run: until a container is first ready it is probed every `STARTING_PERIOD` seconds at most,
so a pod that starts in half a second is not left waiting the default ten.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from translators.resources.core import ContainerPort

STARTING_PERIOD = 0.1


@dataclass(frozen=True)
class Probe:
    action: str  # "httpGet" | "grpc" | "tcpSocket" | "listening" (no probe: the first port accepts connections)
    port: int | None = None
    path: str = "/"
    scheme: str = "HTTP"
    host: str | None = None  # None: the pod's address
    headers: tuple[tuple[str, str], ...] = ()
    service: str = ""  # grpc: the health service name
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


class UnsupportedProbe(ValueError):
    pass


def _port(value: Any, ports: Sequence[ContainerPort]) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    for port in ports:
        if port.name == value:
            return port.container_port
    raise UnsupportedProbe(f"probe port {value!r} is not a container port of this container")


def readiness_probe(spec: Mapping[str, Any] | None, ports: Sequence[ContainerPort]) -> Probe:
    """The container's readinessProbe; raises `UnsupportedProbe` for what cannot run locally (exec)."""
    if spec is None:
        tcp = [p.container_port for p in ports if p.protocol == "TCP"]
        return Probe("listening", tcp[0] if tcp else None, period=1.0)
    action = next((name for name in ("httpGet", "grpc", "tcpSocket") if name in spec), None)
    if action is None:
        what = "exec" if "exec" in spec else "without httpGet, grpc or tcpSocket"
        raise UnsupportedProbe(f"readinessProbe {what} cannot run locally")
    details: Mapping[str, Any] = spec[action]
    headers = tuple((str(h["name"]), str(h.get("value", ""))) for h in details.get("httpHeaders", []))
    return Probe(
        action,
        _port(details.get("port"), ports),
        path=str(details.get("path", "/")),
        scheme=str(details.get("scheme", "HTTP")).upper(),
        host=details.get("host"),
        headers=headers,
        service=str(details.get("service", "")),
        initial_delay=float(spec.get("initialDelaySeconds", 0)),
        period=float(spec.get("periodSeconds", 10)),
        timeout=float(spec.get("timeoutSeconds", 1)),
        success_threshold=int(spec.get("successThreshold", 1)),
        failure_threshold=int(spec.get("failureThreshold", 3)),
    )


async def _http(probe: Probe, host: str) -> bool:
    """A bare HTTP/1.1 GET: the status line decides (200-399 is success, as for the kubelet)."""
    context = None
    if probe.scheme == "HTTPS":
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the kubelet does not verify either
    assert probe.port is not None
    reader, writer = await asyncio.open_connection(host, probe.port, ssl=context)
    try:
        headers = "".join(f"{name}: {value}\r\n" for name, value in probe.headers)
        writer.write(
            f"GET {probe.path} HTTP/1.1\r\nHost: {host}:{probe.port}\r\n{headers}Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        status_line = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    parts = status_line.split()
    return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400


async def _grpc(probe: Probe, host: str) -> bool:
    async with grpc.aio.insecure_channel(f"{host}:{probe.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        check = stub.Check  # type: ignore[attr-defined]  # the stubs' HealthStub declares no methods
        response = await check(health_pb2.HealthCheckRequest(service=probe.service), timeout=probe.timeout)
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


async def _tcp(port: int, host: str) -> bool:
    _, writer = await asyncio.open_connection(host, port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def probe_once(probe: Probe, address: str) -> bool:
    host = probe.host or address
    try:
        if probe.action == "httpGet":
            return await asyncio.wait_for(_http(probe, host), probe.timeout)
        if probe.action == "grpc":
            return await _grpc(probe, host)
        if probe.port is None:  # "listening" without ports: running is all there is to check
            return True
        return await asyncio.wait_for(_tcp(probe.port, host), probe.timeout)
    except (OSError, TimeoutError, grpc.RpcError, ssl.SSLError, ValueError):
        return False


async def watch(probe: Probe, address: str, set_ready: Callable[[bool], None]) -> None:
    """Probes for as long as the container runs (cancel it when the process exits), reporting each change."""
    await asyncio.sleep(probe.initial_delay)
    ready = ever_ready = False
    successes = failures = 0
    while True:
        if await probe_once(probe, address):
            successes, failures = successes + 1, 0
        else:
            successes, failures = 0, failures + 1
        if not ready and successes >= probe.success_threshold:
            ready = ever_ready = True
            set_ready(True)
            if probe.action == "listening":
                return  # without a probe, a running container stays ready
        elif ready and failures >= probe.failure_threshold:
            ready = False
            set_ready(False)
        await asyncio.sleep(probe.period if ever_ready else min(probe.period, STARTING_PERIOD))
