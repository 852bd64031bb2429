"""The status writer against a real API server: a stale copy conflicts (409), is read again and written; a replica
that does not lead writes nothing; an unchanged status is not written again."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any, cast

import pytest
from kubernetes import client as k8s
from kubernetes_asyncio.client import ApiClient

from testing.kube_cluster import KubeCluster
from translators.ir import Condition, ConditionStatus, ObjectRef, ObjectStatus, ParentRefIR, ParentStatus
from translators.loader import ResourceSet
from xds_server import metrics
from xds_server.kube.status_writer import StatusWriter
from xds_server.sources.kubernetes import kinds
from xds_server.sources.kubernetes.config import api_client

OURS = "gateway.envoyproxy.io/gatewayclass-controller"
ROUTES = ("gateway.networking.k8s.io", "v1", "httproutes")


class OneObject:
    """A store holding one object as the writer last saw it (possibly stale)."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.updates: list[dict[str, Any]] = []

    def stored(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        meta = self.raw["metadata"]
        return (
            dict(self.raw) if (kind, namespace, name) == (self.raw["kind"], meta["namespace"], meta["name"]) else None
        )

    def stored_keys(self, kind: str) -> Iterable[tuple[str, str]]:
        meta = self.raw["metadata"]
        return [(meta["namespace"], meta["name"])] if kind == self.raw["kind"] else []

    def stored_version(self, kind: str, namespace: str, name: str) -> str | None:
        found = self.stored(kind, namespace, name)
        return str(found["metadata"]["resourceVersion"]) if found is not None else None

    def stored_update(self, raw: dict[str, Any]) -> None:
        self.updates.append(raw)
        self.raw = raw


class Leading:
    def __init__(self, leading: bool) -> None:
        self.is_leader = leading


@pytest.fixture
async def async_api(kube_cluster: KubeCluster) -> AsyncIterator[ApiClient]:
    api = await api_client(str(kube_cluster.kubeconfig))
    yield api
    await api.close()


def route_verdict(namespace: str) -> ObjectStatus:
    accepted = Condition("Accepted", ConditionStatus.TRUE, "Accepted", "attached")
    parent = ParentStatus(ParentRefIR(namespace, "gw"), (accepted,))
    return ObjectStatus(ObjectRef("HTTPRoute", namespace, "r"), (), generation=1, parents=(parent,))


def conflicts() -> float:
    count: float = metrics.STATUS_WRITES.labels("HTTPRoute", "conflict")._value.get()
    return count


async def test_a_stale_copy_conflicts_is_read_again_and_written_once(
    async_api: ApiClient, api_client: k8s.ApiClient, namespace: str
) -> None:
    routes = k8s.CustomObjectsApi(api_client)
    body = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": [{}]},
    }
    stale = cast(dict[str, Any], routes.create_namespaced_custom_object(*ROUTES[:2], namespace, ROUTES[2], body))
    # Someone else changes the object: the writer's copy now carries an old resourceVersion.
    routes.patch_namespaced_custom_object(*ROUTES[:2], namespace, ROUTES[2], "r", {"metadata": {"labels": {"a": "b"}}})
    store = OneObject(stale)
    verdict = route_verdict(namespace)
    writer = StatusWriter(async_api, store, kinds.BY_NAME, OURS, lambda: (ResourceSet(), [verdict]), Leading(False))
    await writer.write_all()
    assert store.updates == []  # a follower writes nothing
    writer = StatusWriter(async_api, store, kinds.BY_NAME, OURS, lambda: (ResourceSet(), [verdict]), Leading(True))
    before = conflicts()
    await writer.write_all()
    assert conflicts() == before + 1
    written = cast(dict[str, Any], routes.get_namespaced_custom_object(*ROUTES[:2], namespace, ROUTES[2], "r"))
    [parent] = written["status"]["parents"]
    assert parent["controllerName"] == OURS and parent["conditions"][0]["observedGeneration"] == 1
    assert written["metadata"]["labels"] == {"a": "b"}  # the other writer's change is kept
    assert len(store.updates) == 1
    await writer.write_all()  # nothing changed: nothing is written
    assert len(store.updates) == 1
