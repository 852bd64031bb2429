"""The kubelet part of the local node: registers the Node, keeps it alive (status heartbeat and Lease, so the node
lifecycle controller never marks it NotReady), runs every Pod the scheduler binds to it (pods.PodWorker), and
confirms their deletion."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from testing.localnode.cache import CONFIG_MAP, SECRET, SERVICE, Key, ObjectCache, Watches
from testing.localnode.containers import now
from testing.localnode.network import ClusterNetwork
from testing.localnode.pods import PodWorker
from xds_server.kube.api import call
from xds_server.sources.kubernetes.kinds import Kind

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10.0
LEASE_SECONDS = 40
KUBELET_VERSION = "v1.36.5"  # the control plane's (e2e/kube/gomod)
CAPACITY = {"cpu": "16", "memory": "32Gi", "pods": "250", "ephemeral-storage": "100Gi"}
TERMINAL = ("Succeeded", "Failed")


class MountPoints:
    """Mount points a pod needs that this machine lacks, created empty on the host (the pod binds its volume over
    them in its own mount namespace) and removed, if still empty, when the node stops."""

    def __init__(self) -> None:
        self._created: list[Path] = []

    def ensure(self, target: Path, directory: bool) -> None:
        missing: list[Path] = []
        path = target
        while not path.exists() and not path.is_symlink():
            missing.append(path)
            path = path.parent
        for path in reversed(missing):
            if path == target and not directory:
                path.touch()
            else:
                path.mkdir()
            self._created.append(path)

    def remove(self) -> None:
        for path in reversed(self._created):
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() else (path.unlink() if path.stat().st_size == 0 else None)
        self._created.clear()


def _micro_time() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LocalNode:
    def __init__(self, api: ApiClient, network: ClusterNetwork, name: str, workdir: Path, cache: ObjectCache) -> None:
        self.api = api
        self.network = network
        self.name = name
        self.workdir = workdir
        self.allocatable: Mapping[str, str] = CAPACITY
        self.cache = cache
        cache.subscribe(self._changed)
        self.mount_points = MountPoints()
        self.workers: dict[str, PodWorker] = {}  # by pod UID
        self._by_key: dict[Key, str] = {}  # (namespace, name) -> the UID running under that name
        self._synced = False
        self.pod_kind = Kind("", "v1", "Pod", "pods", field_selector=f"spec.nodeName={name}")

    # --- the Node object ---

    def _node_status(self) -> dict[str, Any]:
        stamp = now()
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "local node is posting ready"}
        pressure = [
            {"type": kind, "status": "False", "reason": f"KubeletHasNo{kind}", "message": "ok"}
            for kind in ("MemoryPressure", "DiskPressure", "PIDPressure")
        ]
        conditions = [{**c, "lastHeartbeatTime": stamp, "lastTransitionTime": stamp} for c in (*pressure, ready)]
        return {
            "capacity": dict(CAPACITY),
            "allocatable": dict(self.allocatable),
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": self.network.node_ip},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": platform.release(),
                "osImage": "xds-server local node",
                "containerRuntimeVersion": "local://0",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    async def register(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
            "spec": {"podCIDR": self.network.pod_cidr, "podCIDRs": [self.network.pod_cidr]},
            "status": self._node_status(),
        }
        try:
            await call(self.api, "POST", "/api/v1/nodes", body=body)
        except ApiException as error:
            if error.status != 409:
                raise
        await self._heartbeat()

    async def _heartbeat(self) -> None:
        path = f"/api/v1/nodes/{self.name}/status"
        node = await call(
            self.api, "PATCH", path, body={"status": self._node_status()}, content_type="application/merge-patch+json"
        )
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": "kube-node-lease",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": node["metadata"]["uid"]}
                ],
            },
            "spec": {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": _micro_time()},
        }
        leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        try:
            await call(
                self.api, "PATCH", f"{leases}/{self.name}", body=lease, content_type="application/merge-patch+json"
            )
        except ApiException as error:
            if error.status != 404:
                raise
            await call(self.api, "POST", leases, body=lease)

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self._heartbeat()
            except Exception as error:
                log.warning("node heartbeat failed: %s", error)

    # --- events ---

    async def event(self, pod: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        meta = pod["metadata"]
        stamp = now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": "kubelet", "host": self.name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.name,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        log.log(
            logging.WARNING if kind == "Warning" else logging.INFO,
            "pod %s/%s: %s: %s",
            meta["namespace"],
            meta["name"],
            reason,
            message,
        )
        try:
            await call(self.api, "POST", f"/api/v1/namespaces/{meta['namespace']}/events", body=body)
        except Exception as error:
            log.debug("event not written: %s", error)

    # --- pods ---

    def _changed(self, kind: Kind, key: Key, obj: dict[str, Any] | None) -> None:
        if not self._synced:
            return  # the first LISTs: handled all at once in run()
        if kind.kind == "Pod":
            self._pod_changed(key, obj)
        elif kind.kind in ("ConfigMap", "Secret"):
            for worker in self.workers.values():
                if worker.namespace == key[0]:
                    worker.volumes_changed()

    def _pod_changed(self, key: Key, pod: dict[str, Any] | None) -> None:
        running = self._by_key.get(key)
        uid = str(pod["metadata"]["uid"]) if pod is not None else None
        if running is not None and running != uid:  # deleted (force, or we confirmed it), or replaced by a new pod
            worker = self.workers.pop(running)
            worker.terminate(0)
            self._by_key.pop(key, None)
        if pod is None or uid is None:
            return
        existing = self.workers.get(uid)
        if existing is not None:
            existing.updated(pod)
            return
        if (pod.get("status") or {}).get("phase") in TERMINAL:
            return
        worker = PodWorker(self, pod)
        self.workers[uid] = worker
        self._by_key[key] = uid
        worker.start()
        if pod["metadata"].get("deletionTimestamp"):
            worker.updated(pod)
        asyncio.get_running_loop().create_task(self._forget_when_done(key, worker))

    async def _forget_when_done(self, key: Key, worker: PodWorker) -> None:
        await worker.wait()
        if self.workers.get(worker.uid) is worker:
            del self.workers[worker.uid]
        if self._by_key.get(key) == worker.uid:
            del self._by_key[key]

    # --- the whole ---

    @property
    def kinds(self) -> tuple[Kind, ...]:
        """What the node needs watched into its cache: its pods, what they mount and read, Services (their env)."""
        return (self.pod_kind, CONFIG_MAP, SECRET, SERVICE)

    async def run(self, stop: asyncio.Event, watches: Watches) -> None:
        """Once `watches` (of at least `kinds`, into the node's cache) have synced, until `stop` is set; then kills
        every pod's processes at once (the cluster is going away)."""
        await self.register()
        keep_alive = asyncio.create_task(self._keep_alive())
        try:
            await watches.synced()
            self._synced = True
            for pod in self.cache.items(self.pod_kind):
                self._pod_changed(self.cache.key(self.pod_kind, pod), pod)
            log.info("node %s ready (pod network %s)", self.name, self.network.pod_cidr)
            await stop.wait()
        finally:
            keep_alive.cancel()
            workers = list(self.workers.values())
            for worker in workers:
                worker.terminate(0)
            await asyncio.gather(*(worker.wait() for worker in workers), return_exceptions=True)
            self.mount_points.remove()


__all__ = ["LocalNode", "MountPoints"]
