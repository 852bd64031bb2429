"""Rebuilds on request, coalesced: every change translation can see asks for one, and a burst costs one or two."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Publisher:
    """Rebuilds on request, one build at a time; requests made during a build are covered by the next one."""

    def __init__(self, publish: Callable[[], Awaitable[None]], failed: Callable[[Exception], None]) -> None:
        self._publish = publish
        self._failed = failed
        self.requested = 0
        self.published = 0
        self._wake = asyncio.Event()
        self._done = asyncio.Condition()

    def request(self) -> int:
        """Asks for a rebuild; returns the generation whose publication includes every change made so far."""
        self.requested += 1
        self._wake.set()
        return self.requested

    @property
    def idle(self) -> bool:
        return self.published == self.requested

    async def wait(self, generation: int) -> None:
        async with self._done:
            await self._done.wait_for(lambda: self.published >= generation)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            generation = self.requested
            try:
                await self._publish()
            except Exception as error:  # a failed build must not stop later ones
                log.exception("rebuild failed")
                self._failed(error)
            async with self._done:
                self.published = generation
                self._done.notify_all()
