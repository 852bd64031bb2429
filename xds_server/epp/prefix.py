"""The approximate prefix-cache index: which endpoints were recently sent which prompt prefixes.

The picker never sees a model server's cache; it remembers where it sent each prompt. A prompt is cut into
blocks of `block_chars` characters and each block is hashed together with the hash of everything before it
(xxhash64, seeded by the model name), so one hash stands for a whole prefix. An endpoint that was sent a prefix
probably still holds it in its KV cache, until enough other prefixes have pushed it out: each endpoint keeps an
LRU of at most `capacity` block hashes, roughly the number of blocks its cache holds.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterable

import xxhash

_UINT64 = struct.Struct("<Q")


def prefix_hashes(model: str, prompt: str, block_chars: int, max_blocks: int) -> list[int]:
    """The chained hash of each whole block of the prompt's first `max_blocks` blocks (a partial block is not
    cached by a model server either, so it is left out)."""
    blocks = min(len(prompt) // block_chars, max_blocks)
    data = prompt[: blocks * block_chars].encode()
    if len(data) == blocks * block_chars:  # ASCII, the common case: byte and character edges coincide
        chunks = [data[start : start + block_chars] for start in range(0, len(data), block_chars)]
    else:  # characters, not bytes, decide the block edges
        chunks = [prompt[i * block_chars : (i + 1) * block_chars].encode() for i in range(blocks)]
    hashes = []
    previous = xxhash.xxh64_intdigest(model.encode())
    pack = _UINT64.pack
    for chunk in chunks:
        previous = xxhash.xxh64_intdigest(chunk + pack(previous))
        hashes.append(previous)
    return hashes


class PrefixIndex:
    """hash -> endpoints that were sent it, with one bounded LRU of hashes per endpoint."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._holders: dict[int, set[str]] = {}
        self._lru: dict[str, OrderedDict[int, None]] = {}

    def match(self, hashes: Iterable[int]) -> dict[str, int]:
        """Blocks matched per endpoint, walking the prefix from its start until no endpoint holds a block."""
        matched: dict[str, int] = {}
        holders = self._holders
        for block in hashes:
            found = holders.get(block)
            if not found:
                break
            for endpoint in found:
                matched[endpoint] = matched.get(endpoint, 0) + 1
        return matched

    def add(self, endpoint: str, hashes: Iterable[int]) -> None:
        lru = self._lru.get(endpoint)
        if lru is None:
            lru = self._lru[endpoint] = OrderedDict()
        holders = self._holders
        for block in hashes:
            if block in lru:
                lru.move_to_end(block)
                continue
            lru[block] = None
            holders.setdefault(block, set()).add(endpoint)
            if len(lru) > self.capacity:
                evicted, _ = lru.popitem(last=False)
                self._forget(evicted, endpoint)

    def _forget(self, block: int, endpoint: str) -> None:
        found = self._holders.get(block)
        if found is not None:
            found.discard(endpoint)
            if not found:
                del self._holders[block]

    def remove_endpoints(self, keep: set[str]) -> None:
        """Drops what is known of endpoints that left the pool (a returning pod starts with a cold cache)."""
        for endpoint in [e for e in self._lru if e not in keep]:
            for block in self._lru.pop(endpoint):
                self._forget(block, endpoint)

    def size(self, endpoint: str) -> int:
        lru = self._lru.get(endpoint)
        return len(lru) if lru is not None else 0
