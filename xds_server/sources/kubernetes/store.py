"""Every watched object as last seen, each with what the translator makes of it.

Per kind, (namespace, name) -> the raw object (as the API server returned it, stripped as `objects.strip` says)
and its parse: the valid version served (the latest, or the last good one when the latest is invalid) and the
latest version's errors. Objects are parsed only when their resourceVersion moves, and a change that cannot
affect translation (a status write) updates the raw object without telling anyone. Objects of report-only kinds
become the ResourceSet's `unknown` when they reference something (an object that references nothing cannot be told
to concern this controller: in a cluster, it may be another controller's).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from translators.loader import (
    LoadError,
    ObjectKey,
    Origin,
    ResourceSet,
    UnknownObject,
    ignored_fields,
    parse_document,
)
from translators.resources import Resource
from xds_server import metrics
from xds_server.sources.kubernetes.kinds import Kind
from xds_server.sources.kubernetes.objects import (
    is_newer,
    metadata,
    resource_version,
    strip,
    translation_input_changed,
)

log = logging.getLogger(__name__)

# Errors read "kubernetes document 0: HTTPRoute/ns/name: field ...: reason": the object names itself.
ORIGIN = Origin("kubernetes", 0)


@dataclass(slots=True)
class Entry:
    raw: dict[str, Any]
    resource: Resource | None  # what is served: the latest version, or the last good one while it is invalid
    errors: tuple[LoadError, ...]  # the latest version's


class Store:
    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self._on_change = on_change  # a change translation must see
        self._entries: dict[str, dict[tuple[str, str], Entry]] = {}
        self._served: dict[ObjectKey, Resource] = {}
        self._errors: dict[ObjectKey, tuple[LoadError, ...]] = {}
        self._unknown: dict[ObjectKey, UnknownObject] = {}  # objects of report-only kinds that reference something
        self._ignored: dict[ObjectKey, tuple[str, ...]] = {}  # served versions' fields the translator does not read
        # The set `resource_set` last made, and the keys served differently since (a translation then need not
        # compare every object to find them).
        self._latest: ResourceSet | None = None
        self._changed: set[ObjectKey] = set()

    def key(self, kind: Kind, raw: dict[str, Any]) -> tuple[str, str]:
        meta = metadata(raw)
        return (str(meta.get("namespace") or "") if kind.namespaced else "", str(meta.get("name") or ""))

    def upsert(self, kind: Kind, raw: dict[str, Any]) -> bool:
        """An ADDED or MODIFIED object; True when translation must see it. A version that is not newer than the
        stored one (a watch event after the status writer stored its own PUT's answer) is ignored."""
        raw = strip(kind, raw)
        key = self.key(kind, raw)
        entries = self._entries.setdefault(kind.kind, {})
        old = entries.get(key)
        if old is not None:
            if not is_newer(resource_version(raw), resource_version(old.raw)):
                return False
            if not translation_input_changed(kind, old.raw, raw):
                old.raw = raw
                return False
        # The API server validated the object against its CRD: a field ours lack is reported, not refused.
        parsed = parse_document(raw, ORIGIN, strict_fields=False)
        object_key = ObjectKey(kind.kind, *key)
        if isinstance(parsed, list):
            entry = Entry(raw, old.resource if old is not None else None, tuple(parsed))
            self._errors[object_key] = entry.errors
            log.warning("invalid object kept out: %s", "; ".join(map(str, parsed)))
        elif isinstance(parsed, UnknownObject):
            if not kind.report_only:  # every other watched kind has a model
                raise TypeError(f"no model for {kind.api_version} {kind.kind}")
            entry = Entry(raw, None, ())
            if parsed.references:
                self._unknown[object_key] = parsed
            elif self._unknown.pop(object_key, None) is None:  # nothing for translation, before or now
                if old is None:
                    metrics.KUBE_OBJECTS.labels(kind.kind).inc()
                entries[key] = entry
                return False
        else:
            entry = Entry(raw, parsed, ())
            self._errors.pop(object_key, None)
            ignored = ignored_fields(raw)
            if ignored:
                self._ignored[object_key] = ignored
                log.warning("%s %s/%s: fields ignored: %s", kind.kind, *key, ", ".join(ignored))
            else:
                self._ignored.pop(object_key, None)
        if entry.resource is not None and self._served.get(object_key) is not entry.resource:
            self._served[object_key] = entry.resource
            self._changed.add(object_key)
        if old is None:
            metrics.KUBE_OBJECTS.labels(kind.kind).inc()
        entries[key] = entry
        self._on_change()
        return True

    def delete(self, kind: Kind, namespace: str, name: str) -> bool:
        key = (namespace if kind.namespaced else "", name)
        if self._entries.get(kind.kind, {}).pop(key, None) is None:
            return False
        object_key = ObjectKey(kind.kind, *key)
        if self._served.pop(object_key, None) is not None:
            self._changed.add(object_key)
        self._errors.pop(object_key, None)
        self._ignored.pop(object_key, None)
        metrics.KUBE_OBJECTS.labels(kind.kind).dec()
        if kind.report_only and self._unknown.pop(object_key, None) is None:
            return False  # it referenced nothing: translation never saw it
        self._on_change()
        return True

    def keys(self, kind: Kind, namespace: str | None = None) -> list[tuple[str, str]]:
        """(namespace, name) of every stored object of a kind, in one namespace or all."""
        entries = self._entries.get(kind.kind, {})
        return [key for key in entries if namespace is None or key[0] == namespace]

    def replace(self, kind: Kind, namespace: str | None, raws: Iterable[dict[str, Any]]) -> int:
        """A fresh LIST of one kind (in one namespace, or all): stores every listed object and deletes what was
        not listed (it was deleted while nobody watched). Returns how many were deleted."""
        listed = set()
        for raw in raws:
            listed.add(self.key(kind, raw))
            self.upsert(kind, raw)
        return self.delete_unlisted(kind, namespace, listed)

    def delete_unlisted(self, kind: Kind, namespace: str | None, listed: set[tuple[str, str]]) -> int:
        """Deletes every stored object of a kind (in one namespace, or all) whose key is not in `listed`."""
        gone = [key for key in self.keys(kind, namespace) if key not in listed]
        for key in gone:
            self.delete(kind, *key)
        return len(gone)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        entry = self._entries.get(kind, {}).get((namespace, name))
        return entry.raw if entry is not None else None

    def resource_set(self) -> ResourceSet:
        """Valid objects (last good versions included) and the errors of invalid ones, in key order."""
        objects = dict(self._served)
        errors = tuple(error for key in sorted(self._errors) for error in self._errors[key])
        unknown = tuple(self._unknown[key] for key in sorted(self._unknown))
        found = ResourceSet(objects, dict.fromkeys(objects, ORIGIN), unknown, errors, dict(self._ignored))
        if self._latest is not None:
            found = found.with_changes(self._latest, frozenset(self._changed))
        self._latest, self._changed = found, set()
        return found
