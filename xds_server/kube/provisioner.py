"""Provisions each Gateway's Envoys (what `infra` wants) on the leader only, and tells the status writer what they say.

A pass lists our objects in the controller namespace (label `app.kubernetes.io/managed-by=xds-server`), applies with
server-side apply (field manager `xds-server`, force) every wanted object that is missing or carries another hash
than the wanted one, and deletes every listed object no Gateway wants: so objects of Gateways deleted while the
controller was down go at its first pass, and a deleted Deployment comes back. Passes follow the translations (when
what is wanted changed, or the source's copy of the controller namespace shows a wanted object missing, changed or an
unwanted one), a gained leadership (which re-applies everything: a former leader's edits may differ), a timer
(`RESYNC_SECONDS`; sooner after a failed pass) and, with mutual TLS, the moment the next Gateway's client certificate
falls due (the pass renews it and rewrites that Secret alone). A new leader first adopts the current certificates
the cluster's Secrets hold, so a change of leader or a restart re-issues none. Nothing is written unless this
replica leads, checked before every write.

The Gateway's addresses and available replicas come from its Service and Deployment as the source holds them, or,
when the source does not watch the controller namespace (`--namespace`), as the last pass listed them. Nodes
(addresses of NodePort Services) are listed by each pass that has a NodePort Service to serve, not watched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from translators.loader import ResourceSet
from xds_server import metrics
from xds_server.kube.api import APPLY_PATCH, call
from xds_server.kube.infra import (
    MANAGED_BY,
    MANAGED_KINDS,
    MANAGED_SELECTOR,
    EnvoyCertificate,
    ObjectKey,
    ProvisionSettings,
    applied_hash,
    desired_set,
    gateway_infra,
    infra_name,
    our_gateways,
    stale_objects,
    tls_secret_name,
)
from xds_server.kube.status import GatewayInfra
from xds_server.kube.status_writer import Leadership
from xds_server.kube.tls_secrets import CertificateError, GatewayCertificates

log = logging.getLogger(__name__)

COALESCE_SECONDS = 0.1
RESYNC_SECONDS = 60.0
RETRY_SECONDS = 5.0
CONCURRENT_WRITES = 8
COLLECTIONS = {
    "ServiceAccount": "/api/v1/namespaces/{namespace}/serviceaccounts",
    "Secret": "/api/v1/namespaces/{namespace}/secrets",
    "ConfigMap": "/api/v1/namespaces/{namespace}/configmaps",
    "Service": "/api/v1/namespaces/{namespace}/services",
    "Deployment": "/apis/apps/v1/namespaces/{namespace}/deployments",
}
WATCHED_KINDS = ("Secret", "ConfigMap", "Service", "Deployment")  # the kinds the source holds (not ServiceAccounts)


class PassFailed(Exception):
    """Some writes of a pass failed (each was logged)."""


class StoredObjects(Protocol):
    """The source's copy of each object as the API server last returned it."""

    def stored(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    def stored_keys(self, kind: str) -> Iterable[tuple[str, str]]: ...


class Provisioner:
    def __init__(
        self,
        api: client.ApiClient,
        store: StoredObjects,
        settings: ProvisionSettings,
        controller_name: str,
        current: Callable[[], ResourceSet | None],
        leadership: Leadership,
        watched: bool,
        namespaces: Sequence[str] = (),
        on_pass: Callable[[], None] = lambda: None,
        resync_seconds: float = RESYNC_SECONDS,
        certificates: GatewayCertificates | None = None,
    ) -> None:
        """`watched`: the source watches the controller namespace (its copy shows drift at once); `namespaces`: the
        source watches only Gateways of those (empty: all), so only their objects are ours to delete; `on_pass` is
        called after every complete pass (the status writer's poke); `certificates` (with `settings.tls`): each
        Gateway's client certificate, renewed by the pass that finds it due."""
        self._api = api
        self._store = store
        self.settings = settings
        self._controller_name = controller_name
        self._current = current
        self._leadership = leadership
        self._watched = watched
        self._namespaces = frozenset(namespaces)
        self._on_pass = on_pass
        self._resync_seconds = resync_seconds
        self._certificates = certificates
        self._dirty = asyncio.Event()
        self._force = False  # re-apply everything at the next pass
        self._limit = asyncio.Semaphore(CONCURRENT_WRITES)
        self._applied: dict[ObjectKey, str] | None = None  # the wanted set's hashes at the last complete pass
        self._listed: dict[ObjectKey, dict[str, Any]] = {}  # our objects as the last pass listed or applied them
        self._nodes: list[dict[str, Any]] = []
        self._nodes_refused = False  # said once: a namespaced install may not read Nodes
        self.passes = 0  # passes that listed the cluster, for tests and /debug

    def poke(self) -> None:
        """A translation was applied: a pass follows if what is wanted or what exists changed."""
        self._dirty.set()

    def lead(self) -> None:
        """This replica became the leader: the next pass re-applies everything."""
        self._force = True
        if self._certificates is not None:
            self._certificates.seeded = False  # another leader may have renewed some: look before issuing
        self._dirty.set()

    def _wait(self, seconds: float) -> float:
        """`seconds`, or less when a client certificate falls due sooner (only the leader renews them)."""
        if self._certificates is None or not self._leadership.is_leader:
            return seconds
        due = self._certificates.seconds_to_renewal()
        return seconds if due is None else min(seconds, due + COALESCE_SECONDS)

    async def run(self, stop: asyncio.Event) -> None:
        stopping = asyncio.create_task(stop.wait())
        wait = self._resync_seconds
        try:
            while not stop.is_set():
                dirty = asyncio.create_task(self._dirty.wait())
                done, _ = await asyncio.wait(
                    {dirty, stopping}, timeout=self._wait(wait), return_when=asyncio.FIRST_COMPLETED
                )
                dirty.cancel()
                if stop.is_set():
                    break
                resync = not done  # the timer: list even if nothing seems to have changed
                await asyncio.sleep(COALESCE_SECONDS)
                self._dirty.clear()
                wait = self._resync_seconds
                if not self._leadership.is_leader:
                    continue
                try:
                    await self.reconcile(resync)
                except (ApiException, aiohttp.ClientError, TimeoutError, PassFailed, CertificateError) as error:
                    log.warning("provisioning pass failed (%s); retrying in %.0f s", error, RETRY_SECONDS)
                    self._applied = None
                    wait = RETRY_SECONDS
                except Exception:  # a bug must not end provisioning for good
                    log.exception("provisioning pass failed; retrying in %.0f s", RETRY_SECONDS)
                    self._applied = None
                    wait = RETRY_SECONDS
        finally:
            stopping.cancel()

    async def reconcile(self, resync: bool = True) -> None:
        """One pass; with `resync` False it lists and writes only when something seems to differ."""
        resources = self._current()
        if resources is None:
            return
        force, self._force = self._force, False
        actual = None
        certificate: Callable[[str], EnvoyCertificate] | None = None
        if self._certificates is not None:
            if not self._certificates.seeded:  # adopt what the cluster has before issuing anything
                actual = await self._list()
                secrets = [(name, document) for (kind, name), document in actual.items() if kind == "Secret"]
                self._certificates.adopt(secrets, lambda gateway: tls_secret_name(*gateway.split("/", 1)))
            gateways = our_gateways(resources, self._controller_name)
            self._certificates.keep_only(f"{gateway.namespace}/{gateway.name}" for gateway, _ in gateways)
            certificate = self._certificate
        unbuilt: set[tuple[str, str]] = set()
        wanted = desired_set(resources, self._controller_name, self.settings, certificate, unbuilt)
        hashes = {key: applied_hash(document) or "" for key, document in wanted.items()}
        if not (resync or force or actual is not None or hashes != self._applied or self._drifted(hashes)):
            return
        if actual is None:
            actual = await self._list()
        if any(d["kind"] == "Service" and d["spec"]["type"] == "NodePort" for d in wanted.values()):
            self._nodes = await self._list_nodes()
        to_apply = [
            document
            for key, document in wanted.items()
            if force or key not in actual or applied_hash(actual[key]) != hashes[key]
        ]
        stale = stale_objects(actual.values(), wanted, self._namespaces, keep=unbuilt)
        applied = await asyncio.gather(*(self._apply(document) for document in to_apply))
        deleted = await asyncio.gather(*(self._delete(kind, name) for kind, name in stale))
        for document in applied:
            if document is not None:
                actual[(str(document["kind"]), str(document["metadata"]["name"]))] = document
        for key, gone in zip(stale, deleted, strict=True):
            if gone:
                actual.pop(key, None)
        self._listed = actual
        self.passes += 1
        failed = applied.count(None) + deleted.count(False)
        if failed and not self._leadership.is_leader:
            self._applied = None  # stopped leading meanwhile: whoever leads next re-applies everything anyway
            return
        if failed:
            self._force = force
            raise PassFailed(f"{failed} of {len(to_apply) + len(stale)} writes failed")
        if unbuilt:  # the others are applied; these are tried again, with the pass's backoff
            self._applied = None
            names = ", ".join(f"{namespace}/{name}" for namespace, name in sorted(unbuilt))
            raise PassFailed(f"the objects of Gateway(s) {names} could not be built")
        self._applied = hashes
        if to_apply or stale:
            log.info("provisioned: %d applied, %d deleted", len(to_apply), len(stale))
        self._on_pass()

    def _certificate(self, gateway: str) -> EnvoyCertificate:
        """The Gateway's client certificate (renewed when due) with the trust bundle, for its Secret."""
        assert self._certificates is not None
        pair = self._certificates.pair(gateway)
        return EnvoyCertificate(pair.certificate_pem, pair.key_pem, self._certificates.trust_pem)

    def _drifted(self, hashes: Mapping[ObjectKey, str]) -> bool:
        """The source's copy of the controller namespace shows a wanted object missing or changed, or one of ours
        no Gateway wants (someone deleted or edited it). Without that copy, the timer finds out."""
        if not self._watched:
            return False
        namespace = self.settings.namespace
        for (kind, name), wanted_hash in hashes.items():
            if kind in WATCHED_KINDS:
                stored = self._store.stored(kind, namespace, name)
                if stored is None or applied_hash(stored) != wanted_hash:
                    return True
        for kind in WATCHED_KINDS:
            for key_namespace, name in self._store.stored_keys(kind):
                if key_namespace == namespace and (kind, name) not in hashes:
                    stored = self._store.stored(kind, namespace, name)
                    if stored is not None and stale_objects([stored], (), self._namespaces):
                        return True
        return False

    def gateway_infra(self, namespace: str, name: str) -> GatewayInfra:
        """What the Gateway's Service and Deployment say: its addresses and available replicas."""
        object_name = infra_name(namespace, name)
        return gateway_infra(self._object("Service", object_name), self._object("Deployment", object_name), self._nodes)

    def _object(self, kind: str, name: str) -> dict[str, Any] | None:
        if self._watched:
            return self._store.stored(kind, self.settings.namespace, name)
        return self._listed.get((kind, name))

    # --- the API calls -------------------------------------------------------------------------------------------

    async def _call(
        self, method: str, path: str, query: Sequence[tuple[str, str]] = (), body: Any = None
    ) -> dict[str, Any]:
        return await call(self._api, method, path, query, body, APPLY_PATCH)

    def _collection(self, kind: str) -> str:
        return COLLECTIONS[kind].format(namespace=self.settings.namespace)

    async def _list(self) -> dict[ObjectKey, dict[str, Any]]:
        found: dict[ObjectKey, dict[str, Any]] = {}
        for kind in MANAGED_KINDS:
            listed = await self._call("GET", self._collection(kind), [("labelSelector", MANAGED_SELECTOR)])
            for item in listed.get("items") or []:
                name = str((item.get("metadata") or {}).get("name"))
                found[(kind, name)] = {**item, "kind": kind}  # a LIST leaves kind out of its items
        return found

    async def _list_nodes(self) -> list[dict[str, Any]]:
        try:
            listed = await self._call("GET", "/api/v1/nodes")
        except ApiException as error:
            if not self._nodes_refused:
                reason = f"{error.status} {error.reason}"
                log.warning("cannot list Nodes for NodePort addresses (%s): ClusterIPs instead", reason)
            self._nodes_refused = True
            return []
        self._nodes_refused = False
        return [item for item in listed.get("items") or [] if isinstance(item, dict)]

    async def _apply(self, document: dict[str, Any]) -> dict[str, Any] | None:
        """Server-side apply, forced (we own these objects); None when it failed or we stopped leading."""
        kind, name = str(document["kind"]), str(document["metadata"]["name"])
        async with self._limit:
            if not self._leadership.is_leader:
                return None
            try:
                applied = await self._call(
                    "PATCH",
                    f"{self._collection(kind)}/{name}",
                    [("fieldManager", MANAGED_BY), ("force", "true")],
                    document,
                )
            except ApiException as error:
                metrics.PROVISIONED.labels(kind, "apply", "error").inc()
                log.warning(
                    "%s %s/%s not applied: %s %s %s",
                    kind,
                    self.settings.namespace,
                    name,
                    error.status,
                    error.reason,
                    error.body,
                )
                return None
        metrics.PROVISIONED.labels(kind, "apply", "ok").inc()
        return {**applied, "kind": kind}

    async def _delete(self, kind: str, name: str) -> bool:
        async with self._limit:
            if not self._leadership.is_leader:
                return False
            try:
                await self._call("DELETE", f"{self._collection(kind)}/{name}", [("propagationPolicy", "Background")])
            except ApiException as error:
                if error.status == 404:
                    return True  # gone already
                metrics.PROVISIONED.labels(kind, "delete", "error").inc()
                log.warning(
                    "%s %s/%s not deleted: %s %s", kind, self.settings.namespace, name, error.status, error.reason
                )
                return False
        metrics.PROVISIONED.labels(kind, "delete", "ok").inc()
        log.info("deleted %s %s/%s: no Gateway of ours wants it", kind, self.settings.namespace, name)
        return True
