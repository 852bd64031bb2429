"""xds.md §8a with real Envoy and `xds-server serve`: make before break under load, empty and late CLAs, two
Gateways, a config over 4 MiB, ACK silence."""

from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from testing.envoy import Envoy
from testing.manifests import gateway
from testing.ports import free_port
from testing.processes import Serve, synced
from testing.web import http_get, upstream, wait_for

PODS = {"a": "127.0.5.1", "b": "127.0.5.2", "c": "127.0.5.3"}


@pytest.fixture
def pod_servers() -> Iterator[dict[str, int]]:
    """One HTTP server per pod address, answering with the pod's letter."""
    servers = {name: upstream(address, f"from-{name}") for name, address in PODS.items()}
    ports = {name: next(server) for name, server in servers.items()}
    yield ports
    for server in servers.values():
        next(server, None)


def service(name: str, pod: str, target_port: int, ready: bool = True) -> str:
    """A Service selecting one Pod (on its own loopback address): an EDS cluster in Envoy."""
    pod_doc = f"""
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}-pod, labels: {{app: {name}}}}}
spec: {{containers: [{{name: c, image: x}}]}}
status: {{podIP: {PODS[pod]}, phase: Running, conditions: [{{type: Ready, status: "{ready}"}}]}}
"""
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec: {{selector: {{app: {name}}}, ports: [{{port: 80, targetPort: {target_port}}}]}}
{pod_doc}"""


def route(name: str, service_name: str, path: str) -> str:
    return f"""
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]
    backendRefs: [{{name: {service_name}, port: 80}}]
"""


@pytest.fixture
async def control_plane(tmp_path: Path) -> AsyncIterator[tuple[Path, Serve, int]]:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    xds_port, admin_port = free_port(), free_port()
    (manifests / "00-placeholder.yaml").write_text("")
    serve = Serve(manifests, xds_port, admin_port, tmp_path / "serve.log")
    try:
        await serve.ready()
        yield manifests, serve, xds_port
    finally:
        if serve.process.poll() is None:
            serve.terminate()


class RequestLoop:
    """Requests `url` back to back from a few threads and counts the answers, while the test edits manifests."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.answers: Counter[tuple[int, str]] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            answer = http_get(self.url)
            with self._lock:
                self.answers[answer] += 1

    def stop(self) -> Counter[tuple[int, str]]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        return self.answers


@pytest.mark.parametrize("protocol", ["sotw", "delta"])
async def test_no_failed_request_while_backends_are_added_repointed_and_removed(
    control_plane: tuple[Path, Serve, int], pod_servers: dict[str, int], tmp_path: Path, protocol: str
) -> None:
    manifests, serve, xds_port = control_plane
    listen_port = free_port()
    base = f"http://127.0.0.1:{listen_port}"
    (manifests / "10-gateway.yaml").write_text(gateway([listen_port]))
    (manifests / "20-app.yaml").write_text(service("svc-a", "a", pod_servers["a"]) + route("app", "svc-a", "/"))
    envoy = Envoy(tmp_path, "default/gw", xds_port, delta=protocol == "delta")
    try:
        await envoy.wait_live()
        assert await wait_for(f"{base}/", (200, "from-a")) == (200, "from-a")
        loop = RequestLoop(f"{base}/")
        # Add a backend and a route to it: a new EDS cluster warms while "/" keeps answering.
        (manifests / "30-extra.yaml").write_text(service("svc-c", "c", pod_servers["c"]) + route("x", "svc-c", "/x"))
        assert await wait_for(f"{base}/x", (200, "from-c")) == (200, "from-c")
        # Repoint "/" to another Service in one edit, back and forth: each time the old cluster leaves the
        # snapshot in the same change that moves the route away from it.
        for target in ("b", "a", "b", "a", "b"):
            app = service(f"svc-{target}", target, pod_servers[target]) + route("app", f"svc-{target}", "/")
            (manifests / "20-app.yaml").write_text(app)
            assert await wait_for(f"{base}/", (200, f"from-{target}")) == (200, f"from-{target}")
            await synced(serve)
        # Remove the extra route and its backend.
        (manifests / "30-extra.yaml").unlink()
        assert await wait_for(f"{base}/x", (200, "from-b")) == (200, "from-b")
        await synced(serve)
        await asyncio.sleep(0.3)
        answers = loop.stop()
        assert set(answers) <= {(200, "from-a"), (200, "from-b")}, answers
        assert answers[(200, "from-a")] > 0 and answers[(200, "from-b")] > 0
        clusters = await envoy.cluster_names()
        assert "service/default/svc-b/80" in clusters
        assert not {"service/default/svc-a/80", "service/default/svc-c/80"} & clusters  # deleted, in a later push
        assert await envoy.stat("cluster_manager.cds.update_rejected") == 0
    finally:
        envoy.stop()


async def test_a_service_without_ready_pods_gets_an_empty_assignment_then_its_endpoint(
    control_plane: tuple[Path, Serve, int], pod_servers: dict[str, int], tmp_path: Path
) -> None:
    manifests, _, xds_port = control_plane
    listen_port = free_port()
    (manifests / "10-gateway.yaml").write_text(gateway([listen_port]))
    not_ready = service("svc-a", "a", pod_servers["a"], ready=False) + route("app", "svc-a", "/")
    (manifests / "20-app.yaml").write_text(not_ready)
    envoy = Envoy(tmp_path, "default/gw", xds_port)
    try:
        await envoy.wait_live()  # an empty CLA is an answer: the cluster warms, Envoy goes LIVE
        status, _ = await wait_for(f"http://127.0.0.1:{listen_port}/", (503, "no healthy upstream"))
        assert status == 503
        assert await envoy.stat("cluster.service/default/svc-a/80.membership_total") == 0
        (manifests / "20-app.yaml").write_text(service("svc-a", "a", pod_servers["a"]) + route("app", "svc-a", "/"))
        assert await wait_for(f"http://127.0.0.1:{listen_port}/", (200, "from-a")) == (200, "from-a")
    finally:
        envoy.stop()


async def test_two_gateways_each_envoy_gets_its_own_config(
    control_plane: tuple[Path, Serve, int], pod_servers: dict[str, int], tmp_path: Path
) -> None:
    manifests, serve, xds_port = control_plane
    ports = {"gw": free_port(), "gw2": free_port()}
    (manifests / "10-gateway.yaml").write_text(gateway([ports["gw"]]))
    second = gateway([ports["gw2"]]).split("---", 1)[1].replace("name: gw}", "name: gw2}")
    (manifests / "11-gateway2.yaml").write_text(second)
    app2 = service("svc-b", "b", pod_servers["b"]) + route("app2", "svc-b", "/").replace("name: gw}", "name: gw2}")
    (manifests / "20-app.yaml").write_text(
        service("svc-a", "a", pod_servers["a"]) + route("app", "svc-a", "/") + "---" + app2
    )
    envoys = {name: Envoy(tmp_path, f"default/{name}", xds_port, node_id=name) for name in ports}
    try:
        for envoy in envoys.values():
            await envoy.wait_live()
        assert await wait_for(f"http://127.0.0.1:{ports['gw']}/", (200, "from-a")) == (200, "from-a")
        assert await wait_for(f"http://127.0.0.1:{ports['gw2']}/", (200, "from-b")) == (200, "from-b")
        assert await envoys["gw"].cluster_names() >= {"service/default/svc-a/80"}
        assert "service/default/svc-a/80" not in await envoys["gw2"].cluster_names()
        _, listeners = await envoys["gw2"].get("/listeners")
        assert listeners.strip() == f"default/gw2/{ports['gw2']}::127.0.0.1:{ports['gw2']}"
        clients = await synced(serve)
        assert sorted((c["gateway"], c["node"]) for c in clients) == [("default/gw", "gw"), ("default/gw2", "gw2")]
        # ACK silence: once both are in sync, nothing more is sent to either.
        pushes = await serve.metric("xds_server_pushes_total")
        await asyncio.sleep(1.0)
        assert await serve.metric("xds_server_pushes_total") == pushes
    finally:
        for envoy in envoys.values():
            envoy.stop()


def many_routes(count: int, header_bytes: int) -> str:
    """`count` HTTPRoutes, each matching its own path and a long header value, all to one Service."""
    filler = "v" * header_bytes
    documents = []
    for index in range(count):
        documents.append(
            f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r{index}}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /r{index}/}}, headers: [{{name: x-filler, value: {filler}{index}}}]}}]
    backendRefs: [{{name: svc-a, port: 80}}]
"""
        )
    return "---\n".join(documents)


@pytest.mark.parametrize("protocol", ["sotw", "delta"])
async def test_a_config_over_4_mib_is_delivered(
    control_plane: tuple[Path, Serve, int], pod_servers: dict[str, int], tmp_path: Path, protocol: str
) -> None:
    manifests, serve, xds_port = control_plane
    listen_port = free_port()
    (manifests / "10-gateway.yaml").write_text(gateway([listen_port]))
    (manifests / "20-svc.yaml").write_text(service("svc-a", "a", pod_servers["a"]))
    (manifests / "30-routes.yaml").write_text(many_routes(1500, 3000))
    envoy = Envoy(tmp_path, "default/gw", xds_port, delta=protocol == "delta")
    try:
        await envoy.wait_live()
        request = f"http://127.0.0.1:{listen_port}/r1499/"
        answer: tuple[int, str] = (0, "")
        for _ in range(300):  # the routes file may land in a reload after Envoy went LIVE
            answer = await asyncio.to_thread(http_get_with_header, request, "x-filler", "v" * 3000 + "1499")
            if answer == (200, "from-a"):
                break
            await asyncio.sleep(0.05)
        assert answer == (200, "from-a")
        snapshots = await serve.document("/debug/snapshots")
        assert len(snapshots["default/gw"]["RouteConfiguration"]["resources"]) == 1  # one RouteConfiguration...
        sent = await serve.metric(f'xds_server_push_bytes_total{{protocol="{protocol}",type="RouteConfiguration"}}')
        assert sent > 4 * 2**20  # ...of more than 4 MiB, in one response
        assert await envoy.stat(f"http.rds.default/gw/{listen_port}.update_rejected") == 0
    finally:
        envoy.stop()


def http_get_with_header(url: str, name: str, value: str) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={name: value})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
