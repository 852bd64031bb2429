"""Memory of `serve` under concurrent large request bodies it must hold (issue 22: bounded memory).

    python -m bench.large_bodies [--bodies 8] [--mib 45] [--smoke]

One `xds-server serve`, one Envoy, one testupstream. The AI route's backendRef has a `modelNameOverride`, so every
request's body passes through the upstream-settings service, which parses and rewrites it: the case where `serve`
holds a whole client body (as the embedded picker does in its buffered mode). `--bodies` requests of `--mib` MiB
each are sent at once; `serve`'s resident set size (VmRSS) is sampled every 20 ms from before the burst until 10 s
after it, and every answer's status and error code are counted (a refusal must be the OpenAI error envelope).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from testing.gateway_run import gateway_run
from testing.manifests import ai_gateway_route, ai_service_backend, chat_body
from testing.ports import free_port
from testing.processes import rss_kib
from testing.sims import start_testupstream
from testing.web import eventually, request

UPSTREAM_HOST = "127.0.8.9"
ROUTE = ai_gateway_route("big", {"big": "big"}, model_name_overrides={"big": "big-pinned"})


def outcome(url: str, body: bytes) -> str:
    try:
        answer = request(url, "POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    except OSError as error:  # a connection Envoy closed (a listener not there yet, a reset): counted, not raised
        return f"no answer ({type(error).__name__})"
    if answer.status_code == 200:
        return "200"
    try:
        code = answer.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = "not JSON"
    return f"{answer.status_code} {code}"


async def burst(bodies: int, mib: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        upstream = start_testupstream("big", UPSTREAM_HOST, directory / "upstream.log")
        documents = [ROUTE, ai_service_backend("big", UPSTREAM_HOST, upstream.port)]
        serve_args = ["--extproc-address", f"127.0.0.1:{free_port()}", "--buffer-limit-bytes", str((mib + 4) << 20)]
        try:
            async with gateway_run(directory, documents, serve_args) as run:
                small = chat_body(0) if mib else b""
                eventually(lambda: outcome(run.url, small) == "200", "the route answers")
                pid = run.serve.process.pid
                baseline = rss_kib(pid)
                samples: list[int] = []
                done = threading.Event()

                def sample() -> None:
                    while not done.is_set():
                        samples.append(rss_kib(pid))
                        time.sleep(0.02)

                sampler = threading.Thread(target=sample)
                sampler.start()
                body = chat_body(mib)
                started = time.monotonic()
                with ThreadPoolExecutor(bodies) as pool:
                    outcomes = Counter(pool.map(lambda _: outcome(run.url, body), range(bodies)))
                elapsed = time.monotonic() - started
                time.sleep(10)
                done.set()
                sampler.join()
                after = rss_kib(pid)
        finally:
            upstream.kill()
    size = len(body) / 2**20
    print(f"{bodies} bodies of {size:.1f} MiB at once, answered in {elapsed:.1f} s: {dict(outcomes)}")
    print(
        f"serve RSS: baseline {baseline / 1024:.0f} MiB, peak {max(samples) / 1024:.0f} MiB, "
        f"10 s after {after / 1024:.0f} MiB ({(after - baseline) / 1024:+.0f} MiB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bodies", type=int, default=8)
    parser.add_argument("--mib", type=int, default=45)
    parser.add_argument("--smoke", action="store_true", help="CI: two bodies of 2 MiB")
    args = parser.parse_args()
    if args.smoke:
        args.bodies, args.mib = 2, 2
    asyncio.run(burst(args.bodies, args.mib))


if __name__ == "__main__":
    main()
