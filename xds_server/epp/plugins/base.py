"""What every scheduling plugin works with: the contracts, the values a cycle passes around, parameter parsing.

A scheduling cycle (scheduler.py) runs one profile's plugins over the candidates: filters narrow them, scorers
rate each in [0, 1], a picker chooses, then scorers learn from the choice. Scorers return one score per
candidate, in candidate order (lists, not dicts: this runs for every request over every endpoint).

Nothing a cycle sees is changed under it: the pool's endpoints, the candidates (an endpoint paired with one
metrics sample, which the scraper replaces and never edits once published) and the request are frozen; what a
plugin computes for one cycle and needs again later in that cycle lives in the cycle's `CycleState`, under the
plugin's name.

Each plugin parses its own `parameters` into a frozen dataclass (its `Params`), refusing unknown names and wrong
types with the plugin and parameter named; `ParameterReader` is the shared parsing those classes use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, Self, TypeVar

from xds_server.epp.metrics import EndpointMetrics

NEVER_SCRAPED = EndpointMetrics()  # updated 0.0: as stale as can be


class PickerConfigError(ValueError):
    """A config the picker cannot run, naming the plugin and parameter at fault."""


# --- what a cycle works on -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One pool endpoint: a pod and one of its target ports. The pool keeps these; nothing changes them."""

    key: str  # "ip:port" ("[ip]:port" for IPv6), also the scraper's and the prefix index's key
    address: str
    port: int
    pod: str


@dataclass(frozen=True, slots=True)
class Candidate:
    """An endpoint paired with the metrics sample a scheduling cycle sees for it.

    Immutable, so one pairing can serve every request until the scraper replaces the sample (see
    `PoolState.paired`); a new sample makes a new Candidate.
    """

    key: str
    address: str
    port: int
    pod: str
    metrics: EndpointMetrics

    @classmethod
    def of(cls, endpoint: Endpoint, metrics: EndpointMetrics = NEVER_SCRAPED) -> Candidate:
        return cls(endpoint.key, endpoint.address, endpoint.port, endpoint.pod, metrics)

    def with_metrics(self, metrics: EndpointMetrics) -> Candidate:
        """The same endpoint with another sample (a new Candidate: this one may be in another request's hands)."""
        return Candidate(self.key, self.address, self.port, self.pod, metrics)


@dataclass(frozen=True, slots=True)
class PickRequest:
    model: str
    prompt: str
    headers: Mapping[str, str]  # the request headers plugins may read, lower-case names
    priority: int = 0


T = TypeVar("T")


class CycleState:
    """What plugins compute during one scheduling cycle, keyed by plugin name (config.py refuses a name used twice,
    so two plugins never share a key). A new one per cycle: nothing in it outlives the request."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[str, object] = {}

    def read(self, key: str, kind: type[T]) -> T | None:
        """The value written under `key`, None when there is none; a value of another type is a bug, and raises."""
        value = self._values.get(key)
        if value is None:
            return None
        if isinstance(value, kind):
            return value
        raise TypeError(f"cycle state {key!r} holds a {type(value).__name__}, not a {kind.__name__}")

    def write(self, key: str, value: object) -> None:
        self._values[key] = value


class Addressed(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def address(self) -> str: ...


A = TypeVar("A", bound=Addressed)


def restrict(candidates: Sequence[A], allowed: Sequence[str]) -> list[A]:
    """Candidates named in `allowed`: entries (each possibly a comma list) are "ip" (any port) or "ip:port".
    Both the data plane's subset hint and the conformance header use this form."""
    wanted = {item.strip() for entry in allowed for item in entry.split(",") if item.strip()}
    return [c for c in candidates if c.key in wanted or c.address in wanted]


# --- parameters ------------------------------------------------------------------------------------------------


class ParameterReader:
    """Reads one plugin's `parameters` mapping for its `Params.parse`: each read checks one parameter's type and
    range, `done` refuses any name nothing read. Every error names the plugin and the parameter."""

    def __init__(self, plugin: str, values: object) -> None:
        if values is not None and not isinstance(values, Mapping):
            raise PickerConfigError(f"plugin {plugin}: parameters must be a mapping")
        self.plugin = plugin
        self.values: dict[str, object] = {str(k): v for k, v in (values or {}).items()}
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.values

    def integer(self, name: str, default: int, minimum: int) -> int:
        return int(self._number(name, default, minimum, integer=True))

    def number(self, name: str, default: float, minimum: float) -> float:
        return float(self._number(name, default, minimum, integer=False))

    def _number(self, name: str, default: float, minimum: float, integer: bool) -> float:
        self.used.add(name)
        value = self.values.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not float(value).is_integer()):
            kind = "an integer" if integer else "a number"
            raise PickerConfigError(f"plugin {self.plugin}: parameter {name} must be {kind}, got {value!r}")
        if value < minimum:
            raise PickerConfigError(f"plugin {self.plugin}: parameter {name} must be at least {minimum}, got {value}")
        return value

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


@dataclass(frozen=True)
class NoParameters:
    """The parameters of a plugin that takes none: any name given is refused."""

    @classmethod
    def parse(cls, plugin: str, raw: object) -> NoParameters:
        ParameterReader(plugin, raw).done()
        return cls()


@dataclass(frozen=True)
class PickerParams:
    """A picker's parameters: how many endpoints it returns (the first is primary, the rest fallbacks)."""

    max_endpoints: int = 1  # maxNumOfEndpoints

    @classmethod
    def parse(cls, plugin: str, raw: object) -> PickerParams:
        reader = ParameterReader(plugin, raw)
        params = cls(max_endpoints=reader.integer("maxNumOfEndpoints", 1, 1))
        reader.done()
        return params


# --- the contracts ---------------------------------------------------------------------------------------------


class Plugin:
    """A named plugin of one type. `from_parameters` builds one from a config entry (the registry calls it)."""

    type_name: ClassVar[str]

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def from_parameters(cls, name: str, raw: object) -> Self:
        """A plugin without parameters: refuses any. Plugins with parameters parse their own `Params`."""
        NoParameters.parse(name, raw)
        return cls(name)


class Filter(Plugin):
    def filter(self, cycle: CycleState, request: PickRequest, candidates: Sequence[Candidate]) -> list[Candidate]:
        raise NotImplementedError


class Scorer(Plugin):
    def score(self, cycle: CycleState, request: PickRequest, candidates: Sequence[Candidate]) -> list[float]:
        """One score in [0, 1] per candidate (the scheduler weighs them without clamping)."""
        raise NotImplementedError

    def picked(self, cycle: CycleState, request: PickRequest, target: Candidate) -> None:
        """After the pick, in the same cycle: what a scorer learns from the decision (only the prefix scorer does)."""


class Picker(Plugin):
    def __init__(self, name: str, params: PickerParams | None = None) -> None:
        super().__init__(name)
        self.params = PickerParams() if params is None else params

    @classmethod
    def from_parameters(cls, name: str, raw: object) -> Self:
        return cls(name, PickerParams.parse(name, raw))

    @property
    def max_endpoints(self) -> int:
        return self.params.max_endpoints

    def pick(self, cycle: CycleState, candidates: Sequence[Candidate], totals: Sequence[float]) -> list[Candidate]:
        raise NotImplementedError


class ResponsePlugin(Plugin):
    def response_headers(self, served: str | None) -> list[tuple[str, str]]:
        raise NotImplementedError
