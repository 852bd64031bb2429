"""Propagation: a new route written to a watched file -> real Envoy answering on it, through `xds-server serve`.

    python -m bench.propagation --routes 10 1000 3000 --samples 20 [--delta]

For each size: a Gateway with that many HTTPRoutes (one Backend cluster each) is served to one Envoy; then, one
sample at a time, a file with one more route is written and the route is polled over a kept-alive connection
until it answers 200. Also prints the control plane's resident memory once everything is in sync.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import statistics
import tempfile
import time
from pathlib import Path

from testing.bulk_manifests import http_routes
from testing.envoy import Envoy
from testing.manifests import gateway
from testing.ports import free_port
from testing.processes import Serve, serve_port, synced
from testing.web import upstream

UPSTREAM_HOST = "127.0.6.1"


def poll_until_ok(port: int, path: str, timeout: float = 60.0) -> float:
    """Seconds until GET `path` answers 200, polling back to back on one connection."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    while time.perf_counter() - started < timeout:
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                return time.perf_counter() - started
        except (OSError, http.client.HTTPException):
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    raise TimeoutError(f"{path} never answered 200")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def measure(routes: int, samples: int, delta: bool, upstream_port: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        manifests = directory / "manifests"
        manifests.mkdir()
        listen_port = free_port()
        (manifests / "00-gateway.yaml").write_text(gateway([listen_port]))
        (manifests / "10-routes.yaml").write_text(http_routes(routes, UPSTREAM_HOST, upstream_port))
        serve = Serve(manifests, free_port(), free_port(), directory / "serve.log")
        envoy = Envoy(directory, "default/gw", int(serve_port(serve, "--xds-address")), delta=delta)
        try:
            await serve.ready()
            await envoy.wait_live()
            await asyncio.to_thread(poll_until_ok, listen_port, f"/r{routes - 1}/")
            await synced(serve)
            memory = rss_mib(serve.process.pid)
            builds_before = await serve.metric("xds_server_translation_seconds_sum")
            times = []
            for sample in range(samples):
                (manifests / f"20-new-{sample}.yaml").write_text(
                    http_routes(1, UPSTREAM_HOST, upstream_port, prefix=f"new{sample}-")
                )
                times.append(await asyncio.to_thread(poll_until_ok, listen_port, f"/new{sample}-0/"))
                await synced(serve)
            build_ms = (await serve.metric("xds_server_translation_seconds_sum") - builds_before) / samples * 1000
            return {
                "build_ms": build_ms,
                "p50_ms": statistics.median(times) * 1000,
                "p90_ms": statistics.quantiles(times, n=10, method="inclusive")[-1] * 1000
                if len(times) > 1
                else times[0] * 1000,
                "max_ms": max(times) * 1000,
                "rss_mib": memory,
            }
        finally:
            envoy.stop()
            serve.terminate()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--routes", type=int, nargs="+", default=[10, 1000, 3000])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--delta", action="store_true", help="Envoy uses Delta ADS (default SotW)")
    args = parser.parse_args()
    server = upstream(UPSTREAM_HOST, "ok")
    port = next(server)
    print("| routes | protocol | propagation p50 | p90 | max | of which translate + build | control-plane RSS |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for routes in args.routes:
        r = await measure(routes, args.samples, args.delta, port)
        print(
            f"| {routes:,} | {'delta' if args.delta else 'sotw'} | {r['p50_ms']:.0f} ms | {r['p90_ms']:.0f} ms "
            f"| {r['max_ms']:.0f} ms | {r['build_ms']:.0f} ms | {r['rss_mib']:.0f} MiB |",
            flush=True,
        )
    next(server, None)


if __name__ == "__main__":
    asyncio.run(main())
