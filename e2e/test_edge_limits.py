"""Edge limits with real Envoy: slow clients are cut off by the listener's timeouts while normal traffic goes on,
HTTP/1.0 clients are served, and Envoy runs with a cap on downstream connections."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.envoy import Envoy
from testing.manifests import backend_route, gateway
from testing.ports import free_port
from testing.processes import Serve, serve_port
from testing.sims import start_sim, start_testupstream
from testing.web import http_get, request, upstream, wait_for

HEADERS_TIMEOUT, REQUEST_TIMEOUT, IDLE_TIMEOUT = 1, 2, 3
# A streamed answer three times as long as the request timeout, twice the idle timeout, a token every 250 ms: the
# scaled-down form of a five-minute completion under the defaults (request 300 s, idle 300 s).
STREAM_TOKENS, TOKEN_GAP = 24, "250ms"


class Edge:
    def __init__(self, tmp_path: Path) -> None:
        self.answers = upstream("127.0.4.21", "from-edge")
        port = next(self.answers)
        # POSTs go to a testupstream, which reads a whole body before it answers.
        self.reader = start_testupstream("reader", "127.0.4.22", tmp_path / "reader.log")
        model_port = free_port("127.0.4.24")
        arguments = ["--host", "127.0.4.24", "--port", str(model_port), "--model", "slow", "--seed", "1"]
        arguments += ["--inter-token-latency", TOKEN_GAP]
        self.model = start_sim("vllm", arguments, "127.0.4.24", model_port, tmp_path / "model.log")
        self.listen_port = free_port()
        manifests = tmp_path / "manifests"
        manifests.mkdir()
        (manifests / "gw.yaml").write_text(
            "---".join(
                [
                    gateway([self.listen_port]),
                    backend_route("web", "127.0.4.21", port),
                    backend_route("reader", "127.0.4.22", self.reader.port, "/v1"),
                    backend_route("model", "127.0.4.24", self.model.port, "/v1/completions"),
                ]
            )
        )
        xds_port = free_port()
        limits = ["--request-headers-timeout", str(HEADERS_TIMEOUT), "--request-timeout", str(REQUEST_TIMEOUT)]
        limits += ["--stream-idle-timeout", str(IDLE_TIMEOUT)]
        self.serve = Serve(manifests, xds_port, free_port(), tmp_path / "serve.log", limits)
        asyncio.run(self.serve.ready())
        self.envoy = Envoy(tmp_path, "default/gw", xds_port)
        asyncio.run(self.envoy.wait_live())
        self.url = f"http://127.0.0.1:{self.listen_port}/"
        assert asyncio.run(wait_for(self.url, (200, "from-edge"))) == (200, "from-edge")

    def connect(self) -> socket.socket:
        client = socket.create_connection(("127.0.0.1", self.listen_port), timeout=10)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client

    def close(self) -> None:
        self.envoy.stop()
        self.serve.terminate()
        self.reader.kill()
        self.model.kill()
        next(self.answers, None)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    environment = Edge(tmp_path_factory.mktemp("edge"))
    try:
        yield environment
    finally:
        environment.close()


def answer_of(client: socket.socket) -> bytes:
    """What the server sent before it closed the connection (b"" if it closed without a word)."""
    client.settimeout(10)
    received = b""
    while chunk := client.recv(65536):
        received += chunk
    return received


def trickle(clients: list[socket.socket], seconds: float, byte: bytes = b"a") -> None:
    """One byte per client every 0.25 s for `seconds`, as a slowloris client does (writes to a client Envoy has
    closed fail, which is what the test waits for)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for client in clients:
            with contextlib.suppress(OSError):
                client.send(byte)
        time.sleep(0.25)


def test_clients_sending_headers_slowly_are_cut_off_and_others_are_served(edge: Edge) -> None:
    slow = [edge.connect() for _ in range(20)]
    for client in slow:
        client.send(b"GET / HTTP/1.1\r\nHost: edge\r\nX-Slow: ")
    trickle(slow, 3 * HEADERS_TIMEOUT)
    assert http_get(edge.url) == (200, "from-edge")  # normal traffic meanwhile
    answers = [answer_of(client) for client in slow]
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), answers[:3]
    for client in slow:
        client.close()


def test_a_client_sending_its_body_slowly_is_cut_off(edge: Edge) -> None:
    client = edge.connect()
    client.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Length: 1000\r\n\r\n")
    started = time.monotonic()
    trickle([client], 2 * REQUEST_TIMEOUT)
    answer = answer_of(client)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 4 * REQUEST_TIMEOUT
    client.close()


def test_http_10_clients_are_served(edge: Edge) -> None:
    client = edge.connect()
    client.send(b"GET / HTTP/1.0\r\nHost: edge\r\n\r\n")
    answer = answer_of(client)
    assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"from-edge"), answer
    client.close()


def test_a_streamed_answer_longer_than_the_request_and_idle_timeouts_goes_on_to_its_end(edge: Edge) -> None:
    """The request timeout bounds receiving the request, the idle timeout a silence: neither bounds an answer that
    keeps sending, so a long completion streams to its end."""
    body = json.dumps({"model": "slow", "prompt": "Tell a long story.", "max_tokens": STREAM_TOKENS, "stream": True})
    answer = request(
        edge.url.rstrip("/"), "POST", "/v1/completions", body.encode(), {"content-type": "application/json"}
    )
    assert answer.status_code == 200, answer.text
    events = [line.removeprefix("data: ") for line in answer.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", events[-3:]
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    # Every token came, 250 ms apart: the answer lasted 6 s, past both timeouts.
    assert sum(1 for chunk in chunks if chunk["choices"][0]["text"]) >= STREAM_TOKENS - 1


def test_envoy_runs_with_a_cap_on_downstream_connections(edge: Edge) -> None:
    assert "no configured limit to the number of allowed active downstream connections" not in edge.envoy.log_tail(200)
    stats = asyncio.run(edge.envoy.get("/stats?filter=global_downstream_max_connections"))[1]
    assert "global_downstream_max_connections" in stats, stats


async def test_an_envoy_past_its_heap_limit_refuses_new_requests_with_a_503(tmp_path: Path) -> None:
    """`bootstrap --max-heap-bytes`: the overload manager's heap monitor and actions. A limit far below what Envoy
    uses (1 MiB) puts it past 98% at once, so every new request gets Envoy's overload 503; the same Gateway served by
    an Envoy without the limit answers (the module's other tests)."""
    answers = upstream("127.0.4.23", "from-heap")
    port = next(answers)
    listen_port = free_port()
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "gw.yaml").write_text("---".join([gateway([listen_port]), backend_route("web", "127.0.4.23", port)]))
    serve = Serve(manifests, free_port(), free_port(), tmp_path / "serve.log")
    try:
        await serve.ready()
        xds_port, admin_port = serve_port(serve, "--xds-address"), free_port()
        command = [sys.executable, "-m", "xds_server.cli", "bootstrap", "--gateway", "default/gw", "--max-heap-bytes"]
        command += ["1048576", "--xds-address", f"127.0.0.1:{xds_port}", "--admin-address", f"127.0.0.1:{admin_port}"]
        printed = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        envoy = Envoy(tmp_path, "default/gw", int(xds_port), printed_bootstrap=(printed, admin_port))
        try:
            await envoy.wait_live()
            stats = f"{envoy.admin}/stats?filter=overload_actions.stop_accepting_requests.active"
            await wait_for(stats, (200, "overload.envoy.overload_actions.stop_accepting_requests.active: 1\n"))
            status, body = await wait_for(f"http://127.0.0.1:{listen_port}/", (503, "envoy overloaded"))
            assert (status, body) == (503, "envoy overloaded")
        finally:
            envoy.stop()
    finally:
        serve.terminate()
        next(answers, None)
