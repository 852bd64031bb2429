"""`xds-server sim vllm`: the engine's queue, KV and prefix-cache model under a fake clock, then the real simulator
as a subprocess on its own loopback address, driven over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from testing.ports import loopback_address
from testing.sims import SimProcess
from testing.sims import start_sim as start_sim_process
from xds_server.sim.vllm import api
from xds_server.sim.vllm.config import duration, parse_args
from xds_server.sim.vllm.engine import Engine, EngineConfig, Generation, GenerationRequest, LatencyModel, QueueFull
from xds_server.sim.vllm.kvcache import KVCache
from xds_server.sim.vllm.tokens import block_hashes, chat_prompt, root_hash, tokenize

# ---------------------------------------------------------------------------------------------------------------
# The engine under a fake clock


class FakeClock:
    """Time moves only when the engine sleeps, by exactly what it asked for: every timestamp is deterministic."""

    def __init__(self) -> None:
        self.time = 0.0

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.time += seconds
        await asyncio.sleep(0)


LATENCY = LatencyModel(prefill_overhead=0.02, prefill_time_per_token=0.001, inter_token_latency=0.01)


def make_engine(**overrides: Any) -> Engine:
    config = EngineConfig(**{"block_size": 4, "kv_cache_blocks": 64, "latency": LATENCY, **overrides})
    return Engine(config, FakeClock())


def tokens(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{index} " for index in range(count)]


def request(prompt: list[str], outputs: int = 3, adapter: str | None = None) -> GenerationRequest:
    return GenerationRequest(prompt, tokens("out", outputs), adapter)


@contextlib.asynccontextmanager
async def running(engine: Engine) -> AsyncIterator[None]:
    task = asyncio.create_task(engine.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def admitted() -> None:
    """One turn of the event loop: the engine admits what is waiting and starts its next step (not yet applied)."""
    await asyncio.sleep(0)


async def finish(*generations: Generation) -> list[str]:
    return ["".join([token async for token in generation.tokens()]) for generation in generations]


async def test_requests_beyond_max_num_seqs_wait_and_run_in_arrival_order() -> None:
    engine = make_engine(max_num_seqs=2)
    async with running(engine):
        generations = [engine.submit(request(tokens(f"p{n}-", 8))) for n in range(5)]
        await admitted()
        stats = engine.stats()
        assert (stats.running, stats.waiting) == (2, 3)
        texts = await finish(*generations)
    assert texts == ["out0 out1 out2 "] * 5
    admissions = [g.admitted_at or 0.0 for g in generations]
    assert all(g.admitted_at is not None for g in generations)
    assert admissions == sorted(admissions) and admissions[0] == admissions[1] < admissions[2]
    assert engine.stats().finished == {"stop": 5}
    assert (engine.stats().running, engine.stats().waiting) == (0, 0)


async def test_full_waiting_queue_refuses() -> None:
    engine = make_engine(max_num_seqs=1, max_waiting=2)
    engine.submit(request(tokens("a", 4)))
    engine.submit(request(tokens("b", 4)))
    with pytest.raises(QueueFull):
        engine.submit(request(tokens("c", 4)))


async def test_repeated_prefix_hits_whole_blocks_but_never_the_last_prompt_token() -> None:
    engine = make_engine()
    prompt = tokens("shared", 14)  # 3 full blocks of 4, then 2 tokens
    async with running(engine):
        first = engine.submit(request(prompt))
        await finish(first)
        again = engine.submit(request(prompt))
        longer = engine.submit(request([*prompt, *tokens("more", 10)]))
        await finish(again, longer)
    assert first.cached_tokens == 0
    assert again.cached_tokens == 12  # the three full prompt blocks
    assert longer.cached_tokens == 12
    # Exactly 12 prompt tokens: a prompt made only of cached blocks still computes its last block.
    exact = make_engine()
    async with running(exact):
        await finish(exact.submit(request(tokens("x", 12))))
        repeat = exact.submit(request(tokens("x", 12)))
        await finish(repeat)
    assert repeat.cached_tokens == 8
    stats = engine.stats()
    assert stats.prefix_cache_queries == 14 + 14 + 24
    assert stats.prefix_cache_hits == 24


async def test_same_block_text_after_a_different_prefix_does_not_hit() -> None:
    common = tokens("common", 12)
    root = root_hash(None)
    assert (
        block_hashes([*tokens("a", 4), *common], 4, root)[1:] != block_hashes([*tokens("b", 4), *common], 4, root)[1:]
    )
    engine = make_engine()
    async with running(engine):
        await finish(engine.submit(request([*tokens("a", 4), *common, "end "])))
        other = engine.submit(request([*tokens("b", 4), *common, "end "]))
        await finish(other)
    assert other.cached_tokens == 0
    assert engine.stats().prefix_cache_hits == 0


async def test_lora_adapters_have_their_own_cache() -> None:
    engine = make_engine(max_loras=1)
    prompt = tokens("p", 9)
    async with running(engine):
        await finish(engine.submit(request(prompt)))
        lora = engine.submit(request(prompt, adapter="food-review-1"))
        await finish(lora)
    assert lora.cached_tokens == 0


async def test_lru_eviction_at_capacity_drops_the_oldest_prefix_tail_first() -> None:
    # Each request: 13 prompt + 3 output tokens = 4 full blocks, all cached when it ends; 10 blocks in all.
    engine = make_engine(kv_cache_blocks=10, max_num_seqs=1)
    a, b, c = tokens("a", 13), tokens("b", 13), tokens("c", 13)
    async with running(engine):
        for prompt in (a, b):
            await finish(engine.submit(request(prompt)))
        assert engine.stats().kv_blocks_cached == 8 and engine.stats().kv_evictions == 0
        await finish(engine.submit(request(c)))  # needs 4 blocks, 2 are free: evicts 2 of a's
        assert engine.stats().kv_evictions == 2
        root = root_hash(None)
        # The least recently used prompt lost its tail blocks and kept its head; the others are intact.
        cached = [engine.cache.matching_prefix(block_hashes(prompt, 4, root)) for prompt in (a, b, c)]
        assert cached == [2, 3, 3]
        a_again = engine.submit(request(a))
        await finish(a_again)
    assert a_again.cached_tokens == 8


async def test_kv_usage_counts_blocks_of_running_requests_and_shared_blocks_once() -> None:
    engine = make_engine(kv_cache_blocks=64)
    prompt = tokens("p", 10)  # 3 blocks (2 full, 1 partial)
    async with running(engine):
        first = engine.submit(GenerationRequest(prompt, tokens("x", 6)))
        await admitted()
        assert engine.stats().kv_blocks_in_use == 3
        assert engine.stats().kv_usage == pytest.approx(3 / 64)
        await finish(first)
        # 16 tokens were computed: 4 full blocks are cached, none in use.
        stats = engine.stats()
        assert (stats.kv_blocks_in_use, stats.kv_blocks_cached, stats.kv_usage) == (0, 4, 0.0)
        second = engine.submit(GenerationRequest(prompt, tokens("y", 6)))
        third = engine.submit(GenerationRequest(prompt, tokens("z", 6)))
        await admitted()
        # Both hold the 2 cached prompt blocks (counted once) plus one block of their own.
        assert engine.stats().kv_blocks_in_use == 4
        assert engine.stats().kv_blocks_cached == 2
        await finish(second, third)
    assert engine.stats().kv_blocks_in_use == 0


async def test_kv_space_limits_admission() -> None:
    # 8 blocks; each request needs 5 over its life (17 prompt + 3 output tokens), so only one runs at a time.
    engine = make_engine(kv_cache_blocks=8, max_num_seqs=4)
    async with running(engine):
        generations = [engine.submit(request(tokens(f"r{n}-", 17))) for n in range(3)]
        await admitted()
        assert (engine.stats().running, engine.stats().waiting) == (1, 2)
        await finish(*generations)


async def test_ttft_is_shorter_with_a_cached_prefix() -> None:
    engine = make_engine(kv_cache_blocks=256)
    prompt = tokens("long", 401)
    async with running(engine):
        cold = engine.submit(request(prompt))
        await finish(cold)
        warm = engine.submit(request(prompt))
        await finish(warm)
    assert cold.first_token_at is not None and warm.first_token_at is not None
    cold_ttft = cold.first_token_at - cold.arrived_at
    warm_ttft = warm.first_token_at - warm.arrived_at
    assert warm.cached_tokens == 400
    assert warm_ttft < cold_ttft
    assert cold_ttft - warm_ttft == pytest.approx(400 * LATENCY.prefill_time_per_token)


async def test_lora_requests_beyond_max_loras_wait_while_others_pass() -> None:
    engine = make_engine(max_loras=1, max_num_seqs=4)
    async with running(engine):
        first = engine.submit(request(tokens("a", 5), adapter="a"))
        blocked = engine.submit(request(tokens("b", 5), adapter="b"))
        same = engine.submit(request(tokens("c", 5), adapter="a"))
        base = engine.submit(request(tokens("d", 5)))
        await admitted()
        stats = engine.stats()
        assert (stats.running, stats.waiting) == (3, 1)
        assert (stats.running_adapters, stats.waiting_adapters) == (("a",), ("b",))
        await finish(first, same, base, blocked)
    assert blocked.admitted_at is not None and first.finished_at is not None
    assert blocked.admitted_at >= first.finished_at


async def test_abort_frees_the_slot_and_blocks() -> None:
    engine = make_engine(max_num_seqs=1)
    async with running(engine):
        first = engine.submit(request(tokens("a", 9), outputs=50))
        waiting = engine.submit(request(tokens("b", 9)))
        await admitted()
        assert engine.stats().kv_blocks_in_use == 3
        engine.abort(first)
        assert engine.stats().kv_blocks_in_use == 0
        await finish(waiting)
        engine.abort(waiting)  # finished: nothing to do
    assert first.generated < 50
    assert engine.stats().finished == {"stop": 1}


def test_kv_cache_refuses_what_would_not_fit_and_changes_nothing() -> None:
    cache = KVCache(4)
    assert cache.admit([], 2, 3)
    assert not cache.admit([], 1, 2)
    assert (cache.in_use, cache.cached) == (2, 0)


def test_tokens_rebuild_the_text_and_a_chat_turn_extends_the_previous_prompt() -> None:
    for text in ["", "  Hello, wonderful world!\n", "naïve 日本語 tokens"]:
        assert "".join(tokenize(text)) == text
    first = [("user", "What is the capital of France?")]
    first_prompt = tokenize(chat_prompt(first))
    second_prompt = tokenize(chat_prompt([*first, ("assistant", "Paris."), ("user", "And of Italy?")]))
    assert second_prompt[: len(first_prompt)] == first_prompt
    assert second_prompt[len(first_prompt)] == "Pari"  # the answer follows the assistant cue


def test_answers_respect_max_tokens_and_the_context_window() -> None:
    rng = random.Random(1)
    base = api.ParsedRequest("m", tokenize("one two three"), "one two three", None, False, False)
    answer = api.plan_answer(dataclasses.replace(base, max_tokens=7), "random", 100, rng)
    assert (len(answer.tokens), answer.finish_reason) == (7, "length")
    assert api.plan_answer(base, "echo", 100, rng) == api.Answer(tokenize("one two three"), "stop")
    assert api.plan_answer(dataclasses.replace(base, max_tokens=2), "echo", 100, rng).finish_reason == "length"
    with pytest.raises(api.ApiError) as exc:
        api.plan_answer(dataclasses.replace(base, max_tokens=98), "random", 100, rng)
    assert exc.value.status == 400 and exc.value.code == "context_length_exceeded"


def test_flags_of_the_tutorial_and_unknown_ones() -> None:
    settings = parse_args(
        [
            "--model",
            "meta-llama/Llama-3.1-8B-Instruct",
            "--port",
            "8000",
            "--max-loras",
            "2",
            "--lora-modules",
            '{"name": "food-review-1"}',
            "sql-lora=/adapters/sql",
            "--enable-kvcache",
            "--time-to-first-token",
            "100ms",
            "--time-scale",
            "0.5",
        ]
    )
    assert settings.lora_adapters == ("food-review-1", "sql-lora")
    assert settings.engine.max_loras == 2
    assert settings.ignored_flags == ("--enable-kvcache",)
    assert settings.engine.latency.prefill_overhead == pytest.approx(0.05)
    assert duration("250") == pytest.approx(0.25) and duration("2s") == 2.0 and duration("500us") == pytest.approx(5e-4)


# ---------------------------------------------------------------------------------------------------------------
# The simulator as a process


MODEL = "meta-llama/Llama-3.1-8B-Instruct"
LORA = "food-review-1"


Sim = SimProcess


def start_sim(log: Path, *args: str, pod: str = "sim-pod-0") -> Sim:
    host, port = loopback_address()
    return start_sim_process("vllm", ["--host", host, "--port", str(port), *args], host, port, log, {"POD_NAME": pod})


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    # The tutorial's flags, plus one of llm-d-inference-sim's this simulator does not model.
    started = start_sim(
        tmp_path_factory.mktemp("vllm-sim") / "log",
        *("--model", MODEL, "--max-loras", "2", "--lora-modules", f'{{"name": "{LORA}"}}'),
        *("--fake-metrics", '{"running-requests": 10}', "--time-scale", "0.01", "--seed", "7"),
    )
    yield started
    started.kill()


async def post(url: str, body: dict[str, Any]) -> tuple[int, Mapping[str, str], bytes]:
    async with aiohttp.ClientSession() as session:
        return await post_with(session, url, body)


async def post_with(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[int, Mapping[str, str], bytes]:
    async with session.post(url, json=body) as response:
        return response.status, response.headers, await response.read()


async def metrics(sim: Sim) -> dict[str, float]:
    """Sample name with its label set -> value."""
    async with aiohttp.ClientSession() as session, session.get(f"{sim.url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def sample(samples: dict[str, float], name: str) -> float:
    [value] = [value for key, value in samples.items() if re.fullmatch(rf"{re.escape(name)}(\{{.*\}})?", key)]
    return value


def sse_payloads(body: bytes) -> list[Any]:
    events = [event for event in body.decode().split("\n\n") if event]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    return [orjson.loads(event.removeprefix("data: ")) for event in events[:-1]]


async def test_chat_completion_names_the_pod(sim: Sim) -> None:
    messages = [{"role": "user", "content": "Hi. Say this is a test"}]
    status, headers, body = await post(f"{sim.url}/v1/chat/completions", {"model": MODEL, "messages": messages})
    assert status == 200
    assert headers["x-inference-pod"] == "sim-pod-0"
    answer = orjson.loads(body)
    assert answer["object"] == "chat.completion" and answer["id"].startswith("chatcmpl-")
    assert answer["model"] == MODEL
    [choice] = answer["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_completion_for_a_lora_with_max_tokens(sim: Sim) -> None:
    body = {"model": LORA, "prompt": "Review this dish:", "max_tokens": 9}
    status, _, raw = await post(f"{sim.url}/v1/completions", body)
    assert status == 200
    answer = orjson.loads(raw)
    assert answer["object"] == "text_completion" and answer["model"] == LORA
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 9


async def test_streamed_chat_with_usage(sim: Sim) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Stream please"}],
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    status, headers, raw = await post(f"{sim.url}/v1/chat/completions", body)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    chunks = sse_payloads(raw)
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    content = [chunk["choices"][0]["delta"]["content"] for chunk in chunks[:-2]]
    assert len(content) == 6
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 6


async def test_streamed_completion_echoes_without_usage_unless_asked(sim: Sim) -> None:
    body = {"model": MODEL, "prompt": "echo me", "stream": True}
    status, _, raw = await post(f"{sim.url}/v1/completions", body)
    assert status == 200
    chunks = sse_payloads(raw)
    assert all("usage" not in chunk for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    body["stream_options"] = {"include_usage": True}
    _, _, raw = await post(f"{sim.url}/v1/completions", body)
    usage_chunk = sse_payloads(raw)[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["prompt_tokens"] == len(tokenize("echo me"))


async def test_models_lists_the_base_model_and_the_lora(sim: Sim) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{sim.url}/v1/models") as response:
        assert response.status == 200
        models = await response.json()
    assert [model["id"] for model in models["data"]] == [MODEL, LORA]


async def test_errors_are_openai_json(sim: Sim) -> None:
    status, _, raw = await post(f"{sim.url}/v1/chat/completions", {"model": "nope", "messages": []})
    assert status == 404
    assert orjson.loads(raw)["error"]["code"] == "model_not_found"
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sim.url}/v1/chat/completions", data=b"{not json") as response,
    ):
        assert response.status == 400
        assert set((await response.json())["error"]) == {"message", "type", "code"}
    status, _, raw = await post(f"{sim.url}/v1/chat/completions", {"model": MODEL, "messages": "hi"})
    assert status == 400 and "messages" in orjson.loads(raw)["error"]["message"]


async def test_unknown_flags_are_warned_about(sim: Sim) -> None:
    assert "--fake-metrics" in sim.log.read_text()


async def test_prefix_cache_hits_grow_when_a_long_prompt_repeats(sim: Sim) -> None:
    prompt = f"{uuid.uuid4()} " + " ".join(["a long shared system prompt about restaurant reviews"] * 30)
    body = {"model": MODEL, "messages": [{"role": "system", "content": prompt}], "max_tokens": 2}
    before = await metrics(sim)
    status, _, raw = await post(f"{sim.url}/v1/chat/completions", body)
    assert status == 200
    prompt_tokens = orjson.loads(raw)["usage"]["prompt_tokens"]
    middle = await metrics(sim)
    await post(f"{sim.url}/v1/chat/completions", body)
    after = await metrics(sim)
    for name in ("vllm:prefix_cache_hits", "vllm:prefix_cache_hits_total"):
        assert sample(middle, name) == sample(before, name)  # a new prompt: nothing cached
        assert 0 < sample(after, name) - sample(middle, name) < prompt_tokens
    queries = sample(after, "vllm:prefix_cache_queries") - sample(middle, "vllm:prefix_cache_queries")
    assert queries == prompt_tokens
    assert sample(after, "vllm:cache_config_info") == 1
    assert 'vllm:cache_config_info{block_size="16",num_gpu_blocks="1024"}' in after


async def test_metrics_show_queueing_under_load_and_recover_when_clients_leave(tmp_path: Path) -> None:
    # Decoding is made slow enough that no request can finish during the test, so the counts are certain.
    sim = start_sim(
        tmp_path / "log", "--model", "m", "--max-num-seqs", "2", "--inter-token-latency", "10s", pod="busy-pod"
    )
    try:
        body = {"model": "m", "prompt": "a slow request " * 20, "max_tokens": 100}
        async with aiohttp.ClientSession() as session:
            url = f"{sim.url}/v1/completions"
            in_flight = [asyncio.create_task(post_with(session, url, body)) for _ in range(5)]
            samples = await wait_for_metrics(sim, lambda s: sample(s, "vllm:num_requests_waiting") == 3)
            assert sample(samples, "vllm:num_requests_running") == 2
            assert sample(samples, "vllm:kv_cache_usage_perc") > 0
            assert sample(samples, "vllm:gpu_cache_usage_perc") == sample(samples, "vllm:kv_cache_usage_perc")
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
        # Disconnected clients are aborted, as vLLM aborts them: slots and KV blocks come back.
        idle = await wait_for_metrics(sim, lambda s: sample(s, "vllm:num_requests_running") == 0)
        assert sample(idle, "vllm:num_requests_waiting") == 0
        assert sample(idle, "vllm:kv_cache_usage_perc") == 0
        sim.process.send_signal(signal.SIGINT)
        assert sim.process.wait(timeout=10) == 0
    finally:
        sim.kill()


async def wait_for_metrics(
    sim: Sim, condition: Callable[[dict[str, float]], bool], timeout: float = 10
) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        samples = await metrics(sim)
        if condition(samples):
            return samples
        assert time.monotonic() < deadline, samples
        await asyncio.sleep(0.02)


async def test_lora_info_reports_running_adapters(tmp_path: Path) -> None:
    sim = start_sim(
        tmp_path / "log",
        *("--model", "m", "--max-loras", "1", "--lora-modules", '{"name": "l1"}', '{"name": "l2"}'),
        *("--inter-token-latency", "10s"),
    )
    try:
        url = f"{sim.url}/v1/completions"
        async with aiohttp.ClientSession() as session:
            # One at a time, so which adapter runs and which waits is certain.
            in_flight = [asyncio.create_task(post_with(session, url, {"model": "l1", "prompt": "hi"}))]
            await wait_for_metrics(sim, lambda s: sample(s, "vllm:num_requests_running") == 1)
            in_flight.append(asyncio.create_task(post_with(session, url, {"model": "l2", "prompt": "hi"})))
            labels = '{max_lora="1",running_lora_adapters="l1",waiting_lora_adapters="l2"}'
            await wait_for_metrics(sim, lambda s: f"vllm:lora_requests_info{labels}" in s)
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
    finally:
        sim.kill()


def test_sigterm_exits_cleanly(sim: Sim) -> None:
    # Last test of the module: it ends the shared simulator.
    sim.process.send_signal(signal.SIGTERM)
    assert sim.process.wait(timeout=10) == 0
