"""Child processes that die with the runner, restart with backoff when they crash, and stop cleanly.

Each child is its own process group (session), so a Ctrl-C in the terminal reaches only the runner, which then
stops the children in order; and each asks the kernel for SIGKILL when its parent dies
(`prctl(PR_SET_PDEATHSIG)`), so not even a SIGKILLed runner leaves one behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1
STOP_GRACE_SECONDS = 5.0
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
HEALTHY_RUN_SECONDS = 60.0  # a process that ran this long before exiting starts its backoff over

try:  # loaded here, not in the child: the child between fork and exec should do as little as possible
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None


def die_with_parent(parent: int) -> Callable[[], None]:
    def preexec() -> None:
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect: nobody would kill us
            os._exit(1)

    return preexec


async def spawn(argv: Sequence[str], env: Mapping[str, str], log: Path, banner: str) -> asyncio.subprocess.Process:
    """A child in a session of its own that dies with us, its output appended to `log` after a `--- banner` line."""
    with log.open("ab") as out:
        out.write(f"--- {banner}\n".encode())
        out.flush()
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
            preexec_fn=die_with_parent(os.getpid()),
        )


def backoff(restarts_in_a_row: int) -> float:
    return min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2.0**restarts_in_a_row)


def next_restart(crashes_in_a_row: int, ran_seconds: float) -> tuple[int, float]:
    """After a crash: the crashes in a row counting this one, and the wait before the restart. A process that ran a
    minute starts over at the first wait (1 s), never at none: a crash loop always backs off."""
    crashes = 1 if ran_seconds >= HEALTHY_RUN_SECONDS else crashes_in_a_row + 1
    return crashes, backoff(crashes - 1)


Started = Callable[[int], None]  # pid
Exited = Callable[[int, float], None]  # exit code (negative: signal), seconds until the restart


class Supervised:
    """One program kept running until `stop()`: output appended to `log`, restarted with backoff when it exits."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        log: Path,
        started: Started,
        exited: Exited,
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.log = log
        self.restarts = 0
        self._started = started
        self._exited = exited
        self._stop = asyncio.Event()
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _spawn(self) -> asyncio.subprocess.Process | None:
        try:
            return await spawn(
                self.argv, self.env, self.log, f"{time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(self.argv)}"
            )
        except OSError as error:
            with self.log.open("ab") as out:
                out.write(f"--- cannot start: {error}\n".encode())
            return None

    async def _run(self) -> None:
        in_a_row = 0
        while not self._stop.is_set():
            began = time.monotonic()
            process = self._process = await self._spawn()
            if process is not None:
                self._started(process.pid)
                exit_code = asyncio.ensure_future(process.wait())
                stop = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait({exit_code, stop}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if not exit_code.done():
                    await self._terminate(process)
                    return
                code = exit_code.result()
            else:
                code = 127
            if self._stop.is_set():
                return
            in_a_row, delay = next_restart(in_a_row, time.monotonic() - began)
            self.restarts += 1
            self._exited(code, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM to its process group, SIGKILL after the grace period; always reaped."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE_SECONDS)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.shield(self._task)  # a cancelled caller must not leave the child unreaped
