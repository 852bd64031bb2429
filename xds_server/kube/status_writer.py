"""Writes statuses back to the API server, on the leader only.

Poked after every applied build, every Envoy ACK or NACK and every provisioning pass, it waits a moment for the
burst to end and then walks every stored object of a kind it writes: what `status.desired_status` says differs from
the stored status is PUT to the `/status` subresource with the stored resourceVersion. A conflict (someone wrote in
between) re-reads the object and tries again. Nothing is written unless this replica leads, checked before every
write, so a replica that loses the Lease stops at once; one that gains it is poked and converges every status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from translators.ir import ObjectStatus
from translators.loader import ResourceSet
from translators.resources import Gateway, GatewayClass
from xds_server import metrics
from xds_server.kube.status import (
    SHAPES,
    GatewayInfra,
    Ownership,
    StaleObject,
    desired_status,
    invalid_object_status,
)

log = logging.getLogger(__name__)

COALESCE_SECONDS = 0.1  # a build and the ACKs it causes arrive together: one pass for all of them
CONFLICT_RETRIES = 5
CONCURRENT_WRITES = 8


class KindPath(Protocol):
    """Where a kind lives in the API (the Kubernetes source's kinds table has it)."""

    @property
    def group(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def plural(self) -> str: ...

    @property
    def namespaced(self) -> bool: ...


class StoredObjects(Protocol):
    """The source's copy of each object as the API server last returned it."""

    def stored(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    def stored_keys(self, kind: str) -> Iterable[tuple[str, str]]: ...

    def stored_update(self, raw: dict[str, Any]) -> None: ...

    def stored_version(self, kind: str, namespace: str, name: str) -> str | None: ...


class Leadership(Protocol):
    @property
    def is_leader(self) -> bool: ...


Current = Callable[[], tuple[ResourceSet, Sequence[ObjectStatus]] | None]
Settled = tuple[ObjectStatus | None, Ownership, str | None]
# A Gateway's provisioned Envoys, by (namespace, name): its addresses and replicas (None: not provisioned).
Infrastructure = Callable[[str, str], GatewayInfra | None]


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusWriter:
    def __init__(
        self,
        api: client.ApiClient,
        store: StoredObjects,
        paths: Mapping[str, KindPath],
        controller_name: str,
        current: Current,
        leadership: Leadership,
        infrastructure: Infrastructure | None = None,
    ) -> None:
        self._objects = client.CustomObjectsApi(api)
        self._infrastructure = infrastructure
        self._store = store
        self._paths = paths
        self._controller_name = controller_name
        self._current = current
        self._leadership = leadership
        self._dirty = asyncio.Event()
        self._limit = asyncio.Semaphore(CONCURRENT_WRITES)
        self.passes = 0  # completed passes, for tests and /debug
        # Objects whose status needed no write at (verdict, ownership, resourceVersion): skipped until one changes, so
        # a pass after one route's change looks at that route, not at every route (and copies none of the others).
        self._settled: dict[tuple[str, str, str], Settled] = {}
        self._ownership = Ownership(controller_name, frozenset())

    def poke(self) -> None:
        """Something a status depends on changed: a pass will follow (one for any number of pokes meanwhile)."""
        self._dirty.set()

    async def run(self, stop: asyncio.Event) -> None:
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                dirty = asyncio.create_task(self._dirty.wait())
                await asyncio.wait({dirty, stopping}, return_when=asyncio.FIRST_COMPLETED)
                dirty.cancel()
                if stop.is_set():
                    break
                await asyncio.sleep(COALESCE_SECONDS)
                self._dirty.clear()
                if self._leadership.is_leader:
                    try:
                        await self.write_all()
                    except Exception:  # a bug or an API outage must not end status writing for good
                        log.exception("status pass failed; retrying on the next change")
                        await asyncio.sleep(1.0)
                        self._dirty.set()
        finally:
            stopping.cancel()

    async def write_all(self) -> None:
        state = self._current()
        if state is None:
            return
        resources, statuses = state
        our_classes = {
            gc.name for gc in resources.of_kind(GatewayClass) if gc.spec.controller_name == self._controller_name
        }
        gateway_classes = {(g.namespace, g.name): g.spec.gateway_class_name for g in resources.of_kind(Gateway)}
        # A Gateway of a class that is not ours (or does not exist) is someone else's: its entries in pools stay.
        ownership = Ownership(
            self._controller_name,
            frozenset(key for key, name in gateway_classes.items() if name not in our_classes),
        )
        self._ownership = ownership
        ours = {(s.ref.kind, s.ref.namespace, s.ref.name): s for s in statuses}
        ours.update(self._invalid_objects(resources, our_classes, gateway_classes))
        writes = []
        for kind in SHAPES:
            if kind not in self._paths:
                continue
            for namespace, name in list(self._store.stored_keys(kind)):
                raw = self._store.stored(kind, namespace, name) or {}
                spec = raw.get("spec") or {}
                if kind == "GatewayClass" and spec.get("controllerName") != self._controller_name:
                    continue
                if kind == "Gateway" and spec.get("gatewayClassName") not in our_classes:
                    continue
                verdict = ours.get((kind, namespace, name))
                settle_key = self._settle_key(kind, namespace, name, verdict)
                if settle_key is not None and self._settled.get((kind, namespace, name)) == settle_key:
                    continue  # same verdict, same stored object as when it last needed no write
                writes.append(self._write(kind, namespace, name, verdict, ownership))
        await asyncio.gather(*writes)
        self.passes += 1

    def _settle_key(self, kind: str, namespace: str, name: str, verdict: ObjectStatus | None) -> Settled | None:
        """What must stay the same for an object's status to need no new look: our verdict and the stored version.
        Gateways also depend on their Envoys' addresses and replicas: they are few, and always looked at."""
        if kind == "Gateway":
            return None
        return (verdict, self._ownership, self._store.stored_version(kind, namespace, name))

    def resync(self) -> None:
        """Look at every object again on the next pass (a new leader must not trust what a past term settled)."""
        self._settled.clear()
        self.poke()

    def _invalid_objects(
        self, resources: ResourceSet, our_classes: set[str], gateway_classes: Mapping[tuple[str, str], str]
    ) -> dict[tuple[str, str, str], ObjectStatus]:
        """Objects the API server stored but the translator refused: what they get instead of their verdict."""
        problems: dict[tuple[str, str, str], list[str]] = {}
        for error in resources.errors:
            if error.kind in SHAPES:
                where = f"field {error.field}: " if error.field else ""
                problems.setdefault((error.kind, error.namespace, error.name), []).append(where + error.reason)

        def is_our_gateway(namespace: str, name: str) -> bool:
            return gateway_classes.get((namespace, name)) in our_classes

        statuses = {}
        for (kind, namespace, name), reasons in problems.items():
            raw = self._store.stored(kind, namespace, name)
            status = invalid_object_status(kind, raw, reasons, is_our_gateway) if raw is not None else None
            if status is not None:
                statuses[(kind, namespace, name)] = status
        return statuses

    async def _write(
        self, kind: str, namespace: str, name: str, ours: ObjectStatus | None, ownership: Ownership
    ) -> None:
        async with self._limit:
            stored = self._store.stored(kind, namespace, name)
            infra = None
            if kind == "Gateway" and self._infrastructure is not None:
                infra = self._infrastructure(namespace, name)
            for _ in range(CONFLICT_RETRIES):
                if stored is None or not self._leadership.is_leader:
                    return
                try:
                    status = desired_status(kind, stored, ours, ownership, now_rfc3339(), infra)
                except StaleObject as stale:
                    log.debug("not writing %s %s/%s yet: %s", kind, namespace, name, stale)
                    return
                if status is None:
                    self._settle(kind, namespace, name, ours, stored)
                    return
                try:
                    written = await self._replace_status(kind, namespace, name, {**stored, "status": status})
                except ApiException as error:
                    if error.status == 409:
                        metrics.STATUS_WRITES.labels(kind, "conflict").inc()
                        stored = await self._read(kind, namespace, name)
                        continue
                    if error.status == 404:
                        return  # deleted meanwhile; the watch will say so
                    metrics.STATUS_WRITES.labels(kind, "error").inc()
                    log.warning(
                        "status of %s %s/%s not written: %s %s", kind, namespace, name, error.status, error.reason
                    )
                    return
                metrics.STATUS_WRITES.labels(kind, "ok").inc()
                self._store.stored_update(written)
                self._settle(kind, namespace, name, ours, written)
                return
            log.warning(
                "status of %s %s/%s not written: %d conflicts in a row", kind, namespace, name, CONFLICT_RETRIES
            )

    def _settle(
        self, kind: str, namespace: str, name: str, ours: ObjectStatus | None, stored: Mapping[str, Any]
    ) -> None:
        version = str((stored.get("metadata") or {}).get("resourceVersion") or "")
        if kind != "Gateway" and version:
            self._settled[(kind, namespace, name)] = (ours, self._ownership, version)

    async def _replace_status(self, kind: str, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        path = self._paths[kind]
        if path.namespaced:
            written = await self._objects.replace_namespaced_custom_object_status(
                path.group, path.version, namespace, path.plural, name, body
            )
        else:
            written = await self._objects.replace_cluster_custom_object_status(
                path.group, path.version, path.plural, name, body
            )
        return dict(written)

    async def _read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        path = self._paths[kind]
        try:
            if path.namespaced:
                found = await self._objects.get_namespaced_custom_object(
                    path.group, path.version, namespace, path.plural, name
                )
            else:
                found = await self._objects.get_cluster_custom_object(path.group, path.version, path.plural, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return dict(found)
