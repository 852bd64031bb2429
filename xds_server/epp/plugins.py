"""The scheduling plugins: filters narrow the candidates, scorers rate them in [0, 1], a picker chooses.

Each plugin is a small class with typed parameters and one job, registered under the type name an
EndpointPickerConfig uses. Scorers return one score per candidate, in candidate order (lists, not dicts: this runs
for every request over every endpoint). Algorithms follow the Inference Extension's picker so a config written
for it means the same here.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from translators.xds.names import SERVED_ECHO_HEADER, TEST_SELECTION_HEADER
from xds_server.epp.metrics import EndpointMetrics
from xds_server.epp.prefix import PrefixIndex, prefix_hashes

CHARS_PER_TOKEN = 4  # the picker has no tokenizer; prompts average about four characters per token


class PickerConfigError(ValueError):
    """A config the picker cannot run, naming the plugin and parameter at fault."""


@dataclass(slots=True)
class Candidate:
    """One pool endpoint (a pod and one of its target ports) with the latest metrics the scraper has for it."""

    key: str  # "ip:port", also the scraper's and the prefix index's key
    address: str
    port: int
    pod: str
    metrics: EndpointMetrics = field(default_factory=EndpointMetrics)


@dataclass(slots=True)
class PickRequest:
    model: str
    prompt: str
    headers: Mapping[str, str]  # the request headers plugins may read, lower-case names
    priority: int = 0
    hashes: list[int] | None = None  # prefix hashes, computed by the prefix scorer, reused when it learns


def restrict(candidates: Sequence[Candidate], allowed: Sequence[str]) -> list[Candidate]:
    """Candidates named in `allowed`: entries (each possibly a comma list) are "ip" (any port) or "ip:port".
    Both the data plane's subset hint and the conformance header use this form."""
    wanted = {item.strip() for entry in allowed for item in entry.split(",") if item.strip()}
    return [c for c in candidates if c.key in wanted or c.address in wanted]


class Parameters:
    """Reads a plugin's `parameters` mapping, refusing unknown names and wrong types with the plugin named."""

    def __init__(self, plugin: str, values: Mapping[str, Any] | None) -> None:
        if values is not None and not isinstance(values, Mapping):
            raise PickerConfigError(f"plugin {plugin}: parameters must be a mapping")
        self.plugin = plugin
        self.values = dict(values or {})
        self.used: set[str] = set()

    def number(self, name: str, default: float, minimum: float, integer: bool = True) -> Any:
        self.used.add(name)
        value = self.values.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not float(value).is_integer()):
            kind = "an integer" if integer else "a number"
            raise PickerConfigError(f"plugin {self.plugin}: parameter {name} must be {kind}, got {value!r}")
        if value < minimum:
            raise PickerConfigError(f"plugin {self.plugin}: parameter {name} must be at least {minimum}, got {value}")
        return int(value) if integer else float(value)

    def duration(self, name: str, default: float) -> float:
        """Seconds, from a number of seconds or a Go-style duration such as "200ms" or "1s"."""
        self.used.add(name)
        value = self.values.get(name, default)
        seconds = _seconds(value)
        if seconds is None or seconds < 0:
            raise PickerConfigError(
                f"plugin {self.plugin}: parameter {name} must be a duration like 200ms, got {value!r}"
            )
        return seconds

    def done(self) -> None:
        unknown = sorted(set(self.values) - self.used)
        if unknown:
            raise PickerConfigError(f"plugin {self.plugin}: unknown parameter {unknown[0]}")


def _seconds(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        return None
    for suffix, scale in (("ms", 0.001), ("us", 1e-6), ("s", 1.0), ("m", 60.0)):
        if value.endswith(suffix):
            try:
                return float(value[: -len(suffix)]) * scale
            except ValueError:
                return None
    return None


class Plugin:
    type_name: ClassVar[str]

    def __init__(self, name: str) -> None:
        self.name = name


class Filter(Plugin):
    def filter(self, request: PickRequest, candidates: list[Candidate]) -> list[Candidate]:
        raise NotImplementedError


class Scorer(Plugin):
    def score(self, request: PickRequest, candidates: Sequence[Candidate]) -> list[float]:
        """One score in [0, 1] per candidate (the scheduler weighs them without clamping)."""
        raise NotImplementedError

    def picked(self, request: PickRequest, target: Candidate) -> None:
        """After scheduling: what a scorer learns from the decision (only the prefix scorer does)."""


class Picker(Plugin):
    def __init__(self, name: str, max_endpoints: int = 1) -> None:
        super().__init__(name)
        self.max_endpoints = max_endpoints

    def pick(self, candidates: Sequence[Candidate], totals: Sequence[float]) -> list[Candidate]:
        raise NotImplementedError


class ResponsePlugin(Plugin):
    def response_headers(self, served: str | None) -> list[tuple[str, str]]:
        raise NotImplementedError


# --- scorers -------------------------------------------------------------------------------------------------------


class QueueScorer(Scorer):
    """Shorter waiting queue scores higher: (max - q) / (max - min) over the candidates; 1 for all when equal."""

    type_name = "queue-scorer"

    def score(self, request: PickRequest, candidates: Sequence[Candidate]) -> list[float]:
        return _min_max([c.metrics.waiting for c in candidates])


class RunningRequestsScorer(Scorer):
    """Fewer running requests score higher, min-max scaled like the queue scorer."""

    type_name = "running-requests-size-scorer"

    def score(self, request: PickRequest, candidates: Sequence[Candidate]) -> list[float]:
        return _min_max([c.metrics.running for c in candidates])


def _min_max(values: list[int]) -> list[float]:
    low, high = min(values), max(values)
    if high == low:
        return [1.0] * len(values)
    span = high - low
    return [(high - v) / span for v in values]


class KVCacheScorer(Scorer):
    """Free KV cache scores higher: 1 - usage."""

    type_name = "kv-cache-utilization-scorer"

    def score(self, request: PickRequest, candidates: Sequence[Candidate]) -> list[float]:
        # Reported usage is outside [0, 1] only when a server misreports; such a server gets no credit.
        return [1.0 - u if 0.0 <= (u := c.metrics.kv_usage) <= 1.0 else 0.0 for c in candidates]


class LoraAffinityScorer(Scorer):
    """Prefers an endpoint already running the requested adapter, then one with a free adapter slot."""

    type_name = "lora-affinity-scorer"

    def score(self, request: PickRequest, candidates: Sequence[Candidate]) -> list[float]:
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


class PrefixCacheScorer(Scorer):
    """The share of the prompt's prefix blocks each endpoint was recently sent (see prefix.py); learns from picks."""

    type_name = "prefix-cache-scorer"

    def __init__(self, name: str, block_chars: int, max_blocks: int, capacity: int) -> None:
        super().__init__(name)
        self.block_chars = block_chars
        self.max_blocks = max_blocks
        self.index = PrefixIndex(capacity)

    def hashes(self, request: PickRequest) -> list[int]:
        if request.hashes is None:
            request.hashes = prefix_hashes(request.model, request.prompt, self.block_chars, self.max_blocks)
        return request.hashes

    def score(self, request: PickRequest, candidates: Sequence[Candidate]) -> list[float]:
        hashes = self.hashes(request)
        if not hashes:
            return [0.0] * len(candidates)
        matched = self.index.match(hashes)
        total = len(hashes)
        return [matched.get(c.key, 0) / total for c in candidates]

    def picked(self, request: PickRequest, target: Candidate) -> None:
        self.index.add(target.key, self.hashes(request))


# --- filters -------------------------------------------------------------------------------------------------------


class HeaderSelectionFilter(Filter):
    """Conformance: keeps endpoints listed in `test-epp-endpoint-selection` (IPs, or ip:port); no header keeps none."""

    type_name = "header-based-testing-filter"

    def filter(self, request: PickRequest, candidates: list[Candidate]) -> list[Candidate]:
        return restrict(candidates, [request.headers.get(TEST_SELECTION_HEADER, "")])


# --- pickers -------------------------------------------------------------------------------------------------------


class MaxScorePicker(Picker):
    """The highest totals, ties broken at random (so equal endpoints share load instead of the first taking all)."""

    type_name = "max-score-picker"

    def pick(self, candidates: Sequence[Candidate], totals: Sequence[float]) -> list[Candidate]:
        if self.max_endpoints == 1:  # the common case, in one pass without sorting
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
        return [candidates[i] for i in order[: self.max_endpoints]]


class RandomPicker(Picker):
    type_name = "random-picker"

    def pick(self, candidates: Sequence[Candidate], totals: Sequence[float]) -> list[Candidate]:
        return random.sample(list(candidates), min(self.max_endpoints, len(candidates)))


class WeightedRandomPicker(Picker):
    """Chooses with probability proportional to the total (A-Res sampling: key = U ** (1 / total))."""

    type_name = "weighted-random-picker"

    def pick(self, candidates: Sequence[Candidate], totals: Sequence[float]) -> list[Candidate]:
        if not any(t > 0 for t in totals):
            return random.sample(list(candidates), min(self.max_endpoints, len(candidates)))
        keys = [random.random() ** (1.0 / t) if t > 0 else 0.0 for t in totals]
        order = sorted(range(len(candidates)), key=lambda i: keys[i], reverse=True)
        return [candidates[i] for i in order[: self.max_endpoints]]


# --- response plugins ------------------------------------------------------------------------------------------------


class ServedEndpointVerifier(ResponsePlugin):
    """Conformance: echoes the endpoint Envoy reports having served the request as a response header."""

    type_name = "destination-endpoint-served-verifier"

    def response_headers(self, served: str | None) -> list[tuple[str, str]]:
        value = served if served else "fail: missing destination endpoint served metadata"
        return [(SERVED_ECHO_HEADER, value)]


# --- saturation ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SaturationDetector:
    """A pool is saturated when no candidate has fresh metrics with a short queue and free KV cache.

    Only sheddable requests (priority < 0) are refused on a saturated pool. Stale metrics count as saturated: a
    pod the picker cannot see is not known to have room.
    """

    queue_depth: int = 5
    kv_usage: float = 0.8
    staleness: float = 0.2  # seconds

    def saturated(self, candidates: Sequence[Candidate], now: float) -> bool:
        for c in candidates:
            m = c.metrics
            if now - m.updated <= self.staleness and m.waiting <= self.queue_depth and m.kv_usage <= self.kv_usage:
                return False
        return True


class SingleProfileHandler(Plugin):
    """Runs the one scheduling profile, whose result is the pick (the only profile handler built in)."""

    type_name = "single-profile-handler"


class UtilizationDetector(Plugin):
    type_name = "utilization-detector"

    def __init__(self, name: str, detector: SaturationDetector) -> None:
        super().__init__(name)
        self.detector = detector


# --- the registry ----------------------------------------------------------------------------------------------------


def _stateless(cls: type[Plugin]) -> Callable[[str, Parameters], Plugin]:
    return lambda name, params: cls(name)


def _picker(cls: type[Picker]) -> Callable[[str, Parameters], Plugin]:
    return lambda name, params: cls(name, params.number("maxNumOfEndpoints", 1, 1))


def _prefix(name: str, params: Parameters) -> Plugin:
    """Block size in characters (`hashBlockSize`, v1.0) or tokens (`blockSizeTokens`, 4 characters each)."""
    if "hashBlockSize" in params.values and "blockSizeTokens" in params.values:
        raise PickerConfigError(f"plugin {name}: set hashBlockSize (characters) or blockSizeTokens, not both")
    if "blockSizeTokens" in params.values:
        block_chars = params.number("blockSizeTokens", 16, 1) * CHARS_PER_TOKEN
    else:
        block_chars = params.number("hashBlockSize", 64, 1)
    max_blocks = params.number("maxPrefixBlocksToMatch", 256, 1)
    if "maxPrefixTokensToMatch" in params.values:
        max_blocks = max(1, params.number("maxPrefixTokensToMatch", 0, 1) * CHARS_PER_TOKEN // block_chars)
    capacity = params.number("lruCapacityPerServer", 31250, 1)
    return PrefixCacheScorer(name, block_chars, max_blocks, capacity)


def _utilization(name: str, params: Parameters) -> Plugin:
    detector = SaturationDetector(
        queue_depth=params.number("queueDepthThreshold", 5, 0),
        kv_usage=params.number("kvCacheUtilThreshold", 0.8, 0.0, integer=False),
        staleness=params.duration("metricsStalenessThreshold", 0.2),
    )
    return UtilizationDetector(name, detector)


REGISTRY: dict[str, Callable[[str, Parameters], Plugin]] = {
    QueueScorer.type_name: _stateless(QueueScorer),
    RunningRequestsScorer.type_name: _stateless(RunningRequestsScorer),
    KVCacheScorer.type_name: _stateless(KVCacheScorer),
    LoraAffinityScorer.type_name: _stateless(LoraAffinityScorer),
    PrefixCacheScorer.type_name: _prefix,
    HeaderSelectionFilter.type_name: _stateless(HeaderSelectionFilter),
    MaxScorePicker.type_name: _picker(MaxScorePicker),
    RandomPicker.type_name: _picker(RandomPicker),
    WeightedRandomPicker.type_name: _picker(WeightedRandomPicker),
    ServedEndpointVerifier.type_name: _stateless(ServedEndpointVerifier),
    UtilizationDetector.type_name: _utilization,
    SingleProfileHandler.type_name: _stateless(SingleProfileHandler),
}


def build_plugin(type_name: str, name: str, parameters: Mapping[str, Any] | None) -> Plugin:
    factory = REGISTRY.get(type_name)
    if factory is None:
        known = ", ".join(sorted(REGISTRY))
        raise PickerConfigError(f"plugin {name}: unknown type {type_name!r} (known: {known})")
    params = Parameters(name, parameters)
    plugin = factory(name, params)
    params.done()
    return plugin
