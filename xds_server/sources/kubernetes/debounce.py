"""Turns a stream of changes into bursts. A change after a quiet moment (nothing for `quiet_s` since the last burst)
is a burst of its own at once: an isolated edit is published without waiting. Changes that follow closely are
coalesced: such a burst ends once no change came for `quiet_s`, or `longest_s` after it began however many changes
keep coming, so a storm of events delays a publish by at most `longest_s` instead of starving it."""

from __future__ import annotations

import asyncio
import contextlib


class Debouncer:
    def __init__(self, quiet_s: float, longest_s: float) -> None:
        self.quiet_s = quiet_s
        self.longest_s = longest_s
        self._changed = asyncio.Event()
        self._last_burst: float | None = None  # loop time the last burst ended

    def changed(self) -> None:
        self._changed.set()

    async def burst(self, stop: asyncio.Event) -> bool:
        """Waits for a change, then for the end of its burst; False if `stop` was set first.

        Returns with every change so far counted in this burst: a caller that reads its state before its next
        await sees all of them, and any later change starts the next burst.
        """
        if not await self._wait_for_change(stop):
            return False
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._last_burst is None or now - self._last_burst >= self.quiet_s:  # after a quiet moment: at once
            self._changed.clear()
            self._last_burst = now
            return True
        deadline = now + self.longest_s
        while True:
            self._changed.clear()
            wait_s = min(self.quiet_s, deadline - loop.time())
            if wait_s <= 0 or stop.is_set():
                break
            try:
                async with asyncio.timeout(wait_s):
                    await self._changed.wait()
            except TimeoutError:
                break
        self._changed.clear()
        self._last_burst = loop.time()
        return True

    async def _wait_for_change(self, stop: asyncio.Event) -> bool:
        if self._changed.is_set():
            return True
        changed = asyncio.ensure_future(self._changed.wait())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({changed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (changed, stopping):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return not stop.is_set()
