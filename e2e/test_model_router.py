"""The model router with real Envoy, `xds-server serve` and testupstream processes on their own loopback addresses.

Requests are routed by the `model` in their body alone; every error of the contract is JSON; `/v1/models`
lists the Gateway's models per host; streamed and buffered answers are counted in tokens (metrics, access log);
the official `openai` SDK works through the gateway; requests keep being routed while the control plane is away.
"""

from __future__ import annotations

import asyncio
import fcntl
import http.client
import json
import os
import signal
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from testing.envoy import Envoy
from testing.manifests import ai_gateway_route, ai_service_backend, gateway
from testing.ports import free_port
from testing.processes import Serve
from testing.sims import b64, start_testupstream
from testing.web import SECONDS, Response, eventually, http_get, metric, request
from translators.ir import TranslateOptions
from translators.xds.model import USAGE_LOG_FLUSH_MS
from translators.xds.names import AI_FILTER, ECHO_LIMIT

UPSTREAMS = {"a": "127.0.7.1", "b": "127.0.7.2"}
# A backend whose Service has no endpoints at all (no selector, no EndpointSlice).
EMPTY_SERVICE_BACKEND = """
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIServiceBackend
metadata: {name: empty}
spec: {schema: {name: OpenAI}, backendRef: {kind: Service, name: empty, port: 8080}}
---
apiVersion: v1
kind: Service
metadata: {name: empty}
spec: {ports: [{port: 8080}]}
"""
BUFFER_LIMIT = 1024 * 1024


class AiGateway:
    """Two testupstreams, `serve` with the manifests, and an Envoy for the Gateway, ready to route."""

    def __init__(self, tmp_path: Path, stdout_pipe: bool = False) -> None:
        self.tmp_path = tmp_path
        self.upstreams = {
            name: start_testupstream(name, host, tmp_path / f"{name}.log") for name, host in UPSTREAMS.items()
        }
        self.listen_port = free_port()
        self.url = f"http://127.0.0.1:{self.listen_port}"
        manifests = tmp_path / "manifests"
        manifests.mkdir()
        documents = [
            gateway([self.listen_port]),
            ai_gateway_route("models", {"model-a": "a", "model-b": "b"}),
            ai_gateway_route("broken", {"model-down": "down", "model-empty": "empty"}, hostnames=("broken.example",)),
            ai_service_backend("down", "127.0.7.3", free_port("127.0.7.3")),  # nothing listens there
            EMPTY_SERVICE_BACKEND,
            ai_gateway_route("team", {"model-t": "b"}, hostnames=("*.team.example",)),
            *(ai_service_backend(name, UPSTREAMS[name], u.port) for name, u in self.upstreams.items()),
        ]
        (manifests / "gateway.yaml").write_text("---".join(documents))
        self.manifests = manifests
        self.xds_port, self.admin_port, self.extproc_port = free_port(), free_port(), free_port()
        self.serve = self.start_serve("serve.log")
        self.envoy = Envoy(tmp_path, "default/gw", self.xds_port, stdout_pipe=stdout_pipe)
        asyncio.run(self.envoy.wait_live())
        eventually(lambda: self.chat("model-a").status_code == 200, "routes served")

    def start_serve(self, log: str) -> Serve:
        extra = ["--extproc-address", f"127.0.0.1:{self.extproc_port}", "--buffer-limit-bytes", str(BUFFER_LIMIT)]
        serve = Serve(self.manifests, self.xds_port, self.admin_port, self.tmp_path / log, extra)
        asyncio.run(serve.ready())
        return serve

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> Response:
        return request(self.url, "POST", path, body, headers)

    def chat(self, model: str, headers: dict[str, str] | None = None, query: str = "") -> Response:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
        return self.post("/v1/chat/completions" + query, body, headers)

    def metrics(self) -> str:
        status, text = http_get(f"http://127.0.0.1:{self.admin_port}/metrics")
        assert status == 200
        return text

    def settled_metrics(self) -> str:
        """The metrics once earlier requests have all been recorded: Envoy sends its usage log in batches, a flush
        interval apart, so two reads that far apart agree."""

        def genai() -> tuple[str, list[str]]:
            text = self.metrics()
            return text, [line for line in text.splitlines() if line.startswith("gen_ai_")]

        _, previous = genai()
        while True:
            time.sleep(2 * USAGE_LOG_FLUSH_MS / 1e3)
            text, current = genai()
            if current == previous:
                return text
            previous = current

    def access_log(self, path: str) -> dict[str, Any] | None:
        """The access log entry of the request to `path` (Envoy writes its stdout in batches)."""
        for line in self.envoy.access_log.read_text().splitlines():
            entry: dict[str, Any] = json.loads(line)
            if entry.get("path") == path:
                return entry
        return None

    def close(self) -> None:
        self.envoy.stop()
        if self.serve.process.poll() is None:
            self.serve.terminate()
        for upstream in self.upstreams.values():
            upstream.kill()


@pytest.fixture(scope="module")
def ai(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AiGateway]:
    environment = AiGateway(tmp_path_factory.mktemp("model-router"))
    try:
        yield environment
    finally:
        environment.close()


# --- routing by body ---


def test_each_model_lands_on_its_own_upstream_by_the_body_alone(ai: AiGateway) -> None:
    for model, upstream in (("model-a", "a"), ("model-b", "b"), ("model-t", "b")):
        expected = {"x-expected-testupstream-id": upstream, "x-expected-headers": b64(f"x-ai-eg-model:{model}")}
        host = {"host": "one.team.example"} if model == "model-t" else {}
        response = ai.chat(model, {**expected, **host})
        assert response.status_code == 200, response.text
        assert response.headers["x-testupstream-id"] == upstream
        assert response.json()["model"] == model


def test_a_client_routing_header_loses_to_the_body_model(ai: AiGateway) -> None:
    check = {"x-expected-headers": b64("x-ai-eg-model:model-b")}  # one value, the body's: no copy of the client's
    response = ai.chat("model-b", {"x-ai-eg-model": "model-a", "x-ai-eg-anything": "1", **check})
    assert response.status_code == 200, response.text
    assert response.headers["x-testupstream-id"] == "b"


def test_a_destination_endpoint_header_never_reaches_its_address(ai: AiGateway) -> None:
    admin = f"127.0.0.1:{ai.admin_port}"  # a real HTTP server the header would point the request at
    headers = {
        "x-gateway-destination-endpoint": admin,
        "x-gateway-destination-endpoint-subset": admin,
        "x-non-expected-request-headers": b64("x-gateway-destination-endpoint,x-gateway-destination-endpoint-subset"),
    }
    response = ai.chat("model-a", headers)
    assert response.status_code == 200, response.text
    assert response.headers["x-testupstream-id"] == "a"


def test_no_ext_proc_stream_is_opened_streamed_answers_included(ai: AiGateway) -> None:
    """Envoy routes by model and reads usage itself (the AI filter, JSON answers and event streams alike): no request
    to an ordinary backend opens an ext_proc stream. Envoy's own ext_proc stats say so."""
    started = asyncio.run(ai.envoy.stat_total("ext_proc.streams_started"))
    for model in ("model-a", "model-b", "model-a"):
        assert ai.chat(model).status_code == 200
    assert ai.post("/v1/chat/completions", b'{"model": "no-such-model"}').status_code == 404
    body = json.dumps({"model": "model-a", "stream": True, "messages": []}).encode()
    assert ai.post("/v1/chat/completions", body, {"x-sse-gap-ms": "0"}).status_code == 200
    assert asyncio.run(ai.envoy.stat_total("ext_proc.streams_started")) == started


# --- the error contract ---


def error_of(response: Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "code"} and error["message"]
    return error


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"model": "model-a", "messages": [', 400, "invalid_json"),
        (b'"model-a"', 400, "invalid_json"),
        (b'{"messages": []}', 400, "missing_model"),
        (b'{"model": ""}', 400, "missing_model"),
        (b'{"model": 42}', 400, "invalid_model"),
        (b'{"model": "no-such-model"}', 404, "model_not_found"),
        (b'{"model": "model-a", "pad": "' + b"x" * (BUFFER_LIMIT + 1) + b'"}', 413, "request_too_large"),
    ],
)
def test_errors_are_openai_json(ai: AiGateway, body: bytes, status: int, code: str) -> None:
    error = error_of(ai.post("/v1/chat/completions", body), status)
    assert error["code"] == code
    if code == "model_not_found":
        assert "'no-such-model'" in error["message"]


@pytest.mark.parametrize(
    ("model", "code"), [("model-down", "upstream_unavailable"), ("model-empty", "no_healthy_upstream")]
)
def test_a_backend_that_cannot_be_reached_is_an_openai_error(ai: AiGateway, model: str, code: str) -> None:
    """Envoy's own plain-text answers ("upstream connect error or disconnect/reset before headers...", "no healthy
    upstream") become the error envelope with a stable code."""
    error = error_of(ai.chat(model, {"host": "broken.example"}), 503)
    assert (error["code"], error["type"]) == (code, "server_error")


def test_a_body_just_under_the_limit_is_routed(ai: AiGateway) -> None:
    body = b'{"model": "model-b", "pad": "' + b"x" * (BUFFER_LIMIT - 1024) + b'"}'
    response = ai.post("/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    assert response.headers["x-testupstream-id"] == "b"


def test_paths_the_router_does_not_serve_are_404_json(ai: AiGateway) -> None:
    error = error_of(ai.post("/v1/assistants", b'{"model": "model-a"}'), 404)
    assert error["code"] == "unsupported_path" and "/v1/assistants" in error["message"]


# --- /v1/models ---


def test_models_lists_the_gateway_models_for_the_requested_host(ai: AiGateway) -> None:
    def listed(host: str) -> list[str]:
        response = request(ai.url, "GET", "/v1/models", headers={"host": host})
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        body = response.json()
        assert body["object"] == "list" and all(m["object"] == "model" for m in body["data"])
        return [m["id"] for m in body["data"]]

    assert listed("gateway.local") == ["model-a", "model-b"]
    assert listed("one.team.example") == ["model-t", "model-a", "model-b"]


# --- usage: metrics and access log ---


def test_streamed_usage_reaches_the_metrics_and_the_access_log(ai: AiGateway) -> None:
    labels = {"gen_ai_request_model": "model-b", "backend": "aiservicebackend/default/b", "gen_ai_token_type": "output"}
    before = metric(ai.settled_metrics(), "gen_ai_client_token_usage_sum", **labels)
    ttft_before = metric(ai.metrics(), "gen_ai_server_time_to_first_token_count", gen_ai_request_model="model-b")
    path = "/v1/chat/completions?case=streamed-usage"
    body = json.dumps({"model": "model-b", "stream": True, "messages": []}).encode()
    answer = ai.post(path, body, {"x-sse-gap-ms": "0"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
    events = [line for line in answer.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and json.loads(events[-2][6:])["usage"]["completion_tokens"] == 100
    eventually(lambda: metric(ai.metrics(), "gen_ai_client_token_usage_sum", **labels) == before + 100, "tokens")
    text = ai.metrics()
    assert metric(text, "gen_ai_server_time_to_first_token_count", gen_ai_request_model="model-b") == ttft_before + 1
    assert metric(text, "gen_ai_server_time_per_output_token_count", gen_ai_request_model="model-b") >= 1
    entry = eventually(lambda: ai.access_log(path), "access log entry")
    assert entry["status"] == 200 and entry["model"] == "model-b" and entry["response_model"] == "model-b"
    assert entry["backend"] == "aiservicebackend/default/b"
    assert (entry["input_tokens"], entry["output_tokens"], entry["total_tokens"]) == (1, 100, 101)


def test_buffered_usage_reaches_the_access_log_and_the_metrics(ai: AiGateway) -> None:
    labels = {"gen_ai_request_model": "model-a", "backend": "aiservicebackend/default/a", "gen_ai_token_type": "input"}
    before = metric(ai.settled_metrics(), "gen_ai_client_token_usage_sum", **labels)
    path = "/v1/chat/completions?case=buffered-usage"
    assert ai.chat("model-a", query="?case=buffered-usage").status_code == 200
    entry = eventually(lambda: ai.access_log(path), "access log entry")
    assert (entry["model"], entry["backend"], entry["total_tokens"]) == ("model-a", "aiservicebackend/default/a", 101)
    # The usage log reaches `serve` in Envoy's next batch: the input tokens Envoy read from the JSON answer.
    eventually(lambda: metric(ai.metrics(), "gen_ai_client_token_usage_sum", **labels) == before + 1, "tokens")


# --- the official SDK ---


def test_the_openai_sdk_completes_streams_and_reads_errors(ai: AiGateway) -> None:
    client = openai.OpenAI(base_url=ai.url + "/v1", api_key="not-checked", max_retries=0, timeout=SECONDS)
    completion = client.chat.completions.create(model="model-b", messages=[{"role": "user", "content": "hi"}])
    assert completion.model == "model-b" and completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.total_tokens == 101

    stream = client.chat.completions.create(
        model="model-a",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-sse-gap-ms": "0"},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 100

    assert [m.id for m in client.models.list()] == ["model-a", "model-b"]
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-404", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model="", input="hi")
    assert bad.value.code == "missing_model"


# --- the control plane away ---


def test_requests_are_routed_while_the_control_plane_is_stuck_or_restarting(tmp_path: Path) -> None:
    """Envoy routes by model itself: a stuck or restarting control plane costs metering, never a request."""
    environment = AiGateway(tmp_path)
    try:
        # Stuck: the process holds its sockets but answers nothing; metering gives up after its message timeout.
        os.kill(environment.serve.process.pid, signal.SIGSTOP)
        try:
            response = environment.chat("model-a")
        finally:
            os.kill(environment.serve.process.pid, signal.SIGCONT)
        assert response.status_code == 200 and response.headers["x-testupstream-id"] == "a"

        # Restarted under a request loop: every request of the loop is answered by its model's upstream.
        answers: list[tuple[int, bool]] = []
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                for model, upstream in (("model-a", "a"), ("model-b", "b")):
                    answer = environment.chat(model)
                    answers.append((answer.status_code, answer.headers.get("x-testupstream-id", "") == upstream))

        requests = threading.Thread(target=loop)
        requests.start()
        try:
            eventually(lambda: len(answers) >= 10, "requests before the restart")
            assert environment.serve.terminate() == 0
            during = len(answers)
            eventually(lambda: len(answers) >= during + 10, "requests while the control plane is gone")
            environment.serve = environment.start_serve("serve-again.log")
            after = len(answers)
            eventually(lambda: len(answers) >= after + 10, "requests after the restart")
        finally:
            stop.set()
            requests.join()
        failed = [answer for answer in answers if answer != (200, True)]
        assert not failed and len(answers) >= 30
        labels = {"gen_ai_request_model": "model-b", "backend": "aiservicebackend/default/b", "error_type": ""}
        eventually(
            lambda: metric(environment.metrics(), "gen_ai_server_request_duration_count", **labels) >= 1,
            "metering again after the restart",
        )
    finally:
        environment.close()


def test_a_stdout_that_does_not_drain_holds_back_neither_metering_nor_config_changes(tmp_path: Path) -> None:
    """The AI filter writes the access log's lines to Envoy's stdout from a thread of its own: when nobody reads
    stdout (a full pipe), that thread waits alone. The usage log's exports go on, and a config change that ends the
    last AI filter config (which joins the usage log's ticker on Envoy's main thread) completes."""
    environment = AiGateway(tmp_path, stdout_pipe=True)
    try:
        pipe = environment.envoy.process.stdout
        assert pipe is not None
        capacity = fcntl.fcntl(pipe.fileno(), fcntl.F_GETPIPE_SZ)
        labels = {"gen_ai_request_model": "model-a", "backend": "aiservicebackend/default/a", "error_type": ""}
        before = metric(environment.settled_metrics(), "gen_ai_server_request_duration_count", **labels)
        sent = 0

        def unread() -> int:
            return int.from_bytes(fcntl.ioctl(pipe.fileno(), termios.FIONREAD, b"\0\0\0\0"), "little")

        # Lines until the pipe is full (it grows no more: a write of whole lines waits for room a page at a time),
        # then the module's writer waits in write() on the rest.
        held = -1
        while unread() != held or held < capacity // 2:
            held = unread()
            for _ in range(100):
                assert environment.chat("model-a").status_code == 200
            sent += 100
            time.sleep(3 * USAGE_LOG_FLUSH_MS / 1e3)  # the writer's next turn
            assert sent < 5_000, f"stdout never filled: {unread()} of {capacity} bytes"
        for _ in range(100):
            assert environment.chat("model-a").status_code == 200
        sent += 100
        eventually(
            lambda: metric(environment.metrics(), "gen_ai_server_request_duration_count", **labels) == before + sent,
            "every request metered while stdout does not drain",
        )
        # The AI routes go: the listener is replaced by one without the AI filter, and once the old one has drained,
        # the last AI filter config ends on Envoy's main thread, which must not wait on stdout.
        (environment.manifests / "gateway.yaml").write_text(gateway([environment.listen_port]))

        def without_ai_filter() -> bool:
            status, dump = http_get(f"{environment.envoy.admin}/config_dump?resource=dynamic_listeners", 5.0)
            return status == 200 and "DynamicListener" in dump and AI_FILTER not in dump

        eventually(without_ai_filter, "the listener replaced by one without the AI filter")
        time.sleep(3)  # Envoy's --drain-time-s is 1: the old listener and its filter config are gone by then
        assert http_get(f"{environment.envoy.admin}/ready", 5.0) == (200, "LIVE\n"), environment.envoy.log_tail()
    finally:
        environment.close()


# --- input bounds ---


def test_a_model_longer_than_the_limit_is_refused_without_an_echo_and_logged_bounded(ai: AiGateway) -> None:
    """A model longer than the limit (256 by default), up to as large as the body limit allows, is a 400 that
    echoes none of it, and its access log line carries at most ECHO_LIMIT characters of it; a model of exactly the
    limit is routed like any unknown one (its 404 names it)."""
    path = "/v1/chat/completions?long-model"
    for length in (TranslateOptions.max_model_length + 1, BUFFER_LIMIT - 1024):
        refused = ai.post(path, json.dumps({"model": "n" * length}).encode())
        error = error_of(refused, 400)
        assert error["code"] == "invalid_model" and "nnn" not in refused.text, refused.text[:300]
        assert error["message"] == f"'model' is longer than {TranslateOptions.max_model_length} characters"
    entry = eventually(lambda: ai.access_log(path), "the access log entry")
    assert entry["model"] == "n" * ECHO_LIMIT
    # Characters, not bytes (Envoy's matching sees bytes: "é" is 2 of them, "模" 3, "😀" 4).
    limit = TranslateOptions.max_model_length
    for character in ("m", "é", "模", "😀"):
        for length, status, code in ((limit, 404, "model_not_found"), (limit + 1, 400, "invalid_model")):
            body = json.dumps({"model": character * length}, ensure_ascii=False).encode()
            assert error_of(ai.post("/v1/chat/completions", body), status)["code"] == code, (character, length)
    long_path = "/v1/" + "p" * 10_000
    unsupported = error_of(ai.post(long_path, b'{"model": "model-a"}'), 404)
    assert unsupported["code"] == "unsupported_path" and len(unsupported["message"]) < 2 * ECHO_LIMIT


def test_a_chunked_body_reaches_the_backend_with_a_content_length(ai: AiGateway) -> None:
    """A client that streams its body without Content-Length (chunked) still reaches a backend that reads only sized
    bodies: Envoy holds the body to read its model anyway, and sets Content-Length from it."""
    body = json.dumps({"model": "model-b", "messages": [{"role": "user", "content": "hi"}]}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", ai.listen_port, timeout=SECONDS)
    try:
        headers = {"content-type": "application/json", "x-expected-headers": b64(f"content-length:{len(body)}")}
        connection.request("POST", "/v1/chat/completions", iter([body[:10], body[10:]]), headers, encode_chunked=True)
        answer = connection.getresponse()
        text = answer.read()
    finally:
        connection.close()
    assert answer.status == 200, text
    assert answer.getheader("x-testupstream-id") == "b"
