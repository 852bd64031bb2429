"""Real Envoy fetches a Gateway over SotW ADS from the control plane's servicer and serves traffic with it."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.service.discovery.v3 import ads_pb2_grpc

from translators.gatewayapi import translate
from translators.ir import TranslateOptions
from translators.loader import load_texts
from translators.xds import gateway_resources
from xds_server.ads_sotw import SotwAds
from xds_server.bootstrap import bootstrap
from xds_server.cache import Snapshot, SnapshotCache
from xds_server.clients import ClientRegistry
from xds_server.envoy import envoy_binary

GATEWAY = "default/gw"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def upstream(host: str, answer: str) -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = answer.encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture
def upstream_a() -> Iterator[int]:
    yield from upstream("127.0.3.1", "from-a")


@pytest.fixture
def upstream_b() -> Iterator[int]:
    yield from upstream("127.0.3.2", "from-b")


def manifests(listen_port: int, address: str, port: int) -> str:
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: eg}}
spec: {{controllerName: gateway.envoyproxy.io/gatewayclass-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw}}
spec: {{gatewayClassName: eg, listeners: [{{name: http, protocol: HTTP, port: {listen_port}}}]}}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {{name: web}}
spec: {{endpoints: [{{ip: {{address: {address}, port: {port}}}}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{backendRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: web}}]}}]
"""


def snapshot_for(text: str) -> Snapshot:
    resources = load_texts([("m.yaml", text)])
    assert resources.errors == ()
    [gateway] = translate(resources, TranslateOptions()).gateways
    return Snapshot.build(gateway_resources(gateway, TranslateOptions()).by_type())


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


async def wait_for(url: str, want: tuple[int, str], seconds: float = 15.0) -> tuple[int, str]:
    last: tuple[int, str] = (0, "")
    for _ in range(int(seconds / 0.05)):
        last = await asyncio.to_thread(http_get, url)
        if last == want:
            return last
        await asyncio.sleep(0.05)
    return last


@pytest.fixture
async def control_plane() -> AsyncIterator[tuple[SnapshotCache, int]]:
    cache = SnapshotCache()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(SotwAds(cache, ClientRegistry()), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield cache, port
    await server.stop(None)


async def test_envoy_gets_the_gateway_over_ads_and_follows_changes(
    control_plane: tuple[SnapshotCache, int], upstream_a: int, upstream_b: int, tmp_path: Path
) -> None:
    cache, xds_port = control_plane
    listen_port, admin_port = free_port(), free_port()
    cache.set(GATEWAY, snapshot_for(manifests(listen_port, "127.0.3.1", upstream_a)))
    config = tmp_path / "bootstrap.yaml"
    config.write_text(yaml.safe_dump(bootstrap(GATEWAY, "e2e", ("127.0.0.1", xds_port), ("127.0.0.1", admin_port))))
    envoy = subprocess.Popen(
        [
            str(envoy_binary()),
            "-c",
            str(config),
            "--base-id",
            str(40000 + os.getpid() % 20000),
            "-l",
            "warning",
            "--drain-time-s",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        admin = f"http://127.0.0.1:{admin_port}"
        assert await wait_for(f"{admin}/ready", (200, "LIVE\n")) == (200, "LIVE\n")
        gateway_url = f"http://127.0.0.1:{listen_port}/"
        assert await wait_for(gateway_url, (200, "from-a")) == (200, "from-a")
        status, dump = await asyncio.to_thread(http_get, f"{admin}/config_dump")
        dumped = json.dumps(json.loads(dump))
        assert status == 200 and f'"name": "default/gw/{listen_port}"' in dumped  # listener and route config
        # A new snapshot (the Backend now points elsewhere) reaches Envoy without any restart.
        cache.set(GATEWAY, snapshot_for(manifests(listen_port, "127.0.3.2", upstream_b)))
        assert await wait_for(gateway_url, (200, "from-b")) == (200, "from-b")
        status, stats = await asyncio.to_thread(http_get, f"{admin}/stats?filter=update_rejected")
        assert status == 200 and all(line.endswith(": 0") for line in stats.strip().splitlines()), stats
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
