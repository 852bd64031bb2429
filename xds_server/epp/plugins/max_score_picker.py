"""max-score-picker: the highest totals, ties broken at random."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from xds_server.epp.plugins.base import Candidate, CycleState, Picker


class MaxScorePicker(Picker):
    """The highest totals, ties broken at random (so equal endpoints share load instead of the first taking all)."""

    type_name = "max-score-picker"

    def pick(self, cycle: CycleState, candidates: Sequence[Candidate], totals: Sequence[float]) -> list[Candidate]:
        if self.params.max_endpoints == 1:  # the common case, in one pass without sorting
            best: list[int] = []
            top = -math.inf
            for index, total in enumerate(totals):
                if total > top:
                    top, best = total, [index]
                elif total == top:
                    best.append(index)
            return [candidates[random.choice(best)]]
        order = list(range(len(candidates)))
        random.shuffle(order)
        order.sort(key=lambda i: totals[i], reverse=True)  # stable: the shuffle decides among equal totals
        return [candidates[i] for i in order[: self.params.max_endpoints]]
