"""The few numbers the picker needs from one model server's Prometheus text: queue, running, KV use, LoRA, cache shape.

Parsing runs for every endpoint every 50 ms, so it never splits the whole body into lines: a vLLM `/metrics` body
is mostly histograms and counters the picker ignores. For each wanted metric it jumps with `bytes.find` to lines
that start with the metric's name and parses only those. A parse of the simulator's 2.6 KB body
(tests/data/vllm_metrics.txt) takes about 8 µs (`python -m bench.scrape` prints it). Each wanted metric costs one
`find` through the body up to it, so a 33 KB vLLM-like body whose histograms come before the gauges takes 43 µs.

Several series of one gauge (say, one per `model_name`) are folded into the largest value: a pod serves one base
model, and the largest is the safe reading for a load signal. Malformed lines are skipped; no input raises.
"""

from __future__ import annotations

import functools
import math
import re
import time
from dataclasses import dataclass
from typing import NamedTuple

# The values of the pod label `inference.networking.k8s.io/engine-type` this module knows.
ENGINES: tuple[str, ...] = ("vllm", "sglang", "trtllm-serve")


@dataclass(slots=True)
class EndpointMetrics:
    waiting: int = 0  # queued requests
    running: int = 0  # requests in the running batch
    kv_usage: float = 0.0  # KV-cache use, 0..1
    active_models: frozenset[str] = frozenset()  # LoRA adapters running
    waiting_models: frozenset[str] = frozenset()  # LoRA adapters waiting for a slot
    max_models: int = 0  # LoRA adapters that fit in one batch (`max_lora`)
    block_size: int | None = None  # tokens per KV block (page)
    num_gpu_blocks: int | None = None  # KV-cache capacity in blocks
    updated: float = 0.0  # time.monotonic() of the scrape that produced it; 0.0 = never scraped


@dataclass(frozen=True, slots=True)
class MetricNames:
    """One engine's metric names, as bytes because parsing searches the raw body."""

    waiting: bytes
    running: bytes
    kv_usage: tuple[bytes, ...]  # the first name with a usable series wins; later ones are fallbacks
    lora_info: bytes | None = None
    cache_info: bytes | None = None  # an info gauge whose labels carry the cache shape ...
    cache_info_labels: tuple[str, str] = ("", "")  # ... (block-size label, block-count label)
    block_size: bytes | None = None  # or separate gauges for the same two numbers
    num_blocks: bytes | None = None


_NAMES: dict[str, MetricNames] = {
    "vllm": MetricNames(
        waiting=b"vllm:num_requests_waiting",
        running=b"vllm:num_requests_running",
        # vLLM >= 0.9 renamed the gauge; older servers (and llm-d-inference-sim v0.4) expose only the old name.
        kv_usage=(b"vllm:kv_cache_usage_perc", b"vllm:gpu_cache_usage_perc"),
        lora_info=b"vllm:lora_requests_info",
        cache_info=b"vllm:cache_config_info",
        cache_info_labels=("block_size", "num_gpu_blocks"),
    ),
    "sglang": MetricNames(
        waiting=b"sglang:num_queue_reqs",
        running=b"sglang:num_running_reqs",
        kv_usage=(b"sglang:token_usage",),
        cache_info=b"sglang:cache_config_info",
        cache_info_labels=("page_size", "num_pages"),
    ),
    "trtllm-serve": MetricNames(
        waiting=b"trtllm_num_requests_waiting",
        running=b"trtllm_num_requests_running",
        kv_usage=(b"trtllm_kv_cache_utilization",),
        block_size=b"trtllm_kv_cache_tokens_per_block",
        num_blocks=b"trtllm_kv_cache_max_blocks",
    ),
}


def metric_names(engine: str) -> MetricNames:
    """The names `engine` exposes; ValueError for an engine this module does not know (the caller decides)."""
    try:
        return _NAMES[engine]
    except KeyError:
        raise ValueError(f"unknown model-server engine {engine!r}; known: {', '.join(ENGINES)}") from None


def parse_metrics(text: bytes, engine: str = "vllm", now: float | None = None) -> EndpointMetrics:
    """The picker's view of one `/metrics` body; `now` (default time.monotonic()) becomes `updated`."""
    names = metric_names(engine)
    result = EndpointMetrics(updated=time.monotonic() if now is None else now)
    result.waiting = int(_largest(text, names.waiting) or 0)
    result.running = int(_largest(text, names.running) or 0)
    for name in names.kv_usage:
        usage = _largest(text, name)
        if usage is not None:
            result.kv_usage = usage
            break
    if names.lora_info is not None:
        _read_lora(text, names.lora_info, result)
    if names.cache_info is not None:
        result.block_size, result.num_gpu_blocks = _cache_shape(text, names.cache_info, names.cache_info_labels)
    if names.block_size is not None:
        size = _largest(text, names.block_size)
        result.block_size = None if size is None else int(size)
    if names.num_blocks is not None:
        blocks = _largest(text, names.num_blocks)
        result.num_gpu_blocks = None if blocks is None else int(blocks)
    return result


# ---------------------------------------------------------------------------------------------------------------
# Finding and reading sample lines

_NAME_END = frozenset(b"{ \t")  # what may follow a metric name on a sample line; anything else is a longer name
_LABEL = re.compile(rb'([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\\n]|\\.)*)"')
_ESCAPE = re.compile(rb"\\(.)")


def _samples(text: bytes, name: bytes) -> list[bytes]:
    """What follows `name` on each sample line of that metric: `{labels} value [timestamp]` or ` value ...`.

    The text format keeps all samples of a metric in one group, so after the first one only the lines right below
    are read; the rest of the body (in vLLM tens of KB of histograms) is never scanned again.
    """
    found: list[bytes] = []
    needle = b"\n" + name
    if text.startswith(name):
        at = 0
    else:
        at = text.find(needle)
        at = at + 1 if at >= 0 else -1
    while at >= 0:
        after = at + len(name)
        end = text.find(b"\n", after)
        if end < 0:
            end = len(text)
        if after < end and text[after] in _NAME_END:
            found.append(text[after:end])
            at = end + 1 if text.startswith(name, end + 1) else -1
        else:  # a longer name sharing the prefix (`..._waiting_by_priority`): keep looking
            at = text.find(needle, end)  # `end` is the newline a match would start with
            if at >= 0:
                at += 1
    return found


def _split(sample: bytes) -> tuple[bytes, float] | None:
    """(label block without braces, value) of one sample, None when it is malformed or the value is not usable."""
    if sample[:1] == b"{":
        # A value or timestamp never contains '}', while a quoted label value may: the last '}' closes the labels.
        close = sample.rfind(b"}")
        if close < 0:
            return None
        labels, rest = sample[1:close], sample[close + 1 :]
    else:
        labels, rest = b"", sample
    fields = rest.split()
    if not fields:
        return None
    try:
        value = float(fields[0])
    except ValueError:
        return None
    # NaN, infinities and negative counts would poison the picker's comparisons: treat them as absent.
    if not math.isfinite(value) or value < 0:
        return None
    return labels, value


def _largest(text: bytes, name: bytes) -> float | None:
    best: float | None = None
    for sample in _samples(text, name):
        split = _split(sample)
        if split is not None and (best is None or split[1] > best):
            best = split[1]
    return best


def _labels(block: bytes) -> dict[str, str]:
    labels: dict[str, str] = {}
    for match in _LABEL.finditer(block):
        raw = match[2]
        if b"\\" in raw:
            raw = _ESCAPE.sub(lambda m: b"\n" if m[1] == b"n" else m[1], raw)
        labels[match[1].decode("ascii")] = raw.decode("utf-8", "replace")
    return labels


def _read_lora(text: bytes, name: bytes, result: EndpointMetrics) -> None:
    """vLLM sets the gauge to the time of its update: the series with the largest value is the current one."""
    newest: tuple[float, _Lora] | None = None  # among series naming adapters
    any_series: tuple[float, _Lora] | None = None  # among all, for max_lora on an idle server
    for sample in _samples(text, name):
        split = _split(sample)
        if split is None:
            continue
        value, lora = split[1], _lora(split[0])
        if any_series is None or value > any_series[0]:
            any_series = (value, lora)
        if (lora.running or lora.waiting) and (newest is None or value > newest[0]):
            newest = (value, lora)
    chosen = newest or any_series
    if chosen is not None:
        result.active_models, result.waiting_models, result.max_models = chosen[1]


class _Lora(NamedTuple):
    running: frozenset[str]
    waiting: frozenset[str]
    max_lora: int


# Label decoding is cached because it would be most of a parse's cost: the info series of a pod keep their labels
# from one scrape to the next (for LoRA info, only the value, a timestamp, moves).
@functools.lru_cache(maxsize=256)
def _lora(block: bytes) -> _Lora:
    labels = _labels(block)
    running, waiting = labels.get("running_lora_adapters", ""), labels.get("waiting_lora_adapters", "")
    return _Lora(_adapters(running), _adapters(waiting), _count(labels.get("max_lora", "")) or 0)


def _adapters(label: str) -> frozenset[str]:
    return frozenset(name for part in label.split(",") if (name := part.strip()))


def _cache_shape(text: bytes, name: bytes, label_names: tuple[str, str]) -> tuple[int | None, int | None]:
    for sample in _samples(text, name):
        split = _split(sample)
        if split is not None:
            shape = _shape(split[0], label_names)
            if shape != (None, None):
                return shape
    return None, None


@functools.lru_cache(maxsize=256)
def _shape(block: bytes, label_names: tuple[str, str]) -> tuple[int | None, int | None]:
    labels = _labels(block)
    return _count(labels.get(label_names[0], "")), _count(labels.get(label_names[1], ""))


def _count(label: str) -> int | None:
    """A non-negative integer label value; None when absent or malformed."""
    label = label.strip()
    # The length bound keeps int() under Python's limit on digits converted (it raises beyond 4300).
    return int(label) if 0 < len(label) <= 18 and label.isascii() and label.isdigit() else None
