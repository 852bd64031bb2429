"""One scheduling cycle: candidates -> admission -> filters -> weighted scores -> picker -> what scorers learn.

Each cycle gets a fresh `CycleState` that its plugins read and write under their names (the prefix scorer keeps
the prompt's hashes there between scoring and learning); candidates and request are immutable.

Errors map to the Endpoint Picker protocol's statuses: no candidate at all is 503 (nothing to send it to), a
sheddable request on a saturated pool and a profile that filters everything out are 429 (try again later).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from xds_server.epp.config import PickerConfig
from xds_server.epp.plugins.base import Candidate, CycleState, PickRequest

# Endpoints after the targets in the pick, for retries: one more pod than a single failure needs.
FALLBACK_ENDPOINTS = 2


class SchedulingError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(slots=True)
class Decision:
    """The targets in order (the first is primary; the rest are fallbacks for retries) and how they were scored."""

    targets: list[Candidate]
    candidates: Sequence[Candidate]
    scores: list[tuple[str, float, list[float]]]  # (scorer name, weight, one score per candidate)
    totals: list[float]

    def destinations(self, fallbacks: int = FALLBACK_ENDPOINTS) -> list[str]:
        """Where the request goes, in order: the targets, then up to `fallbacks` of the other candidates, best
        scored first. Envoy's override_host policy takes the first and the rest for retries, so a request whose pod
        died before answering is retried on another one (the route's retry policy)."""
        picked = {target.key for target in self.targets}
        others = [i for i in range(len(self.candidates)) if self.candidates[i].key not in picked]
        best = heapq.nlargest(fallbacks, others, key=lambda i: self.totals[i])
        return [*(target.key for target in self.targets), *(self.candidates[i].key for i in best)]

    def explain(self) -> dict[str, Any]:
        """Per-endpoint scores, for the debug header and /debug/pools."""
        endpoints = {}
        for index, candidate in enumerate(self.candidates):
            endpoints[candidate.key] = {
                "pod": candidate.pod,
                "scores": {name: round(values[index], 4) for name, _, values in self.scores},
                "total": round(self.totals[index], 4),
            }
        return {
            "picked": [t.key for t in self.targets],
            "fallbacks": self.destinations()[len(self.targets) :],
            "weights": {name: weight for name, weight, _ in self.scores},
            "endpoints": endpoints,
        }


def schedule(
    config: PickerConfig,
    request: PickRequest,
    candidates: Sequence[Candidate],
    now: float,
    cycle: CycleState | None = None,
) -> Decision:
    """Runs one cycle in a new CycleState (or the one given, for a caller that wants to look at it after)."""
    if not candidates:
        raise SchedulingError(503, "no_endpoints", "no ready endpoint in the pool")
    if request.priority < 0 and config.saturation.saturated(candidates, now):
        raise SchedulingError(429, "pool_saturated", "the pool is saturated and the request is sheddable")
    state = CycleState() if cycle is None else cycle
    profile = config.profile
    remaining = candidates
    for plugin in profile.filters:
        remaining = plugin.filter(state, request, remaining)
        if not remaining:
            raise SchedulingError(429, "no_endpoint_fits", f"filter {plugin.name} left no endpoint")
    totals: list[float] | None = None
    scores: list[tuple[str, float, list[float]]] = []
    for scorer, weight in profile.scorers:
        values = scorer.score(state, request, remaining)  # each in [0, 1]: the scorers' contract (no clamping here)
        scores.append((scorer.name, weight, values))
        if totals is None:
            totals = [value * weight for value in values]
        elif weight:
            totals = [total + value * weight for total, value in zip(totals, values, strict=True)]
    if totals is None:
        totals = [0.0] * len(remaining)
    targets = profile.picker.pick(state, remaining, totals)
    if not targets:
        raise SchedulingError(429, "no_endpoint_picked", f"picker {profile.picker.name} chose no endpoint")
    for scorer, _ in profile.scorers:
        scorer.picked(state, request, targets[0])
    return Decision(targets, remaining, scores, totals)
