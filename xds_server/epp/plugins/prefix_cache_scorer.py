"""prefix-cache-scorer: the share of the prompt's prefix blocks each endpoint was recently sent; learns from picks.

The prompt's block hashes (see prefix.py) are computed once per scheduling cycle, when scoring, and kept in the
cycle's state under the scorer's name; `picked` reads them back to record where the prefix went.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

from xds_server.epp.plugins.base import (
    Candidate,
    CycleState,
    ParameterReader,
    PickerConfigError,
    PickRequest,
    Scorer,
)
from xds_server.epp.prefix import PrefixIndex, prefix_hashes

CHARS_PER_TOKEN = 4  # the picker has no tokenizer; prompts average about four characters per token


@dataclass(frozen=True)
class PrefixCacheParams:
    block_chars: int = 64  # hashBlockSize, or blockSizeTokens * CHARS_PER_TOKEN
    max_blocks: int = 256  # maxPrefixBlocksToMatch, or maxPrefixTokensToMatch in blocks
    lru_capacity: int = 31250  # lruCapacityPerServer: block hashes remembered per endpoint

    @classmethod
    def parse(cls, plugin: str, raw: object) -> PrefixCacheParams:
        """Block size in characters (`hashBlockSize`, v1.0) or tokens (`blockSizeTokens`, 4 characters each)."""
        params = ParameterReader(plugin, raw)
        if params.has("hashBlockSize") and params.has("blockSizeTokens"):
            raise PickerConfigError(f"plugin {plugin}: set hashBlockSize (characters) or blockSizeTokens, not both")
        if params.has("blockSizeTokens"):
            block_chars = params.integer("blockSizeTokens", 16, 1) * CHARS_PER_TOKEN
        else:
            block_chars = params.integer("hashBlockSize", 64, 1)
        max_blocks = params.integer("maxPrefixBlocksToMatch", 256, 1)
        if params.has("maxPrefixTokensToMatch"):
            max_blocks = max(1, params.integer("maxPrefixTokensToMatch", 0, 1) * CHARS_PER_TOKEN // block_chars)
        capacity = params.integer("lruCapacityPerServer", 31250, 1)
        params.done()
        return cls(block_chars=block_chars, max_blocks=max_blocks, lru_capacity=capacity)


@dataclass(frozen=True, slots=True)
class PrefixCycleState:
    """One cycle's prompt: its chained block hashes."""

    hashes: Sequence[int]


class PrefixCacheScorer(Scorer):
    type_name = "prefix-cache-scorer"

    def __init__(self, name: str, params: PrefixCacheParams | None = None) -> None:
        super().__init__(name)
        self.params = PrefixCacheParams() if params is None else params
        self.index = PrefixIndex(self.params.lru_capacity)

    @classmethod
    def from_parameters(cls, name: str, raw: object) -> Self:
        return cls(name, PrefixCacheParams.parse(name, raw))

    def hashes(self, cycle: CycleState, request: PickRequest) -> Sequence[int]:
        """The request's prefix hashes: computed on the cycle's first call, read from its state after."""
        state = cycle.read(self.name, PrefixCycleState)
        if state is None:
            params = self.params
            hashes = prefix_hashes(request.model, request.prompt, params.block_chars, params.max_blocks)
            state = PrefixCycleState(hashes)
            cycle.write(self.name, state)
        return state.hashes

    def score(self, cycle: CycleState, request: PickRequest, candidates: Sequence[Candidate]) -> list[float]:
        hashes = self.hashes(cycle, request)
        if not hashes:
            return [0.0] * len(candidates)
        matched = self.index.match(hashes)
        total = len(hashes)
        return [matched.get(c.key, 0) / total for c in candidates]

    def picked(self, cycle: CycleState, request: PickRequest, target: Candidate) -> None:
        self.index.add(target.key, self.hashes(cycle, request))
