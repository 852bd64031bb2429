"""utilization-detector: when a pool counts as saturated, so that sheddable requests are refused."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

from xds_server.epp.plugins.base import Candidate, ParameterReader, Plugin


@dataclass(frozen=True)
class SaturationDetector:
    """The detector's parameters and the check they configure: a pool is saturated when no candidate has fresh
    metrics with a short queue and free KV cache.

    Only sheddable requests (priority < 0) are refused on a saturated pool. Stale metrics count as saturated: a
    pod the picker cannot see is not known to have room.
    """

    queue_depth: int = 5  # queueDepthThreshold
    kv_usage: float = 0.8  # kvCacheUtilThreshold
    staleness: float = 0.2  # metricsStalenessThreshold, seconds

    @classmethod
    def parse(cls, plugin: str, raw: object) -> SaturationDetector:
        params = ParameterReader(plugin, raw)
        detector = cls(
            queue_depth=params.integer("queueDepthThreshold", 5, 0),
            kv_usage=params.number("kvCacheUtilThreshold", 0.8, 0.0),
            staleness=params.duration("metricsStalenessThreshold", 0.2),
        )
        params.done()
        return detector

    def saturated(self, candidates: Sequence[Candidate], now: float) -> bool:
        for c in candidates:
            m = c.metrics
            if now - m.updated <= self.staleness and m.waiting <= self.queue_depth and m.kv_usage <= self.kv_usage:
                return False
        return True


class UtilizationDetector(Plugin):
    """Carries a SaturationDetector for the config's `saturationDetector` (or, with none named, the first one)."""

    type_name = "utilization-detector"

    def __init__(self, name: str, detector: SaturationDetector | None = None) -> None:
        super().__init__(name)
        self.detector = SaturationDetector() if detector is None else detector

    @classmethod
    def from_parameters(cls, name: str, raw: object) -> Self:
        return cls(name, SaturationDetector.parse(name, raw))
