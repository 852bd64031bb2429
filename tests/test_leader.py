"""The Lease election's decisions, without an API server: who may take the Lease, when a leader must stop, what it
writes. The loop that performs them against a real API server is tested in e2e/kube/test_leader.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xds_server.kube.leader import (
    Action,
    AlwaysLeader,
    LeaseRecord,
    Observation,
    Timing,
    claim,
    decide,
    micro_time,
    observe,
    released,
)

ME, OTHER = "me_1", "other_2"
TIMING = Timing(lease_duration=15.0, renew_deadline=10.0, retry_period=2.0)
WALL = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def record(holder: str = OTHER, duration: int | None = 15, transitions: int = 0) -> LeaseRecord:
    return LeaseRecord(holder, duration, "2025-01-01T00:00:00.000000Z", "2025-01-01T00:00:01.000000Z", transitions)


def seen(rec: LeaseRecord | None, since: float = 100.0) -> Observation:
    return Observation(rec, since)


# --- candidates ---------------------------------------------------------------------------------------------------


def test_no_lease_is_created() -> None:
    assert decide(seen(None), 100.0, ME, None, TIMING) is Action.CREATE


def test_foreign_live_lease_is_respected() -> None:
    assert decide(seen(record()), 100.0, ME, None, TIMING) is Action.WAIT
    assert decide(seen(record()), 114.9, ME, None, TIMING) is Action.WAIT


def test_lease_unchanged_for_its_duration_is_taken_over() -> None:
    assert decide(seen(record()), 115.0, ME, None, TIMING) is Action.ACQUIRE


def test_expiry_follows_the_records_duration_not_ours() -> None:
    assert decide(seen(record(duration=60)), 130.0, ME, None, TIMING) is Action.WAIT
    assert decide(seen(record(duration=60)), 160.0, ME, None, TIMING) is Action.ACQUIRE


def test_a_record_without_duration_lasts_our_duration() -> None:
    assert decide(seen(record(duration=None)), 114.0, ME, None, TIMING) is Action.WAIT
    assert decide(seen(record(duration=None)), 115.0, ME, None, TIMING) is Action.ACQUIRE


def test_free_lease_is_taken_at_once() -> None:
    assert decide(seen(record(holder="")), 100.0, ME, None, TIMING) is Action.ACQUIRE


def test_lease_still_naming_us_is_taken_back_at_once() -> None:
    # After stepping down (say the API server was unreachable) nobody else wrote it: it is ours again.
    assert decide(seen(record(holder=ME)), 100.0, ME, None, TIMING) is Action.ACQUIRE


def test_remote_timestamps_are_not_trusted() -> None:
    # renewTime is years old by the record, but we only just saw this record: the holder may be alive with a skewed
    # clock, so it gets a full lease duration from our first sighting.
    old = LeaseRecord(OTHER, 15, "2001-01-01T00:00:00.000000Z", "2001-01-01T00:00:00.000000Z", 0)
    assert decide(seen(old, since=100.0), 100.5, ME, None, TIMING) is Action.WAIT


def test_expiry_clock_restarts_only_when_the_record_changes() -> None:
    first = observe(None, record(), 100.0)
    assert observe(first, record(), 110.0) is first
    renewed = LeaseRecord(OTHER, 15, record().acquire_time, "2025-01-01T00:00:03.000000Z", 0)
    moved = observe(first, renewed, 110.0)
    assert moved.since == 110.0
    assert decide(moved, 116.0, ME, None, TIMING) is Action.WAIT  # would have expired at 115 without the renewal
    assert observe(moved, None, 120.0) == Observation(None, 120.0)


# --- leaders ------------------------------------------------------------------------------------------------------


def test_leader_renews() -> None:
    assert decide(seen(record(holder=ME)), 105.0, ME, 100.0, TIMING) is Action.RENEW


def test_renew_deadline_passed_is_lost() -> None:
    assert decide(seen(record(holder=ME)), 109.9, ME, 100.0, TIMING) is Action.RENEW
    assert decide(seen(record(holder=ME)), 110.0, ME, 100.0, TIMING) is Action.LOST


def test_lease_naming_another_holder_is_lost_at_once() -> None:
    assert decide(seen(record(holder=OTHER)), 100.1, ME, 100.0, TIMING) is Action.LOST
    assert decide(seen(record(holder="")), 100.1, ME, 100.0, TIMING) is Action.LOST


def test_deleted_lease_is_lost() -> None:
    assert decide(seen(None), 100.1, ME, 100.0, TIMING) is Action.LOST


@given(
    renewed_at=st.floats(0, 1e6),
    since=st.floats(0, 1e6),
    elapsed=st.floats(0, 1e3),
)
def test_a_leader_stops_before_anyone_may_start(renewed_at: float, since: float, elapsed: float) -> None:
    """Others see our last write no earlier than we started it, and wait a lease duration from then; we give up a
    renew deadline after starting it. So by one clock, whenever another may acquire, we no longer renew."""
    now = renewed_at + elapsed
    ours = decide(seen(record(holder=ME)), now, ME, renewed_at, TIMING)
    theirs = decide(seen(record(holder=ME), since=max(since, renewed_at)), now, OTHER, None, TIMING)
    assert not (ours is Action.RENEW and theirs is Action.ACQUIRE)


# --- what gets written --------------------------------------------------------------------------------------------


def test_create_starts_counting_transitions_at_zero() -> None:
    new = claim(None, ME, TIMING, WALL, renewing=False)
    assert new == LeaseRecord(ME, 15, "2025-01-02T03:04:05.678901Z", "2025-01-02T03:04:05.678901Z", 0)


def test_takeover_counts_a_transition() -> None:
    new = claim(record(transitions=4), ME, TIMING, WALL, renewing=False)
    assert (new.holder, new.transitions, new.acquire_time) == (ME, 5, "2025-01-02T03:04:05.678901Z")


def test_taking_a_released_lease_counts_a_transition() -> None:
    assert claim(released(record(transitions=4), WALL), ME, TIMING, WALL, renewing=False).transitions == 5


def test_renewal_keeps_acquire_time_and_transitions() -> None:
    mine = record(holder=ME, transitions=3)
    new = claim(mine, ME, TIMING, WALL, renewing=True)
    assert new == LeaseRecord(ME, 15, mine.acquire_time, "2025-01-02T03:04:05.678901Z", 3)


def test_retaking_our_own_record_is_not_a_transition() -> None:
    new = claim(record(holder=ME, transitions=3), ME, TIMING, WALL, renewing=False)
    assert (new.transitions, new.acquire_time) == (3, "2025-01-02T03:04:05.678901Z")


def test_lease_duration_is_whole_seconds_rounded_up() -> None:
    timing = Timing(lease_duration=2.5, renew_deadline=2.0, retry_period=0.5)
    assert claim(None, ME, timing, WALL, renewing=False).lease_duration_seconds == 3


def test_release_frees_the_lease_and_keeps_the_count() -> None:
    assert released(record(holder=ME, transitions=7), WALL) == LeaseRecord(
        "", 1, "2025-01-02T03:04:05.678901Z", "2025-01-02T03:04:05.678901Z", 7
    )


def test_micro_time_always_has_six_digits_and_z() -> None:
    assert micro_time(datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2025-01-02T03:04:05.000000Z"
    east = timezone(timedelta(hours=2))
    assert micro_time(datetime(2025, 1, 2, 5, 4, 5, 12, tzinfo=east)) == "2025-01-02T03:04:05.000012Z"


def test_record_round_trips_through_a_spec() -> None:
    rec = record(holder=ME, transitions=2)
    assert LeaseRecord.from_spec(rec.to_spec()) == rec
    # The API server omits empty fields: a bare spec is a free lease nobody ever held.
    assert LeaseRecord.from_spec({}) == LeaseRecord("", None, None, None, 0)


def test_timing_must_let_the_leader_stop_before_the_lease_expires() -> None:
    with pytest.raises(ValueError):
        Timing(lease_duration=10.0, renew_deadline=10.0, retry_period=2.0)
    with pytest.raises(ValueError):
        Timing(lease_duration=15.0, renew_deadline=2.0, retry_period=2.0)


# --- without election ---------------------------------------------------------------------------------------------


async def test_always_leader_leads_from_start_to_stop() -> None:
    leader = AlwaysLeader(identity="solo")
    events: list[str] = []
    leader.on_started_leading(lambda: events.append("started"))
    leader.on_stopped_leading(lambda: events.append("stopped"))
    stop = asyncio.Event()
    task = asyncio.create_task(leader.run(stop))
    await leader.wait_until_leader()
    await asyncio.sleep(0)
    assert (leader.is_leader, leader.holder, events) == (True, "solo", ["started"])
    stop.set()
    await task
    assert (leader.is_leader, events) == (False, ["started", "stopped"])
