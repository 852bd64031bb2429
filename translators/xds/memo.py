"""Messages built in the previous translation, reused for IR values that did not change.

A large Gateway changes a little at a time; building every cluster and route message again on each reload is most
of the xDS step. IR values are frozen and hashable, and the same IR always builds the same message, so reusing the
message is invisible in the output. Only what the latest build used is kept, so the memo never outgrows one config.
Messages handed out must not be mutated by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

from google.protobuf.message import Message

M = TypeVar("M", bound=Message)


class Memo:
    def __init__(self) -> None:
        self._previous: dict[Hashable, Message] = {}
        self._current: dict[Hashable, Message] = {}
        # The same, by the IR value's identity: a translation that reused a route's IR (translators.gatewayapi.
        # incremental) hands the very same objects again, and hashing a deep frozen IR value costs more than the
        # lookup. Each entry holds its value, so no other object can have its id while the entry exists.
        self._previous_ids: dict[tuple[str, int, Hashable], tuple[object, Message]] = {}
        self._current_ids: dict[tuple[str, int, Hashable], tuple[object, Message]] = {}

    def get(self, key: Hashable, build: Callable[[], M]) -> M:
        found = self._current.get(key)
        if found is None:
            found = self._previous.get(key)
            if found is None:
                found = build()
            self._current[key] = found
        return found  # type: ignore[return-value]  # keys are (builder name, IR): a key always maps to one type

    def of(self, builder: str, value: Hashable, variant: Hashable, build: Callable[[], M]) -> M:
        """`get((builder, value, variant), build)`, found by the identity of `value` when it was used before."""
        id_key = (builder, id(value), variant)
        found = self._current_ids.get(id_key) or self._previous_ids.get(id_key)
        if found is None or found[0] is not value:
            found = (value, self.get((builder, value, variant), build))
        self._current_ids[id_key] = found
        return found[1]  # type: ignore[return-value]  # as in `get`

    def next_build(self) -> None:
        """Starts a build: what the last one did not use is forgotten."""
        self._previous, self._current = self._current, {}
        self._previous_ids, self._current_ids = self._current_ids, {}
