"""The picker's datastore: for each InferencePool, its endpoints, objectives and scheduling config.

Pools follow the control plane's builds (`EndpointPicker.follow` in picker.py): a pod that turns NotReady or
disappears leaves the endpoints with the next build, within the file watcher's debounce plus one translation.
An endpoint that stays keeps its `Endpoint` object, and the prefix index keeps its knowledge of it.

Endpoints are immutable; per request they are paired with the scraper's latest samples as `Candidate`s (see
`paired`). Nothing a request does changes the pool's endpoints or a candidate another request holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from translators.ir import PoolIR
from xds_server.epp.config import PickerConfig, load_config
from xds_server.epp.metrics import ENGINES, EndpointMetrics
from xds_server.epp.plugins.base import NEVER_SCRAPED, Candidate, Endpoint, PickerConfigError
from xds_server.epp.plugins.prefix_cache_scorer import PrefixCacheScorer
from xds_server.epp.scheduler import Decision

log = logging.getLogger(__name__)

DEFAULT_ORIGIN = "default profile"


class PoolState:
    def __init__(self, key: str) -> None:
        self.key = key  # "<namespace>/<name>"
        self.endpoints: tuple[Endpoint, ...] = ()
        # The last pairing `paired` made (one Candidate per endpoint, in order) and the samples it was made from.
        self._keys: tuple[str, ...] = ()
        self._samples: list[EndpointMetrics | None] = []
        self._paired: tuple[Candidate, ...] = ()
        self.engines: dict[str, str] = {}  # endpoint key -> model server engine (which metric names to read)
        self.objectives: dict[str, int] = {}  # InferenceObjective name -> priority
        self.config: PickerConfig = load_config(None, DEFAULT_ORIGIN)
        self.config_source: tuple[str | None, str] = (None, DEFAULT_ORIGIN)
        self.config_error: str | None = None
        self.last_decision: Decision | None = None
        self._warned: set[tuple[str, str]] = set()

    def update(self, pool: PoolIR) -> None:
        previous = {e.key: e for e in self.endpoints}
        endpoints = []
        self.engines = {}
        for member in pool.members:
            key = f"[{member.address}]:{member.port}" if ":" in member.address else f"{member.address}:{member.port}"
            kept = previous.get(key)
            if kept is None or kept.pod != member.pod:
                kept = Endpoint(key, member.address, member.port, member.pod)
            endpoints.append(kept)
            self.engines[key] = self._engine(member.pod, member.engine)
        self.endpoints = tuple(endpoints)
        self._keys = tuple(e.key for e in self.endpoints)
        self._samples = [None] * len(self._keys)
        self._paired = tuple(Candidate.of(e, NEVER_SCRAPED) for e in self.endpoints)
        self.objectives = {o.name: o.priority for o in pool.objectives}
        self._configure(pool)
        present = set(self.engines)
        for plugin in self.config.plugins.values():
            if isinstance(plugin, PrefixCacheScorer):
                plugin.index.remove_endpoints(present)

    def paired(self, latest: Callable[[str], EndpointMetrics | None]) -> tuple[Candidate, ...]:
        """Each endpoint with its latest sample (`latest(key)`; None: never scraped), as immutable Candidates.

        Runs per request over every endpoint. While no sample changed since the last call (the scraper makes a new
        sample object per scrape), the last pairing is returned as it is: sharing it is safe, nothing in it can
        change. Otherwise a new pairing, with new Candidates where the sample changed and the old ones elsewhere.
        """
        samples = list(map(latest, self._keys))
        if samples == self._samples:  # element by element, identity first: unchanged samples cost no __eq__
            return self._paired
        self._samples = samples
        self._paired = candidates = tuple(
            [
                c if (m := NEVER_SCRAPED if s is None else s) is c.metrics else c.with_metrics(m)
                for c, s in zip(self._paired, samples, strict=True)
            ]
        )
        return candidates

    def _engine(self, pod: str, engine: str) -> str:
        """An engine whose metric names the picker does not know is read with vLLM's names, said once per pod."""
        if engine in ENGINES:
            return engine
        if (pod, engine) not in self._warned:
            self._warned.add((pod, engine))
            log.warning("pool %s: pod %s has engine %r; reading vLLM metric names", self.key, pod, engine)
        return "vllm"

    def _configure(self, pool: PoolIR) -> None:
        source = pool.picker_config
        if source.error is not None:
            self._refuse(source.error)
            return
        wanted = (source.text, source.origin)
        if wanted == self.config_source:
            return
        try:
            self.config = load_config(source.text, source.origin)
        except PickerConfigError as error:
            self._refuse(f"{source.origin}: {error}")
            return
        self.config_source = wanted
        self.config_error = None
        log.info("pool %s schedules with %s", self.key, source.origin)

    def _refuse(self, reason: str) -> None:
        """Keeps scheduling with the last good config (the default profile if there never was one)."""
        if reason != self.config_error:
            log.error("pool %s: picker config refused, still using %s: %s", self.key, self.config.origin, reason)
        self.config_error = reason

    def document(self, metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """/debug/pools/<ns>/<name>: endpoints with their latest metrics, the config, the last decision."""
        return {
            "pool": self.key,
            "endpoints": [{"endpoint": e.key, "pod": e.pod, **metrics.get(e.key, {})} for e in self.endpoints],
            "objectives": self.objectives,
            "config": self.config.describe(),
            "configError": self.config_error,
            "lastPick": self.last_decision.explain() if self.last_decision is not None else None,
        }
