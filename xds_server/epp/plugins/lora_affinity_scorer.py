"""lora-affinity-scorer: prefers an endpoint already running the requested adapter, then one with a free slot."""

from __future__ import annotations

from collections.abc import Sequence

from xds_server.epp.plugins.base import Candidate, CycleState, PickRequest, Scorer


class LoraAffinityScorer(Scorer):
    """1 when the adapter runs there, 0.8 with a free adapter slot, 0.6 when it waits there for a slot, else 0."""

    type_name = "lora-affinity-scorer"

    def score(self, cycle: CycleState, request: PickRequest, candidates: Sequence[Candidate]) -> list[float]:
        model = request.model
        scores = []
        for candidate in candidates:
            m = candidate.metrics
            if model in m.active_models:
                scores.append(1.0)
            elif len(m.active_models) + len(m.waiting_models) < m.max_models:
                scores.append(0.8)
            elif model in m.waiting_models:
                scores.append(0.6)
            else:
                scores.append(0.0)
        return scores
