"""running-requests-size-scorer: fewer running requests score higher."""

from __future__ import annotations

from collections.abc import Sequence

from xds_server.epp.plugins.base import Candidate, CycleState, PickRequest, Scorer
from xds_server.epp.plugins.queue_scorer import min_max_inverted


class RunningRequestsScorer(Scorer):
    """The running batch's size, min-max scaled like the queue scorer."""

    type_name = "running-requests-size-scorer"

    def score(self, cycle: CycleState, request: PickRequest, candidates: Sequence[Candidate]) -> list[float]:
        return min_max_inverted([c.metrics.running for c in candidates])
