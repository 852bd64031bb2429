"""Shared-prefix workload through Envoy and the embedded Endpoint Picker: prefix-aware against load-only and random.

    python -m bench.prefix_workload [--rates 4,8,12,16,20,24] [--duration 20] [--groups 24] [--smoke]

The workload is the shape of the Inference Extension's `prefix-cache-aware` benchmark and of llm-d's "KV-cache
wins" post: G groups (tenants), each with one long system prompt; every request is its group's system prompt plus
a short unique question, a streaming chat completion with a small max_tokens. Requests arrive open loop (Poisson) at
each rate of a ladder, for a fixed time per rate.

For each scheduler (an EndpointPickerConfig: the tutorial's, queue + kv only, random) six fresh `xds-server sim vllm`
pods start with cold caches; one `xds-server serve` and one Envoy carry on across schedulers, each scheduler getting
its own InferencePool (so its picker, and the prefix index, start empty too). Before the ladder, one unmeasured
request per group warms the caches the way the scheduler places them. The simulators are sized so that all the
groups' prefixes fit in the six pods' KV caches together (`--working-set` of the cluster's KV, 0.7 by default, as
in llm-d's 73%) but only about a quarter of them fit in one pod, and a cache miss costs `--prefill-per-token` per
prompt token, so TTFT depends on where a request lands.

TTFT is measured at the client, at the first chunk with content; its percentiles count every request sent, an
unanswered one as infinitely slow. A rate "completes" when at least 99% of its requests got a whole 200 answer;
Envoy's default 15 s route timeout (the pool's HTTPRoute sets none) ends any longer stream, so in practice that
means "answered within 15 s". The prefix hit rate is the pods' `vllm:prefix_cache_hits` over
`vllm:prefix_cache_queries` (prompt tokens) during the rate.

Durations and rates are in model time: with `--time-scale S` the simulators run S times their modelled durations,
the client sends 1/S times as fast for S times as long, and reported times are divided by S. The default is 1:
the gateway's own overhead is divided by S too, and the picker's 50 ms scrape interval becomes 50/S ms of model
time, so at S = 0.5 the tutorial profile's TTFT at 16 req/s already came out worse (p50 284 ms instead of 91 ms).
The full ladder takes about 8 minutes at S = 1; `--smoke` about 22 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shlex
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from testing.envoy import Envoy
from testing.manifests import TUTORIAL_PICKER_CONFIG, gateway, inference_pool, pod, pool_route
from testing.ports import free_port, port_free_on
from testing.processes import Serve, serve_port
from testing.sims import SimProcess, start_sim
from testing.web import http_get
from xds_server.sim.vllm.tokens import chat_prompt, tokenize

LOAD_ONLY = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: max-score-picker
"""
RANDOM = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: random-picker
"""
SCHEDULERS = {"tutorial": TUTORIAL_PICKER_CONFIG, "load-only": LOAD_ONLY, "random": RANDOM}

MODEL = "llama"
BLOCK_SIZE = 16  # tokens per KV block: vLLM's and the simulator's default
# A rate "completes" when this share of its requests got a whole 200 answer. Each has until the drain ends, and
# Envoy's default 15 s route timeout (the pool's HTTPRoute sets none) resets any stream still running after 15 s.
COMPLETES = 0.99

# Words for generated prompts: English-like text tokenizes at about 4 characters per token in the simulator, as
# real text does with Llama's tokenizer, so the picker's character blocks and the sim's token blocks line up.
_VOCABULARY = """the a of to and in for on with that this is are be as by from at or an your you will should must can
not when if each every answer question customer policy account order refund shipping warranty product service support
manual section rule step please always never include provide explain summarize briefly clearly politely detail
example reference document guideline response request information data system user assistant company team process
review check verify confirm update change cancel return replace contact email phone address number date time price
cost payment invoice receipt delivery package item quantity status tracking error issue problem solution help guide
instruction"""
WORDS = _VOCABULARY.split()


# ---------------------------------------------------------------------------------------------------------------
# The workload


def sim_tokens(text: str) -> int:
    return len(tokenize(text))


def words_of(rng: random.Random, tokens: int, start: str) -> str:
    """Text of about `tokens` simulator tokens: sentences of random words after `start`."""
    parts = [start]
    count = sim_tokens(start)
    while count < tokens:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16))).capitalize() + ". "
        parts.append(sentence)
        count += sim_tokens(sentence)
    return "".join(parts).strip()


def system_prompts(groups: int, tokens: int, seed: int) -> list[str]:
    # Each group's text differs from its first characters, so no two groups share a prefix block (neither in the
    # picker's character blocks nor in the simulator's token blocks).
    return [words_of(random.Random(f"{seed}-system-{g}"), tokens, f"Tenant {g} assistant. ") for g in range(groups)]


def request_body(system: str, question: str, max_tokens: int) -> bytes:
    return json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()


@dataclass
class Outcome:
    group: int
    status: int = 0  # 0: no answer (connection error, or cut off at the end of the drain)
    ttft: float | None = None  # wall seconds from sending to the first content chunk
    done_at: float | None = None  # wall time (perf_counter) of [DONE]
    tokens: int = 0  # completion_tokens from the usage chunk
    pod: str | None = None
    error: str | None = None
    elapsed: float = 0.0  # wall seconds from sending to the end (answer, error, or cut-off)

    @property
    def completed(self) -> bool:
        return self.status == 200 and self.done_at is not None and self.ttft is not None


async def send(session: aiohttp.ClientSession, url: str, host: str, group: int, body: bytes) -> Outcome:
    outcome = Outcome(group)
    started = time.perf_counter()
    try:
        headers = {"host": host, "content-type": "application/json"}
        async with session.post(url, data=body, headers=headers) as response:
            outcome.status = response.status
            outcome.pod = response.headers.get("x-inference-pod")
            if response.status != 200:
                outcome.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                return outcome
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    outcome.done_at = time.perf_counter()
                    break
                chunk = json.loads(data)
                if outcome.ttft is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                    outcome.ttft = time.perf_counter() - started
                if chunk.get("usage"):
                    outcome.tokens = chunk["usage"]["completion_tokens"]
    except (aiohttp.ClientError, OSError, ValueError) as error:
        outcome.error = f"{type(error).__name__}: {error}"
    finally:
        outcome.elapsed = time.perf_counter() - started
    return outcome


@dataclass
class RateResult:
    scheduler: str
    rate: float
    outcomes: list[Outcome]
    wall: float  # first send to last [DONE], wall seconds
    hits: int  # prefix-cache tokens hit / queried, summed over the pods, during this rate
    queries: int
    late: float  # the client's worst lateness in sending, wall seconds (a sign the client could not keep up)
    scale: float

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    @property
    def completed(self) -> int:
        return sum(o.completed for o in self.outcomes)

    @property
    def errors(self) -> int:
        """Answers that failed (non-200, broken streams); requests still unanswered when the drain ended are not
        errors, they count against completion only."""
        return sum(1 for o in self.outcomes if not o.completed and (o.status not in (0, 200) or o.error))

    @property
    def completes(self) -> bool:
        return self.sent > 0 and self.completed >= COMPLETES * self.sent

    def ttft(self, quantile: float) -> float:
        """Nearest-rank percentile over every request sent, in model seconds; an unanswered request counts as
        infinitely slow, so an overloaded run cannot look fast by dropping its slowest requests."""
        values = sorted(o.ttft / self.scale if o.completed and o.ttft is not None else math.inf for o in self.outcomes)
        if not values:
            return math.nan
        return values[max(0, math.ceil(quantile * len(values)) - 1)]

    @property
    def tokens_per_second(self) -> float:
        tokens = sum(o.tokens for o in self.outcomes if o.completed)
        return tokens / (self.wall / self.scale) if self.wall > 0 else 0.0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else math.nan

    @property
    def pods_per_group(self) -> float:
        """How many pods served each group, averaged over the groups: 1 is perfect affinity, 6 is none."""
        pods: dict[int, set[str]] = defaultdict(set)
        for o in self.outcomes:
            if o.pod:
                pods[o.group].add(o.pod)
        return sum(len(p) for p in pods.values()) / len(pods) if pods else math.nan


# ---------------------------------------------------------------------------------------------------------------
# The simulated cluster


@dataclass(frozen=True)
class Sizing:
    pods: int
    kv_blocks: int
    max_model_len: int
    max_num_seqs: int
    prefill_per_token: str
    prefill_overhead: str
    inter_token_latency: str
    time_scale: float

    def sim_args(self) -> list[str]:
        flags = {
            "--model": MODEL,
            "--block-size": BLOCK_SIZE,
            "--kv-cache-blocks": self.kv_blocks,
            "--max-model-len": self.max_model_len,
            "--max-num-seqs": self.max_num_seqs,
            "--prefill-time-per-token": self.prefill_per_token,
            "--prefill-overhead": self.prefill_overhead,
            "--inter-token-latency": self.inter_token_latency,
            "--time-scale": f"{self.time_scale:g}",
        }
        return [str(part) for flag in flags.items() for part in flag]


def size_cluster(args: argparse.Namespace, prefix_tokens: int, request_tokens: int) -> Sizing:
    """KV blocks per pod from the working set: all groups' prefixes = `working_set` of the cluster's KV.

    Never less than two requests' worth, or a pod could not even run two sequences of different groups (tiny runs
    with two groups would otherwise get caches smaller than one request).
    """
    request_blocks = math.ceil(request_tokens / BLOCK_SIZE)
    working = args.groups * math.ceil(prefix_tokens / BLOCK_SIZE)
    blocks = args.kv_cache_blocks or math.ceil(working / (args.working_set * args.pods))
    blocks = max(blocks, 2 * request_blocks)
    return Sizing(
        pods=args.pods,
        kv_blocks=blocks,
        max_model_len=min(blocks * BLOCK_SIZE, max(4096, request_tokens)),
        max_num_seqs=args.max_num_seqs,
        prefill_per_token=args.prefill_per_token,
        prefill_overhead=args.prefill_overhead,
        inter_token_latency=args.inter_token_latency,
        time_scale=args.time_scale,
    )


class Bench:
    """One serve + one Envoy for the whole run; a fresh pool and fresh simulators per scheduler."""

    def __init__(self, directory: Path, sizing: Sizing) -> None:
        self.directory = directory
        self.sizing = sizing
        octet = random.randint(1, 254)
        self.hosts = [f"127.{octet}.91.{i + 1}" for i in range(sizing.pods)]
        self.port = port_free_on(self.hosts)
        self.listen_port = free_port()
        self.url = f"http://127.0.0.1:{self.listen_port}/v1/chat/completions"
        self.manifests = directory / "manifests"
        self.manifests.mkdir()
        (self.manifests / "00-gateway.yaml").write_text(gateway([self.listen_port]))
        self.serve: Serve | None = None
        self.envoy: Envoy | None = None
        self.sims: list[SimProcess] = []

    def start_sims(self, scheduler: str) -> None:
        """Fresh processes, so every scheduler starts with cold KV caches and zeroed counters."""
        self.stop_sims()

        def start(index: int) -> SimProcess:
            args = ["--host", self.hosts[index], "--port", str(self.port), "--seed", str(index)]
            log = self.directory / f"sim-{scheduler}-{index}.log"
            return start_sim("vllm", [*args, *self.sizing.sim_args()], self.hosts[index], self.port, log,
                             env={"POD_NAME": f"{scheduler}-{index}"})  # fmt: skip

        with ThreadPoolExecutor(len(self.hosts)) as pool:
            self.sims = list(pool.map(start, range(len(self.hosts))))

    def stop_sims(self) -> None:
        for sim in self.sims:
            sim.kill()
        self.sims = []

    async def use_pool(self, scheduler: str, config: str) -> str:
        """Points the gateway at a new pool `scheduler` over the pods with `config`; returns the route's host."""
        documents = [
            inference_pool(scheduler, self.port, config=config),
            pool_route(scheduler, scheduler, host(scheduler)),
        ]
        documents += [pod(f"{scheduler}-{i}", h, {"app": scheduler}) for i, h in enumerate(self.hosts)]
        (self.manifests / "10-pool.yaml").write_text("---".join(documents))
        if self.serve is None:
            self.serve = Serve(self.manifests, free_port(), free_port(), self.directory / "serve.log")
            await self.serve.ready()
            self.envoy = Envoy(self.directory, "default/gw", int(serve_port(self.serve, "--xds-address")))
            await self.envoy.wait_live()
        await self.wait_pool(scheduler)
        return host(scheduler)

    async def wait_pool(self, scheduler: str, seconds: float = 30.0) -> None:
        """Until the picker scrapes every pod of the pool and a request through Envoy reaches one of them."""
        assert self.serve is not None
        deadline = time.monotonic() + seconds
        document = ""
        while time.monotonic() < deadline:
            status, document = await asyncio.to_thread(http_get, f"{self.serve.admin}/debug/pools/default/{scheduler}")
            if status == 200:
                endpoints = json.loads(document)["endpoints"]
                if len(endpoints) == len(self.hosts) and all(e.get("scrapeError") is None for e in endpoints):
                    break
            await asyncio.sleep(0.1)
        else:
            raise TimeoutError(f"pool {scheduler} not ready: {document[:500]}")
        probe = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1})
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                try:
                    headers = {"host": host(scheduler), "content-type": "application/json"}
                    async with session.post(self.url, data=probe, headers=headers) as response:
                        await response.read()
                        if response.status == 200 and response.headers.get("x-inference-pod", "").startswith(scheduler):
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError(f"the route to pool {scheduler} never answered 200")

    async def sim_metrics(self, session: aiohttp.ClientSession) -> list[dict[str, float]]:
        """Each pod's vLLM series (the unlabelled name -> value; every series here has one label set)."""
        documents = []
        for sim in self.sims:
            async with session.get(f"{sim.url}/metrics") as response:
                text = await response.text()
            values: dict[str, float] = {}
            for line in text.splitlines():
                if line.startswith("vllm:"):
                    name = line.split("{", 1)[0].split(" ", 1)[0]
                    values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
            documents.append(values)
        return documents

    async def prefix_counters(self, session: aiohttp.ClientSession) -> tuple[int, int]:
        """(hit, queried) prompt tokens of the prefix cache, summed over the pods; the counters llm-d-inference-sim
        names `vllm:prefix_cache_hits` / `_queries` (vLLM itself adds `_total`)."""
        pods = await self.sim_metrics(session)
        return (
            int(sum(p.get("vllm:prefix_cache_hits", 0) for p in pods)),
            int(sum(p.get("vllm:prefix_cache_queries", 0) for p in pods)),
        )

    async def wait_idle(self, session: aiohttp.ClientSession, seconds: float = 60.0) -> None:
        """Until no pod runs or queues anything: cut-off requests of an overloaded rate must not load the next."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pods = await self.sim_metrics(session)
            if all(p.get("vllm:num_requests_running", 0) + p.get("vllm:num_requests_waiting", 0) == 0 for p in pods):
                return
            await asyncio.sleep(0.1)
        print(f"warning: the pods were still busy {seconds:.0f} s after the drain", file=sys.stderr)

    def close(self) -> None:
        self.stop_sims()
        if self.envoy is not None:
            self.envoy.stop()
        if self.serve is not None and self.serve.process.poll() is None:
            self.serve.terminate()


def host(scheduler: str) -> str:
    return f"{scheduler}.bench.example"


# ---------------------------------------------------------------------------------------------------------------
# Running the ladder


@dataclass
class Workload:
    systems: list[str]
    question_tokens: int
    max_tokens: int
    seed: int
    counter: int = field(default=0)

    def question(self, rng: random.Random) -> str:
        self.counter += 1  # a number of its own makes every question unique, so only the system prompt is shared
        return words_of(rng, self.question_tokens, f"Question {self.counter}:") + "?"


async def open_loop(
    bench: Bench,
    session: aiohttp.ClientSession,
    route: str,
    workload: Workload,
    arrivals: list[tuple[float, int]],  # (model seconds from the start, group)
    drain: float,
    rng: random.Random,
) -> tuple[list[Outcome], float, float]:
    """Sends each request at its time without waiting for answers; then waits up to `drain` (model seconds) for
    the stragglers and cuts off the rest. Returns the outcomes, first send to last answer (wall), worst lateness."""
    scale = bench.sizing.time_scale
    # Bodies are built before the clock starts so building them never delays a send.
    bodies = [
        (group, request_body(workload.systems[group], workload.question(rng), workload.max_tokens))
        for _, group in arrivals
    ]
    tasks: list[asyncio.Task[Outcome]] = []
    late = 0.0
    started = time.perf_counter()
    for (at, _), (group, body) in zip(arrivals, bodies, strict=True):
        delay = started + at * scale - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        late = max(late, -delay)
        tasks.append(asyncio.create_task(send(session, bench.url, route, group, body)))
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=drain * scale)
        for task in pending:
            task.cancel()  # the client leaves: Envoy resets the stream and the sim aborts the sequence
        await asyncio.gather(*pending, return_exceptions=True)
    outcomes = [
        t.result() if not t.cancelled() else Outcome(group) for t, (group, _) in zip(tasks, bodies, strict=True)
    ]
    last = max((o.done_at for o in outcomes if o.done_at is not None), default=started)
    return outcomes, last - started, late


def poisson(rng: random.Random, rate: float, duration: float, groups: int) -> list[tuple[float, int]]:
    arrivals = []
    at = rng.expovariate(rate)
    while at < duration:
        arrivals.append((at, rng.randrange(groups)))
        at += rng.expovariate(rate)
    return arrivals


async def run_scheduler(
    bench: Bench, scheduler: str, workload: Workload, rates: list[float], duration: float, drain: float
) -> list[RateResult]:
    bench.start_sims(scheduler)
    route = await bench.use_pool(scheduler, SCHEDULERS[scheduler])
    # Every scheduler gets the same requests at the same times: arrivals are seeded per rate, questions per run.
    rng = random.Random(f"{workload.seed}-questions")
    workload.counter = 0
    results: list[RateResult] = []
    connector = aiohttp.TCPConnector(limit=0)  # open loop: never queue requests in the client
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        groups = len(workload.systems)
        warm = random.Random(f"{workload.seed}-warmup")
        order = warm.sample(range(groups), groups)
        gaps = [warm.expovariate(rates[0]) for _ in order]
        warmup = [(sum(gaps[: i + 1]), g) for i, g in enumerate(order)]
        outcomes, _, _ = await open_loop(bench, session, route, workload, warmup, drain, rng)
        if sum(o.completed for o in outcomes) < len(outcomes):
            print(f"warning: {scheduler}: warm-up incomplete: {[o.error for o in outcomes if o.error][:3]}")
        await bench.wait_idle(session)
        for rate in rates:
            arrivals = poisson(random.Random(f"{workload.seed}-rate-{rate:g}"), rate, duration, groups)
            hits, queries = await bench.prefix_counters(session)
            outcomes, wall, late = await open_loop(bench, session, route, workload, arrivals, drain, rng)
            await bench.wait_idle(session)
            hits_after, queries_after = await bench.prefix_counters(session)
            result = RateResult(
                scheduler,
                rate,
                outcomes,
                wall,
                hits_after - hits,
                queries_after - queries,
                late,
                bench.sizing.time_scale,
            )
            results.append(result)
            print(f"  {row(result)}", file=sys.stderr, flush=True)
    bench.stop_sims()
    return results


# ---------------------------------------------------------------------------------------------------------------
# Reporting


def milliseconds(seconds: float) -> str:
    if math.isinf(seconds):
        return "unanswered"
    if math.isnan(seconds):
        return "-"
    return f"{seconds * 1000:,.0f} ms"


def row(r: RateResult) -> str:
    errors = str(r.errors)
    failed = [o for o in r.outcomes if o.error and not o.completed]
    if failed:
        # How long failures took tells their cause: ~15 s is Envoy's default route timeout (the HTTPRoute sets none).
        kinds = ", ".join(sorted({o.error.split(":", 1)[0] for o in failed if o.error})[:2])
        after = statistics.median(o.elapsed for o in failed) / r.scale
        errors += f" ({kinds}, median after {after:.1f} s)"
    mark = "" if r.completes else " (incomplete)"
    return (
        f"| {r.scheduler} | {r.rate:g} | {r.completed}/{r.sent}{mark} | {errors} | {milliseconds(r.ttft(0.5))} "
        f"| {milliseconds(r.ttft(0.9))} | {r.tokens_per_second:,.0f} | {r.hit_rate:.0%} | {r.pods_per_group:.1f} |"
    )


def ratio_line(results: dict[str, list[RateResult]], target: float) -> str:
    baseline = results.get("random", [])
    done = [r for r in baseline if r.completes]
    if not done:
        return "random completed at no rate: no ratio."
    # Every rate too: "completes" depends on the drain time, so the headline rate alone could flatter.
    per_rate = []
    for base in baseline:
        mine = next((r for r in results.get("tutorial", []) if r.rate == base.rate), None)
        if mine is None:
            continue
        if not base.completes:  # random's p90 is "unanswered": no meaningful ratio
            per_rate.append(f"{base.rate:g} req/s: - (random incomplete)")
        elif base.ttft(0.9) > 0:
            per_rate.append(f"{base.rate:g} req/s: {mine.ttft(0.9) / base.ttft(0.9):.2f}x")
    at = max(done, key=lambda r: r.rate)
    random_p90 = at.ttft(0.9)
    lines = []
    for scheduler in ("tutorial", "load-only"):
        mine = next((r for r in results.get(scheduler, []) if r.rate == at.rate), None)
        if mine is None:
            continue
        ratio = mine.ttft(0.9) / random_p90 if random_p90 > 0 else math.nan
        verdict = ""
        if scheduler == "tutorial":
            verdict = f" (target at most {target:g}x: {'met' if ratio <= target else 'NOT met'})"
        lines.append(
            f"p90 TTFT {scheduler} / random at {at.rate:g} req/s, the highest rate where random completes "
            f"(>= {COMPLETES:.0%} answered): {milliseconds(mine.ttft(0.9))} / {milliseconds(random_p90)} "
            f"= **{ratio:.2f}x**{verdict}"
        )
    if per_rate:
        lines.append(f"p90 TTFT tutorial / random at every rate: {', '.join(per_rate)}")
    return "\n".join(lines)


def rates_list(text: str) -> list[float]:
    rates = [float(part) for part in text.split(",") if part.strip()]
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"{text!r}: want positive rates like 4,8,12")
    return rates


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ladder = [4.0, 8.0, 12.0, 16.0, 20.0, 24.0]
    parser.add_argument("--rates", type=rates_list, default=ladder, help="req/s ladder (4,8,12,16,20,24)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals per rate (20)")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to wait for answers after a rate (30)")
    parser.add_argument("--groups", type=int, default=24, help="groups sharing a system prompt (24)")
    parser.add_argument("--system-tokens", type=int, default=2000, help="system prompt length in tokens (2000)")
    parser.add_argument("--question-tokens", type=int, default=40, help="question length in tokens (40)")
    parser.add_argument("--max-tokens", type=int, default=24, help="output tokens per request (24)")
    parser.add_argument("--pods", type=int, default=6)
    parser.add_argument("--working-set", type=float, default=0.7, help="all prefixes / cluster KV (0.7)")
    parser.add_argument("--kv-cache-blocks", type=int, help="per pod (default: from --working-set)")
    parser.add_argument("--max-num-seqs", type=int, default=5, help="running sequences per pod (5)")
    parser.add_argument("--prefill-per-token", default="0.2ms", help="per uncached prompt token (0.2ms)")
    parser.add_argument("--prefill-overhead", default="20ms")
    parser.add_argument("--inter-token-latency", default="20ms")
    parser.add_argument("--time-scale", type=float, default=1.0, help="simulator speed-up: 0.5 runs twice as fast")
    parser.add_argument("--schedulers", default=",".join(SCHEDULERS), help="which, in order (all)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--target", type=float, default=0.3, help="p90 TTFT ratio target (0.3)")
    parser.add_argument("--logs", type=Path, help="keep the processes' logs here (default: a temporary directory)")
    parser.add_argument("--smoke", action="store_true", help="tiny and quick, for CI: 1 rate, 3 s, 2 groups")
    args = parser.parse_args()
    if args.smoke:
        args.rates, args.duration, args.drain, args.groups, args.system_tokens = [4.0], 3.0, 10.0, 2, 500
    schedulers = [s for s in args.schedulers.split(",") if s]
    unknown = [s for s in schedulers if s not in SCHEDULERS]
    if unknown:
        parser.error(f"unknown scheduler {unknown[0]}; known: {', '.join(SCHEDULERS)}")

    systems = system_prompts(args.groups, args.system_tokens, args.seed)
    workload = Workload(systems, args.question_tokens, args.max_tokens, args.seed)
    prefix_tokens = sim_tokens(chat_prompt([("system", systems[0])]))  # what the template puts before the question
    request_tokens = prefix_tokens + args.question_tokens + 20 + args.max_tokens
    sizing = size_cluster(args, prefix_tokens, request_tokens)
    prefix_blocks = math.ceil(prefix_tokens / BLOCK_SIZE)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.logs or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        bench = Bench(directory, sizing)
        results: dict[str, list[RateResult]] = {}
        try:
            for scheduler in schedulers:
                print(f"{scheduler}:", file=sys.stderr, flush=True)
                results[scheduler] = await run_scheduler(
                    bench, scheduler, workload, args.rates, args.duration, args.drain
                )
        finally:
            bench.close()
    elapsed = time.monotonic() - started

    print(f"`{shlex.join(['python', '-m', 'bench.prefix_workload', *sys.argv[1:]])}`\n")
    print(
        f"{args.groups} groups x {prefix_tokens:,}-token system prompt ({len(systems[0]):,} chars, {prefix_blocks} "
        f"KV blocks), {args.question_tokens}-token unique question, {args.max_tokens} output tokens, streaming. "
        f"{sizing.pods} pods x {sizing.kv_blocks} KV blocks of {BLOCK_SIZE}: one pod holds "
        f"{sizing.kv_blocks / prefix_blocks:.1f} prefixes ({sizing.kv_blocks / prefix_blocks / args.groups:.0%} of "
        f"the groups), all prefixes are {args.groups * prefix_blocks / (sizing.kv_blocks * sizing.pods):.0%} of the "
        f"cluster's KV. Prefill {sizing.prefill_per_token}/uncached token + {sizing.prefill_overhead}, "
        f"{sizing.inter_token_latency}/output token, {sizing.max_num_seqs} running sequences per pod, "
        f"time scale {sizing.time_scale:g}. Poisson arrivals for {args.duration:g} s per rate (model time), "
        f"after one warm-up request per group.\n"
    )
    print("| scheduler | rate (req/s) | completed/sent | errors | TTFT p50 | TTFT p90 | output tok/s | prefix hit rate "
          "| pods per group |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rate in args.rates:
        for scheduler in schedulers:
            for result in results[scheduler]:
                if result.rate == rate:
                    print(row(result))
    print()
    print(ratio_line(results, args.target))
    late = max((r.late for rs in results.values() for r in rs), default=0.0)
    print(f"\nTotal run time {elapsed:.0f} s; the client sent at most {late * 1000:.0f} ms (wall) late.")


if __name__ == "__main__":
    asyncio.run(main())
