"""Leader election on a coordination.k8s.io/v1 Lease: every replica serves, one leads (writes status, provisions).

The rules are client-go's. A candidate takes the Lease when nobody holds it, or when its record has not changed for
leaseDurationSeconds by the candidate's own clock: remote timestamps are never compared with ours, so skew between
replicas does not matter. Every write is a PUT carrying the resourceVersion it read, so of two racing candidates one
wins and the other gets 409. The leader renews every retry period and stops leading the moment no renewal has
succeeded for the renew deadline, or the Lease names someone else; the deadline is shorter than the lease duration,
so it stops before anyone else may start. A graceful stop releases the Lease so a successor takes over at once; a
cancelled `run` does not (it stands for a killed process).

Leases travel as plain JSON dicts: the client's typed models write datetimes with `isoformat()`, which drops the
fraction when it is zero and the server then rejects the MicroTime.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import math
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, cast

import aiohttp
from kubernetes_asyncio import client

from xds_server.metrics import LEADER, LEADER_TRANSITIONS

log = logging.getLogger(__name__)

Callback = Callable[[], None]
# Candidates spread their polls a little so replicas started together do not hit the API server in lockstep.
CANDIDATE_JITTER = 0.2


def default_identity() -> str:
    return f"{socket.gethostname()}_{uuid.uuid4()}"


def micro_time(wall: datetime) -> str:
    """A MicroTime as the API server writes it: RFC 3339, always six fractional digits, Z."""
    return wall.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- the decision, without I/O ------------------------------------------------------------------------------------


class Action(enum.Enum):
    CREATE = "create"  # no Lease yet: create it naming us
    ACQUIRE = "acquire"  # free, expired, or still naming us from before: write ourselves in
    RENEW = "renew"  # we lead: write a fresh renewTime
    WAIT = "wait"  # someone else holds a live lease
    LOST = "lost"  # we led, and can no longer claim to


@dataclass(frozen=True)
class Timing:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > self.retry_period > 0:
            raise ValueError(f"need lease_duration > renew_deadline > retry_period > 0, got {self}")

    @property
    def lease_seconds(self) -> int:
        return math.ceil(self.lease_duration)


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease's spec fields the election reads and writes."""

    holder: str  # "" when nobody holds it
    lease_duration_seconds: int | None
    acquire_time: str | None
    renew_time: str | None
    transitions: int

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> LeaseRecord:
        return cls(
            holder=spec.get("holderIdentity") or "",
            lease_duration_seconds=spec.get("leaseDurationSeconds"),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=spec.get("leaseTransitions") or 0,
        )

    def to_spec(self) -> dict[str, Any]:
        return {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.lease_duration_seconds,
            "acquireTime": self.acquire_time,
            "renewTime": self.renew_time,
            "leaseTransitions": self.transitions,
        }


@dataclass(frozen=True)
class Observation:
    record: LeaseRecord | None  # None: there is no Lease
    since: float  # monotonic time at which this record was first seen


def observe(previous: Observation | None, record: LeaseRecord | None, now: float) -> Observation:
    """The expiry clock restarts only when the record changes: a holder that renews keeps pushing it back."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


def decide(seen: Observation, now: float, identity: str, renewed_at: float | None, timing: Timing) -> Action:
    """What to do next. `renewed_at`: when our last successful write started, while we lead; None otherwise."""
    record = seen.record
    if renewed_at is not None:
        if now - renewed_at >= timing.renew_deadline or record is None or record.holder != identity:
            return Action.LOST
        return Action.RENEW
    if record is None:
        return Action.CREATE
    if record.holder in ("", identity):
        return Action.ACQUIRE
    duration = record.lease_duration_seconds or timing.lease_seconds
    return Action.ACQUIRE if now >= seen.since + duration else Action.WAIT


def claim(previous: LeaseRecord | None, identity: str, timing: Timing, wall: datetime, renewing: bool) -> LeaseRecord:
    """The record that creates, takes over or renews the Lease; a change of holder counts as a transition."""
    stamp = micro_time(wall)
    transitions = 0 if previous is None else previous.transitions + (previous.holder != identity)
    acquired = previous.acquire_time if renewing and previous is not None else stamp
    return LeaseRecord(identity, timing.lease_seconds, acquired, stamp, transitions)


def released(previous: LeaseRecord, wall: datetime) -> LeaseRecord:
    """Nobody holds it, and it expires within a second even for candidates that only look at the clock."""
    stamp = micro_time(wall)
    return LeaseRecord("", 1, stamp, stamp, previous.transitions)


# --- the election loop --------------------------------------------------------------------------------------------


class LeaseApiError(Exception):
    def __init__(self, what: str, status: int, body: Mapping[str, Any]) -> None:
        super().__init__(f"{what}: HTTP {status}: {body.get('message', body)}")


class Leadership(Protocol):
    """What the rest of the process reads, from an elector or from AlwaysLeader."""

    identity: str
    lease: str  # "<namespace>/<name>", empty without leader election

    @property
    def is_leader(self) -> bool: ...

    @property
    def holder(self) -> str | None: ...

    def on_started_leading(self, callback: Callback) -> None: ...

    def on_stopped_leading(self, callback: Callback) -> None: ...

    async def wait_until_leader(self) -> None: ...

    async def run(self, stop: asyncio.Event) -> None: ...


class LeaderElector:
    """Campaigns for the Lease `namespace/name` while `run` runs.

    After losing the Lease it campaigns again: whether a replica that lost it should exit instead (EG #10064) is the
    composition root's decision, made in an `on_stopped_leading` callback. Callbacks are plain callables run on the
    event loop; `on_stopped_leading` also runs when `run` ends while leading, before the Lease is released.
    """

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str = "xds-server",
        identity: str | None = None,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
    ) -> None:
        self._leases = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.lease = f"{namespace}/{name}"
        self.identity = identity or default_identity()
        self.timing = Timing(lease_duration, renew_deadline, retry_period)
        self._seen: Observation | None = None
        self._lease: dict[str, Any] | None = None  # as last read or written: the resourceVersion the next PUT carries
        self._fresh = False  # _lease is our own successful write, so the leader can PUT without reading first
        self._renewed_at: float | None = None  # see decide()
        self._started: list[Callback] = []
        self._stopped: list[Callback] = []
        self._leading = asyncio.Event()
        self._following = asyncio.Event()
        self._following.set()

    @property
    def is_leader(self) -> bool:
        # Checked against the clock, not only the loop's flag: a loop starved of CPU cannot overstay its deadline.
        renewed_at = self._renewed_at
        return renewed_at is not None and time.monotonic() - renewed_at < self.timing.renew_deadline

    @property
    def holder(self) -> str | None:
        record = self._seen.record if self._seen is not None else None
        return (record.holder or None) if record is not None else None

    def on_started_leading(self, callback: Callback) -> None:
        self._started.append(callback)

    def on_stopped_leading(self, callback: Callback) -> None:
        self._stopped.append(callback)

    async def wait_until_leader(self) -> None:
        await self._leading.wait()

    async def wait_until_follower(self) -> None:
        await self._following.wait()

    async def run(self, stop: asyncio.Event) -> None:
        graceful = False
        try:
            while not stop.is_set():
                await self._round()
                await _pause(stop, self._pause_length())
            graceful = True
        finally:
            was_leading = self._renewed_at is not None
            # Our writers stop before the Lease is released: a successor may start writing the moment it is.
            self._step_down("stopping" if graceful else "elector ended")
            if graceful and was_leading:
                await self._release()

    def _pause_length(self) -> float:
        if self._renewed_at is None:
            return self.timing.retry_period * (1 + CANDIDATE_JITTER * random.random())
        # After failed renewals, wake up no later than the deadline, to step down on time.
        left = self._renewed_at + self.timing.renew_deadline - time.monotonic()
        return min(self.timing.retry_period, max(left, 0.0))

    async def _round(self) -> None:
        budget = self.timing.renew_deadline
        if self._renewed_at is not None:
            budget = self._renewed_at + budget - time.monotonic()
        try:
            async with asyncio.timeout(max(budget, 0.0)):
                await self._attempt()
        except (OSError, aiohttp.ClientError, ValueError, LeaseApiError) as err:  # OSError includes TimeoutError
            log.warning("lease %s/%s: attempt failed: %r", self.namespace, self.name, err)
            self._fresh = False
        if self._renewed_at is not None and time.monotonic() - self._renewed_at >= self.timing.renew_deadline:
            self._step_down(f"no successful renewal for {self.timing.renew_deadline:g} s")

    async def _attempt(self) -> None:
        # A conflict is answered at once by one re-read and, if it is still ours to take, one more write.
        for _ in range(2):
            if not self._fresh:
                await self._read()
            assert self._seen is not None
            action = decide(self._seen, time.monotonic(), self.identity, self._renewed_at, self.timing)
            if action is Action.LOST:
                self._step_down(f"the Lease now names {self.holder or 'nobody'}")
                return
            if action is Action.WAIT:
                return
            started = time.monotonic()
            record = claim(self._seen.record, self.identity, self.timing, datetime.now(UTC), action is Action.RENEW)
            status, body = await (self._create(record) if action is Action.CREATE else self._replace(record))
            if status in (200, 201):
                self._accept(body)
                self._fresh = True
                leading_before, self._renewed_at = self._renewed_at is not None, started
                if not leading_before:
                    self._step_up(record)
                return
            if status != 409:
                raise LeaseApiError(f"{action.value} lease {self.namespace}/{self.name}", status, body)
            self._fresh = False  # someone else wrote it since we read it

    async def _read(self) -> None:
        status, body = await _call(
            self._leases.read_namespaced_lease(self.name, self.namespace, _preload_content=False)
        )
        if status == 404:
            self._lease = None
            self._seen = observe(self._seen, None, time.monotonic())
        elif status == 200:
            self._accept(body)
        else:
            raise LeaseApiError(f"read lease {self.namespace}/{self.name}", status, body)

    def _accept(self, lease: dict[str, Any]) -> None:
        self._lease = lease
        self._seen = observe(self._seen, LeaseRecord.from_spec(lease.get("spec") or {}), time.monotonic())

    async def _create(self, record: LeaseRecord) -> tuple[int, dict[str, Any]]:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": record.to_spec(),
        }
        return await _call(
            self._leases.create_namespaced_lease(self.namespace, cast(Any, body), _preload_content=False)
        )

    async def _replace(self, record: LeaseRecord) -> tuple[int, dict[str, Any]]:
        assert self._lease is not None
        # Spec fields we do not manage (preferredHolder, strategy) stay as they were.
        body = {**self._lease, "spec": {**(self._lease.get("spec") or {}), **record.to_spec()}}
        return await _call(
            self._leases.replace_namespaced_lease(self.name, self.namespace, cast(Any, body), _preload_content=False)
        )

    async def _release(self) -> None:
        try:
            async with asyncio.timeout(self.timing.renew_deadline):
                for _ in range(2):
                    record = self._seen.record if self._seen is not None else None
                    if record is None or record.holder != self.identity:
                        return
                    status, body = await self._replace(released(record, datetime.now(UTC)))
                    if status == 200:
                        self._accept(body)
                        log.info("lease %s/%s: released", self.namespace, self.name)
                        return
                    if status != 409:
                        raise LeaseApiError(f"release lease {self.namespace}/{self.name}", status, body)
                    await self._read()  # our last renewal may have landed after all: still ours to release?
        except (OSError, aiohttp.ClientError, ValueError, LeaseApiError) as err:
            log.warning("lease %s/%s: not released, it will expire: %r", self.namespace, self.name, err)

    def _step_up(self, record: LeaseRecord) -> None:
        log.info(
            "lease %s/%s: leading as %s (transitions %d)", self.namespace, self.name, self.identity, record.transitions
        )
        self._leading.set()
        self._following.clear()
        LEADER.set(1)
        LEADER_TRANSITIONS.inc()
        _notify(self._started)

    def _step_down(self, reason: str) -> None:
        if self._renewed_at is None:
            return
        log.warning("lease %s/%s: stopped leading: %s", self.namespace, self.name, reason)
        self._renewed_at = None
        self._fresh = False
        self._leading.clear()
        self._following.set()
        LEADER.set(0)
        LEADER_TRANSITIONS.inc()
        _notify(self._stopped)


class AlwaysLeader:
    """`--no-leader-election`: this replica leads from the start of `run` to its end, with the elector's interface."""

    def __init__(self, identity: str | None = None) -> None:
        self.identity = identity or default_identity()
        self.lease = ""
        self._started: list[Callback] = []
        self._stopped: list[Callback] = []
        self._ended = False

    @property
    def is_leader(self) -> bool:
        return not self._ended

    @property
    def holder(self) -> str | None:
        return self.identity

    def on_started_leading(self, callback: Callback) -> None:
        self._started.append(callback)

    def on_stopped_leading(self, callback: Callback) -> None:
        self._stopped.append(callback)

    async def wait_until_leader(self) -> None:
        return None

    async def run(self, stop: asyncio.Event) -> None:
        LEADER.set(1)
        _notify(self._started)
        try:
            await stop.wait()
        finally:
            self._ended = True
            LEADER.set(0)
            _notify(self._stopped)


async def _call(request: Awaitable[Any]) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of a `_preload_content=False` call. That mode returns the raw aiohttp response and
    raises nothing for error statuses, so the caller sees 404 and 409 as values."""
    response = cast(aiohttp.ClientResponse, await request)
    async with response:
        raw = await response.read()
    return response.status, (json.loads(raw) if raw else {})


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _notify(callbacks: list[Callback]) -> None:
    for callback in list(callbacks):
        try:
            callback()
        except Exception:  # one subscriber's bug must not stop the others from hearing, nor end the election
            log.exception("leadership callback %r failed", callback)
