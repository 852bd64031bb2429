"""Command-line flags: llm-d-inference-sim's names where it has one, vLLM's otherwise.

Flags of either project that this simulator does not model are accepted with a warning, so manifests written for
llm-d-inference-sim (the Inference Extension's tutorial among them) run unchanged.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from xds_server.sim.vllm.engine import EngineConfig, LatencyModel

DEFAULT_PORT = 8000
MODES = ("random", "echo")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ns|us|µs|ms|s|m)?\s*$")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    served_models: tuple[str, ...]  # names clients use for the base model; the first labels the metrics
    lora_adapters: tuple[str, ...]
    mode: str
    max_model_len: int
    seed: int | None
    engine: EngineConfig
    pod_name: str
    pod_namespace: str | None
    ignored_flags: tuple[str, ...]


def duration(value: str) -> float:
    """Seconds from `250ms`, `1.5s`, `200us` and the like; a bare number is milliseconds, as llm-d-inference-sim
    still accepts."""
    match = _DURATION.match(value)
    if not match:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration like 20ms or 1.5s")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "ms"]


def lora_module(value: str) -> str:
    """A LoRA module's name from vLLM's `name=path` or llm-d-inference-sim's JSON `{"name": ..., "path": ...}`."""
    if value.lstrip().startswith("{"):
        try:
            module = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"LoRA module {value!r} is not valid JSON: {exc}") from None
        name = module.get("name") if isinstance(module, dict) else None
    else:
        name = value.partition("=")[0]
    if not isinstance(name, str) or not name.strip():
        raise argparse.ArgumentTypeError(f"LoRA module {value!r} has no name")
    return name.strip()


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return number


def non_negative_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return number


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations: an unknown llm-d flag must never be taken for a prefix of a known one.
    parser = argparse.ArgumentParser(
        prog="xds-server sim vllm",
        description="An OpenAI-compatible model server that queues, caches and reports metrics like vLLM.",
        epilog=(
            "Flags of llm-d-inference-sim or vLLM not listed here (e.g. --enable-kvcache, --fake-metrics) are "
            "ignored with a warning. Tokens are approximated without a tokenizer: up to 4 word characters or one "
            "punctuation character each, about 1.3 per English word."
        ),
        allow_abbrev=False,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    parser.add_argument("--model", required=True, help="the base model's name")
    parser.add_argument("--served-model-name", nargs="+", help="names clients use for the base model (default --model)")
    parser.add_argument("--mode", choices=MODES, default="random", help="random sentences, or echo the prompt")
    parser.add_argument("--seed", type=int, help="seed for answers and latency jitter (default: random)")
    parser.add_argument(
        "--lora-modules", nargs="+", type=lora_module, default=[], metavar="MODULE", help="JSON or name=path"
    )
    parser.add_argument("--max-loras", type=positive_int, default=1, help="adapters in one batch (default 1)")

    engine = parser.add_argument_group("scheduling and KV cache")
    engine.add_argument("--max-num-seqs", type=positive_int, default=5, help="running sequences (default 5)")
    engine.add_argument(
        "--max-waiting-queue-length", type=positive_int, default=1000, help="waiting requests before 429 (1000)"
    )
    engine.add_argument(
        "--max-model-len", type=positive_int, default=4096, help="prompt plus output tokens per request (4096)"
    )
    engine.add_argument(
        "--max-num-batched-tokens", type=positive_int, default=2048, help="tokens per engine step (default 2048)"
    )
    engine.add_argument("--block-size", type=positive_int, default=16, help="tokens per KV block (default 16)")
    engine.add_argument(
        "--kv-cache-blocks",
        "--kv-cache-size",
        "--num-gpu-blocks-override",
        dest="kv_cache_blocks",
        type=positive_int,
        default=1024,
        help="KV cache capacity in blocks (default 1024)",
    )

    latency = parser.add_argument_group("latency (durations like 20ms or 1.5s)")
    defaults = LatencyModel()
    latency.add_argument(
        "--prefill-overhead",
        "--time-to-first-token",
        dest="prefill_overhead",
        type=duration,
        default=defaults.prefill_overhead,
        help="fixed part of a request's prefill (default 20ms)",
    )
    latency.add_argument(
        "--prefill-time-per-token",
        type=duration,
        default=defaults.prefill_time_per_token,
        help="prefill time per uncached prompt token (default 0.1ms)",
    )
    latency.add_argument(
        "--inter-token-latency",
        type=duration,
        default=defaults.inter_token_latency,
        help="decode step time: the gap between output tokens (default 20ms)",
    )
    latency.add_argument(
        "--prefill-time-std-dev",
        "--time-to-first-token-std-dev",
        dest="prefill_std_dev",
        type=duration,
        default=defaults.prefill_std_dev,
        help="standard deviation of a step's prefill time (default 0)",
    )
    latency.add_argument(
        "--inter-token-latency-std-dev",
        type=duration,
        default=defaults.inter_token_latency_std_dev,
        help="standard deviation of a decode step (default 0)",
    )
    latency.add_argument(
        "--time-factor-under-load",
        type=float,
        default=defaults.time_factor_under_load,
        help="step time multiplier at max-num-seqs running, linear from 1 at one (default 1.0)",
    )
    latency.add_argument(
        "--time-scale",
        type=non_negative_float,
        default=1.0,
        help="multiply every duration, e.g. 0.01 for fast tests (default 1.0)",
    )
    return parser


def parse_args(argv: Sequence[str]) -> Settings:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.max_num_batched_tokens < args.max_num_seqs:
        parser.error(
            "--max-num-batched-tokens must be at least --max-num-seqs: every running sequence decodes each step"
        )
    if args.time_factor_under_load < 1:
        parser.error("--time-factor-under-load must be at least 1")
    if args.max_model_len > args.kv_cache_blocks * args.block_size:
        # vLLM refuses to start the same way: one request of maximum length must fit in the cache.
        parser.error(
            f"--max-model-len {args.max_model_len} does not fit in {args.kv_cache_blocks} blocks of {args.block_size}"
        )
    served = tuple(args.served_model_name or [args.model])
    if set(args.lora_modules) & set(served) or len(set(args.lora_modules)) != len(args.lora_modules):
        parser.error("LoRA module names must be unique and differ from the served model names")
    latency = LatencyModel(
        prefill_overhead=args.prefill_overhead,
        prefill_time_per_token=args.prefill_time_per_token,
        inter_token_latency=args.inter_token_latency,
        prefill_std_dev=args.prefill_std_dev,
        inter_token_latency_std_dev=args.inter_token_latency_std_dev,
        time_factor_under_load=args.time_factor_under_load,
    ).scaled(args.time_scale)
    return Settings(
        host=args.host,
        port=args.port,
        served_models=served,
        lora_adapters=tuple(args.lora_modules),
        mode=args.mode,
        max_model_len=args.max_model_len,
        seed=args.seed,
        engine=EngineConfig(
            max_num_seqs=args.max_num_seqs,
            max_waiting=args.max_waiting_queue_length,
            max_num_batched_tokens=args.max_num_batched_tokens,
            block_size=args.block_size,
            kv_cache_blocks=args.kv_cache_blocks,
            max_loras=args.max_loras,
            latency=latency,
            seed=args.seed,
        ),
        pod_name=os.environ.get("POD_NAME") or socket.gethostname(),
        pod_namespace=os.environ.get("POD_NAMESPACE") or None,
        ignored_flags=tuple(unknown),
    )
