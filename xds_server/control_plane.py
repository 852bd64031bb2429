"""From loaded resources to published snapshots, and the conditions that go back to the user.

`build()` is the CPU part (translation and snapshot building, pure, safe in a worker thread); `ControlPlane.apply()`
publishes its result on the event loop, where the ADS streams listen. NACKs reported by the ADS servicers become
a condition on the Gateway whose snapshot was rejected, until that Envoy ACKs a newer version.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from translators.gatewayapi import translate
from translators.gatewayapi.incremental import TranslationCache
from translators.gatewayapi.unsupported import unsupported_objects
from translators.ir import Condition, ConditionStatus, ObjectRef, ObjectStatus, TranslateOptions, Translation
from translators.loader import LoadError, ResourceSet
from translators.runtime import RuntimeTables, runtime_tables
from translators.xds.gateway import gateway_resources
from translators.xds.memo import Memo
from translators.xds.names import objects_named_in
from translators.xds.render import error_dict, status_dict
from xds_server import metrics
from xds_server.xds.cache import PUSH_ORDER, InconsistentSnapshot, Snapshot, SnapshotCache
from xds_server.xds.streams import ClientRegistry, ClientStream, Nack, explained, short_type
from xds_server.xds.sync import gateway_holders, stream_sync

log = logging.getLogger(__name__)

EMPTY_SNAPSHOT = Snapshot.build({})  # what a deleted Gateway's Envoys are served: no listeners, no clusters


@dataclass(frozen=True)
class Build:
    resources: ResourceSet
    translation: Translation
    snapshots: dict[str, Snapshot]
    refused: dict[str, str]  # gateway key -> why its snapshot was not published (the previous one stays)
    seconds: float
    runtime: RuntimeTables  # what the per-request services read for this translation
    # Where `seconds` went: "translate" (resources -> IR), "xds" (IR -> messages), "snapshot" (bytes, versions and
    # the consistency check), "runtime" (the per-request tables).
    stage_seconds: Mapping[str, float] = field(default_factory=dict)


def build(
    resources: ResourceSet,
    options: TranslateOptions,
    memo: Memo | None = None,
    previous: Mapping[str, Snapshot] | None = None,
    translations: TranslationCache | None = None,
) -> Build:
    """`translations`, `memo` and the `previous` snapshots let a reload reuse the translation of the routes, the
    messages and the bytes of what did not change."""
    started = time.perf_counter()
    # Translation allocates hundreds of thousands of short-lived objects and makes no reference cycles worth
    # chasing: the cyclic collector's full scans of the (large) loaded object graph would double its time.
    collecting = gc.isenabled()
    gc.disable()
    if memo is not None:
        memo.next_build()
    watch = _Stopwatch(started)
    try:
        translation = translate(resources, options, translations)
        watch.lap("translate")
        snapshots: dict[str, Snapshot] = {}
        refused: dict[str, str] = {}
        for gateway in translation.gateways:
            try:
                xds = gateway_resources(gateway, options, memo)
                watch.lap("xds")
                snapshots[gateway.key] = Snapshot.build(xds.by_type(), (previous or {}).get(gateway.key))
            except InconsistentSnapshot as error:
                refused[gateway.key] = str(error)
            watch.lap("snapshot")
        runtime = runtime_tables(translation)
        watch.lap("runtime")
    finally:
        if collecting:
            gc.enable()
    return Build(resources, translation, snapshots, refused, time.perf_counter() - started, runtime, watch.seconds)


class _Stopwatch:
    """Seconds per stage of a build, each lap counted to the stage it ends."""

    def __init__(self, started: float) -> None:
        self.seconds = dict.fromkeys(("translate", "xds", "snapshot", "runtime"), 0.0)
        self._mark = started

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] += now - self._mark
        self._mark = now


def _programmed(status: ObjectStatus, condition: Condition) -> ObjectStatus:
    """`status` with `condition` as its Programmed, and, when that is False, on each of its listeners too."""
    kept = tuple(c for c in status.conditions if c.type != "Programmed")
    listeners = status.listeners
    if condition.status is ConditionStatus.FALSE:
        listeners = tuple(
            replace(lis, conditions=(*(c for c in lis.conditions if c.type != "Programmed"), condition))
            for lis in listeners
        )
    return replace(status, conditions=(*kept, condition), listeners=listeners)


def _gateway_ref(key: str) -> ObjectRef:
    namespace, _, name = key.partition("/")
    return ObjectRef("Gateway", namespace, name)


@dataclass
class ControlPlane:
    cache: SnapshotCache
    clients: ClientRegistry
    options: TranslateOptions = field(default_factory=TranslateOptions)
    current: Build | None = None
    memo: Memo = field(default_factory=Memo)  # used by one build at a time (builds are sequential)
    translations: TranslationCache = field(default_factory=TranslationCache)  # the same
    rejected: dict[str, Nack] = field(default_factory=dict)  # gateway key -> latest NACK not yet superseded
    # Called on the event loop with every applied build (the Endpoint Picker follows pools this way).
    build_listeners: list[Callable[[Build], None]] = field(default_factory=list)
    _unsupported_said: set[ObjectRef] = field(default_factory=set)  # objects of unsupported kinds already logged
    _warnings_said: set[LoadError] = field(default_factory=set)
    # Set when the process is told to stop: /readyz fails, long-lived streams (the usage log) end, in-flight
    # requests' streams finish (ControlPlaneService.stop).
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.clients.add_nack_listener(self._nacked)
        self.clients.add_ack_listener(self._acked)

    def build(self, resources: ResourceSet) -> Build:
        """The CPU part of a reload (run it in a worker thread; `apply` its result on the event loop)."""
        previous = {key: snapshot for key in self.cache.snapshot_keys() if (snapshot := self.cache.get(key))}
        return build(resources, self.options, self.memo, previous, self.translations)

    @property
    def ready(self) -> bool:
        return self.current is not None

    def apply(self, built: Build) -> None:
        """Publishes a build: changed snapshots go out, gateways that disappeared are emptied."""
        previous = set(self.cache.snapshot_keys())
        for key, snapshot in built.snapshots.items():
            changed = self.cache.set(key, snapshot)
            if changed:
                log.info("published %s: %s", key, ", ".join(short_type(t) for t in changed))
        for key, reason in built.refused.items():
            log.error("not publishing %s, its previous snapshot stays: %s", key, reason)
        for key in previous - built.snapshots.keys() - built.refused.keys():
            self.cache.set(key, EMPTY_SNAPSHOT)
        self.current = built
        for listener in self.build_listeners:
            listener(built)
        metrics.TRANSLATION_SECONDS.observe(built.seconds)
        metrics.LOAD_ERRORS.set(len(built.resources.errors))
        for error in built.resources.errors:
            log.error("invalid object: %s", error)
        for warning in built.resources.warnings:
            if warning not in self._warnings_said:  # once, not at every reload
                self._warnings_said.add(warning)
                log.warning("%s", warning)
        # Only objects of unknown kinds are unsupported: without any, no status need be looked at (on the event loop).
        for ref, message in unsupported_objects(built.translation) if built.resources.unknown else ():
            if ref not in self._unsupported_said:  # once per object, not at every reload
                self._unsupported_said.add(ref)
                log.warning("%s %s: %s", ref.kind, ref.key, message)

    def _nacked(self, nack: Nack) -> None:
        self.rejected[nack.key] = nack

    def _acked(self, stream: ClientStream, type_url: str, version: str) -> None:
        nack = self.rejected.get(stream.key)
        if nack is not None and nack.node_id == stream.node_id and nack.type_url == type_url:
            del self.rejected[stream.key]  # that Envoy took a newer version of what it had rejected

    def statuses(self) -> list[ObjectStatus]:
        """Translation conditions, plus Programmed=False on what an Envoy rejected: the Gateway whose configuration
        it was, and every route or backend whose resource the error names."""
        if self.current is None:
            return []
        statuses = list(self.current.translation.statuses)
        problems: dict[ObjectRef, list[str]] = {}
        for key, nack in self.rejected.items():
            message = (
                f"Envoy {nack.node_id} rejected {short_type(nack.type_url)} version {nack.version}: "
                f"{explained(nack.message)}"
            )
            for named in [_gateway_ref(key), *objects_named_in(nack.message)]:
                problems.setdefault(named, []).append(message)
        for key, reason in self.current.refused.items():
            problems.setdefault(_gateway_ref(key), []).append(f"configuration not published: {reason}")
        for ref, messages in sorted(problems.items()):
            rejected = Condition("Programmed", ConditionStatus.FALSE, "Invalid", "; ".join(messages))
            index = next((i for i, s in enumerate(statuses) if s.ref == ref), None)
            if index is None:
                statuses.append(ObjectStatus(ref, (rejected,)))
            else:  # replaces a translation's Programmed=True: what Envoy said wins
                statuses[index] = _programmed(statuses[index], rejected)
        return [self._held(status) if status.ref.kind == "Gateway" else status for status in statuses]

    def _held(self, status: ObjectStatus) -> ObjectStatus:
        """A Gateway the translation could program is Programmed once one of its Envoys holds the configuration."""
        programmed = next((c for c in status.conditions if c.type == "Programmed"), None)
        if programmed is None or programmed.status is ConditionStatus.FALSE:
            return status
        holders = gateway_holders(self.clients, self.cache, f"{status.ref.namespace}/{status.ref.name}")
        if holders:
            held = f"{programmed.message}; held by {len(holders)} Envoy(s): {', '.join(sorted(holders)[:5])}"
            return _programmed(status, replace(programmed, message=held))
        pending = "no Envoy of this Gateway holds its current configuration yet"
        return _programmed(status, Condition("Programmed", ConditionStatus.FALSE, "Pending", pending))

    def status_document(self) -> dict[str, Any]:
        errors = self.current.resources.errors if self.current else ()
        warnings = self.current.resources.warnings if self.current else ()
        return {
            "status": [status_dict(s) for s in self.statuses()],
            "errors": [error_dict(e) for e in errors],
            "warnings": [error_dict(w) for w in warnings],
        }

    def snapshots_document(self) -> dict[str, Any]:
        """`/debug/snapshots`: per Gateway, the version and resource names of each type."""
        document: dict[str, Any] = {}
        for key in self.cache.snapshot_keys():
            snapshot = self.cache.get(key)
            assert snapshot is not None
            document[key] = {
                short_type(type_url): {
                    "version": snapshot.version(type_url),
                    "resources": {name: cached.version for name, cached in snapshot.resources(type_url).items()},
                }
                for type_url in PUSH_ORDER
            }
        return document

    def clients_document(self) -> list[dict[str, Any]]:
        """`/debug/clients`: each connected Envoy, with what it was sent, what it ACKed and its last NACK."""
        return [self._client_document(stream) for stream in self.clients.streams() if stream.key]

    def _client_document(self, stream: ClientStream) -> dict[str, Any]:
        sync = stream_sync(stream, self.cache)
        return {
            "node": stream.node_id,
            "gateway": stream.key,
            "protocol": str(stream.protocol),
            "connected_at": stream.connected_at,
            "types": {
                short_type(type_url): {
                    "sent": state.sent_version,
                    "acked": state.acked_version,
                    "state": str(sync[type_url]),
                    "nacked": state.nacked_version,
                    "last_error": state.last_error,
                }
                for type_url, state in sorted(stream.types.items())
            },
        }
