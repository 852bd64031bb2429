"""random-picker: endpoints chosen uniformly at random, ignoring the scores."""

from __future__ import annotations

import random
from collections.abc import Sequence

from xds_server.epp.plugins.base import Candidate, CycleState, Picker


class RandomPicker(Picker):
    type_name = "random-picker"

    def pick(self, cycle: CycleState, candidates: Sequence[Candidate], totals: Sequence[float]) -> list[Candidate]:
        return random.sample(list(candidates), min(self.params.max_endpoints, len(candidates)))
