"""What stream metering costs per streamed chunk: `serve`'s and Envoy's CPU per message Envoy sends the metering
ext_proc, against the same requests answered as one JSON document (no ext_proc: Envoy reads that usage itself).

    python -m bench.stream_metering [--requests 200] [--concurrency 8] [--smoke]

One `xds-server serve`, one Envoy, one testupstream (Envoy AI Gateway's test upstream contract) answering a chat
completion either as one JSON document or as an event stream of one chunk per word with a 1 ms gap between events
(so each event is its own chunk). The same requests are sent in both forms, `--concurrency` at a time. Envoy's own stats
count the messages it sent the metering ext_proc (`ext_proc.stream_msgs_sent`); CPU is each process's utime + stime
from /proc over the run. The testupstream's CPU is not the gateway's and is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.ai_latency import cpu_seconds
from testing.gateway_run import GatewayRun, gateway_run
from testing.manifests import ai_gateway_route, ai_service_backend
from testing.sims import start_testupstream
from testing.web import eventually, request
from translators.xds.ai_listener import USAGE_LOG_FLUSH

UPSTREAM_HOST = "127.0.8.7"
MODEL = "bench-stream"


def chat(url: str, stream: bool) -> int:
    body = {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": "Say hello."}]}
    headers = {"content-type": "application/json", "x-sse-gap-ms": "1"}
    answer = request(url, "POST", "/v1/chat/completions", json.dumps(body).encode(), headers)
    assert answer.status_code == 200, answer.text
    return len(answer.content)


async def measure(gw: GatewayRun, stream: bool, requests: int, concurrency: int) -> dict[str, float]:
    envoy, serve, url = gw.envoy, gw.serve, gw.url
    messages_before = await envoy.stat_total("ext_proc.stream_msgs_sent")
    serve_before, envoy_before = cpu_seconds(serve.process.pid), cpu_seconds(envoy.process.pid)
    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        sizes = list(pool.map(lambda _: chat(url, stream), range(requests)))
    elapsed = time.monotonic() - started
    await asyncio.sleep(3 * USAGE_LOG_FLUSH.nanos / 1e9)  # the last usage-log batch reaches serve
    serve_cpu = cpu_seconds(serve.process.pid) - serve_before
    envoy_cpu = cpu_seconds(envoy.process.pid) - envoy_before
    messages = await envoy.stat_total("ext_proc.stream_msgs_sent") - messages_before
    return {
        "requests": requests,
        "seconds": elapsed,
        "bytes": sum(sizes) / requests,
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
    with tempfile.TemporaryDirectory(prefix="stream-metering-") as work:
        directory = Path(work)
        upstream = start_testupstream("stream", UPSTREAM_HOST, directory / "upstream.log")
        documents = [
            ai_gateway_route("bench", {MODEL: "upstream"}),
            ai_service_backend("upstream", UPSTREAM_HOST, upstream.port),
        ]
        try:
            async with gateway_run(directory, documents) as gw:
                eventually(lambda: chat(gw.url, False) > 0, "the route answers")
                json_run = await measure(gw, False, args.requests, args.concurrency)
                stream_run = await measure(gw, True, args.requests, args.concurrency)
        finally:
            upstream.kill()
    assert json_run["messages"] == 0, json_run  # JSON answers: no ext_proc at all
    messages_per_request = stream_run["messages"] / args.requests
    serve_extra = stream_run["serve_ms_per_request"] - json_run["serve_ms_per_request"]
    envoy_extra = stream_run["envoy_ms_per_request"] - json_run["envoy_ms_per_request"]
    print("| answer | requests | ext_proc messages / request | serve CPU / request | Envoy CPU / request |")
    print("|---|---:|---:|---:|---:|")
    for name, run in (("JSON", json_run), ("event stream", stream_run)):
        print(
            f"| {name} | {run['requests']:.0f} | {run['messages'] / args.requests:.1f} | "
            f"{run['serve_ms_per_request']:.2f} ms | {run['envoy_ms_per_request']:.2f} ms |"
        )
    print(
        f"\nstream metering per message (chunk): serve +{serve_extra * 1000 / messages_per_request:.0f} µs, "
        f"Envoy +{envoy_extra * 1000 / messages_per_request:.0f} µs ({messages_per_request:.0f} messages per request)"
    )


if __name__ == "__main__":
    asyncio.run(main())
