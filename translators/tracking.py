"""What a piece of the translation read, so that its result can be reused while none of that changed.

A `Tracker` attached to a ResourceSet sees every `get` (one object, by key), every `of_kind` (a whole kind) and the
label selections an index answers (`selection`: the pods a Service selects). The translation opens a frame per route
(`reading`); reads outside any frame belong to the shared context (Gateways, listeners, policies...) until
`context_done`: what the translation reads after its routes (statuses of pools and backends...) is done again every
time, so it is nobody's dependency. Which objects of a kind exist is an answer about all of them, so a whole kind
read is a dependency on every object of it: the context's are shared (`kinds`), a route's are kept with its reads.

Per-build caches that hand one computation's result to another (a pool resolved once for every route that uses it)
must hand over its reads too: `cached` keeps them with the value and adds them to the frame of each later user.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

# An object's identity in the ResourceSet: (kind, namespace, name), as ObjectKey (a NamedTuple of these) has it.
Key = tuple[str, str, str]
V = TypeVar("V")


@dataclass
class Reads:
    keys: set[Key] = field(default_factory=set)


def kind_key(kind: str) -> Key:
    """The key a read of a whole kind is recorded under, in a route's reads: any change to the kind concerns it."""
    return (kind, "*", "*")


def selection_key(kind: str, namespace: str, labels: Mapping[str, str]) -> Key:
    """The key a selection of `kind` objects by `labels` in `namespace` is recorded under."""
    return (kind, namespace, "?" + "&".join(f"{k}={v}" for k, v in sorted(labels.items())))


def selects(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """Whether an object with `labels` is selected by `selector` (matchLabels; an empty selector selects nothing)."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


class Tracker:
    def __init__(self) -> None:
        self.shared = Reads()  # the context's reads
        self.kinds: set[str] = set()  # kinds read whole, in the context or by a route
        self.selectors: dict[Key, Mapping[str, str]] = {}  # every selection recorded, by its key
        self._frames: list[Reads] = [self.shared]
        self._context = True

    def key(self, key: Key) -> None:
        self._frames[-1].keys.add(key)

    def kind(self, kind: str) -> None:
        if len(self._frames) > 1:  # a route's: kept with its other reads, for as long as its result is reused
            self._frames[-1].keys.add(kind_key(kind))
        elif self._context:
            self.kinds.add(kind)

    def selection(self, kind: str, namespace: str, labels: Mapping[str, str]) -> None:
        key = selection_key(kind, namespace, labels)
        self.selectors.setdefault(key, labels)
        self.key(key)

    def context_done(self) -> None:
        """From now on, reads outside a frame are no dependency (see the module's docstring)."""
        self._context = False
        self._frames[0] = Reads()

    @contextmanager
    def reading(self) -> Iterator[Reads]:
        """A frame of its own: the reads made inside it are its result's dependencies."""
        frame = Reads()
        self._frames.append(frame)
        try:
            yield frame
        finally:
            self._frames.pop()

    def cached(self, cache: MutableMapping[Hashable, tuple[V, Reads]], key: Hashable, compute: Callable[[], V]) -> V:
        """`compute()` once per key, its reads recorded in every frame that uses the value."""
        found = cache.get(key)
        if found is None:
            with self.reading() as reads:
                found = cache[key] = (compute(), reads)
        self._frames[-1].keys |= found[1].keys
        return found[0]
