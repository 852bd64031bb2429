"""What translating to a provider's API costs: the same chat completions answered by an OpenAI backend (no Python on
the path) and by an Anthropic backend (the upstream-settings service translates the request, and the answer or each
streamed event), side by side in one run.

    python -m bench.provider_translation [--rate 200] [--seconds 20] [--smoke]

1. In process: the translation functions alone (xds_server/extproc/schemas/anthropic.py) on the golden cases'
   inputs, microseconds per request, per answer and per streamed event.
2. Through Envoy: one `xds-server serve`, one Envoy, one testupstream answering canned bodies (Anthropic's Message or
   event stream for the Anthropic backend, the translated OpenAI answer for the OpenAI one, so both carry the same
   text). Requests go at a fixed rate (open loop: latency counts from when each request was due, so a stall is not
   hidden), one variant after the other; p50/p99 latency, and serve's and Envoy's CPU per request from /proc. The
   testupstream's CPU is not the gateway's and is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.ai_latency import cpu_seconds
from testing.gateway_run import GatewayRun, gateway_run
from testing.manifests import ai_gateway_route
from testing.sims import start_testupstream
from testing.web import eventually, request
from xds_server.extproc.schemas import anthropic

UPSTREAM_HOST = "127.0.8.9"
CASES = Path(__file__).resolve().parent.parent / "testdata" / "providers" / "anthropic"
PROMPT = {"role": "user", "content": "Say this is a test"}


def _case(name: str, file: str) -> bytes:
    return (CASES / name / file).read_bytes()


def in_process(repeat: int) -> dict[str, float]:
    """Microseconds per call of each translation step, best of three rounds."""
    request_body = json.loads(_case("tools-multi-turn", "openai-request.json"))
    message = json.loads(_case("response-text-tool-thinking", "anthropic-response.json"))
    events = _case("stream-tool-calls", "anthropic-stream.txt")
    event_count = events.count(b"\n\n")

    def best(step: Callable[[], object]) -> float:
        rounds = []
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(repeat):
                step()
            rounds.append((time.perf_counter() - started) / repeat * 1e6)
        return min(rounds)

    def stream() -> None:
        translator = anthropic.ChatStream("m", 0, include_usage=True)
        translator.feed(events)
        translator.finish()

    return {
        "request_us": best(lambda: anthropic.chat_request(request_body, "claude")),
        "answer_us": best(lambda: anthropic.chat_response(message, "m", 0)),
        "event_us": best(stream) / event_count,
    }


def _backend(name: str, schema: str, body: bytes, sse: bool) -> str:
    """An AIServiceBackend whose testupstream answers `body` (base64 in x-response-body, set by the backendRef)."""
    headers = [f"{{name: x-response-body, value: {base64.b64encode(body).decode()}}}"]
    if sse:
        headers.append("{name: x-response-type, value: sse}")
    return f"""
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIServiceBackend
metadata: {{name: {name}}}
spec:
  schema: {{name: {schema}}}
  backendRef: {{group: gateway.envoyproxy.io, kind: Backend, name: upstream}}
  headerMutation: {{set: [{", ".join(headers)}]}}
"""


VARIANTS = {  # model (= backend name) -> (schema, canned upstream body, event stream?)
    "openai-json": ("OpenAI", _case("plain-chat", "openai-response.json"), False),
    "anthropic-json": ("Anthropic", _case("plain-chat", "anthropic-response.json"), False),
    "openai-stream": ("OpenAI", _case("stream-text", "openai-stream.txt"), True),
    "anthropic-stream": ("Anthropic", _case("stream-text", "anthropic-stream.txt"), True),
}


def send(url: str, model: str) -> tuple[int, bytes]:
    body: dict[str, Any] = {"model": model, "messages": [PROMPT], "max_tokens": 50}
    if model.endswith("stream"):
        body["stream"] = True
    sent = json.dumps(body).encode()
    got = request(url, "POST", "/v1/chat/completions", sent, {"content-type": "application/json"})
    return got.status_code, got.content


def answering(url: str, model: str) -> Callable[[], bool]:
    return lambda: send(url, model)[0] == 200


def chat(url: str, model: str) -> int:
    status, content = send(url, model)
    assert status == 200, (model, content[:300])
    return len(content)


def paced(url: str, model: str, rate: float, seconds: float) -> list[float]:
    """Requests due every 1/rate s (open loop); each latency runs from when it was due to its last byte."""
    count = max(int(rate * seconds), 1)
    latencies: list[float] = []
    lock = threading.Lock()
    start = time.monotonic() + 0.1

    def one(index: int) -> None:
        due = start + index / rate
        time.sleep(max(0.0, due - time.monotonic()))
        chat(url, model)
        with lock:
            latencies.append(time.monotonic() - due)

    with ThreadPoolExecutor(64) as pool:
        list(pool.map(one, range(count)))
    return latencies


async def through_envoy(gw: GatewayRun, model: str, rate: float, seconds: float) -> dict[str, float]:
    serve_before, envoy_before = cpu_seconds(gw.serve.process.pid), cpu_seconds(gw.envoy.process.pid)
    latencies = await asyncio.to_thread(paced, gw.url, model, rate, seconds)
    requests = len(latencies)
    ordered = sorted(latencies)
    return {
        "requests": requests,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "serve_us": (cpu_seconds(gw.serve.process.pid) - serve_before) * 1e6 / requests,
        "envoy_us": (cpu_seconds(gw.envoy.process.pid) - envoy_before) * 1e6 / requests,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second (default 200)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per variant (default 20)")
    parser.add_argument("--smoke", action="store_true", help="CI: 1 s per variant at 20 req/s")
    args = parser.parse_args()
    if args.smoke:
        args.rate, args.seconds = 20.0, 1.0
    costs = in_process(50 if args.smoke else 2000)
    print("in process (µs): request", f"{costs['request_us']:.1f},", "answer", f"{costs['answer_us']:.1f},")
    print("  streamed event", f"{costs['event_us']:.1f}")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="provider-translation-") as work:
        directory = Path(work)
        upstream = start_testupstream("providers", UPSTREAM_HOST, directory / "upstream.log")
        documents = [ai_gateway_route("bench", {model: model for model in VARIANTS})]
        documents += [_backend(model, schema, body, sse) for model, (schema, body, sse) in VARIANTS.items()]
        documents.append(
            "\napiVersion: gateway.envoyproxy.io/v1alpha1\nkind: Backend\nmetadata: {name: upstream}\n"
            f"spec: {{endpoints: [{{ip: {{address: {UPSTREAM_HOST}, port: {upstream.port}}}}}]}}\n"
        )
        try:
            async with gateway_run(directory, documents) as gw:
                for model in VARIANTS:
                    eventually(answering(gw.url, model), f"{model} answering")
                for model in VARIANTS:
                    results[model] = await through_envoy(gw, model, args.rate, args.seconds)
        finally:
            upstream.kill()
    print(f"\nthrough Envoy at {args.rate:.0f} req/s, {args.seconds:.0f} s per variant:")
    print("| backend | answer | requests | p50 | p99 | serve CPU / request | Envoy CPU / request |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for model, run in results.items():
        backend, answer = model.split("-")
        print(
            f"| {backend} | {answer} | {run['requests']:.0f} | {run['p50_ms']:.2f} ms | {run['p99_ms']:.2f} ms | "
            f"{run['serve_us']:.0f} µs | {run['envoy_us']:.0f} µs |"
        )


if __name__ == "__main__":
    asyncio.run(main())
