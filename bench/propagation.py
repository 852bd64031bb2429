"""Propagation: a new route written to a watched file -> real Envoy answering on it, through `xds-server serve`.

    python -m bench.propagation --routes 10 1000 3000 10000 --samples 20 [--delta]
    python -m bench.propagation --flap 3000 --samples 20 [--delta]

For each size: a Gateway with that many HTTPRoutes (one Backend cluster each) is served to one Envoy; then, one
sample at a time, a file with one more route is written and the route is polled over a kept-alive connection
until it answers 200. Also prints the control plane's CPU time per change (`serve`'s user + system time over the
samples, divided by their number) and its resident memory once everything is in sync.

`--flap N`: N routes, each to its own Service with one ready Pod (N EDS clusters); each sample moves one Pod to
another address (its own file rewritten), where another upstream answers, and polls its route until the answer
changes: an endpoint-only change.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from testing.bulk_manifests import http_routes, service_routes
from testing.envoy import Envoy
from testing.manifests import gateway
from testing.ports import free_port
from testing.processes import Serve, rss_kib, serve_port, synced
from testing.web import upstream

UPSTREAM_HOST = "127.0.6.1"


def poll_until_ok(port: int, path: str, timeout: float = 60.0, answer: str | None = None) -> float:
    """Seconds until GET `path` answers 200 (with the body `answer`, when given), polling back to back on one
    connection."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    while time.perf_counter() - started < timeout:
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read().decode()
            if response.status == 200 and (answer is None or body == answer):
                return time.perf_counter() - started
        except (OSError, http.client.HTTPException):
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    raise TimeoutError(f"{path} never answered 200" + (f" with {answer!r}" if answer is not None else ""))


def cpu_seconds(pid: int) -> float:
    """The process's user + system CPU time so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(times: list[float]) -> dict[str, float]:
    p90 = statistics.quantiles(times, n=10, method="inclusive")[-1] if len(times) > 1 else times[0]
    return {"p50_ms": statistics.median(times) * 1000, "p90_ms": p90 * 1000, "max_ms": max(times) * 1000}


def rss_mib(pid: int) -> float:
    return rss_kib(pid) / 1024


# A change a sample makes: it writes files in the manifests directory, and says which path to poll and for what body
# (None: any 200).
Change = Callable[[Path, int], tuple[str, str | None]]


async def measure(
    files: dict[str, str], first: tuple[str, str | None], change: Change, samples: int, delta: bool
) -> dict[str, float]:
    """Serves a Gateway and `files` (name -> text) to one Envoy, waits until `first` (path, body) answers, then makes
    `samples` changes one at a time, timing each until its path answers."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        manifests = directory / "manifests"
        manifests.mkdir()
        listen_port = free_port()
        (manifests / "00-gateway.yaml").write_text(gateway([listen_port]))
        for name, text in files.items():
            (manifests / name).write_text(text)
        serve = Serve(manifests, free_port(), free_port(), directory / "serve.log")
        envoy = Envoy(directory, "default/gw", int(serve_port(serve, "--xds-address")), delta=delta)
        try:
            await serve.ready()
            await envoy.wait_live()
            await asyncio.to_thread(poll_until_ok, listen_port, first[0], answer=first[1])
            await synced(serve)
            memory = rss_mib(serve.process.pid)
            builds_before = await serve.metric("xds_server_translation_seconds_sum")
            cpu_before = cpu_seconds(serve.process.pid)
            times = []
            for sample in range(samples):
                path, answer = change(manifests, sample)
                times.append(await asyncio.to_thread(poll_until_ok, listen_port, path, answer=answer))
                await synced(serve)
            build_ms = (await serve.metric("xds_server_translation_seconds_sum") - builds_before) / samples * 1000
            cpu_ms = (cpu_seconds(serve.process.pid) - cpu_before) / samples * 1000
            return {"build_ms": build_ms, "cpu_ms": cpu_ms, "rss_mib": memory, **summary(times)}
        finally:
            envoy.stop()
            serve.terminate()


async def measure_routes(routes: int, samples: int, delta: bool, upstream_port: int) -> dict[str, float]:
    """`routes` HTTPRoutes, each with its own Backend; each change is a file with one more."""

    def new_route(manifests: Path, sample: int) -> tuple[str, str | None]:
        text = http_routes(1, UPSTREAM_HOST, upstream_port, prefix=f"new{sample}-")
        (manifests / f"20-new-{sample}.yaml").write_text(text)
        return f"/new{sample}-0/", None

    files = {"10-routes.yaml": http_routes(routes, UPSTREAM_HOST, upstream_port)}
    return await measure(files, (f"/r{routes - 1}/", None), new_route, samples, delta)


FLAP_HOSTS = ("127.0.6.2", "127.0.6.3")  # where the flapping Pod is, in turn; each has an upstream saying so


def flapping_pod(address: str, port: int) -> str:
    return f"""apiVersion: v1
kind: Service
metadata: {{name: flap}}
spec: {{selector: {{app: flap}}, ports: [{{port: 80, targetPort: {port}}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: flap-pod, labels: {{app: flap}}}}
spec: {{containers: [{{name: c, image: x}}]}}
status: {{podIP: {address}, phase: Running, conditions: [{{type: Ready, status: "True"}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: flap}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{matches: [{{path: {{type: PathPrefix, value: /flap/}}}}], backendRefs: [{{name: flap, port: 80}}]}}]
"""


async def measure_flap(clusters: int, samples: int, delta: bool, port: int) -> dict[str, float]:
    """`clusters` routes to a Service with one Pod each; each change moves one Pod to the other FLAP_HOSTS address."""

    def move(manifests: Path, sample: int) -> tuple[str, str | None]:
        address = FLAP_HOSTS[(sample + 1) % 2]
        (manifests / "20-flap.yaml").write_text(flapping_pod(address, port))
        return "/flap/", address

    files = {"10-services.yaml": service_routes(clusters - 1), "20-flap.yaml": flapping_pod(FLAP_HOSTS[0], port)}
    return await measure(files, ("/flap/", FLAP_HOSTS[0]), move, samples, delta)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--routes", type=int, nargs="+", default=[10, 1000, 3000])
    parser.add_argument("--flap", type=int, nargs="+", help="endpoint flaps at these numbers of EDS clusters")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--delta", action="store_true", help="Envoy uses Delta ADS (default SotW)")
    args = parser.parse_args()
    server = upstream(UPSTREAM_HOST, "ok")
    port = next(server)
    print(
        "| change | size | protocol | propagation p50 | p90 | max | of which translate + build | control-plane CPU "
        "per change | control-plane RSS |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    protocol = "Delta" if args.delta else "SotW"
    if args.flap:
        flap_port = free_port(FLAP_HOSTS[0])
        flap_servers = [upstream(host, host, flap_port) for host in FLAP_HOSTS]
        for flap_server in flap_servers:
            next(flap_server)
    sizes = [("endpoint flap", n) for n in args.flap] if args.flap else [("new route", n) for n in args.routes]
    for change, size in sizes:
        if change == "new route":
            r = await measure_routes(size, args.samples, args.delta, port)
        else:
            r = await measure_flap(size, args.samples, args.delta, flap_port)
        print(
            f"| {change} | {size:,} | {protocol} | {r['p50_ms']:.0f} ms | {r['p90_ms']:.0f} ms | {r['max_ms']:.0f} ms "
            f"| {r['build_ms']:.1f} ms | {r['cpu_ms']:.1f} ms | {r['rss_mib']:.0f} MiB |",
            flush=True,
        )
    next(server, None)


if __name__ == "__main__":
    asyncio.run(main())
