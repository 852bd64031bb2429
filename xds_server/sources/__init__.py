"""Where resources come from. A `Source` loads a whole `ResourceSet` and then watches for changes, calling back with
each new one; the composition root hands them to the control plane. `files` reads watched manifests; a Kubernetes
source (list/watch) and `up`'s local pods plug in the same way."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from translators.loader import ResourceSet

OnLoad = Callable[[ResourceSet], Awaitable[None]]


class Source(Protocol):
    def load(self) -> ResourceSet:
        """Everything the source holds now (may block on I/O: run it in a worker thread)."""

    async def watch(self, on_load: OnLoad, stop: asyncio.Event) -> None:
        """Calls `on_load` with the whole new set after every (debounced) change, until `stop` is set."""
