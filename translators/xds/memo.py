"""Messages built in the previous translation, reused for IR values that did not change.

A large Gateway changes a little at a time; building every cluster and route message again on each reload is most
of the xDS step. IR values are frozen and hashable, and the same IR always builds the same message, so reusing the
message is invisible in the output. Only what the latest build used is kept, so the memo never outgrows one config.
Messages (and the bytes made of them) handed out must not be mutated by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import compress
from operator import is_
from typing import Any, Generic, TypeVar, cast

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
V = TypeVar("V")
_IS_NONE = partial(is_, None)


def fill_in(found: list[T | None], values: Sequence[V], make: Callable[[V], T]) -> list[T]:
    """`found` (what was found of each of `values`, None for what was not, `map`ped in C from an earlier build's
    table), with each None replaced by `make` of its value, which never answers None. The Nones are found by
    `compress`, also in C: one Python step per value made, none per value found (and no `==`, which a dataclass
    answers in Python)."""
    for at in list(compress(range(len(found)), map(_IS_NONE, found))):
        found[at] = make(values[at])
    return cast(list[T], found)


@dataclass
class _Series(Generic[T]):
    """What was made of each value of `each` calls, by the value's identity. Identity because a translation that
    reused a route's IR (translators.gatewayapi.incremental) hands the very same objects again, and hashing deep
    frozen IR values costs more than the lookup; `kept` holds the values, so no other object can have their ids."""

    kept: list[Sequence[object]] = field(default_factory=list)
    made: dict[int, T] = field(default_factory=dict)


class Memo:
    def __init__(self) -> None:
        self._previous: dict[Hashable, object] = {}
        self._current: dict[Hashable, object] = {}
        self._previous_series: dict[Hashable, _Series[Any]] = {}
        self._current_series: dict[Hashable, _Series[Any]] = {}
        self._previous_equal: dict[str, dict[Any, Any]] = {}
        self._current_equal: dict[str, dict[Any, Any]] = {}

    def get(self, key: Hashable, build: Callable[[], T]) -> T:
        found = self._current.get(key)
        if found is None:
            found = self._previous.get(key)
            if found is None:
                found = build()
            self._current[key] = found
        return found  # type: ignore[return-value]  # keys are (builder name, IR...): a key always maps to one type

    def each(self, builder: str, values: Sequence[V], variant: Hashable, build: Callable[[V], T]) -> list[T]:
        """`[build(v) for v in values]` (`build` never answers None), where what the last build made of the very
        same objects (with the same `variant`) is reused, found in bulk (`fill_in`): a reload of 10,000 routes of
        which one is new calls `build` once, and no Python code for the others. `build` may `get` what it makes, to
        reuse it for equal values that are not the same objects."""
        earlier = self._previous_series.get((builder, variant))
        found = list(map(earlier.made.get, map(id, values))) if earlier is not None else [None] * len(values)
        made = fill_in(found, values, build)
        current = self._current_series.setdefault((builder, variant), _Series())
        current.kept.append(values)
        current.made.update(zip(map(id, values), made, strict=True))
        return made

    def each_equal(self, builder: str, keys: Sequence[K], build: Callable[[K], T]) -> list[T]:
        """`[build(k) for k in keys]`, where what the last build made of equal keys is reused, found in bulk as in
        `each`. Keys must hash and compare in C (strings, numbers, tuples of them): not IR dataclasses."""
        found = list(map(self._previous_equal.get(builder, {}).get, keys))
        made = fill_in(found, keys, build)
        self._current_equal.setdefault(builder, {}).update(zip(keys, made, strict=True))
        return made

    def next_build(self) -> None:
        """Starts a build: what the last one did not use is forgotten."""
        self._previous, self._current = self._current, {}
        self._previous_series, self._current_series = self._current_series, {}
        self._previous_equal, self._current_equal = self._current_equal, {}
