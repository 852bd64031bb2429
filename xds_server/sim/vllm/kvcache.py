"""A pod's KV cache as vLLM manages it: fixed-size blocks, shared prefix blocks found by hash, LRU eviction.

Blocks are counted, not stored. A block is in one of three states:
- *in use*: held by at least one running sequence (shared prefix blocks are held by several);
- *cached*: computed earlier, held by nobody, kept under its hash until space is needed (LRU order);
- *free*.
In-use blocks are either hashed (full and computed, so another request may share them) or anonymous (not yet
computed, or the sequence's partial last block, or a duplicate of a block someone else registered first).

KV usage is in-use blocks over capacity, as vLLM reports it: cached blocks are free memory that happens to hold
reusable data. Admission reserves a sequence's whole lifetime (prompt plus every output token) up front, so a
running sequence can always grow and the simulator never needs vLLM's preemption; the reservation limits who is
admitted but is not counted as usage until the blocks are actually filled.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class KVCache:
    def __init__(self, capacity_blocks: int) -> None:
        if capacity_blocks < 1:
            raise ValueError("the KV cache needs at least one block")
        self.capacity = capacity_blocks
        self._refs: dict[int, int] = {}  # hash -> number of sequences holding it (0 = cached, evictable)
        self._evictable: OrderedDict[int, None] = OrderedDict()  # hashes with no holder, least recent first
        self._anonymous = 0
        self._reserved = 0  # blocks promised to running sequences, not yet allocated
        self.evictions = 0

    @property
    def in_use(self) -> int:
        return self._anonymous + len(self._refs) - len(self._evictable)

    @property
    def cached(self) -> int:
        return len(self._evictable)

    @property
    def usage(self) -> float:
        return self.in_use / self.capacity

    def matching_prefix(self, hashes: Sequence[int]) -> int:
        """How many leading blocks are present; the chain makes the first miss end the shared prefix."""
        matched = 0
        for block_hash in hashes:
            if block_hash not in self._refs:
                break
            matched += 1
        return matched

    def admit(self, shared: Sequence[int], initial_blocks: int, lifetime_blocks: int) -> bool:
        """Hold the `shared` prefix blocks, allocate up to `initial_blocks`, reserve up to `lifetime_blocks`.

        Refuses (and changes nothing) when the blocks this sequence would newly occupy over its lifetime do not
        fit beside what running sequences hold and have reserved; cached blocks do not count, they are evicted.
        """
        revived = sum(1 for block_hash in shared if self._refs[block_hash] == 0)
        if self.in_use + self._reserved + revived + lifetime_blocks - len(shared) > self.capacity:
            return False
        for block_hash in shared:
            self._hold(block_hash)
        self._reserved += lifetime_blocks - len(shared)
        for _ in range(initial_blocks - len(shared)):
            self.allocate()
        return True

    def allocate(self) -> None:
        """Turn one reserved block into an anonymous in-use block, evicting the least recent cached one if full."""
        if self._reserved < 1:
            raise RuntimeError("allocation beyond the sequence's reservation")
        if self.in_use + self.cached >= self.capacity:
            # Admission guarantees in_use + reserved <= capacity, so a full cache always has a cached block here.
            evicted, _ = self._evictable.popitem(last=False)
            del self._refs[evicted]
            self.evictions += 1
        self._reserved -= 1
        self._anonymous += 1

    def register(self, block_hash: int) -> bool:
        """An anonymous block was filled and computed: make it shareable under its hash.

        Returns False when the hash is already present (another sequence computed the same prefix at the same
        time); the block then stays an anonymous duplicate, as vLLM keeps duplicates until they are freed.
        """
        if block_hash in self._refs:
            return False
        self._anonymous -= 1
        self._refs[block_hash] = 1
        return True

    def release(self, held: Sequence[int | None], unused_reservation: int) -> None:
        """A sequence ends: its hashed blocks become cached (unless others hold them), the rest become free.

        Blocks are released last block first, so the LRU order evicts a prefix's tail before its head: a tail
        block is useless once its head is gone, because matching stops at the first missing block.
        """
        for block_hash in reversed(held):
            if block_hash is None:
                self._anonymous -= 1
                continue
            self._refs[block_hash] -= 1
            if self._refs[block_hash] == 0:
                self._evictable[block_hash] = None
        self._reserved -= unused_reservation

    def _hold(self, block_hash: int) -> None:
        if self._refs[block_hash] == 0:
            del self._evictable[block_hash]
        self._refs[block_hash] += 1
