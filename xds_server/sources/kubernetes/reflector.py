"""One reflector per kind (and namespace, when the source is limited to some): it keeps the store equal to what
the API server holds.

LIST, in pages, gives every object and the collection's resourceVersion; a WATCH from that version streams every
later change (with bookmarks, which only move the version on), and when the server ends it after `timeoutSeconds`
the next one resumes from the last version seen. Anything else (410 Gone because etcd compacted the history the
watch needed, an error, a refused request) is followed by a jittered, capped exponential backoff and a fresh
LIST, and the store is diffed against it: objects deleted meanwhile go (synthetic deletes), changed ones update.
A watch that stays silent for twice the server's timeout is taken for stuck (kubernetes_asyncio #360) and
reopened. A kind whose CRD is not installed counts as listed and empty, and is looked for again now and then; so
does a report-only kind (a SecurityPolicy, ...) the controller may not read (403: an older chart's RBAC), and the
absence of these, common and harmless, is said once at INFO, then only at DEBUG. A kind the translator reads that
the controller may not read (403) is an ERROR at every retry: the source does not count as synced without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from xds_server import metrics
from xds_server.sources.kubernetes.client import ApiError, Gone, NotFound, Query, RawApi
from xds_server.sources.kubernetes.kinds import Kind
from xds_server.sources.kubernetes.objects import metadata, resource_version, strip

log = logging.getLogger(__name__)

# Applying a large LIST parses every object; let the other tasks on the loop (ADS, ext_proc) in between.
YIELD_EVERY = 200


@dataclass(frozen=True)
class Timing:
    page_size: int = 500
    list_timeout_s: float = 60.0  # one page
    watch_timeout_s: int = 300  # the server ends each watch after this; the next resumes where it stopped
    inactivity_s: float = 600.0  # no line for this long: the watch is stuck, reopen it
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    absent_retry_s: float = 30.0  # a kind the API server does not serve (CRD not installed) is looked for again


class ReflectedStore(Protocol):
    """What a reflector keeps up to date: the source's Store, or any other keeper of raw objects."""

    def key(self, kind: Kind, raw: dict[str, Any]) -> tuple[str, str]: ...

    def upsert(self, kind: Kind, raw: dict[str, Any]) -> bool: ...

    def delete(self, kind: Kind, namespace: str, name: str) -> bool: ...

    def replace(self, kind: Kind, namespace: str | None, raws: Iterable[dict[str, Any]]) -> int: ...

    def delete_unlisted(self, kind: Kind, namespace: str | None, listed: set[tuple[str, str]]) -> int: ...


class Backoff:
    """Exponential with jitter: each delay is drawn from the upper half of min(max, initial * 2^failures), so
    reflectors that fail together (an API server restart) do not come back in step."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.initial_s * 2**self.failures)
        self.failures += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0


class Reflector:
    def __init__(self, api: RawApi, kind: Kind, namespace: str | None, store: ReflectedStore, timing: Timing) -> None:
        self.api = api
        self.kind = kind
        self.namespace = namespace if kind.namespaced else None  # cluster-scoped kinds are always cluster-wide
        self.store = store
        self.timing = timing
        self.synced = asyncio.Event()  # set after the first LIST
        self.lists = 0
        # The last version seen, from which a watch resumes: "" until listed, and again after a failure (the next
        # round lists afresh). Kept across stop() and start(), so a restarted reflector resumes where it stopped.
        self.version = ""
        self._backoff = Backoff(timing.backoff_initial_s, timing.backoff_max_s)
        selectors = (("fieldSelector", kind.field_selector), ("labelSelector", kind.label_selector))
        self._selector: Query = tuple((name, value) for name, value in selectors if value)
        self._task: asyncio.Task[None] | None = None
        self._absence_said = False

    def __str__(self) -> str:
        return f"{self.kind.kind} in {self.namespace}" if self.namespace else f"{self.kind.kind} (all namespaces)"

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"reflector {self}")

    async def stop(self) -> None:
        """Cancels the reflector, closing its watch; the store keeps what it holds."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        """Forever (until cancelled)."""
        while True:
            try:
                if not self.version:
                    self.version = await self._list()
                while True:
                    await self._watch()
            except NotFound:
                await self._absent("not served by the API server (CRD not installed?)", "not_found")
                continue
            except Gone as gone:
                reason, level = "gone", logging.INFO
                detail: object = gone
            except ApiError as error:
                if error.status == 403 and self.kind.report_only:
                    await self._absent(f"not readable ({error}); the controller's RBAC lacks it", "forbidden")
                    continue
                if error.status == 403:
                    # A kind we translate: serving without it would serve a wrong config (its routes gone, ...),
                    # so the source stays unsynced until the RBAC grants it; once synced, what was read stays.
                    held = "served as last read" if self.synced.is_set() else "nothing is served until it is"
                    reason, level = "forbidden", logging.ERROR
                    detail = f"not readable ({error}); the controller's RBAC lacks list and watch on it: {held}"
                else:
                    reason, level, detail = "error", logging.WARNING, error
            except Exception as error:  # connection reset, bad JSON, a bug: never stop reflecting
                reason, level, detail = "error", logging.WARNING, repr(error)
            self.version = ""
            metrics.KUBE_WATCH_RESTARTS.labels(self.kind.kind, reason).inc()
            delay = self._backoff.next_delay()
            log.log(level, "%s: watch failed (%s); listing again in %.2f s", self, detail, delay)
            await asyncio.sleep(delay)

    async def _absent(self, why: str, reason: str) -> None:
        """The kind cannot be listed: the store empties (a CRD deleted while watched takes its objects with it) and
        nothing blocks on it; looked for again after a while. The warning repeats at every look, as the situation
        persists, except for report-only kinds: once at INFO, then at DEBUG."""
        self.version = ""
        self._count_synthetic_deletes(self.store.replace(self.kind, self.namespace, ()))
        self.synced.set()
        level = logging.WARNING
        if self.kind.report_only:
            level = logging.DEBUG if self._absence_said else logging.INFO
            self._absence_said = True
        log.log(level, "%s: %s; looking again every %g s", self, why, self.timing.absent_retry_s)
        metrics.KUBE_WATCH_RESTARTS.labels(self.kind.kind, reason).inc()
        await asyncio.sleep(self.timing.absent_retry_s)

    async def _list(self) -> str:
        """Every object, page by page, into the store; returns the version the list is a snapshot of."""
        if self.lists:
            metrics.KUBE_RELISTS.labels(self.kind.kind).inc()
        self.lists += 1
        path = self.kind.path(self.namespace)
        items: list[dict[str, Any]] = []
        version = ""
        token = ""
        while True:
            query = [("limit", str(self.timing.page_size)), *self._selector]
            if token:
                query.append(("continue", token))
            page = await self.api.get_json(path, query, self.timing.list_timeout_s)
            # Stripped at once, so a list of thousands of Pods never holds all their full bodies at one time.
            items.extend(strip(self.kind, item) for item in page.get("items") or [] if isinstance(item, dict))
            meta = metadata(page)
            version = str(meta.get("resourceVersion") or "")
            token = str(meta.get("continue") or "")
            if not token:
                break
        deleted = await self._replace(items)
        self._count_synthetic_deletes(deleted)
        if deleted:
            log.info("%s: %d object(s) deleted while not watched", self, deleted)
        self.synced.set()
        return version

    async def _replace(self, items: list[dict[str, Any]]) -> int:
        listed = set()
        for start in range(0, len(items), YIELD_EVERY):
            if start:
                await asyncio.sleep(0)
            for item in items[start : start + YIELD_EVERY]:
                listed.add(self.store.key(self.kind, item))
                self.store.upsert(self.kind, item)
        return self.store.delete_unlisted(self.kind, self.namespace, listed)

    def _count_synthetic_deletes(self, deleted: int) -> None:
        if deleted:
            metrics.KUBE_EVENTS.labels(self.kind.kind, "SYNTHETIC_DELETED").inc(deleted)

    async def _watch(self) -> None:
        """One watch from `self.version`, until the server ends it; the version follows every event."""
        query = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", self.version),
            ("timeoutSeconds", str(self.timing.watch_timeout_s)),
            *self._selector,
        ]
        loop = asyncio.get_running_loop()
        # The watchdog covers waiting for the answer too, and is pushed back by every line received.
        try:
            async with asyncio.timeout(self.timing.inactivity_s) as watchdog:
                async with self.api.stream(self.kind.path(self.namespace), query) as body:
                    while True:
                        line = await body.readline()
                        watchdog.reschedule(loop.time() + self.timing.inactivity_s)
                        if not line:
                            self._backoff.reset()  # a watch that ran its course: the API server is fine
                            return
                        if not line.isspace():
                            self.version = self._apply(orjson.loads(line), self.version)
                            self._backoff.reset()
        except TimeoutError:
            if not watchdog.expired():
                raise  # a connect timeout: an error like any other
            metrics.KUBE_WATCH_RESTARTS.labels(self.kind.kind, "inactivity").inc()
            log.warning("%s: nothing received for %g s, reopening the watch", self, self.timing.inactivity_s)

    def _apply(self, event: dict[str, Any], version: str) -> str:
        kind = self.kind
        event_type = str(event.get("type") or "")
        obj = event.get("object")
        if not isinstance(obj, dict):
            raise ApiError(0, "BadEvent", f"{event_type} event without an object")
        metrics.KUBE_EVENTS.labels(kind.kind, event_type).inc()
        if event_type == "ERROR":
            raise ApiError.from_object(obj)
        if event_type in ("ADDED", "MODIFIED"):
            self.store.upsert(kind, obj)
        elif event_type == "DELETED":
            meta = metadata(obj)
            self.store.delete(kind, str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        # BOOKMARK carries only the version to resume from.
        return resource_version(obj) or version
