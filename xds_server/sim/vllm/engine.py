"""The simulated inference engine: vLLM's continuous-batching scheduler over a KV cache, with a latency model.

One loop runs engine steps, as vLLM's engine core does. Before each step, waiting requests are admitted in FIFO
order while there is a free slot (`max_num_seqs`), room in the KV cache and, for LoRA requests, a free adapter
slot (`max_loras`). A step then advances every running sequence: those still in prefill by a chunk of their
uncached prompt tokens (together at most `max_num_batched_tokens`), the others by one output token. The step takes

    load_factor * (inter_token_latency          if any sequence decodes
                   + prefill_overhead            per sequence starting its prefill
                   + prefill_time_per_token      per prompt token computed)

so time to first token is queueing plus prefill of the prompt's uncached part, later tokens arrive one step
apart, and decoding slows down while other requests prefill, as on a real GPU. `load_factor` grows linearly from
1 with one running sequence to `time_factor_under_load` at `max_num_seqs`.

Nothing here touches the network or the wall clock: time comes from a `Clock`, so tests drive it with a fake one.
"""

from __future__ import annotations

import asyncio
import enum
import math
import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from xds_server.sim.vllm.kvcache import KVCache
from xds_server.sim.vllm.tokens import block_hashes, root_hash


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class LatencyModel:
    """Seconds. Defaults resemble an 8B model on one A100/H100-class GPU: ~20 ms per decode step (50 tokens/s per
    sequence), prefill ~10k tokens/s, and ~20 ms of fixed work before a request's first forward pass."""

    prefill_overhead: float = 0.020
    prefill_time_per_token: float = 0.0001
    inter_token_latency: float = 0.020
    prefill_std_dev: float = 0.0
    inter_token_latency_std_dev: float = 0.0
    time_factor_under_load: float = 1.0

    def scaled(self, factor: float) -> LatencyModel:
        """Every duration times `factor` (the load factor is a ratio and stays as it is)."""
        return replace(
            self,
            prefill_overhead=self.prefill_overhead * factor,
            prefill_time_per_token=self.prefill_time_per_token * factor,
            inter_token_latency=self.inter_token_latency * factor,
            prefill_std_dev=self.prefill_std_dev * factor,
            inter_token_latency_std_dev=self.inter_token_latency_std_dev * factor,
        )


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int = 5
    max_waiting: int = 1000
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    kv_cache_blocks: int = 1024
    max_loras: int = 1
    latency: LatencyModel = field(default_factory=LatencyModel)
    seed: int | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate: the output is decided by the caller (random or echo), the engine decides when."""

    prompt_tokens: Sequence[str]
    output_tokens: Sequence[str]
    adapter: str | None = None  # LoRA adapter name, None for the base model
    finish_reason: str = "stop"


class QueueFull(Exception):
    """The waiting queue is at its limit; the server answers 429 as llm-d-inference-sim does."""


class State(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Generation:
    """One request inside the engine: its progress, its KV blocks, and the tokens it has produced so far."""

    def __init__(self, request: GenerationRequest, hashes: list[int], block_size: int, arrived_at: float) -> None:
        self.request = request
        self.hashes = hashes  # chained hashes of every full block of prompt + output
        self.state = State.WAITING
        self.arrived_at = arrived_at
        self.admitted_at: float | None = None
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.cached_tokens = 0
        self.computed = 0  # prompt tokens whose KV exists (cached or prefilled)
        self.generated = 0
        self.blocks: list[int | None] = []  # per held block: its hash once shareable, else None
        self.registered = 0  # leading blocks already offered to the cache under their hash
        self.lifetime_blocks = math.ceil((self.prompt_len + len(request.output_tokens)) / block_size)
        self._events: asyncio.Queue[str | None] = asyncio.Queue()

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_tokens)

    @property
    def prefilled(self) -> bool:
        return self.computed == self.prompt_len

    async def tokens(self) -> AsyncIterator[str]:
        """The output tokens as the engine produces them."""
        while (token := await self._events.get()) is not None:
            yield token

    def publish(self, token: str | None) -> None:
        """Hand a token to the consumer; None says the generation is complete."""
        self._events.put_nowait(token)


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    kv_usage: float
    kv_blocks_in_use: int
    kv_blocks_cached: int
    kv_evictions: int
    prefix_cache_queries: int  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int  # of which found
    prompt_tokens: int
    generation_tokens: int
    finished: dict[str, int]  # by finish reason
    running_adapters: tuple[str, ...]
    waiting_adapters: tuple[str, ...]


@dataclass(frozen=True)
class _Step:
    decoding: list[Generation]
    prefilling: list[tuple[Generation, int]]  # sequence, prompt tokens computed in this step
    duration: float


class Engine:
    def __init__(self, config: EngineConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or MonotonicClock()
        self.cache = KVCache(config.kv_cache_blocks)
        self._rng = random.Random(config.seed)
        self._waiting: deque[Generation] = deque()
        self._running: list[Generation] = []
        self._wake = asyncio.Event()
        self._prefix_queries = 0
        self._prefix_hits = 0
        self._prompt_tokens = 0
        self._generation_tokens = 0
        self._finished: Counter[str] = Counter()

    def submit(self, request: GenerationRequest) -> Generation:
        if not request.prompt_tokens or not request.output_tokens:
            raise ValueError("a request needs at least one prompt token and one output token")
        if len(self._waiting) >= self.config.max_waiting:
            raise QueueFull(f"the waiting queue is full ({self.config.max_waiting} requests)")
        tokens = [*request.prompt_tokens, *request.output_tokens]
        hashes = block_hashes(tokens, self.config.block_size, root_hash(request.adapter))
        generation = Generation(request, hashes, self.config.block_size, self.clock.now())
        if generation.lifetime_blocks > self.cache.capacity:
            raise ValueError(f"the request needs {generation.lifetime_blocks} KV blocks, more than the whole cache")
        self._waiting.append(generation)
        self._wake.set()
        return generation

    def abort(self, generation: Generation) -> None:
        """The client went away: free the slot and the blocks at once, as vLLM aborts a disconnected request.

        Harmless on a finished generation, so callers may always abort in a `finally`.
        """
        if generation.state is State.FINISHED:
            return
        if generation.state is State.WAITING:
            self._waiting.remove(generation)
        elif generation.state is State.RUNNING:
            self._running.remove(generation)
            self._release(generation)
        generation.state = State.FINISHED
        generation.publish(None)  # anyone still reading the tokens sees the end rather than waiting forever
        self._wake.set()

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self._running),
            waiting=len(self._waiting),
            kv_usage=self.cache.usage,
            kv_blocks_in_use=self.cache.in_use,
            kv_blocks_cached=self.cache.cached,
            kv_evictions=self.cache.evictions,
            prefix_cache_queries=self._prefix_queries,
            prefix_cache_hits=self._prefix_hits,
            prompt_tokens=self._prompt_tokens,
            generation_tokens=self._generation_tokens,
            finished=dict(self._finished),
            running_adapters=_adapters(self._running),
            waiting_adapters=_adapters(self._waiting),
        )

    async def run(self) -> None:
        """The engine loop; runs until cancelled."""
        while True:
            self._admit()
            if not self._running:
                self._wake.clear()
                await self._wake.wait()
                continue
            step = self._plan()
            await self.clock.sleep(step.duration)
            self._apply(step)

    def _admit(self) -> None:
        block_size = self.config.block_size
        skipped: list[Generation] = []
        while self._waiting and len(self._running) < self.config.max_num_seqs:
            generation = self._waiting[0]
            if not self._adapter_fits(generation.request.adapter):
                # vLLM skips a request whose adapter cannot join the batch and keeps scanning the queue.
                skipped.append(self._waiting.popleft())
                continue
            # The last prompt token is always computed, even when cached: its logits give the first output token.
            lookup = generation.hashes[: (generation.prompt_len - 1) // block_size]
            shared = lookup[: self.cache.matching_prefix(lookup)]
            prompt_blocks = math.ceil(generation.prompt_len / block_size)
            if not self.cache.admit(shared, prompt_blocks, generation.lifetime_blocks):
                break  # out of KV space: everyone behind waits too, as in vLLM
            self._waiting.popleft()
            generation.state = State.RUNNING
            generation.admitted_at = self.clock.now()
            generation.blocks = [*shared, *[None] * (prompt_blocks - len(shared))]
            generation.registered = len(shared)
            generation.cached_tokens = generation.computed = len(shared) * block_size
            self._running.append(generation)
            self._prefix_queries += generation.prompt_len
            self._prefix_hits += generation.cached_tokens
            self._prompt_tokens += generation.prompt_len
        self._waiting.extendleft(reversed(skipped))

    def _adapter_fits(self, adapter: str | None) -> bool:
        if adapter is None:
            return True
        active = {g.request.adapter for g in self._running if g.request.adapter is not None}
        return adapter in active or len(active) < self.config.max_loras

    def _plan(self) -> _Step:
        latency = self.config.latency
        decoding = [g for g in self._running if g.prefilled]
        budget = self.config.max_num_batched_tokens - len(decoding)
        prefilling: list[tuple[Generation, int]] = []
        for generation in self._running:
            if generation.prefilled or budget <= 0:
                continue
            chunk = min(generation.prompt_len - generation.computed, budget)
            prefilling.append((generation, chunk))
            budget -= chunk
        decode_time = self._jitter(latency.inter_token_latency, latency.inter_token_latency_std_dev) if decoding else 0
        starting = sum(1 for g, _ in prefilling if g.computed == g.cached_tokens)
        prefill_tokens = sum(chunk for _, chunk in prefilling)
        prefill_mean = starting * latency.prefill_overhead + prefill_tokens * latency.prefill_time_per_token
        prefill_time = self._jitter(prefill_mean, latency.prefill_std_dev) if prefilling else 0
        return _Step(decoding, prefilling, self._load_factor() * (decode_time + prefill_time))

    def _load_factor(self) -> float:
        extra = self.config.latency.time_factor_under_load - 1
        return 1 + extra * (len(self._running) - 1) / max(1, self.config.max_num_seqs - 1)

    def _jitter(self, mean: float, std_dev: float) -> float:
        return max(0.0, self._rng.gauss(mean, std_dev)) if std_dev > 0 else mean

    def _apply(self, step: _Step) -> None:
        # Sequences aborted while the step ran are no longer RUNNING and are skipped.
        for generation in step.decoding:
            if generation.state is State.RUNNING:
                self._emit(generation)
        for generation, chunk in step.prefilling:
            if generation.state is not State.RUNNING:
                continue
            generation.computed += chunk
            self._fill_blocks(generation)
            if generation.prefilled:
                generation.first_token_at = self.clock.now()
                self._emit(generation)

    def _emit(self, generation: Generation) -> None:
        output = generation.request.output_tokens
        generation.publish(output[generation.generated])
        generation.generated += 1
        self._generation_tokens += 1
        self._fill_blocks(generation)
        if generation.generated == len(output):
            self._running.remove(generation)
            self._release(generation)
            generation.state = State.FINISHED
            generation.finished_at = self.clock.now()
            self._finished[generation.request.finish_reason] += 1
            generation.publish(None)

    def _fill_blocks(self, generation: Generation) -> None:
        """Allocate blocks as the sequence grows; register each one under its hash once it is full and computed."""
        length = generation.computed + generation.generated
        while len(generation.blocks) < math.ceil(length / self.config.block_size):
            self.cache.allocate()
            generation.blocks.append(None)
        full = length // self.config.block_size
        for index in range(generation.registered, full):
            if self.cache.register(generation.hashes[index]):
                generation.blocks[index] = generation.hashes[index]
        generation.registered = max(generation.registered, full)

    def _release(self, generation: Generation) -> None:
        self.cache.release(generation.blocks, generation.lifetime_blocks - len(generation.blocks))


def _adapters(generations: Iterable[Generation]) -> tuple[str, ...]:
    return tuple(sorted({g.request.adapter for g in generations if g.request.adapter is not None}))
