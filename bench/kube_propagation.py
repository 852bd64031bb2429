"""Propagation in cluster mode: an object change in the Kubernetes API server -> a real Envoy serving it, through
`xds-server serve --kubernetes`; the controller's memory with many Pods stored; the watch events it keeps up with.

    python -m bench.kube_propagation [--routes 10 1000] [--samples 20] [--pods 5000] [--events 5000] [--json FILE]
    python -m bench.kube_propagation --smoke

One throwaway API server (real etcd + kube-apiserver on loopback, testing/kube_cluster.py) for the whole run. For
each size, a fresh namespace gets a Gateway and that many HTTPRoutes, each with its own Backend (N clusters, as
bench.propagation writes them to files), created in parallel through the API while a controller (`serve
--kubernetes`, watching every namespace, holding a Lease) and one Envoy already run; the run notes when the last
route answers and when every route's status has our Accepted parent. Then, one sample at a time:

- **create**: a Backend, then an HTTPRoute to it; the clock starts when the HTTPRoute's create call returns and
  stops when its path answers 200 through Envoy (polled back to back on a kept-alive connection);
- **edit**: a merge patch moving an existing route to a new path prefix; the clock starts when the patch returns
  and stops when the new path answers 200.

With the largest size still served, Pods (not Ready: no kubelet) are created in another namespace and the
controller's RSS is read once it stores them all. Then, with those Pods, annotation patches (every one a watch event
the controller applies and publishes) are written from a thread pool as fast as the API server takes them, twice:
with the controller running (events/s it counted, against the writer's own rate), and with the controller stopped
(SIGSTOP) while they are written, so that on SIGCONT it drains a backlog as fast as it can: its own ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s

from bench.propagation import UPSTREAM_HOST, poll_until_ok, rss_mib
from testing.envoy import Envoy
from testing.kube_cluster import KubeCluster, binaries_present, binary_dir, build_binaries, read_json, running_cluster
from testing.kube_envoy import start_provisioned_envoy
from testing.manifests import backend_route, gateway
from testing.ports import free_port
from testing.processes import Serve, stop_process, synced
from testing.web import upstream
from translators.ir import ENVOY_GATEWAY_CONTROLLER
from xds_server.sources.kubernetes.kinds import BY_NAME

WRITERS = 16  # client threads; the API server, not the client, limits the rate (about 750-1,100 writes/s here)
POD_EVENTS = 'xds_server_kube_events_total{kind="Pod",type="MODIFIED"}'
STORED_PODS = 'xds_server_kube_objects{kind="Pod"}'
STATUS_WRITES = "xds_server_status_writes_total"
WAIT_S = 600.0  # a bound against hangs; nothing is asserted on it
MERGE_PATCH = "application/merge-patch+json"


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]


def percentile(times: list[float], fraction: float) -> float:
    if len(times) == 1:
        return times[0]
    return statistics.quantiles(times, n=100, method="inclusive")[round(fraction * 100) - 1]


def accepted_by_us(route: dict[str, Any]) -> bool:
    parents = (route.get("status") or {}).get("parents") or []
    return any(
        parent.get("controllerName") == ENVOY_GATEWAY_CONTROLLER
        and any(c.get("type") == "Accepted" and c.get("status") == "True" for c in parent.get("conditions") or [])
        for parent in parents
    )


# --- writing to the API server ------------------------------------------------------------------------------------


class Writer:
    """The official client, with a connection pool big enough for its threads; bodies go as plain dicts and answers
    are not turned into models, so the rate is the API server's, not the client's."""

    def __init__(self, cluster: KubeCluster) -> None:
        configuration = k8s.Configuration(
            host=cluster.server,
            api_key={"authorization": cluster.token},
            api_key_prefix={"authorization": "Bearer"},
            ssl_ca_cert=str(cluster.ca_file),
        )
        configuration.connection_pool_maxsize = 2 * WRITERS
        self.api = k8s.ApiClient(configuration)
        self.core = k8s.CoreV1Api(self.api)
        self.custom = k8s.CustomObjectsApi(self.api)

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]  # unannotated in the kubernetes client

    def namespace(self, name: str) -> None:
        self.core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
        # Without kube-controller-manager nobody creates the default ServiceAccount, which Pods need.
        self.core.create_namespaced_service_account(
            name, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="default"))
        )

    def create(self, doc: dict[str, Any], namespace: str) -> None:
        kind = BY_NAME[doc["kind"]]
        group, _, version = doc["apiVersion"].rpartition("/")
        try:
            if kind.namespaced:
                answer = self.custom.create_namespaced_custom_object(
                    group, version, namespace, kind.plural, doc, _preload_content=False
                )
            else:
                answer = self.custom.create_cluster_custom_object(
                    group, version, kind.plural, doc, _preload_content=False
                )
            read_json(answer)
        except k8s.ApiException as error:
            if error.status != 409 or kind.namespaced:  # the GatewayClass is shared by every size
                raise

    def backend_route(self, namespace: str, name: str, path: str, upstream_port: int) -> None:
        """A Backend, then an HTTPRoute to it: returns once the HTTPRoute is stored."""
        for doc in documents(backend_route(name, UPSTREAM_HOST, upstream_port, path)):
            self.create(doc, namespace)

    def move_route(self, namespace: str, name: str, path: str) -> None:
        """Points route `name` (and its Backend) at another path prefix: a spec change, a new generation."""
        rule = documents(backend_route(name, UPSTREAM_HOST, 1, path))[1]["spec"]["rules"][0]
        answer = self.custom.patch_namespaced_custom_object(
            "gateway.networking.k8s.io",
            "v1",
            namespace,
            "httproutes",
            name,
            {"spec": {"rules": [rule]}},
            _preload_content=False,
            _content_type=MERGE_PATCH,
        )
        read_json(answer)

    def pod(self, namespace: str, index: int) -> None:
        body = {
            "metadata": {"name": f"pod-{index}", "labels": {"app": "model-server", "shard": str(index % 10)}},
            "spec": {
                "containers": [{"name": "server", "image": "example.invalid/sim", "ports": [{"containerPort": 8000}]}]
            },
        }
        read_json(self.core.create_namespaced_pod(namespace, body, _preload_content=False))  # type: ignore[arg-type]

    def annotate_pod(self, namespace: str, index: int, value: str) -> None:
        body = {"metadata": {"annotations": {"bench.xds-server.io/seq": value}}}
        answer = self.core.patch_namespaced_pod(
            f"pod-{index}", namespace, body, _preload_content=False, _content_type=MERGE_PATCH
        )
        read_json(answer)

    def wait_routes_accepted(self, namespace: str, count: int, every: float = 0.25) -> float:
        """perf_counter() once `count` HTTPRoutes of `namespace` carry our Accepted parent status (listed every
        `every` seconds)."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            listed = read_json(
                self.custom.list_namespaced_custom_object(
                    "gateway.networking.k8s.io", "v1", namespace, "httproutes", _preload_content=False
                )
            )
            if sum(map(accepted_by_us, listed["items"])) >= count:
                return time.perf_counter()
            time.sleep(every)
        raise TimeoutError(f"{count} HTTPRoutes never all Accepted")

    def delete_routes(self, namespace: str) -> None:
        for group, version, plural in (
            ("gateway.networking.k8s.io", "v1", "httproutes"),
            ("gateway.envoyproxy.io", "v1alpha1", "backends"),
            ("gateway.networking.k8s.io", "v1", "gateways"),
        ):
            read_json(
                self.custom.delete_collection_namespaced_custom_object(
                    group, version, namespace, plural, _preload_content=False
                )
            )


def in_parallel(work: Callable[[int], None], count: int) -> float:
    """`work(i)` for i in range(count) from WRITERS threads; seconds until the last call returned."""
    started = time.perf_counter()
    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(work, range(count)))
    return time.perf_counter() - started


# --- the processes ------------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cluster_pids() -> dict[str, int]:
    """etcd and kube-apiserver: children of this process, started by running_cluster."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            name = (proc / "comm").read_text().strip()
            parent = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
            if parent == os.getpid() and name in ("etcd", "kube-apiserver"):
                found[name] = int(proc.name)
    return found


@dataclass
class CpuMeter:
    """CPU seconds spent by each process of the setup between `start()` and `stop()`."""

    pids: dict[str, int]
    spent: dict[str, float] = field(default_factory=dict)
    _before: dict[str, float] = field(default_factory=dict)

    def _now(self) -> dict[str, float]:
        return {**{name: cpu_seconds(pid) for name, pid in self.pids.items()}, "bench (writer)": own_cpu_seconds()}

    def start(self) -> None:
        self._before = self._now()

    def stop(self, seconds: float) -> dict[str, float]:
        """Cores used over `seconds`, per process."""
        after = self._now()
        self.spent = {name: (after[name] - self._before[name]) / seconds for name in after}
        return self.spent


@dataclass
class Setup:
    cluster: KubeCluster
    writer: Writer
    workdir: Path
    upstream_port: int
    delta: bool


@contextlib.asynccontextmanager
async def controller_and_envoy(setup: Setup, namespace: str) -> AsyncIterator[tuple[Serve, Envoy]]:
    """`serve --kubernetes` (every namespace, a Lease in `namespace`) and one Envoy for `namespace`/gw."""
    extra = ["--lease-namespace", namespace, "--controller-namespace", namespace, "--log-format", "console"]
    serve = Serve(setup.cluster.kubeconfig, free_port(), free_port(), setup.workdir / f"serve-{namespace}.log", extra)
    envoy: Envoy | None = None
    try:
        await serve.ready(seconds=60)
        # The Envoy its pod would run (mutual TLS with the provisioned certificate).
        api = setup.cluster.api_client
        envoy = await start_provisioned_envoy(
            setup.workdir, serve, api, namespace, f"{namespace}/gw", None, namespace, setup.delta
        )
        await envoy.wait_live()
        yield serve, envoy
    finally:
        if envoy is not None:
            envoy.stop()
        if serve.process.poll() is None:
            serve.process.send_signal(signal.SIGCONT)  # in case a measurement stopped it
        stop_process(serve.process)


async def settled(serve: Serve) -> None:
    """Every Envoy ACKed the latest version, and the status writer has written nothing for 0.5 s."""
    await synced(serve)
    deadline = time.monotonic() + WAIT_S
    last = await serve.metric(STATUS_WRITES)
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < 0.5 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = await serve.metric(STATUS_WRITES)
        if now != last:
            last, quiet_since = now, time.monotonic()
    await synced(serve)


async def metric_reaches(serve: Serve, name: str, target: float, every: float = 0.1) -> float:
    """perf_counter() of the first poll at which `name` is at least `target`."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if await serve.metric(name) >= target:
            return time.perf_counter()
        await asyncio.sleep(every)
    raise TimeoutError(f"{name} never reached {target}")


# --- the measurements ---------------------------------------------------------------------------------------------


async def propagation(
    setup: Setup, serve: Serve, namespace: str, routes: int, samples: int, port: int
) -> dict[str, Any]:
    writer = setup.writer
    started = time.perf_counter()
    statuses = asyncio.create_task(asyncio.to_thread(writer.wait_routes_accepted, namespace, routes))
    created_s = await asyncio.to_thread(
        in_parallel, lambda i: writer.backend_route(namespace, f"r{i}", f"/r{i}/", setup.upstream_port), routes
    )
    await asyncio.to_thread(poll_until_ok, port, f"/r{routes - 1}/", WAIT_S)
    answered_s = time.perf_counter() - started
    status_s = await statuses - started
    await settled(serve)
    rss = rss_mib(serve.process.pid)
    result: dict[str, Any] = {
        "routes": routes,
        "bulk_create_s": created_s,
        "bulk_answered_s": answered_s,
        "bulk_status_s": status_s,
    }

    def create(s: int) -> float:
        writer.backend_route(namespace, f"new{s}", f"/new{s}/", setup.upstream_port)
        return poll_until_ok(port, f"/new{s}/")  # the clock starts when the HTTPRoute is stored

    def edit(s: int) -> float:
        writer.move_route(namespace, f"r{s % routes}", f"/edit{s}/")
        return poll_until_ok(port, f"/edit{s}/")

    kinds: dict[str, Callable[[int], float]] = {"create": create, "edit": edit}
    for kind, sample in kinds.items():
        builds_before = await serve.metric("xds_server_translation_seconds_count")
        build_s_before = await serve.metric("xds_server_translation_seconds_sum")
        times = []
        for s in range(samples):
            times.append(await asyncio.to_thread(sample, s))
            await settled(serve)
        builds = await serve.metric("xds_server_translation_seconds_count") - builds_before
        build_s = await serve.metric("xds_server_translation_seconds_sum") - build_s_before
        result[kind] = {
            "samples_ms": [t * 1000 for t in times],
            "p50_ms": statistics.median(times) * 1000,
            "p90_ms": percentile(times, 0.9) * 1000,
            "max_ms": max(times) * 1000,
            "builds_per_change": builds / samples,
            "build_ms": build_s / builds * 1000 if builds else 0.0,
        }
    result["rss_mib"] = rss
    return result


async def pods_and_events(setup: Setup, serve: Serve, envoy: Envoy, pods: int, events: int) -> dict[str, Any]:
    writer = setup.writer
    namespace = f"pods-{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(writer.namespace, namespace)
    base = await serve.metric(STORED_PODS)
    rss_before = rss_mib(serve.process.pid)
    started = time.perf_counter()
    created_s = await asyncio.to_thread(in_parallel, lambda i: writer.pod(namespace, i), pods)
    stored_at = await metric_reaches(serve, STORED_PODS, base + pods)
    await settled(serve)
    await asyncio.sleep(1.0)
    result: dict[str, Any] = {
        "pods": pods,
        "pods_create_s": created_s,
        "pods_stored_s": stored_at - started,
        "rss_before_pods_mib": rss_before,
        "rss_with_pods_mib": rss_mib(serve.process.pid),
    }

    pids = {"serve": serve.process.pid, "envoy": envoy.process.pid, **cluster_pids()}
    for paused in (False, True):
        result["backlog" if paused else "live"] = await pod_events(
            serve, setup.writer, namespace, pods, events, paused, pids
        )
        await settled(serve)
    return result


async def pod_events(
    serve: Serve, writer: Writer, namespace: str, pods: int, events: int, paused: bool, pids: dict[str, int]
) -> dict[str, Any]:
    """`events` annotation patches of the Pods, as fast as the API server takes them, and when the controller has
    counted every one of them. `paused`: the controller is stopped while they are written, then drains the backlog."""
    tag = "backlog" if paused else "live"

    def annotate(index: int) -> None:
        writer.annotate_pod(namespace, index % pods, f"{tag}-{index}")

    target = await serve.metric(POD_EVENTS) + events
    meter = CpuMeter(pids)
    if paused:
        serve.process.send_signal(signal.SIGSTOP)
    else:
        meter.start()
    started = time.perf_counter()
    writing = asyncio.create_task(asyncio.to_thread(in_parallel, annotate, events))
    if paused:
        await writing
        meter.start()
        resumed = time.perf_counter()
        serve.process.send_signal(signal.SIGCONT)
    counted_at = await metric_reaches(serve, POD_EVENTS, target, every=0.05)
    write_s = await writing
    counted_s = counted_at - started
    entry: dict[str, Any] = {
        "events": events,
        "write_s": write_s,
        "writer_per_s": events / write_s,
        "counted_s": counted_s,
        "controller_per_s": events / counted_s,
    }
    if paused:
        entry["drain_s"] = counted_at - resumed
        entry["drain_per_s"] = events / entry["drain_s"]
        entry["cores"] = meter.stop(entry["drain_s"])  # while draining
    else:
        entry["lag_after_last_write_s"] = max(0.0, counted_s - write_s)
        entry["cores"] = meter.stop(counted_s)
    return entry


# --- the run ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def upstream_port() -> Iterator[int]:
    server = upstream(UPSTREAM_HOST, "ok")
    yield next(server)
    next(server, None)


def ms(value: float) -> str:
    return f"{value:,.0f} ms"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if not binaries_present(binary_dir()):
        print("building etcd and kube-apiserver (once per version, cached) ...", file=sys.stderr, flush=True)
        build_binaries()
    results: dict[str, Any] = {"load_average_before": os.getloadavg(), "sizes": [], "delta": args.delta}
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_cluster(Path(tmp) / "kube", binary_dir()) as cluster,
        upstream_port() as port,
    ):
        setup = Setup(cluster, Writer(cluster), Path(tmp), port, args.delta)
        try:
            print("| routes | change | p50 | p90 | max | builds per change | translate + build | controller RSS |")
            print("|---:|---|---:|---:|---:|---:|---:|---:|")
            largest = max(args.routes)
            for routes in args.routes:
                namespace = f"routes-{routes}-{uuid.uuid4().hex[:6]}"
                await asyncio.to_thread(setup.writer.namespace, namespace)
                listen_port = free_port()
                for doc in documents(gateway([listen_port])):
                    await asyncio.to_thread(setup.writer.create, doc, namespace)
                async with controller_and_envoy(setup, namespace) as (serve, envoy):
                    size = await propagation(setup, serve, namespace, routes, args.samples, listen_port)
                    results["sizes"].append(size)
                    for kind in ("create", "edit"):
                        r = size[kind]
                        print(
                            f"| {routes:,} | {kind} | {ms(r['p50_ms'])} | {ms(r['p90_ms'])} | {ms(r['max_ms'])} "
                            f"| {r['builds_per_change']:.1f} | {ms(r['build_ms'])} | {size['rss_mib']:.0f} MiB |",
                            flush=True,
                        )
                    if routes == largest and "pods" not in results:
                        results["pods"] = await pods_and_events(setup, serve, envoy, args.pods, args.events)
                await asyncio.to_thread(setup.writer.delete_routes, namespace)
        finally:
            setup.writer.close()
    results["load_average_after"] = os.getloadavg()
    return results


def print_bulk(sizes: list[dict[str, Any]]) -> None:
    print("\n| routes | all created (HTTPRoute + Backend each) | last one answering | all Accepted in status |")
    print("|---:|---:|---:|---:|")
    for size in sizes:
        print(
            f"| {size['routes']:,} | {size['bulk_create_s']:.2f} s | {size['bulk_answered_s']:.2f} s "
            f"| {size['bulk_status_s']:.2f} s |"
        )


def print_pods(pods: dict[str, Any], routes: int) -> None:
    rss = f"{pods['rss_before_pods_mib']:.0f} MiB -> {pods['rss_with_pods_mib']:.0f} MiB"
    print("\n| routes | Pods | controller RSS without -> with the Pods | Pods created in | all stored after |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {routes:,} | {pods['pods']:,} | {rss} | {pods['pods_create_s']:.1f} s | {pods['pods_stored_s']:.1f} s |")
    print("\n| Pod annotation events | writer | counted by the controller | controller events/s | cores used |")
    print("|---|---:|---:|---:|---|")
    for mode, label in (("live", "written while the controller runs"), ("backlog", "backlog drained after SIGCONT")):
        e = pods[mode]
        if mode == "backlog":
            counted, rate = f"{e['drain_s']:.2f} s after SIGCONT", e["drain_per_s"]
        else:
            counted, rate = f"{e['counted_s']:.2f} s", e["controller_per_s"]
        cores = ", ".join(f"{name} {value:.2f}" for name, value in sorted(e["cores"].items(), key=lambda kv: -kv[1]))
        writer = f"{e['write_s']:.2f} s ({e['writer_per_s']:,.0f}/s)"
        print(f"| {e['events']:,} {label} | {writer} | {counted} | {rate:,.0f}/s | {cores} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routes", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--pods", type=int, default=5000, help="Pods stored for the memory and events measures")
    parser.add_argument("--events", type=int, default=5000, help="Pod annotation patches per events measure")
    parser.add_argument("--delta", action="store_true", help="Envoy uses Delta ADS (default SotW)")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI: 5 routes, 2 samples, 100 pods")
    args = parser.parse_args()
    if args.smoke:
        args.routes, args.samples, args.pods, args.events = [5], 2, 100, 100
    results = asyncio.run(run(args))
    print_bulk(results["sizes"])
    if "pods" in results:
        print_pods(results["pods"], max(args.routes))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
