"""kv-cache-utilization-scorer: free KV cache scores higher."""

from __future__ import annotations

from collections.abc import Sequence

from xds_server.epp.plugins.base import Candidate, CycleState, PickRequest, Scorer


class KVCacheScorer(Scorer):
    """1 - KV-cache usage."""

    type_name = "kv-cache-utilization-scorer"

    def score(self, cycle: CycleState, request: PickRequest, candidates: Sequence[Candidate]) -> list[float]:
        # Reported usage is outside [0, 1] only when a server misreports; such a server gets no credit.
        return [1.0 - u if 0.0 <= (u := c.metrics.kv_usage) <= 1.0 else 0.0 for c in candidates]
