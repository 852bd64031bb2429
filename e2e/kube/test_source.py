"""The Kubernetes source against a real API server: the tutorial's objects listed and parsed, changes reaching
`on_load`, invalid objects reported while the valid ones stay, recovery from a compacted history (410) by relisting
and diffing, status-only writes kept out of translation, namespace limits, and 5,000 Pods (memory and list time,
printed; nothing asserts on them).

The source runs on this test's event loop; the official client's blocking calls run in threads so the source keeps
watching while a test writes. Every wait polls with a generous deadline: nothing here asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient
from kubernetes_asyncio.client import ApiClient
from prometheus_client import REGISTRY

from testing.cases import SEED
from testing.kube_cluster import KubeCluster, read_json
from testing.processes import rss_kib
from translators.loader import ObjectKey, ResourceSet
from translators.resources import AIGatewayRoute, HTTPRoute, Pod
from xds_server.sources.kubernetes import KubernetesSource, api_client, default_namespace
from xds_server.sources.kubernetes.kinds import BY_NAME, watched_kinds
from xds_server.sources.kubernetes.reflector import Reflector

WAIT_S = 90.0  # a deadline against hangs on a loaded machine, not a performance bound
PODS = 5000

GATEWAY_API = ("gateway.networking.k8s.io", "v1", "httproutes")
AI_ROUTES = ("aigateway.envoyproxy.io", "v1alpha1", "aigatewayroutes")


@pytest.fixture
async def kube_api(kube_cluster: KubeCluster) -> AsyncIterator[ApiClient]:
    """The source's own client, built the way `serve --kubernetes --kubeconfig` builds it."""
    client = await api_client(str(kube_cluster.kubeconfig))
    try:
        yield client
    finally:
        await client.close()


class Loads:
    """`on_load`: records every ResourceSet handed on."""

    def __init__(self) -> None:
        self.sets: list[ResourceSet] = []

    async def __call__(self, resources: ResourceSet) -> None:
        self.sets.append(resources)

    @property
    def last(self) -> ResourceSet:
        return self.sets[-1] if self.sets else ResourceSet()


@contextlib.asynccontextmanager
async def watching(api: ApiClient, namespaces: list[str]) -> AsyncIterator[tuple[KubernetesSource, Loads]]:
    source = KubernetesSource(api, namespaces)
    loads = Loads()
    stop = asyncio.Event()
    try:
        await asyncio.wait_for(source.start(), WAIT_S)
        task = asyncio.create_task(source.watch(loads, stop))
        try:
            yield source, loads
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT_S)
    finally:
        await source.close()


async def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {WAIT_S:.0f} s")
        await asyncio.sleep(0.05)


class Custom:
    """One custom resource collection of one namespace through the official client, called from a thread."""

    def __init__(self, api_client: k8s.ApiClient, where: tuple[str, str, str], namespace: str) -> None:
        self.api = k8s.CustomObjectsApi(api_client)
        group, version, plural = where
        self.where = (group, version, namespace, plural)

    async def _call(self, method: str, *args: Any) -> dict[str, Any]:
        return cast(dict[str, Any], await asyncio.to_thread(getattr(self.api, method), *self.where, *args))

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("create_namespaced_custom_object", body)

    async def patch(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self._call("patch_namespaced_custom_object", name, patch)

    async def patch_status(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self._call("patch_namespaced_custom_object_status", name, patch)

    async def replace_status(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("replace_namespaced_custom_object_status", name, body)

    async def delete(self, name: str) -> None:
        await self._call("delete_namespaced_custom_object", name)

    async def list(self) -> dict[str, Any]:
        return await self._call("list_namespaced_custom_object")


def http_route(name: str, hostname: str = "a.example.com") -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "hostnames": [hostname],
            "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}],
        },
    }


def ai_route(name: str, body_value: str | None = None) -> dict[str, Any]:
    """An AIGatewayRoute; with `body_value`, a body mutation setting `temperature` to that JSON text."""
    backend: dict[str, Any] = {"name": "backend"}
    if body_value is not None:
        backend["bodyMutation"] = {"set": [{"path": "temperature", "value": body_value}]}
    return {
        "apiVersion": "aigateway.envoyproxy.io/v1alpha1",
        "kind": "AIGatewayRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"name": "gw", "kind": "Gateway", "group": "gateway.networking.k8s.io"}],
            "rules": [
                {
                    "matches": [{"headers": [{"type": "Exact", "name": "x-ai-eg-model", "value": "m"}]}],
                    "backendRefs": [backend],
                }
            ],
        },
    }


def routes_in(resources: ResourceSet, namespace: str) -> dict[str, HTTPRoute]:
    return {r.name: r for r in resources.of_kind(HTTPRoute) if r.namespace == namespace}


def create_namespace(api_client: k8s.ApiClient, name: str) -> None:
    k8s.CoreV1Api(api_client).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))


def metric(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- (a) the tutorial ---------------------------------------------------------------------------------------------


def seed_documents(namespace: str) -> list[dict[str, Any]]:
    """The tutorial's objects of watched kinds, moved into `namespace`; its GatewayClass gets a name of its own
    (cluster-scoped, shared by the session) and its EnvoyProxy, which lives in envoy-gateway-system in the tutorial,
    comes along into the namespace."""
    watched = {kind.kind for kind in watched_kinds()}
    documents = [
        doc
        for path in sorted(SEED.glob("0*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if isinstance(doc, dict) and doc.get("kind") in watched
    ]
    class_names = {
        doc["metadata"]["name"]: f"{namespace}-{doc['metadata']['name']}"
        for doc in documents
        if doc["kind"] == "GatewayClass"
    }
    for doc in documents:
        if BY_NAME[doc["kind"]].namespaced:
            doc["metadata"]["namespace"] = namespace
        if doc["kind"] == "GatewayClass":
            doc["metadata"]["name"] = class_names[doc["metadata"]["name"]]
            doc["spec"]["parametersRef"]["namespace"] = namespace
        if doc["kind"] == "Gateway":
            doc["spec"]["gatewayClassName"] = class_names[doc["spec"]["gatewayClassName"]]
    return documents


@pytest.mark.skipif(not SEED.is_dir(), reason=f"tutorial copy not found at {SEED}")
async def test_tutorial_objects_are_listed_and_parsed(
    kube_api: ApiClient, api_client: k8s.ApiClient, dynamic_client: DynamicClient, namespace: str
) -> None:
    documents = seed_documents(namespace)
    applied: set[ObjectKey] = set()
    for doc in documents:
        resource = dynamic_client.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        scope = namespace if resource.namespaced else None
        dynamic_client.server_side_apply(  # type: ignore[no-untyped-call]  # the kubernetes client is unannotated
            resource, body=doc, namespace=scope, field_manager="xds-server-e2e", force_conflicts=True
        )
        applied.add(ObjectKey(doc["kind"], scope or "", doc["metadata"]["name"]))
    assert {key.kind for key in applied} >= {"Gateway", "GatewayClass", "AIGatewayRoute", "InferencePool"}

    async with watching(kube_api, [namespace]) as (source, _):
        resources = source.resources()
        missing = applied - set(resources.objects)
        assert not missing, f"not listed: {sorted(map(str, missing))}"
        ours = [
            e
            for e in resources.errors
            if e.namespace == namespace or (e.kind, e.name) in {(k.kind, k.name) for k in applied}
        ]
        assert ours == [], [str(e) for e in ours]

        # Created as v1alpha1, listed as v1beta1 (one storage, conversion None) with everything in it.
        route = resources.get(AIGatewayRoute, namespace, "inference-pool-with-aigwroute")
        assert route is not None and len(route.spec.rules) == 3
        raw = source.stored("AIGatewayRoute", namespace, "inference-pool-with-aigwroute")
        assert raw is not None and raw["apiVersion"] == "aigateway.envoyproxy.io/v1beta1"
        assert "managedFields" not in raw["metadata"]
        assert raw["metadata"]["generation"] == 1
        assert source.synced


def test_default_namespace_comes_from_the_kubeconfig_context(kube_cluster: KubeCluster) -> None:
    assert default_namespace(str(kube_cluster.kubeconfig)) == "default"


# --- (b) changes reach on_load ------------------------------------------------------------------------------------


async def test_route_create_modify_delete_reach_on_load(
    kube_api: ApiClient, api_client: k8s.ApiClient, namespace: str
) -> None:
    routes = Custom(api_client, GATEWAY_API, namespace)
    async with watching(kube_api, [namespace]) as (_, loads):
        await routes.create(http_route("r"))
        await eventually(lambda: "r" in routes_in(loads.last, namespace), "created")

        await routes.patch("r", {"spec": {"hostnames": ["b.example.com"]}})
        await eventually(lambda: routes_in(loads.last, namespace)["r"].spec.hostnames == ["b.example.com"], "modified")

        await routes.delete("r")
        await eventually(lambda: "r" not in routes_in(loads.last, namespace), "deleted")


async def test_reference_grants_are_watched(kube_api: ApiClient, api_client: k8s.ApiClient, namespace: str) -> None:
    grants = Custom(api_client, ("gateway.networking.k8s.io", "v1", "referencegrants"), namespace)
    async with watching(kube_api, [namespace]) as (_, loads):
        await grants.create(
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "ReferenceGrant",
                "metadata": {"name": "grant"},
                "spec": {
                    "from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "elsewhere"}],
                    "to": [{"group": "", "kind": "Service"}],
                },
            }
        )
        await eventually(lambda: ObjectKey("ReferenceGrant", namespace, "grant") in loads.last.objects, "seen")


# --- (c) invalid objects ------------------------------------------------------------------------------------------

# The CRD takes any string here; the model requires JSON text (a string value must be quoted).
NOT_JSON = "warm"
BODY_VALUE_FIELD = "spec.rules[0].backendRefs[0].bodyMutation.set[0].value"


async def test_invalid_objects_are_errors_and_valid_ones_stay(
    kube_api: ApiClient, api_client: k8s.ApiClient, namespace: str
) -> None:
    ai_routes = Custom(api_client, AI_ROUTES, namespace)
    async with watching(kube_api, [namespace]) as (_, loads):
        await Custom(api_client, GATEWAY_API, namespace).create(http_route("good"))
        await ai_routes.create(ai_route("edited", body_value="0.5"))
        await ai_routes.create(ai_route("bad", body_value=NOT_JSON))  # the API server accepts it

        def error_for(name: str) -> bool:
            return any(e.kind == "AIGatewayRoute" and e.name == name for e in loads.last.errors)

        await eventually(lambda: error_for("bad") and "good" in routes_in(loads.last, namespace), "reported")
        resources = loads.last
        [error] = [e for e in resources.errors if e.name == "bad"]
        assert (error.kind, error.namespace, error.field) == ("AIGatewayRoute", namespace, BODY_VALUE_FIELD)
        assert str(error).startswith(f"kubernetes: AIGatewayRoute/{namespace}/bad: field {BODY_VALUE_FIELD}:")
        assert resources.get(AIGatewayRoute, namespace, "bad") is None
        assert resources.get(AIGatewayRoute, namespace, "edited") is not None

        # A bad edit of a valid object: the error is reported, the last good version is still served.
        await ai_routes.patch("edited", {"spec": {"rules": ai_route("edited", body_value=NOT_JSON)["spec"]["rules"]}})
        await eventually(lambda: error_for("edited"), "the bad edit reported")
        kept = loads.last.get(AIGatewayRoute, namespace, "edited")
        assert kept is not None
        mutation = kept.spec.rules[0].backend_refs[0].body_mutation
        assert mutation is not None and mutation.set[0].value == "0.5"
        assert "good" in routes_in(loads.last, namespace)

        # Fixed: the error goes, the new version is served.
        await ai_routes.patch("edited", {"spec": {"rules": ai_route("edited", body_value="0.7")["spec"]["rules"]}})
        await eventually(lambda: not error_for("edited"), "the fix seen")
        fixed = loads.last.get(AIGatewayRoute, namespace, "edited")
        assert fixed is not None
        mutation = fixed.spec.rules[0].backend_refs[0].body_mutation
        assert mutation is not None and mutation.set[0].value == "0.7"


# --- (d) 410 Gone: relist and diff --------------------------------------------------------------------------------


def reflector_of(source: KubernetesSource, kind: str, namespace: str) -> Reflector:
    return next(r for r in source.reflectors if r.kind.kind == kind and r.namespace == namespace)


async def test_a_compacted_history_is_recovered_by_relisting(
    kube_cluster: KubeCluster, kube_api: ApiClient, namespace: str
) -> None:
    routes = Custom(kube_cluster.api_client, GATEWAY_API, namespace)
    for name in ("keep", "modify", "delete-1", "delete-2"):
        await routes.create(http_route(name))
    gone_before = metric("xds_server_kube_watch_restarts_total", {"kind": "HTTPRoute", "reason": "gone"})
    deletes_before = metric("xds_server_kube_events_total", {"kind": "HTTPRoute", "type": "SYNTHETIC_DELETED"})

    async with watching(kube_api, [namespace]) as (source, loads):
        await eventually(lambda: len(routes_in(source.resources(), namespace)) == 4, "listed")
        reflector = reflector_of(source, "HTTPRoute", namespace)
        await reflector.stop()  # the watch is disconnected; the reflector remembers the version it had reached
        stopped_at = reflector.version

        # While nobody watches: deletes, an edit, creates; then etcd forgets the history since `stopped_at`.
        await routes.delete("delete-1")
        await routes.delete("delete-2")
        await routes.patch("modify", {"spec": {"hostnames": ["changed.example.com"]}})
        for name in ("new-1", "new-2", "new-3"):
            await routes.create(http_route(name))
        now = (await routes.list())["metadata"]["resourceVersion"]
        assert int(now) > int(stopped_at) + 1
        await asyncio.to_thread(kube_cluster.compact_etcd, int(now))
        assert set(routes_in(source.resources(), namespace)) == {"keep", "modify", "delete-1", "delete-2"}

        reflector.start()  # resumes from `stopped_at`: 410, then a fresh list and a diff

        async def api_state() -> dict[str, list[str]]:
            listed = await routes.list()
            return {item["metadata"]["name"]: item["spec"]["hostnames"] for item in listed["items"]}

        expected = await api_state()
        assert set(expected) == {"keep", "modify", "new-1", "new-2", "new-3"}

        def caught_up() -> bool:
            seen = routes_in(loads.last, namespace)
            return {name: route.spec.hostnames for name, route in seen.items()} == expected

        await eventually(caught_up, "equal to the API server's state")
        assert metric("xds_server_kube_watch_restarts_total", {"kind": "HTTPRoute", "reason": "gone"}) > gone_before
        synthetic = metric("xds_server_kube_events_total", {"kind": "HTTPRoute", "type": "SYNTHETIC_DELETED"})
        assert synthetic - deletes_before == 2

        # And it watches again from the fresh list.
        await routes.create(http_route("after"))
        await eventually(lambda: "after" in routes_in(loads.last, namespace), "watched after the relist")


# --- (e) status-only writes ---------------------------------------------------------------------------------------


def route_status(controller: str, generation: int) -> dict[str, Any]:
    return {
        "parents": [
            {
                "parentRef": {"name": "gw"},
                "controllerName": controller,
                "conditions": [
                    {
                        "type": "Accepted",
                        "status": "True",
                        "reason": "Accepted",
                        "message": "",
                        "observedGeneration": generation,
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }
                ],
            }
        ]
    }


async def test_status_only_writes_update_the_store_without_a_publish(
    kube_api: ApiClient, api_client: k8s.ApiClient, namespace: str
) -> None:
    routes = Custom(api_client, GATEWAY_API, namespace)
    config_maps = k8s.CoreV1Api(api_client)
    async with watching(kube_api, [namespace]) as (source, loads):
        await routes.create(http_route("r"))
        await eventually(lambda: "r" in routes_in(loads.last, namespace), "created")
        published = len(loads.sets)

        # Compared with what the API server stored (it fills in defaults, such as the parentRef's group and kind).
        patched = await routes.patch_status("r", {"status": route_status("example.com/one", 1)})
        status = patched["status"]

        def stored_status() -> Any:
            return (source.stored("HTTPRoute", namespace, "r") or {}).get("status")

        await eventually(lambda: stored_status() == status, "the status stored")

        # A change that must publish, as a barrier: the first publish after the status write is the one it causes.
        await asyncio.to_thread(
            config_maps.create_namespaced_config_map,
            namespace,
            k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="barrier"), data={"a": "b"}),
        )
        await eventually(lambda: len(loads.sets) > published, "the barrier published")
        await eventually(lambda: any(key.name == "barrier" for key in loads.last.objects), "the barrier published")
        first_after = loads.sets[published]
        assert any(key.kind == "ConfigMap" and key.name == "barrier" for key in first_after.objects), (
            "a publish came between the status write and the barrier"
        )

        # The status writer's PUT answer is stored at once, before (here: without) its watch event.
        reflector = reflector_of(source, "HTTPRoute", namespace)
        await reflector.stop()
        stored = source.stored("HTTPRoute", namespace, "r")
        assert stored is not None
        stored["status"] = route_status("example.com/two", 1)
        written = await routes.replace_status("r", stored)
        source.stored_update(written)
        again = source.stored("HTTPRoute", namespace, "r")
        assert again is not None
        assert again["metadata"]["resourceVersion"] == written["metadata"]["resourceVersion"]
        assert again["status"] == written["status"]
        assert again["status"]["parents"][0]["controllerName"] == "example.com/two"
        assert "managedFields" not in again["metadata"]
        # An older answer does not overwrite a newer one.
        source.stored_update({**written, "metadata": {**written["metadata"], "resourceVersion": "1"}, "status": {}})
        assert source.stored("HTTPRoute", namespace, "r") == again


# --- (f) namespaces -----------------------------------------------------------------------------------------------


async def test_a_namespace_limited_source_sees_only_its_namespaces(
    kube_api: ApiClient, api_client: k8s.ApiClient, namespace: str
) -> None:
    other = f"t-{uuid.uuid4().hex[:10]}"
    create_namespace(api_client, other)
    gateway_class = f"{namespace}-class"
    k8s.CustomObjectsApi(api_client).create_cluster_custom_object(
        "gateway.networking.k8s.io",
        "v1",
        "gatewayclasses",
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": gateway_class},
            "spec": {"controllerName": "example.com/controller"},
        },
    )
    await Custom(api_client, GATEWAY_API, other).create(http_route("theirs"))
    async with watching(kube_api, [namespace]) as (source, loads):
        assert all(r.namespace in (namespace, None) for r in source.reflectors)
        await Custom(api_client, GATEWAY_API, other).create(http_route("theirs-too"))
        await Custom(api_client, GATEWAY_API, namespace).create(http_route("ours"))
        await eventually(lambda: "ours" in routes_in(loads.last, namespace), "seen")
        for resources in [source.resources(), *loads.sets]:
            assert not [key for key in resources.objects if key.namespace == other]
        # Cluster-scoped kinds are watched cluster-wide.
        assert ObjectKey("GatewayClass", "", gateway_class) in source.resources().objects
        assert ObjectKey("Namespace", "", other) in source.resources().objects


# --- (g) 5,000 Pods -----------------------------------------------------------------------------------------------


def rss_bytes() -> int:
    return rss_kib() * 1024


def make_pods(api_client: k8s.ApiClient, namespace: str, count: int) -> None:
    """`count` Ready Pods (no kubelet here: the status is written through the status subresource)."""
    core = k8s.CoreV1Api(api_client)
    # Without kube-controller-manager nobody creates the namespace's default ServiceAccount, which Pods need.
    core.create_namespaced_service_account(namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="default")))

    def make(i: int) -> None:
        name = f"pod-{i}"
        ip = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
        pod = {
            "metadata": {"name": name, "labels": {"app": "model-server", "shard": str(i % 10)}},
            "spec": {
                "containers": [
                    {
                        "name": "server",
                        "image": "ghcr.io/llm-d/llm-d-inference-sim:v0.4.0",
                        "args": ["--model", "meta-llama/Llama-3.1-8B-Instruct", "--port", "8000"],
                        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "ports": [{"name": "http", "containerPort": 8000}],
                    }
                ]
            },
        }
        # The raw dict goes through as-is, and the answer is not turned into models: the creation rate is the API
        # server's, not the client's.
        read_json(core.create_namespaced_pod(namespace, pod, _preload_content=False))  # type: ignore[arg-type]
        status = {
            "status": {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
            }
        }
        read_json(core.patch_namespaced_pod_status(name, namespace, status, _preload_content=False))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(make, range(count)))


@contextlib.contextmanager
def report(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[str], None]]:
    with capsys.disabled():
        yield lambda line: print(f"\n[kube source] {line}", end="", flush=True)
    print()


async def test_five_thousand_pods(
    kube_api: ApiClient, api_client: k8s.ApiClient, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.perf_counter()
    await asyncio.to_thread(make_pods, api_client, namespace, PODS)
    created_s = time.perf_counter() - started

    gc.collect()
    rss_before = rss_bytes()
    source = KubernetesSource(kube_api, [namespace])
    try:
        started = time.perf_counter()
        await asyncio.wait_for(source.start(), WAIT_S)
        list_s = time.perf_counter() - started
        gc.collect()
        rss_after = rss_bytes()
        pods = [p for p in source.resources().of_kind(Pod) if p.namespace == namespace]
        assert len(pods) == PODS
        assert all(p.is_ready for p in pods)

        # Deleting them all: the watch delivers one DELETED event per Pod.
        stop = asyncio.Event()
        loads = Loads()
        watcher = asyncio.create_task(source.watch(loads, stop))
        started = time.perf_counter()
        await asyncio.to_thread(k8s.CoreV1Api(api_client).delete_collection_namespaced_pod, namespace)

        def all_gone() -> bool:
            return not [p for p in source.resources().of_kind(Pod) if p.namespace == namespace]

        await eventually(all_gone, "every Pod deleted")
        delete_s = time.perf_counter() - started
        stop.set()
        await asyncio.wait_for(watcher, WAIT_S)
    finally:
        await source.close()

    with report(capsys) as line:
        line(f"{PODS} Pods created (+ status) in {created_s:.1f} s")
        line(
            f"store with {PODS} Pods: RSS +{(rss_after - rss_before) / 2**20:.1f} MiB "
            f"({(rss_after - rss_before) / PODS / 1024:.2f} KiB per Pod); first list + parse {list_s:.2f} s"
        )
        line(f"delete_collection -> {PODS} DELETED events applied in {delete_s:.2f} s ({PODS / delete_s:.0f}/s)")
