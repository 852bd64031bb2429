"""Added latency of the AI path: Envoy routing by the body's model (+ usage metering) against a header match alone.

    python -m bench.ai_latency --rates 100 500 1000 --seconds 15 --repeats 3 [--max-rate] [--profile FILE]
    python -m bench.ai_latency --smoke

One `xds-server serve` and one Envoy for a Gateway with one HTTP listener and two hostnames:
- `ai.bench`: an AIGatewayRoute. The AI filter (our Envoy dynamic module) reads `model` from the buffered body
  into the routing header and routes again, and reads the usage of the JSON answer; its usage log
  (OpenTelemetry log records, batched) brings it to `serve`, which records the metrics: no gRPC call per request;
- `plain.bench`: an HTTPRoute matching a request header, straight to the same Backend, no ext_proc.
Both get the same POST (same body, same headers but Host). The upstream is a second Envoy with one worker answering
every request with a canned chat completion (a direct_response): a Python upstream would be the bottleneck at 1,000
requests/s on two cores and hide what the gateway adds.

Load comes from `wrk` (Debian's package: `apt-get install -y wrk`) in its own process. wrk is closed-loop and
Debian has no wrk2, so a Lua `delay()` holds a fixed rate: each request claims the next slot of a per-thread
schedule and waits for it. A slot that finds no idle connection is dropped, not caught up in a burst, and counted
as `late`: when many are late the achieved rate (printed) falls short of the target, which is what the max-rate
search looks for. Latency is wrk's: from writing a request to reading its whole response.

Control-plane CPU is `serve`'s utime + stime from /proc during a run, per 1,000 completed requests (Envoy's the
same way). `--profile` samples `serve` with py-spy (`pip install py-spy`; attaching needs ptrace, as root has).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from testing.bulk_manifests import header_route
from testing.envoy import Envoy
from testing.manifests import ai_gateway_route, ai_service_backend, gateway, inference_pool, pod, pool_route
from testing.ports import free_port
from testing.processes import Serve
from testing.web import request, wait_for
from translators.xds.model import USAGE_LOG_FLUSH_MS
from xds_server.envoy import envoy_binary, envoy_environment
from xds_server.sim import openai

UPSTREAM_HOST = "127.0.8.1"  # a loopback address of its own, as the e2e upstreams have
AI_HOST = "ai.bench"
PLAIN_HOST = "plain.bench"
MODEL = "bench-model"
PLAIN_HEADER = "x-bench-model"  # x-ai-eg-* headers are stripped from clients, so the baseline matches another name
POOL_HOST = "pool.bench"
PATHS = {"ai": AI_HOST, "plain": PLAIN_HOST, "pool": POOL_HOST}
# What the canned upstream answers on /metrics when it stands for a pool's pod: an idle vLLM, for the picker's scrape.
IDLE_VLLM_METRICS = "vllm:num_requests_waiting 0\nvllm:num_requests_running 0\nvllm:kv_cache_usage_perc 0\n"
REQUEST_BODY = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Say hello in one sentence."}]})
P99_LIMIT_MS = 50.0
# Issue 4's targets: what the AI path may add to the plain one at 500 requests/s on the 2-core machine.
TARGET_RATE, TARGET_P50_MS, TARGET_P99_MS = 500, 1.0, 3.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Per wrk thread: one schedule of send times `interval` ms apart (ms, as wrk's delay() wants). LuaJIT's ffi gives a
# monotonic clock: wrk's Lua has only os.time() (seconds) and os.clock() (CPU time).
WRK_SCRIPT = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function init(args)
  -- args: rate per thread (requests/s), Host header, body, routing header name and value
  interval = 1000 / tonumber(args[1])
  wrk.headers["Host"] = args[2]
  wrk.headers[args[4]] = args[5]
  wrk.body = args[3]
  req = wrk.format()
  next_slot = nil
  late = 0
end

function request()
  return req
end

function delay()
  local now = now_ms()
  if next_slot == nil then next_slot = now end
  -- No idle connection was free at this slot: drop it (a catch-up burst would measure something else).
  if next_slot < now - 1 then
    late = late + 1
    next_slot = now
  end
  local wait = next_slot - now
  next_slot = next_slot + interval
  return wait
end

function done(summary, latency, requests)
  local late_total = 0
  for _, t in ipairs(threads) do late_total = late_total + t:get("late") end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, '
      .. '"errors": %d, "status_errors": %d, "late": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, e.connect + e.read + e.write + e.timeout, e.status, late_total))
end
"""


# A chat completion with usage, as metering reads it from a buffered JSON answer (made once: it has a timestamp).
TYPE_PREFIX = "type.googleapis.com/"
CANNED_ANSWER = orjson.dumps(openai.chat_completion("chatcmpl-bench", MODEL, "Hello! How can I help you?", 12, 9))


def upstream_bootstrap(port: int, admin_port: int) -> dict[str, Any]:
    """A static Envoy answering every request with the canned answer as application/json."""
    manager = {
        "@type": f"{TYPE_PREFIX}envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "upstream",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"path": "/metrics"},
                            "direct_response": {"status": 200, "body": {"inline_string": IDLE_VLLM_METRICS}},
                        },
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": CANNED_ANSWER.decode()}},
                            "response_headers_to_add": [
                                {
                                    "header": {"key": "content-type", "value": "application/json"},
                                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                                }
                            ],
                        },
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": f"{TYPE_PREFIX}envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "upstream",
                    "address": {"socket_address": {"address": UPSTREAM_HOST, "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}
                            ]
                        }
                    ],
                }
            ]
        },
    }


class Upstream:
    """The fast upstream: Envoy with one worker, so it takes at most one of the two cores."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port(UPSTREAM_HOST)
        admin_port = free_port()
        self.admin = f"http://127.0.0.1:{admin_port}"
        config = directory / "upstream.yaml"
        config.write_text(yaml.safe_dump(upstream_bootstrap(self.port, admin_port)))
        command = [str(envoy_binary()), "-c", str(config), "--concurrency", "1", "--use-dynamic-base-id"]
        command += ["-l", "warning", "--log-path", str(directory / "upstream.log")]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=envoy_environment()
        )

    async def wait_live(self) -> None:
        answer = await wait_for(f"{self.admin}/ready", (200, "LIVE\n"))
        assert answer == (200, "LIVE\n"), f"upstream Envoy not LIVE: {answer}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (every thread), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of proc(5), after "pid (comm)"


@dataclass
class Run:
    path: str
    rate: int
    achieved: float
    requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    late: int
    serve_cpu_ms_per_1k: float
    envoy_cpu_ms_per_1k: float
    metered_requests: int  # requests metering recorded in its metrics during the run (AI path: all of them)


# --upstream-settings key: the AI path's backend has an API key and its backendRef a header mutation, which Envoy
# applies itself (the route sets the header, the cluster injects the key from an SDS secret): no service call.
# --upstream-settings override: a model name override besides, so every request also passes the upstream-settings
# filter (headers and body: two more ext_proc messages, on a stream of their own).
def settings_route(override: bool) -> str:
    headers = "headerMutation: {set: [{name: x-tenant, value: a}]}"
    setting = f"modelNameOverride: {MODEL}-pinned" if override else headers
    return f"""
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIGatewayRoute
metadata: {{name: ai}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: ["{AI_HOST}"]
  rules:
  - matches: [{{headers: [{{type: Exact, name: x-ai-eg-model, value: {MODEL}}}]}}]
    backendRefs: [{{name: upstream, {setting}}}]
"""


SETTINGS_POLICY = """
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: BackendSecurityPolicy
metadata: {name: upstream-key}
spec:
  type: APIKey
  apiKey: {secretRef: {name: upstream-key}}
  targetRefs: [{group: aigateway.envoyproxy.io, kind: AIServiceBackend, name: upstream}]
---
apiVersion: v1
kind: Secret
metadata: {name: upstream-key}
stringData: {apiKey: sk-bench}
"""


def wrk_command(script: Path, port: int, host: str, rate: int, seconds: float) -> list[str]:
    """wrk sending the chat completion POST (Host `host`, PLAIN_HEADER set) at `rate` per second to `port`;
    `script` holds WRK_SCRIPT."""
    # Enough connections that the rate holds while latency is up to 100 ms; one wrk thread leaves the cores
    # to what is measured (a thread sends well over 10,000 requests/s).
    connections = max(16, rate // 10)
    command = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--timeout", "5s"]
    command += ["-s", str(script), f"http://127.0.0.1:{port}/v1/chat/completions"]
    return [*command, "--", str(rate), host, REQUEST_BODY.decode(), PLAIN_HEADER, MODEL]


@dataclass(frozen=True)
class WrkSummary:
    """A wrk run, from the BENCH line WRK_SCRIPT's done() prints, in the units the benches report."""

    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # socket errors and non-2xx answers
    late: int

    @property
    def achieved(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds


def wrk_summary(finished: subprocess.CompletedProcess[str]) -> WrkSummary:
    lines = [line for line in finished.stdout.splitlines() if line.startswith("BENCH ")]
    assert lines, finished.stdout + finished.stderr
    found: dict[str, Any] = json.loads(lines[-1].removeprefix("BENCH "))
    return WrkSummary(
        requests=found["requests"],
        seconds=found["duration_us"] / 1e6,
        p50_ms=found["p50_us"] / 1000,
        p90_ms=found["p90_us"] / 1000,
        p99_ms=found["p99_us"] / 1000,
        max_ms=found["max_us"] / 1000,
        errors=found["errors"] + found["status_errors"],
        late=found["late"],
    )


class Bench:
    """Upstream, `serve` and the gateway Envoy, up and routing both paths."""

    def __init__(self, directory: Path, upstream_settings: str | None = None, pool: bool = False) -> None:
        """`pool`: also the pool path, an HTTPRoute to an InferencePool whose one pod is the upstream (each request
        a pick by the embedded picker, which scrapes the upstream's /metrics)."""
        self.directory = directory
        self.paths = [path for path in PATHS if pool or path != "pool"]
        self.upstream = Upstream(directory)
        self.listen_port = free_port()
        manifests = directory / "manifests"
        manifests.mkdir()
        documents = [
            gateway([self.listen_port]),
            ai_gateway_route("ai", {MODEL: "upstream"}, hostnames=(AI_HOST,)),
            ai_service_backend("upstream", UPSTREAM_HOST, self.upstream.port),
            header_route("plain", PLAIN_HOST, PLAIN_HEADER, MODEL, "upstream"),
        ]
        if upstream_settings is not None:
            documents[1] = settings_route(upstream_settings == "override")
            documents.append(SETTINGS_POLICY)
        if pool:
            documents += [
                inference_pool("benchpool", self.upstream.port),
                pod("benchpool-0", UPSTREAM_HOST, {"app": "benchpool"}),
                pool_route("pool", "benchpool", POOL_HOST),
            ]
        (manifests / "gateway.yaml").write_text("---".join(documents))
        xds_port = free_port()
        extra = ["--extproc-address", f"127.0.0.1:{free_port()}"]
        self.serve = Serve(manifests, xds_port, free_port(), directory / "serve.log", extra)
        self.envoy = self.gateway_envoy(directory, xds_port)
        self.script = directory / "rate.lua"
        self.script.write_text(WRK_SCRIPT)

    def gateway_envoy(self, directory: Path, xds_port: int) -> Envoy:
        """The gateway's Envoy, bootstrapped against `serve` (bench/side_by_side.py starts it with one worker)."""
        return Envoy(directory, "default/gw", xds_port)

    async def start(self) -> None:
        await self.upstream.wait_live()
        await self.serve.ready()
        await self.envoy.wait_live()
        for path in self.paths:
            deadline = time.monotonic() + 20
            while (status := self.check(path)) != 200 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert status == 200, f"{path} path answered {status}; serve log: {self.serve.log.read_text()[-2000:]}"

    def check(self, path: str) -> int:
        """Status of one request on `path`; 200 only when the canned answer came back."""
        headers = {"host": PATHS[path], "content-type": "application/json", PLAIN_HEADER: MODEL}
        response = request(
            f"http://127.0.0.1:{self.listen_port}", "POST", "/v1/chat/completions", REQUEST_BODY, headers
        )
        return response.status_code if response.content == CANNED_ANSWER else -response.status_code

    def stop(self) -> None:
        self.envoy.stop()
        if self.serve.process.poll() is None:
            self.serve.terminate()
        self.upstream.stop()

    async def metered(self) -> int:
        return int(await self.serve.metric("gen_ai_server_request_duration_count"))

    async def run(self, path: str, rate: int, seconds: float) -> Run:
        command = wrk_command(self.script, self.listen_port, PATHS[path], rate, seconds)
        routed_before = await self.metered()
        serve_before, envoy_before = cpu_seconds(self.serve.process.pid), cpu_seconds(self.envoy.process.pid)
        finished = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, check=True)
        # Usage reaches `serve` in Envoy's usage-log batches: the last one lands within a flush interval.
        await asyncio.sleep(3 * USAGE_LOG_FLUSH_MS / 1e3)
        serve_cpu = cpu_seconds(self.serve.process.pid) - serve_before
        envoy_cpu = cpu_seconds(self.envoy.process.pid) - envoy_before
        result = wrk_summary(finished)
        done = max(result.requests, 1)
        return Run(
            path=path,
            rate=rate,
            achieved=result.achieved,
            requests=result.requests,
            p50_ms=result.p50_ms,
            p90_ms=result.p90_ms,
            p99_ms=result.p99_ms,
            max_ms=result.max_ms,
            errors=result.errors,
            late=result.late,
            serve_cpu_ms_per_1k=serve_cpu * 1000 / done * 1000,
            envoy_cpu_ms_per_1k=envoy_cpu * 1000 / done * 1000,
            metered_requests=await self.metered() - routed_before,
        )


def held(run: Run) -> bool:
    """The run kept its rate (within 5%), without errors, and with p99 under the limit."""
    return run.errors == 0 and run.achieved >= 0.95 * run.rate and run.p99_ms < P99_LIMIT_MS


async def max_rate(bench: Bench, path: str, low: int, high: int, seconds: float, step: int) -> tuple[int, list[Run]]:
    """Bisection over rates for the highest one `path` holds with p99 under 50 ms (`low` assumed held)."""
    runs: list[Run] = []
    while high - low > step:
        middle = (low + high) // 2
        run = await bench.run(path, middle, seconds)
        runs.append(run)
        print(
            f"  {path} max-rate probe {middle}/s: achieved {run.achieved:.0f}/s, p50 {run.p50_ms:.1f} ms, "
            f"p99 {run.p99_ms:.1f} ms, errors {run.errors}, late {run.late} -> {'held' if held(run) else 'not held'}",
            flush=True,
        )
        low, high = (middle, high) if held(run) else (low, middle)
    return low, runs


def profile(bench: Bench, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    """py-spy (PyPI's `py-spy`) sampling `serve` during a run, as collapsed stacks. `--gil` keeps only the samples
    of the thread holding the GIL: Python work, not threads waiting in epoll or in gRPC's C core."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [spy, "record", "--pid", str(bench.serve.process.pid), "--duration", str(int(seconds))]
    command += ["--rate", "200", "--gil", "--nonblocking", "--format", "raw", "--output", str(output)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top_functions(collapsed: Path, count: int = 15) -> list[tuple[str, float, float]]:
    """(function, self %, total %) from py-spy's collapsed stacks (`frame;frame;... samples` per line)."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        n = int(number)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + n
    ranked = sorted(own, key=lambda f: -own[f])[:count]
    return [(f, 100 * own[f] / samples, 100 * total[f] / samples) for f in ranked]


def median_run(runs: list[Run]) -> Run:
    """The repeat with the median p99 (its p50 and CPU come with it, so a row is one real run)."""
    return sorted(runs, key=lambda r: r.p99_ms)[len(runs) // 2]


def spread(values: list[float]) -> str:
    return f"{min(values):.2f} to {max(values):.2f}" if len(values) > 1 else "-"


RUN_HEADER = (
    "| rate | path | achieved | p50 | p90 | p99 | max | errors | late slots "
    "| serve CPU / 1k req | Envoy CPU / 1k req |\n"
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)
SUMMARY_HEADER = (
    "| rate | plain p50 | plain p99 | AI p50 | AI p99 | p50 overhead (range) | p99 overhead (range) "
    "| serve CPU / 1k AI req | serve CPU / 1k plain req (idle) | Envoy CPU / 1k AI req | Envoy CPU / 1k plain req |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def run_row(run: Run) -> str:
    return (
        f"| {run.rate:,}/s | {run.path} | {run.achieved:,.0f}/s | {run.p50_ms:.2f} ms | {run.p90_ms:.2f} ms "
        f"| {run.p99_ms:.2f} ms | {run.max_ms:.1f} ms | {run.errors} | {run.late} "
        f"| {run.serve_cpu_ms_per_1k:.0f} ms | {run.envoy_cpu_ms_per_1k:.0f} ms |"
    )


@dataclass
class RateResult:
    rate: int
    ai: list[Run]
    plain: list[Run]

    @property
    def p50_overheads(self) -> list[float]:  # per repeat: each AI run against the plain run just before it
        return [a.p50_ms - p.p50_ms for a, p in zip(self.ai, self.plain, strict=True)]

    @property
    def p99_overheads(self) -> list[float]:
        return [a.p99_ms - p.p99_ms for a, p in zip(self.ai, self.plain, strict=True)]

    def row(self) -> str:
        ai, plain = median_run(self.ai), median_run(self.plain)
        p50s, p99s = self.p50_overheads, self.p99_overheads

        def cpu(runs: list[Run], envoy: bool = False) -> str:
            return (
                f"{statistics.median(r.envoy_cpu_ms_per_1k if envoy else r.serve_cpu_ms_per_1k for r in runs):.0f} ms"
            )

        return (
            f"| {self.rate:,}/s | {plain.p50_ms:.2f} ms | {plain.p99_ms:.2f} ms | {ai.p50_ms:.2f} ms "
            f"| {ai.p99_ms:.2f} ms | {statistics.median(p50s):+.2f} ms ({spread(p50s)}) "
            f"| {statistics.median(p99s):+.2f} ms ({spread(p99s)}) | {cpu(self.ai)} | {cpu(self.plain)} "
            f"| {cpu(self.ai, envoy=True)} | {cpu(self.plain, envoy=True)} |"
        )

    def verdict(self) -> str:
        p50, p99 = statistics.median(self.p50_overheads), statistics.median(self.p99_overheads)
        met = "met" if p50 <= TARGET_P50_MS and p99 <= TARGET_P99_MS else "NOT met"
        return (
            f"target at {self.rate}/s (p50 overhead <= {TARGET_P50_MS} ms, p99 overhead <= {TARGET_P99_MS} ms): "
            f"{met} ({p50:+.2f} ms, {p99:+.2f} ms)"
        )


async def measure_rate(bench: Bench, rate: int, seconds: float, repeats: int, smoke: bool) -> RateResult:
    """`repeats` runs of each path, alternating plain and AI so that load from elsewhere falls on both alike."""
    result = RateResult(rate, [], [])
    for _ in range(repeats):
        for path, runs in (("plain", result.plain), ("ai", result.ai)):
            run = await bench.run(path, rate, seconds)
            # Errors are a result past saturation, but a broken path must fail CI's smoke run.
            assert run.errors == 0 or not smoke, f"{run.errors} errors: {run}"
            if path == "ai":  # every AI request was metered (its metrics count it)
                assert run.metered_requests >= run.requests - run.errors, run
            runs.append(run)
            print(run_row(run), flush=True)
    return result


async def profile_run(bench: Bench, rate: int, seconds: float, output: Path) -> None:
    spy = profile(bench, seconds, output)
    await asyncio.sleep(0.5)  # py-spy attaches before the load starts
    await bench.run("ai", rate, seconds)
    await asyncio.to_thread(spy.wait, 60)
    print(f"\nserve under {rate} AI requests/s, py-spy --gil ({output}):")
    print("| frame | self | total |\n|---|---:|---:|")
    for function, own, total in top_functions(output):
        print(f"| `{function}` | {own:.1f}% | {total:.1f}% |")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--seconds", type=float, default=15.0, help="per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per rate and path, alternating the paths")
    parser.add_argument("--max-rate", action="store_true", help="bisect each path's max rate with p99 < 50 ms")
    parser.add_argument("--max-rate-range", type=int, nargs=2, default=[100, 12000], metavar=("LOW", "HIGH"))
    parser.add_argument("--profile", type=Path, help="py-spy collapsed stacks of serve at --profile-rate to FILE")
    parser.add_argument("--profile-rate", type=int, default=TARGET_RATE)
    parser.add_argument("--smoke", action="store_true", help="CI: one short run per path at 50 requests/s")
    parser.add_argument(
        "--upstream-settings",
        choices=["key", "override"],
        help="the AI backend has an API key and a header mutation (key), or a model name override besides (override)",
    )
    args = parser.parse_args()
    if args.smoke:
        args.rates, args.seconds, args.repeats, args.max_rate = [50], 3.0, 1, False
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), args.upstream_settings)
        try:
            await bench.start()
            # Warm-up: connections, the ext_proc channel, and every lazily built reply, before anything is measured.
            await bench.run("ai", 200, 2.0)
            await bench.run("plain", 200, 2.0)
            print(RUN_HEADER)
            results = [await measure_rate(bench, r, args.seconds, args.repeats, args.smoke) for r in args.rates]
            print(f"\n{SUMMARY_HEADER}")
            print("\n".join(result.row() for result in results))
            for result in results:
                if result.rate == TARGET_RATE:
                    print(f"\n{result.verdict()}")
            if args.max_rate:
                low, high = args.max_rate_range
                step = max(25, (high - low) // 32)
                best = {}
                for path in ("plain", "ai"):
                    best[path], _ = await max_rate(bench, path, low, high, args.seconds, step)
                for path, rate in best.items():
                    found = f"{rate:,}" if high - rate > step else f">= {rate:,} (raise --max-rate-range)"
                    print(f"\n{path} path: max rate with p99 < {P99_LIMIT_MS:.0f} ms: {found} requests/s", flush=True)
                print(f"AI / plain max rate: {best['ai'] / best['plain']:.2f}", flush=True)
            if args.profile is not None:
                await profile_run(bench, args.profile_rate, args.seconds, args.profile)
        finally:
            bench.stop()
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    asyncio.run(main())
