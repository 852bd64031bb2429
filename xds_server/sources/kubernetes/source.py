"""`xds-server serve --kubernetes`: the objects of a cluster, as the file source gives those of manifests.

One reflector per watched kind (per kind and namespace with `--namespace`; cluster-scoped kinds are always
watched cluster-wide) fills one store; after each burst of changes that can affect translation, the whole
ResourceSet is handed on. The store also serves the status writer: the raw objects as last seen, and its own
writes' answers, so a status write needs no extra GET.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import orjson
from kubernetes_asyncio.client import ApiClient

from translators.loader import ResourceSet
from xds_server.sources import OnLoad
from xds_server.sources.kubernetes.client import RawApi
from xds_server.sources.kubernetes.debounce import Debouncer
from xds_server.sources.kubernetes.kinds import BY_NAME, watched_kinds
from xds_server.sources.kubernetes.reflector import Reflector, Timing
from xds_server.sources.kubernetes.store import Store

log = logging.getLogger(__name__)

LONGEST_BURST_S = 0.1  # a steady stream of events still publishes at least this often
# A change after this long without one is published at once; closer ones are coalesced until this long passes
# without a change (see Debouncer).
QUIET_MS = 10


class KubernetesSource:
    def __init__(
        self,
        api: ApiClient,
        namespaces: Sequence[str] = (),
        debounce_ms: int = QUIET_MS,
        timing: Timing | None = None,
    ) -> None:
        self._debouncer = Debouncer(debounce_ms / 1000, LONGEST_BURST_S)
        self._store = Store(on_change=self._debouncer.changed)
        raw = RawApi(api)
        scopes: list[str | None] = list(dict.fromkeys(namespaces)) or [None]
        self.reflectors = [
            Reflector(raw, kind, namespace, self._store, timing or Timing())
            for kind in watched_kinds()
            for namespace in (scopes if kind.namespaced else [None])
        ]

    async def start(self) -> None:
        """Starts every reflector; returns once each has listed its objects once."""
        for reflector in self.reflectors:
            reflector.start()
        await asyncio.gather(*(r.synced.wait() for r in self.reflectors))
        log.info("kubernetes source synced: %d reflectors", len(self.reflectors))

    @property
    def synced(self) -> bool:
        return all(r.synced.is_set() for r in self.reflectors)

    def resources(self) -> ResourceSet:
        """Every valid object (an object whose latest version is invalid keeps its last good one) and the errors."""
        return self._store.resource_set()

    def load(self) -> ResourceSet:
        """The `Source` protocol's snapshot: the same as `resources()` (the store is always current)."""
        return self.resources()

    async def watch(self, on_load: OnLoad, stop: asyncio.Event) -> None:
        """Calls `on_load` after each burst of changes until `stop` is set, then stops the reflectors. The first
        call may repeat what `resources()` gave right after `start()`."""
        try:
            while await self._debouncer.burst(stop):
                await on_load(self.resources())
        finally:
            await self.close()

    async def close(self) -> None:
        """Stops the reflectors (their watches close with them)."""
        await asyncio.gather(*(reflector.stop() for reflector in self.reflectors))

    def stored(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The raw object as last seen (a copy, free to change), for a status read-modify-write. `namespace` is ""
        for cluster-scoped kinds."""
        raw = self._store.get(kind, namespace, name)
        return orjson.loads(orjson.dumps(raw)) if raw is not None else None

    def stored_keys(self, kind: str) -> list[tuple[str, str]]:
        """(namespace, name) of every stored object of a kind."""
        found = BY_NAME.get(kind)
        return self._store.keys(found) if found is not None else []

    def stored_version(self, kind: str, namespace: str, name: str) -> str | None:
        """The stored object's resourceVersion (no copy made): has it changed since the status writer looked?"""
        raw = self._store.get(kind, namespace, name)
        return str((raw.get("metadata") or {}).get("resourceVersion") or "") if raw is not None else None

    def stored_update(self, raw: dict[str, Any]) -> None:
        """An object as a write returned it (the status writer's PUT): kept if newer than the stored one. An object
        the store does not hold is not added: its watch event will, unless it was deleted meanwhile."""
        kind = BY_NAME.get(str(raw.get("kind") or ""))
        if kind is None:
            return
        if self._store.get(kind.kind, *self._store.key(kind, raw)) is not None:
            self._store.upsert(kind, raw)  # which keeps only a newer version
