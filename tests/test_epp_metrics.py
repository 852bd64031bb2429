"""Reading the picker's numbers out of model servers' Prometheus text: a captured simulator body, then the edge cases
of the format (several series, fallbacks, LoRA info, odd values and labels) and arbitrary bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xds_server.epp.metrics import ENGINES, EndpointMetrics, metric_names, parse_metrics

FIXTURE = Path(__file__).parent / "data" / "vllm_metrics.txt"


def test_captured_simulator_body() -> None:
    # Captured from `xds-server sim vllm --max-num-seqs 2 --max-loras 2` with two LoRA requests and one base-model
    # request in flight: two run, the base-model one waits.
    metrics = parse_metrics(FIXTURE.read_bytes(), now=12.5)
    assert metrics == EndpointMetrics(
        waiting=1,
        running=2,
        kv_usage=0.01953125,
        active_models=frozenset({"food-review-1", "sql-lora"}),
        waiting_models=frozenset(),
        max_models=2,
        block_size=16,
        num_gpu_blocks=1024,
        updated=12.5,
    )


def test_empty_body_and_default_clock() -> None:
    metrics = parse_metrics(b"")
    assert (metrics.waiting, metrics.running, metrics.kv_usage, metrics.block_size) == (0, 0, 0.0, None)
    assert metrics.updated > 0


def test_kv_usage_falls_back_to_the_pre_v1_3_name_and_prefers_the_new_one() -> None:
    old = b'vllm:gpu_cache_usage_perc{model_name="m"} 0.25\n'
    assert parse_metrics(old).kv_usage == 0.25
    both = b'vllm:kv_cache_usage_perc{model_name="m"} 0.5\n' + old
    assert parse_metrics(both).kv_usage == 0.5
    # A new-name series without a usable value does not hide the old name.
    assert parse_metrics(b"vllm:kv_cache_usage_perc NaN\n" + old).kv_usage == 0.25


def test_several_series_of_a_gauge_give_the_largest() -> None:
    text = (
        b"# HELP vllm:num_requests_waiting Number of requests waiting.\n"
        b"# TYPE vllm:num_requests_waiting gauge\n"
        b'vllm:num_requests_waiting{model_name="a"} 3\n'
        b'vllm:num_requests_waiting{model_name="b"} 7\n'
        b'vllm:num_requests_waiting{model_name="c"} 5\n'
    )
    assert parse_metrics(text).waiting == 7


def test_name_on_the_first_line_without_labels_or_final_newline() -> None:
    assert parse_metrics(b"vllm:num_requests_running 4").running == 4
    assert parse_metrics(b"vllm:num_requests_running\t4 1700000000000\n").running == 4  # with a timestamp


def test_longer_names_help_lines_and_crlf_are_not_mistaken_for_the_metric() -> None:
    text = (
        b"# HELP vllm:num_requests_waiting vllm:num_requests_waiting 99\r\n"
        b"vllm:num_requests_waiting_by_priority 42\r\n"
        b"vllm:num_requests_waiting 2\r\n"
        b"xvllm:num_requests_running 8\r\n"
        b"vllm:num_requests_running 1\r\n"
    )
    metrics = parse_metrics(text)
    assert (metrics.waiting, metrics.running) == (2, 1)


def test_values_in_every_notation_and_unusable_ones_skipped() -> None:
    assert parse_metrics(b"vllm:num_requests_waiting 1.2e1\n").waiting == 12
    assert parse_metrics(b"vllm:kv_cache_usage_perc 5E-1\n").kv_usage == 0.5
    for bad in (b"NaN", b"+Inf", b"-Inf", b"-3", b"abc", b"", b"0x10"):
        text = b'vllm:num_requests_waiting{a="1"} ' + bad + b'\nvllm:num_requests_waiting{a="2"} 3\n'
        assert parse_metrics(text).waiting == 3, bad


def test_labels_with_commas_braces_and_escaped_quotes() -> None:
    text = (
        b'vllm:num_requests_waiting{model_name="a,b}\\"c\\" {x}"} 6\n'
        b'vllm:lora_requests_info{max_lora="3",running_lora_adapters="x\\"y, z",waiting_lora_adapters=""} 10\n'
    )
    metrics = parse_metrics(text)
    assert metrics.waiting == 6
    assert metrics.active_models == {'x"y', "z"} and metrics.max_models == 3


def test_lora_info_takes_the_newest_series_naming_adapters() -> None:
    text = (
        b"# TYPE vllm:lora_requests_info gauge\n"
        b'vllm:lora_requests_info{max_lora="2",running_lora_adapters="old",waiting_lora_adapters=""} 100\n'
        b'vllm:lora_requests_info{max_lora="4",running_lora_adapters=" a , b,,",waiting_lora_adapters="c"} 300\n'
        b'vllm:lora_requests_info{max_lora="2",running_lora_adapters="",waiting_lora_adapters=""} 500\n'
        b'vllm:lora_requests_info{max_lora="2",running_lora_adapters="mid",waiting_lora_adapters=""} 200\n'
    )
    metrics = parse_metrics(text)
    assert metrics.active_models == {"a", "b"}
    assert metrics.waiting_models == {"c"}
    assert metrics.max_models == 4


def test_lora_info_without_adapters_still_gives_max_lora() -> None:
    text = b'vllm:lora_requests_info{max_lora="2",running_lora_adapters="",waiting_lora_adapters=""} 1.7e9\n'
    metrics = parse_metrics(text)
    assert (metrics.active_models, metrics.waiting_models, metrics.max_models) == (frozenset(), frozenset(), 2)


def test_sglang_names() -> None:
    text = (
        b'sglang:num_queue_reqs{model_name="m"} 4\n'
        b'sglang:num_running_reqs{model_name="m"} 9\n'
        b'sglang:token_usage{model_name="m"} 0.75\n'
        b'sglang:cache_config_info{page_size="64",num_pages="2048"} 1\n'
        b"vllm:num_requests_waiting 100\n"
    )
    metrics = parse_metrics(text, "sglang")
    assert (metrics.waiting, metrics.running, metrics.kv_usage) == (4, 9, 0.75)
    assert (metrics.block_size, metrics.num_gpu_blocks) == (64, 2048)
    assert metrics.max_models == 0 and metrics.active_models == frozenset()


def test_trtllm_serve_names() -> None:
    text = (
        b"trtllm_num_requests_waiting 2\n"
        b"trtllm_num_requests_running 6\n"
        b"trtllm_kv_cache_utilization 0.125\n"
        b"trtllm_kv_cache_tokens_per_block 32\n"
        b"trtllm_kv_cache_max_blocks 4096\n"
    )
    metrics = parse_metrics(text, "trtllm-serve")
    assert (metrics.waiting, metrics.running, metrics.kv_usage) == (2, 6, 0.125)
    assert (metrics.block_size, metrics.num_gpu_blocks) == (32, 4096)


def test_unknown_engine_is_a_clear_error() -> None:
    assert ENGINES == ("vllm", "sglang", "trtllm-serve")
    with pytest.raises(ValueError, match="unknown model-server engine 'triton-tensorrt-llm'"):
        metric_names("triton-tensorrt-llm")
    with pytest.raises(ValueError):
        parse_metrics(b"", "nope")


def test_bad_cache_config_labels_are_ignored() -> None:
    text = b'vllm:cache_config_info{block_size="sixteen",num_gpu_blocks="' + b"9" * 5000 + b'"} 1\n'
    assert (parse_metrics(text).block_size, parse_metrics(text).num_gpu_blocks) == (None, None)


# Fragments that steer random input into the parser's deeper paths rather than only its first `find`.
_FRAGMENTS = st.sampled_from(
    [
        b"\n",
        b"vllm:num_requests_waiting",
        b"vllm:kv_cache_usage_perc",
        b"vllm:lora_requests_info",
        b"vllm:cache_config_info",
        b"sglang:cache_config_info",
        b"trtllm_kv_cache_max_blocks",
        b"{",
        b"}",
        b'"',
        b"\\",
        b",",
        b"=",
        b' max_lora="',
        b'running_lora_adapters="',
        b'block_size="',
        b" ",
        b"1e309",
        b"NaN",
        b"-1",
        b"7",
        b"\xff\xfe",
    ]
)


@given(st.binary(max_size=2000), st.sampled_from(ENGINES))
def test_arbitrary_bytes_never_raise(text: bytes, engine: str) -> None:
    parse_metrics(text, engine)


@given(st.lists(st.one_of(_FRAGMENTS, st.binary(max_size=8)), max_size=60), st.sampled_from(ENGINES))
def test_metric_shaped_garbage_never_raises(parts: list[bytes], engine: str) -> None:
    metrics = parse_metrics(b"".join(parts), engine)
    assert metrics.waiting >= 0 and metrics.kv_usage >= 0
