"""What reading a streamed answer's usage costs per chunk: Envoy's CPU for an event stream through the AI path (the
AI filter reads every event as it passes) against the same stream through a plain HTTPRoute (no filter reads it),
less the same difference for the answer as one JSON document (what the AI path costs per request, whatever the
answer). `serve` takes no part in either: no ext_proc runs, and its CPU is shown to say so.

    python -m bench.stream_metering [--requests 200] [--concurrency 8] [--smoke]

One `xds-server serve`, one Envoy, one testupstream (Envoy AI Gateway's test upstream contract) answering a chat
completion either as one JSON document or as an event stream of one chunk per word with a 1 ms gap between events
(so each event is its own chunk), on two hostnames of one listener: `ai.bench` (an AIGatewayRoute) and
`plain.bench` (an HTTPRoute matching a header). The same requests are sent in the four combinations,
`--concurrency` at a time. CPU is each process's utime + stime from /proc over the run; the testupstream's is not
the gateway's and is not counted. Envoy's ext_proc stats must stay at zero.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.ai_latency import AI_HOST, PLAIN_HEADER, PLAIN_HOST, cpu_seconds
from testing.bulk_manifests import header_route
from testing.gateway_run import GatewayRun, gateway_run
from testing.manifests import ai_gateway_route, ai_service_backend
from testing.sims import start_testupstream
from testing.web import eventually, request
from translators.xds.model import USAGE_LOG_FLUSH_MS

UPSTREAM_HOST = "127.0.8.7"
MODEL = "bench-stream"


def chat(url: str, host: str, stream: bool) -> int:
    """One request; the number of chunks of its answer (events of a stream, 1 for a JSON answer)."""
    body = {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": "Say hello to everyone here."}]}
    headers = {"content-type": "application/json", "x-sse-gap-ms": "1", "host": host, PLAIN_HEADER: MODEL}
    answer = request(url, "POST", "/v1/chat/completions", json.dumps(body).encode(), headers)
    assert answer.status_code == 200, answer.text
    return answer.content.count(b"data: ") if stream else 1


async def measure(gw: GatewayRun, host: str, stream: bool, requests: int, concurrency: int) -> dict[str, float]:
    envoy, serve, url = gw.envoy, gw.serve, gw.url
    messages_before = await envoy.stat_total("ext_proc.stream_msgs_sent")
    serve_before, envoy_before = cpu_seconds(serve.process.pid), cpu_seconds(envoy.process.pid)
    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        sizes = list(pool.map(lambda _: chat(url, host, stream), range(requests)))
    elapsed = time.monotonic() - started
    await asyncio.sleep(3 * USAGE_LOG_FLUSH_MS / 1e3)  # the last usage-log batch reaches serve
    serve_cpu = cpu_seconds(serve.process.pid) - serve_before
    envoy_cpu = cpu_seconds(envoy.process.pid) - envoy_before
    messages = await envoy.stat_total("ext_proc.stream_msgs_sent") - messages_before
    return {
        "requests": requests,
        "seconds": elapsed,
        "chunks": sum(sizes) / requests,
        "messages": messages,
        "serve_ms_per_request": serve_cpu * 1000 / requests,
        "envoy_ms_per_request": envoy_cpu * 1000 / requests,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="CI: 10 requests of each form")
    args = parser.parse_args()
    if args.smoke:
        args.requests = 10
    runs: dict[tuple[str, bool], dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="stream-metering-") as work:
        directory = Path(work)
        upstream = start_testupstream("stream", UPSTREAM_HOST, directory / "upstream.log")
        documents = [
            ai_gateway_route("bench", {MODEL: "upstream"}, hostnames=(AI_HOST,)),
            ai_service_backend("upstream", UPSTREAM_HOST, upstream.port),
            header_route("plain", PLAIN_HOST, PLAIN_HEADER, MODEL, "upstream"),
        ]
        try:
            async with gateway_run(directory, documents) as gw:
                url = gw.url
                eventually(lambda: chat(url, AI_HOST, False) > 0 and chat(url, PLAIN_HOST, False) > 0, "routes")
                for stream in (False, True):
                    for path, host in (("ai", AI_HOST), ("plain", PLAIN_HOST)):
                        runs[path, stream] = await measure(gw, host, stream, args.requests, args.concurrency)
        finally:
            upstream.kill()
    assert all(run["messages"] == 0 for run in runs.values()), runs  # no ext_proc on either path
    chunks = runs["ai", True]["chunks"]
    print("| path | answer | requests | chunks / request | Envoy CPU / request | serve CPU / request |")
    print("|---|---|---:|---:|---:|---:|")
    for (path, stream), run in runs.items():
        print(
            f"| {path} | {'event stream' if stream else 'JSON'} | {run['requests']:.0f} | {run['chunks']:.0f} | "
            f"{run['envoy_ms_per_request']:.3f} ms | {run['serve_ms_per_request']:.3f} ms |"
        )
    per_request = runs["ai", False]["envoy_ms_per_request"] - runs["plain", False]["envoy_ms_per_request"]
    streamed = runs["ai", True]["envoy_ms_per_request"] - runs["plain", True]["envoy_ms_per_request"]
    print(
        f"\nthe AI path over the plain route, Envoy CPU per request: JSON {per_request * 1000:+.0f} µs, event stream "
        f"{streamed * 1000:+.0f} µs; reading the stream: {(streamed - per_request) * 1000 / chunks:+.1f} µs per chunk "
        f"({chunks:.0f} chunks per request)"
    )


if __name__ == "__main__":
    asyncio.run(main())
