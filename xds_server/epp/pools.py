"""The picker's datastore: for each InferencePool, its endpoints, objectives and scheduling config.

Pools follow the control plane's builds (`EndpointPicker.follow` in picker.py): a pod that turns NotReady or
disappears leaves the candidates with the next build, within the file watcher's debounce plus one translation.
An endpoint that stays keeps its `Candidate` object, and with it the prefix index's knowledge of it.
"""

from __future__ import annotations

import logging
from typing import Any

from translators.ir import PoolIR
from xds_server.epp.config import PickerConfig, load_config
from xds_server.epp.metrics import ENGINES
from xds_server.epp.plugins import Candidate, PickerConfigError, PrefixCacheScorer
from xds_server.epp.scheduler import Decision

log = logging.getLogger(__name__)

DEFAULT_ORIGIN = "default profile"


class PoolState:
    def __init__(self, key: str) -> None:
        self.key = key  # "<namespace>/<name>"
        self.candidates: list[Candidate] = []
        self.engines: dict[str, str] = {}  # endpoint key -> model server engine (which metric names to read)
        self.objectives: dict[str, int] = {}  # InferenceObjective name -> priority
        self.config: PickerConfig = load_config(None, DEFAULT_ORIGIN)
        self.config_source: tuple[str | None, str] = (None, DEFAULT_ORIGIN)
        self.config_error: str | None = None
        self.last_decision: Decision | None = None
        self._warned: set[tuple[str, str]] = set()

    def update(self, pool: PoolIR) -> None:
        previous = {c.key: c for c in self.candidates}
        candidates = []
        self.engines = {}
        for member in pool.members:
            key = f"[{member.address}]:{member.port}" if ":" in member.address else f"{member.address}:{member.port}"
            kept = previous.get(key)
            if kept is None or kept.pod != member.pod:
                kept = Candidate(key, member.address, member.port, member.pod)
            candidates.append(kept)
            self.engines[key] = self._engine(member.pod, member.engine)
        self.candidates = candidates
        self.objectives = {o.name: o.priority for o in pool.objectives}
        self._configure(pool)
        present = set(self.engines)
        for plugin in self.config.plugins.values():
            if isinstance(plugin, PrefixCacheScorer):
                plugin.index.remove_endpoints(present)

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
            "endpoints": [{"endpoint": c.key, "pod": c.pod, **metrics.get(c.key, {})} for c in self.candidates],
            "objectives": self.objectives,
            "config": self.config.describe(),
            "configError": self.config_error,
            "lastPick": self.last_decision.explain() if self.last_decision is not None else None,
        }
