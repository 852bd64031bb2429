"""`/metrics` in Prometheus text format, with vLLM's metric names and labels, computed from the engine's state.

Written by hand rather than with prometheus-client: the names must be exactly the ones model servers expose and
the picker reads (prometheus-client would append `_total` to every counter and add `_created` series), and the
values are read from the engine at scrape time rather than kept in a second set of counters.

Both spellings are served where consumers disagree: `vllm:kv_cache_usage_perc` (vLLM >= 0.9 and pickers >= 1.3)
and `vllm:gpu_cache_usage_perc` (older pickers); the prefix-cache counters as llm-d-inference-sim v0.8 names them
(`vllm:prefix_cache_hits`) and as vLLM and later simulators do (`vllm:prefix_cache_hits_total`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from xds_server.sim.vllm.engine import EngineStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = Mapping[str, str]


@dataclass(frozen=True)
class ServerInfo:
    model_name: str  # the first served model name, as vLLM labels its series
    max_loras: int
    block_size: int
    num_gpu_blocks: int


class _Exposition:
    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: list[tuple[Labels, float]]) -> None:
        self._lines.append(f"# HELP {name} {help_text}")
        self._lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self._lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def render(stats: EngineStats, info: ServerInfo) -> str:
    model = {"model_name": info.model_name}
    out = _Exposition()
    out.family(
        "vllm:num_requests_running", "gauge", "Number of requests in model execution batches.", [(model, stats.running)]
    )
    out.family(
        "vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", [(model, stats.waiting)]
    )
    for name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):
        out.family(name, "gauge", "KV-cache usage. 1 means 100 percent usage.", [(model, stats.kv_usage)])
    lora = {
        "max_lora": str(info.max_loras),
        "running_lora_adapters": ",".join(stats.running_adapters),
        "waiting_lora_adapters": ",".join(stats.waiting_adapters),
    }
    # vLLM sets this gauge to the time of the update; pickers keep the series with the largest value.
    out.family("vllm:lora_requests_info", "gauge", "Running stats on lora requests.", [(lora, time.time())])
    cache = {"block_size": str(info.block_size), "num_gpu_blocks": str(info.num_gpu_blocks)}
    out.family("vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig.", [(cache, 1)])
    for suffix in ("", "_total"):
        out.family(
            f"vllm:prefix_cache_queries{suffix}",
            "counter",
            "Prefix cache queries, in terms of number of queried tokens.",
            [(model, stats.prefix_cache_queries)],
        )
        out.family(
            f"vllm:prefix_cache_hits{suffix}",
            "counter",
            "Prefix cache hits, in terms of number of cached tokens.",
            [(model, stats.prefix_cache_hits)],
        )
    out.family(
        "vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", [(model, stats.prompt_tokens)]
    )
    out.family(
        "vllm:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        [(model, stats.generation_tokens)],
    )
    out.family(
        "vllm:request_success_total",
        "counter",
        "Count of successfully processed requests.",
        [({**model, "finish_reason": reason}, count) for reason, count in sorted(stats.finished.items())],
    )
    return out.text()


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items()) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))
