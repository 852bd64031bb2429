"""Is an Envoy in sync? The one answer every view gives: `/debug/clients`, `xds-server status`, `up` and the
Gateway's status all read it from here.

A type is SYNCED when the client ACKed the response built from the latest snapshot version; NACKED when it rejected
the latest response; STALE while a response is unanswered or a newer snapshot has not gone out to it yet.
"""

from __future__ import annotations

import asyncio
import contextlib
from enum import StrEnum

from xds_server.xds.cache import SnapshotCache
from xds_server.xds.streams import Answer, ClientRegistry, ClientStream, TypeState, explained, short_type


class SyncState(StrEnum):
    NOT_SENT = "NOT SENT"
    SYNCED = "SYNCED"
    NACKED = "NACKED"
    STALE = "STALE"


def type_sync(state: TypeState, latest: str | None) -> SyncState:
    """`latest`: the snapshot's current version of the type (None when the snapshot lacks the type)."""
    if state.sent_version is None:
        return SyncState.NOT_SENT
    if state.answer is Answer.NACK:
        return SyncState.NACKED
    if state.answer is Answer.ACK and (latest is None or state.built_from == latest):
        return SyncState.SYNCED
    return SyncState.STALE


def stream_sync(stream: ClientStream, cache: SnapshotCache) -> dict[str, SyncState]:
    """Each type the stream asked for, with its state against the stream's Gateway's latest snapshot."""
    snapshot = cache.get(stream.key)
    return {
        type_url: type_sync(state, snapshot.version(type_url) if snapshot and type_url in snapshot.types else None)
        for type_url, state in sorted(stream.types.items())
    }


def gateway_synced(clients: ClientRegistry, cache: SnapshotCache, gateway: str) -> bool:
    """Whether an Envoy of `gateway` is connected and every one of them holds the latest snapshot of every type."""
    streams = [s for s in clients.streams() if s.key == gateway]
    if cache.get(gateway) is None or not streams or not streams[0].types:
        return False
    return all(state is SyncState.SYNCED for s in streams for state in stream_sync(s, cache).values())


def gateway_holders(clients: ClientRegistry, cache: SnapshotCache, gateway: str) -> list[str]:
    """The node ids of the Envoys of `gateway` that hold its latest snapshot, every type ACKed."""
    if cache.get(gateway) is None:
        return []
    return [
        stream.node_id
        for stream in clients.streams()
        if stream.key == gateway
        and stream.types
        and all(state is SyncState.SYNCED for state in stream_sync(stream, cache).values())
    ]


def rejections(clients: ClientRegistry, gateway: str) -> list[str]:
    """What the Envoys of `gateway` rejected and still hold rejected (a listener port in use, for one)."""
    return [
        f"{short_type(type_url)}: {explained(state.last_error)}"
        for stream in clients.streams()
        if stream.key == gateway
        for type_url, state in stream.types.items()
        if state.answer is Answer.NACK
    ]


async def wait_synced(clients: ClientRegistry, cache: SnapshotCache, gateways: list[str], timeout: float) -> bool:
    """Waits (on ACKs, not by polling) until the Envoys of every one of `gateways` are in sync; False on timeout."""
    changed = asyncio.Event()

    def on_ack(_stream: ClientStream, _type_url: str, _version: str) -> None:
        changed.set()

    clients.add_ack_listener(on_ack)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while not all(gateway_synced(clients, cache, gateway) for gateway in gateways):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)
        return True
    finally:
        clients.remove_ack_listener(on_ack)
