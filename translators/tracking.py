"""What a piece of the translation read, so that its result can be reused while none of that changed.

A `Tracker` attached to a ResourceSet sees every `get` (one object, by key) and every `of_kind` (a whole kind). The
translation opens a frame per route (`reading`); reads outside any frame belong to the shared context (Gateways,
listeners, policies...). A kind read anywhere is a shared dependency: which objects of a kind exist is an answer
about all of them, so a change to any object of that kind may change what was derived from it.

Per-build caches that hand one computation's result to another (a pool resolved once for every route that uses it)
must hand over its reads too: `cached` keeps them with the value and adds them to the frame of each later user.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

# An object's identity in the ResourceSet: (kind, namespace, name), as ObjectKey (a NamedTuple of these) has it.
Key = tuple[str, str, str]
V = TypeVar("V")


@dataclass
class Reads:
    keys: set[Key] = field(default_factory=set)


class Tracker:
    def __init__(self) -> None:
        self.shared = Reads()  # the context's reads
        self.kinds: set[str] = set()  # kinds read whole, anywhere
        self._frames: list[Reads] = [self.shared]

    def key(self, key: Key) -> None:
        self._frames[-1].keys.add(key)

    def kind(self, kind: str) -> None:
        self.kinds.add(kind)

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
