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

    def get(self, key: Hashable, build: Callable[[], M]) -> M:
        found = self._current.get(key)
        if found is None:
            found = self._previous.get(key)
            if found is None:
                found = build()
            self._current[key] = found
        return found  # type: ignore[return-value]  # keys are (builder name, IR): a key always maps to one type

    def next_build(self) -> None:
        """Starts a build: what the last one did not use is forgotten."""
        self._previous, self._current = self._current, {}
