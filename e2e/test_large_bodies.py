"""Concurrent large bodies `serve` must hold, through real Envoy: the body budget answers or refuses each one with a
JSON error, Envoy survives (it crashed when the connection to the services crossed a flow-control watermark), and
`serve` gives the memory back afterwards (glibc kept 130-180 MiB of it for good)."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from testing.gateway_run import gateway_running
from testing.manifests import ai_gateway_route, ai_service_backend, chat_body
from testing.ports import free_port
from testing.processes import rss_kib
from testing.sims import start_testupstream
from testing.web import Response, eventually, request

UPSTREAM_HOST = "127.0.8.19"
BODY_MIB = 20
BODIES = 6
ROUTE = ai_gateway_route("big", {"big": "big"}, model_name_overrides={"big": "big-pinned"})
# What a refused body may get: the budget's refusal, or Envoy's when `serve` (starved of CPU on a 2-core machine
# among Envoy, the upstream and the clients) did not answer a body within the message timeout.
REFUSALS = {"server_overloaded", "service_unavailable"}


def _post(url: str, body: bytes) -> Response:
    return request(url, "POST", "/v1/chat/completions", body, {"content-type": "application/json"})


def _outcome(answer: Response) -> str:
    if answer.status_code == 200:
        return "200"
    code = answer.json()["error"]["code"]  # a refusal is the OpenAI error envelope, or this fails
    if code == "server_overloaded":
        assert (answer.status_code, answer.headers["retry-after"]) == (503, "1")
    return str(code)


def test_concurrent_large_bodies_are_answered_or_refused_and_the_memory_comes_back(tmp_path: Path) -> None:
    upstream = start_testupstream("big", UPSTREAM_HOST, tmp_path / "upstream.log")
    documents = [ROUTE, ai_service_backend("big", UPSTREAM_HOST, upstream.port)]
    # Room for one body of BODY_MIB in Envoy, two in serve's budget (its default: twice the buffer limit).
    serve_args = ["--extproc-address", f"127.0.0.1:{free_port()}", "--buffer-limit-bytes", str((BODY_MIB + 4) << 20)]
    try:
        with gateway_running(tmp_path, documents, serve_args) as run:
            small = chat_body(0)
            eventually(lambda: _post(run.url, small).status_code == 200, "the route answers")
            pid = run.serve.process.pid
            baseline = rss_kib(pid)
            body = chat_body(BODY_MIB)
            with ThreadPoolExecutor(BODIES) as pool:
                outcomes = Counter(
                    _outcome(answer) for answer in pool.map(lambda _: _post(run.url, body), range(BODIES))
                )

            assert outcomes["200"] >= 1, outcomes
            assert set(outcomes) <= {"200", *REFUSALS}, outcomes
            assert run.envoy.process.poll() is None, "Envoy died"
            assert _post(run.url, small).status_code == 200
            # Memory given back: the budget bounds what is held, the trim returns it (a second after the burst).
            eventually(lambda: rss_kib(pid) - baseline < 50 * 1024, "serve back within 50 MiB of its baseline")
    finally:
        upstream.kill()
