"""Soak: memory of `serve` and Envoy over many AI requests (issue 22: no growth per request).

    python -m bench.soak --requests 1000000 --rate 4000 --round-seconds 25 [--path ai|pool]
    python -m bench.soak --smoke [--path pool]

The `bench.ai_latency` setup (one `serve`, one Envoy, a canned upstream), loaded through the AI path
(`ai.bench`: the body's model routes, Envoy reads the usage, the usage log brings it to `serve`, which records the
GenAI metrics), or with `--path pool` through an InferencePool whose one pod is the upstream (a pick by the embedded
picker per request: an ext_proc stream to `serve` each), in rounds of `--round-seconds` at `--rate`, until
`--requests` have been answered. After each round the resident set size (VmRSS) of both processes is read from
/proc. The first rounds warm up (connections, buffers, allocator arenas, metric series); growth is measured from
the end of the warm-up to the end of the run, and printed per 1,000 requests, with the verdict against the issue's
bound (flat within 5%).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.ai_latency import Bench
from testing.processes import rss_kib

WARM_UP_ROUNDS = 2
FLAT_WITHIN = 0.05  # the bound: RSS after warm-up stays within 5%


def growth(before: int, after: int, requests: int) -> str:
    per_1k = (after - before) * 1024 / max(requests, 1) * 1000
    return f"{(after - before) / before:+.1%} ({per_1k:+.0f} bytes per 1,000 requests)"


async def soak(requests: int, rate: int, round_seconds: float, path: str = "ai") -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), pool=path == "pool")
        try:
            await bench.start()
            pids = {"serve": bench.serve.process.pid, "envoy": bench.envoy.process.pid}
            print("| round | requests so far | errors | serve RSS | Envoy RSS |")
            print("|---:|---:|---:|---:|---:|")
            done, errors, index = 0, 0, 0
            rows: list[tuple[int, dict[str, int]]] = []
            while done < requests or index < WARM_UP_ROUNDS + 1:
                run = await bench.run(path, rate, round_seconds)
                done, errors, index = done + run.requests, errors + run.errors, index + 1
                sizes = {name: rss_kib(pid) for name, pid in pids.items()}
                rows.append((done, sizes))
                print(
                    f"| {index} | {done:,} | {run.errors} | {sizes['serve'] / 1024:.1f} MiB | "
                    f"{sizes['envoy'] / 1024:.1f} MiB |",
                    flush=True,
                )
            warm_done, warm = rows[WARM_UP_ROUNDS - 1]
            last_done, last = rows[-1]
            measured = last_done - warm_done
            flat = True
            for name in pids:
                change = (last[name] - warm[name]) / warm[name]
                flat = flat and change <= FLAT_WITHIN
                print(f"{name}: {growth(warm[name], last[name], measured)} over {measured:,} requests after warm-up")
            print(f"errors: {errors}; verdict: RSS {'flat' if flat else 'GREW'} (bound {FLAT_WITHIN:.0%})")
            return errors == 0
        finally:
            bench.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=4000)
    parser.add_argument("--round-seconds", type=float, default=25.0)
    parser.add_argument(
        "--path", choices=("ai", "pool"), default="ai", help="the AI route, or an InferencePool's (a pick each)"
    )
    parser.add_argument("--smoke", action="store_true", help="CI: three short rounds")
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.rate, args.round_seconds = 1, 200, 2.0
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    started = time.monotonic()
    ok = asyncio.run(soak(args.requests, args.rate, args.round_seconds, args.path))
    print(f"({time.monotonic() - started:.0f} s)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
