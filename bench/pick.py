"""Pick latency: the picker's CPU per request at 10 and 100 endpoints, in-process (no gRPC, no Envoy).

Two numbers per size:
- `schedule`: the scheduling decision alone (filters, scorers incl. prefix hashing and matching, picker, learning);
- `request`: what one request costs the picker's stream handler: parsing the request headers and the JSON body,
  attaching live metrics to the candidates, scheduling, building the reply with the header and metadata.

Prompts are chat requests with one of 50 system prompts (about 2,000 characters, so 31 prefix blocks) plus a
unique question, so the prefix index is warm and matches, as in a real shared-prefix workload. Endpoint metrics
vary (queues 0-10, KV use 0-0.9) and are fresh.

    python -m bench.pick [--endpoints 10,100] [--requests 20000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from testing.manifests import TUTORIAL_PICKER_CONFIG
from translators.ir import PickerConfigIR, PoolIR, PoolMember, Translation
from translators.runtime import runtime_tables
from xds_server.epp.config import load_config
from xds_server.epp.metrics import EndpointMetrics
from xds_server.epp.picker import EndpointPicker, PickerStream
from xds_server.epp.plugins.base import PickRequest
from xds_server.epp.protocol import prompt_of
from xds_server.epp.scheduler import schedule
from xds_server.epp.scrape import Scraper

T = TypeVar("T")

SYSTEM_PROMPTS = [f"System prompt {g}: " + "you answer questions about the manual, politely. " * 40 for g in range(50)]


def chat_body(index: int) -> bytes:
    system = SYSTEM_PROMPTS[index % len(SYSTEM_PROMPTS)]
    messages = [{"role": "system", "content": system}, {"role": "user", "content": f"question number {index}?"}]
    return orjson.dumps({"model": "llama", "messages": messages, "max_tokens": 64})


class FixedMetrics(Scraper):
    """A scraper whose samples are set by the benchmark: the real one would need 100 live servers."""

    def __init__(self, samples: dict[str, EndpointMetrics]) -> None:
        super().__init__()
        self.samples = samples

    def set_targets(self, targets: object) -> None:
        pass

    def get(self, key: str) -> EndpointMetrics | None:
        return self.samples.get(key)


def picker_with(endpoints: int) -> EndpointPicker:
    members = tuple(PoolMember(f"10.0.{i // 250}.{i % 250 + 1}", 8000, f"pod-{i}", "vllm") for i in range(endpoints))
    now = time.monotonic()
    rng = random.Random(1)
    samples = {
        f"{m.address}:{m.port}": EndpointMetrics(waiting=rng.randint(0, 10), kv_usage=rng.random() * 0.9, updated=now)
        for m in members
    }
    picker = EndpointPicker(FixedMetrics(samples), clock=lambda: now)
    config = PickerConfigIR(TUTORIAL_PICKER_CONFIG, "bench")
    pool = PoolIR("default", "bench", (), False, None, members=members, picker_config=config)
    picker.follow(runtime_tables(Translation((), (), (pool,))))
    return picker


def request_messages(index: int) -> tuple[pb.ProcessingRequest, pb.ProcessingRequest]:
    names = {":method": "POST", ":path": "/v1/chat/completions", "content-type": "application/json"}
    header_map = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in names.items()]
    )
    headers = pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map))
    return headers, pb.ProcessingRequest(request_body=pb.HttpBody(body=chat_body(index), end_of_stream=True))


def run_now(step: Coroutine[Any, Any, T]) -> T:
    """A coroutine that never waits (a small body is parsed at once, on the caller's thread), run without an event
    loop, so the numbers are the picker's own."""
    try:
        step.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    raise RuntimeError("the step waited: only bodies parsed on the spot can be measured here")


def timed(step: Callable[[int], object], count: int) -> list[float]:
    """Microseconds per call, measured in batches of 100 (the clock's own cost stays out of the numbers)."""
    batches = []
    for start in range(0, count, 100):
        began = time.perf_counter()
        for index in range(start, start + 100):
            step(index)
        batches.append((time.perf_counter() - began) / 100 * 1e6)
    return batches


def measure(endpoints: int, requests: int) -> tuple[list[float], list[float]]:
    """(schedule µs, whole request µs) per batch."""
    picker = picker_with(endpoints)
    pool = picker.pools["default/bench"]
    config = load_config(TUTORIAL_PICKER_CONFIG, "bench")
    bodies = [chat_body(i) for i in range(requests)]
    messages = [request_messages(i) for i in range(requests)]

    def schedule_one(index: int) -> object:
        request = PickRequest("llama", prompt_of(orjson.loads(bodies[index])), {})
        return schedule(config, request, picker.candidates(pool), picker.clock())

    def request_one(index: int) -> object:
        stream = PickerStream(picker, "default/bench")
        headers, body = messages[index]
        run_now(stream.process(headers))
        return run_now(stream.process(body))

    for step in (schedule_one, request_one):  # warm the prefix index and the caches
        timed(step, min(2_000, requests))
    return timed(schedule_one, requests), timed(request_one, requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoints", default="10,100", help="comma-separated pool sizes")
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    print("| endpoints | schedule µs p50 | schedule µs p90 | request µs p50 | request µs p90 |")
    print("|---|---|---|---|---|")
    for endpoints in (int(n) for n in args.endpoints.split(",")):
        decide, whole = measure(endpoints, args.requests)
        print(
            f"| {endpoints} | {statistics.median(decide):.1f} | {_p90(decide):.1f} | "
            f"{statistics.median(whole):.1f} | {_p90(whole):.1f} |"
        )


def _p90(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.9)]


if __name__ == "__main__":
    main()
