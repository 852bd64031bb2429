"""One container of a pod: its process (in the pod's namespaces), restarts with backoff by the pod's restartPolicy,
startup/readiness/liveness probes (the same probe code `up` uses), preStop hooks, and its status as the API shows
it (`state`, `lastState`, `ready`, `started`, `restartCount`)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from translators.resources.core import ContainerPort
from xds_server.up.processes import backoff, spawn
from xds_server.up.readiness import Probe, UnsupportedProbe, probe_once, readiness_probe, watch

log = logging.getLogger(__name__)


class RestartPolicy(StrEnum):
    ALWAYS = "Always"
    ON_FAILURE = "OnFailure"
    NEVER = "Never"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _probe(spec: Mapping[str, Any] | None, ports: Sequence[ContainerPort]) -> Probe | None:
    """None without a probe: Kubernetes then counts a running container as ready (and alive)."""
    return None if spec is None else readiness_probe(spec, ports)


class Container:
    def __init__(
        self,
        spec: Mapping[str, Any],
        image_id: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_file: Path,
        pod_ip: str,
        restart_policy: RestartPolicy,
        changed: Callable[[], None],
    ) -> None:
        self.name = str(spec["name"])
        self.image = str(spec.get("image") or "")
        self.image_id = image_id
        self.argv = list(argv)
        self.env = dict(env)
        self.log_file = log_file
        self.pod_ip = pod_ip
        self.restart_policy = restart_policy
        self._changed = changed
        ports = [ContainerPort.model_validate(port) for port in spec.get("ports") or []]
        # Probes that cannot run here (exec) make the container fail to start with that reason.
        self.startup = _probe(spec.get("startupProbe"), ports)
        self.readiness = _probe(spec.get("readinessProbe"), ports)
        self.liveness = _probe(spec.get("livenessProbe"), ports)
        self.pre_stop: Mapping[str, Any] | None = (spec.get("lifecycle") or {}).get("preStop")
        self.ports = ports
        self.ready = False
        self.started = False
        self.restart_count = 0
        self.state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: dict[str, Any] = {}
        self.exit_code: int | None = None  # of the last run
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- status ---

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id,
            "containerID": f"local://{self._process.pid}" if self._process is not None else "",
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }

    @property
    def finished(self) -> bool:
        """Terminated and not coming back (restartPolicy)."""
        return self._task is not None and self._task.done()

    def _set(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self, name, value)
        self._changed()

    # --- running ---

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"container {self.name}")

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        in_a_row = 0
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                process = self._process = await spawn(self.argv, self.env, self.log_file, f"{now()} start")
            except OSError as error:
                self._set(state={"waiting": {"reason": "CreateContainerError", "message": str(error)}})
                return
            started_at = now()
            self._set(state={"running": {"startedAt": started_at}}, started=self.startup is None)
            probes = asyncio.create_task(self._probe(process))
            code = await process.wait()
            probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probes
            reason = "Completed" if code == 0 else "Error"
            exit_code = code if code >= 0 else 128 - code  # killed by signal n: 128 + n, as a shell reports it
            terminated: dict[str, Any] = {"exitCode": exit_code, "reason": reason}
            terminated |= {"startedAt": started_at, "finishedAt": now()}
            if code < 0:
                terminated["signal"] = -code
            self.exit_code = exit_code
            restart = not self._stopping.is_set() and (
                self.restart_policy is RestartPolicy.ALWAYS
                or (self.restart_policy is RestartPolicy.ON_FAILURE and code != 0)
            )
            if not restart:
                self._set(state={"terminated": terminated}, ready=False, started=False)
                return
            in_a_row = 0 if time.monotonic() - began >= 60 else in_a_row + 1
            delay = backoff(in_a_row - 1) if in_a_row > 1 else 0.0
            message = f"back-off {delay:.0f}s restarting failed container={self.name}"
            waiting = {"reason": "CrashLoopBackOff", "message": message} if delay else {"reason": "ContainerCreating"}
            self._set(
                state={"waiting": waiting},
                last_state={"terminated": terminated},
                ready=False,
                started=False,
                restart_count=self.restart_count + 1,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _probe(self, process: asyncio.subprocess.Process) -> None:
        """Startup first (liveness and readiness wait for it), then readiness and liveness side by side."""
        if self.startup is not None:
            succeeded = asyncio.Event()

            def started(ok: bool) -> None:
                if ok:
                    succeeded.set()

            startup = asyncio.create_task(watch(self.startup, self.pod_ip, started))
            await succeeded.wait()
            startup.cancel()
            self._set(started=True)
        tasks = []
        if self.readiness is None:
            self._set(ready=True)
        else:
            tasks.append(watch(self.readiness, self.pod_ip, self._readiness_changed))
        if self.liveness is not None:
            tasks.append(self._liveness(self.liveness, process))
        if tasks:
            await asyncio.gather(*tasks)

    def _readiness_changed(self, ready: bool) -> None:
        log.info("container %s of %s: %s", self.name, self.pod_ip, "ready" if ready else "NOT ready (readiness probe)")
        self._set(ready=ready)

    async def _liveness(self, probe: Probe, process: asyncio.subprocess.Process) -> None:
        """Kills the container after failureThreshold failures in a row; the restart policy decides what next."""
        await asyncio.sleep(probe.initial_delay)
        failures = 0
        while True:
            failures = 0 if await probe_once(probe, self.pod_ip) else failures + 1
            if failures >= probe.failure_threshold:
                log.warning("container %s failed its liveness probe %d times: killing it", self.name, failures)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                return
            await asyncio.sleep(probe.period)

    # --- stopping ---

    async def stop(self, grace_seconds: float, run_hook: Callable[[Mapping[str, Any]], Any] | None = None) -> None:
        """preStop hook, then SIGTERM, then SIGKILL once the grace period (hook included) is over."""
        deadline = time.monotonic() + grace_seconds
        self._stopping.set()
        process = self._process
        if process is not None and process.returncode is None:
            if self.pre_stop is not None and run_hook is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(run_hook(self.pre_stop), max(0.0, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if self._task is not None:
            await asyncio.shield(self._task)


__all__ = ["Container", "RestartPolicy", "UnsupportedProbe", "now"]
