"""weighted-random-picker: endpoints chosen with probability proportional to their totals."""

from __future__ import annotations

import random
from collections.abc import Sequence

from xds_server.epp.plugins.base import Candidate, CycleState, Picker


class WeightedRandomPicker(Picker):
    """A-Res sampling: key = U ** (1 / total), the largest keys win; uniform when no total is positive."""

    type_name = "weighted-random-picker"

    def pick(self, cycle: CycleState, candidates: Sequence[Candidate], totals: Sequence[float]) -> list[Candidate]:
        wanted = self.params.max_endpoints
        if not any(t > 0 for t in totals):
            return random.sample(list(candidates), min(wanted, len(candidates)))
        keys = [random.random() ** (1.0 / t) if t > 0 else 0.0 for t in totals]
        order = sorted(range(len(candidates)), key=lambda i: keys[i], reverse=True)
        return [candidates[i] for i in order[:wanted]]
