"""Watched manifest files: every change (debounced) reloads them all, keeping the last good version of what broke."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import watchfiles

from translators.loader import MANIFEST_SUFFIXES, ResourceSet, keep_last_good, load_paths

log = logging.getLogger(__name__)

DEBOUNCE_MS = 50


class FileSource:
    def __init__(self, paths: Sequence[str | Path]) -> None:
        self.paths = [Path(p).resolve() for p in paths]
        self.loaded = ResourceSet()

    def load(self) -> ResourceSet:
        """Reads every path again (blocking I/O and parsing: run it in a thread)."""
        self.loaded = keep_last_good(self.loaded, load_paths(self.paths))
        return self.loaded

    def _relevant(self, _change: watchfiles.Change, path: str) -> bool:
        # Editors write temporary files next to the manifest; only manifests, and the named paths, matter.
        return Path(path).suffix in MANIFEST_SUFFIXES or Path(path) in self.paths

    async def watch(self, on_load: Callable[[ResourceSet], Awaitable[None]], stop: asyncio.Event) -> None:
        """Calls `on_load` after every burst of changes, until `stop` is set."""
        watched = [p if p.is_dir() else p.parent for p in self.paths]
        async for changes in watchfiles.awatch(
            *watched, watch_filter=self._relevant, debounce=DEBOUNCE_MS, step=10, stop_event=stop, recursive=False
        ):
            log.info("reloading after %d file change(s)", len(changes))
            await on_load(await asyncio.to_thread(self.load))
