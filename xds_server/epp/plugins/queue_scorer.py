"""queue-scorer: a shorter waiting queue scores higher."""

from __future__ import annotations

from collections.abc import Sequence

from xds_server.epp.plugins.base import Candidate, CycleState, PickRequest, Scorer


class QueueScorer(Scorer):
    """(max - q) / (max - min) over the candidates' waiting queues; 1 for all when they are equal."""

    type_name = "queue-scorer"

    def score(self, cycle: CycleState, request: PickRequest, candidates: Sequence[Candidate]) -> list[float]:
        return min_max_inverted([c.metrics.waiting for c in candidates])


def min_max_inverted(values: list[int]) -> list[float]:
    """The lowest value scores 1, the highest 0, linearly between; all 1 when they are equal."""
    low, high = min(values), max(values)
    if high == low:
        return [1.0] * len(values)
    span = high - low
    return [(high - v) / span for v in values]
