"""What the local node watches (its Pods, Services, EndpointSlices, the ConfigMaps and Secrets its pods mount), kept
current by the product's own reflectors (xds_server/sources/kubernetes/reflector.py: paged LIST, WATCH with
bookmarks, relist on 410) into a plain store of whole objects, with a callback per change."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from kubernetes_asyncio.client import ApiClient

from xds_server.sources.kubernetes.client import RawApi
from xds_server.sources.kubernetes.kinds import Kind
from xds_server.sources.kubernetes.objects import is_newer, metadata, resource_version
from xds_server.sources.kubernetes.reflector import Reflector, Timing

# Whole objects: the node reads pod specs, Service ports, Secret data.
POD = Kind("", "v1", "Pod", "pods")
SERVICE = Kind("", "v1", "Service", "services")
ENDPOINT_SLICE = Kind("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices")
CONFIG_MAP = Kind("", "v1", "ConfigMap", "configmaps")
SECRET = Kind("", "v1", "Secret", "secrets", field_selector="type!=helm.sh/release.v1")

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
Changed = Callable[[Kind, Key, dict[str, Any] | None], None]  # the object, None when deleted


class ObjectCache:
    """Raw objects per kind, as the API server last sent them; subscribers are called for every real change."""

    def __init__(self) -> None:
        self._objects: dict[str, dict[Key, dict[str, Any]]] = {}
        self._subscribers: list[Changed] = []

    def subscribe(self, changed: Changed) -> None:
        self._subscribers.append(changed)

    def _changed(self, kind: Kind, key: Key, obj: dict[str, Any] | None) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(kind, key, obj)
            except Exception:
                log.exception("a reader of the %s cache failed on %s/%s", kind.kind, *key)

    # --- what readers use ---

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        return self._objects.get(kind.kind, {}).get((namespace if kind.namespaced else "", name))

    def items(self, kind: Kind) -> Iterator[dict[str, Any]]:
        return iter(list(self._objects.get(kind.kind, {}).values()))

    # --- what a Reflector calls (reflector.ReflectedStore) ---

    def key(self, kind: Kind, raw: dict[str, Any]) -> Key:
        meta = metadata(raw)
        return (str(meta.get("namespace") or "") if kind.namespaced else "", str(meta.get("name") or ""))

    def upsert(self, kind: Kind, raw: dict[str, Any]) -> bool:
        key = self.key(kind, raw)
        objects = self._objects.setdefault(kind.kind, {})
        old = objects.get(key)
        if old is not None and not is_newer(resource_version(raw), resource_version(old)):
            return False
        objects[key] = raw
        self._changed(kind, key, raw)
        return True

    def delete(self, kind: Kind, namespace: str, name: str) -> bool:
        key = (namespace if kind.namespaced else "", name)
        if self._objects.get(kind.kind, {}).pop(key, None) is None:
            return False
        self._changed(kind, key, None)
        return True

    def replace(self, kind: Kind, namespace: str | None, raws: Iterable[dict[str, Any]]) -> int:
        listed = set()
        for raw in raws:
            listed.add(self.key(kind, raw))
            self.upsert(kind, raw)
        return self.delete_unlisted(kind, namespace, listed)

    def delete_unlisted(self, kind: Kind, namespace: str | None, listed: set[Key]) -> int:
        gone = [key for key in self._objects.get(kind.kind, {}) if key not in listed and namespace in (None, key[0])]
        for key in gone:
            self.delete(kind, *key)
        return len(gone)


class Watches:
    """One reflector per kind into one cache; `synced()` waits for every first LIST."""

    def __init__(self, api: ApiClient, cache: ObjectCache, kinds: Iterable[Kind]) -> None:
        raw = RawApi(api)
        self.reflectors = [Reflector(raw, kind, None, cache, Timing()) for kind in kinds]

    def start(self) -> None:
        for reflector in self.reflectors:
            reflector.start()

    async def synced(self) -> None:
        await asyncio.gather(*(reflector.synced.wait() for reflector in self.reflectors))

    async def stop(self) -> None:
        await asyncio.gather(*(reflector.stop() for reflector in self.reflectors))
