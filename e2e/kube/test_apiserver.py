"""The test cluster is a real API server: it stores, defaults and validates against the real CRDs, and lists,
watches, serves status subresources and expires compacted resource versions the way a cluster does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient

from testing.cases import SEED
from testing.kube_cluster import KubeCluster, read_json

needs_seed = pytest.mark.skipif(
    not SEED.is_dir(),
    reason=f"optional verbatim tutorial copy not found at {SEED} (XDS_SERVER_SEED names another folder)",
)

WATCH_TIMEOUT_SECONDS = 20


class Objects:
    """One custom resource in one namespace through CustomObjectsApi, answered as plain dicts (the client declares
    `object`), so the tests read like the REST calls they make."""

    def __init__(self, api_client: k8s.ApiClient, group: str, version: str, plural: str, namespace: str) -> None:
        self.api = k8s.CustomObjectsApi(api_client)
        self.where = (group, version, namespace, plural)

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return cast(dict[str, Any], self.api.create_namespaced_custom_object(*self.where, body))

    def get(self, name: str) -> dict[str, Any]:
        return cast(dict[str, Any], self.api.get_namespaced_custom_object(*self.where, name))

    def list(self, **options: Any) -> dict[str, Any]:
        return cast(dict[str, Any], self.api.list_namespaced_custom_object(*self.where, **options))

    def patch_status(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return cast(dict[str, Any], self.api.patch_namespaced_custom_object_status(*self.where, name, patch))

    def watch(self, resource_version: str) -> Any:
        """The raw watch stream (one JSON event per line), so tests see exactly what the server sends, ERROR events
        included, rather than the client's interpretation of them."""
        return self.api.list_namespaced_custom_object(
            *self.where,
            watch=True,
            resource_version=resource_version,
            timeout_seconds=WATCH_TIMEOUT_SECONDS,
            _preload_content=False,
        )


def pools(api_client: k8s.ApiClient, namespace: str) -> Objects:
    return Objects(api_client, "inference.networking.k8s.io", "v1", "inferencepools", namespace)


def routes(api_client: k8s.ApiClient, namespace: str) -> Objects:
    return Objects(api_client, "aigateway.envoyproxy.io", "v1alpha1", "aigatewayroutes", namespace)


def _pool(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": name},
        "spec": {
            "targetPorts": [{"number": 8000}],
            "selector": {"matchLabels": {"app": name}},
            "endpointPickerRef": {"name": f"{name}-epp", "port": {"number": 9002}},
        },
    }


def _route(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "aigateway.envoyproxy.io/v1alpha1",
        "kind": "AIGatewayRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"name": "gw", "kind": "Gateway", "group": "gateway.networking.k8s.io"}],
            "rules": rules,
        },
    }


def _rule(model: str, name: str | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "matches": [{"headers": [{"type": "Exact", "name": "x-ai-eg-model", "value": model}]}],
        "backendRefs": [{"name": "backend"}],
    }
    if name is not None:
        rule["name"] = name
    return rule


def _seed_documents() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(SEED.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if isinstance(doc, dict) and doc.get("kind")
    ]


@needs_seed
def test_seed_tutorial_objects_are_stored(api_client: k8s.ApiClient, dynamic_client: DynamicClient) -> None:
    # The EnvoyProxy lives in envoy-gateway-system, which installing Envoy Gateway creates before the tutorial runs.
    k8s.CoreV1Api(api_client).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name="envoy-gateway-system")))
    documents = _seed_documents()
    assert documents, f"no manifests in {SEED}"

    # Server-side apply creates each object, and for the objects that 03 and 04 both define (the seed README says
    # the later replaces the earlier, as `kubectl apply` does) it updates instead of failing with AlreadyExists.
    last: dict[tuple[str, str, str | None, str], dict[str, Any]] = {}
    for doc in documents:
        resource = dynamic_client.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        namespace = doc["metadata"].get("namespace", "default") if resource.namespaced else None
        dynamic_client.server_side_apply(  # type: ignore[no-untyped-call]  # the kubernetes client is unannotated
            resource, body=doc, namespace=namespace, field_manager="xds-server-e2e", force_conflicts=True
        )
        last[(doc["apiVersion"], doc["kind"], namespace, doc["metadata"]["name"])] = doc

    for (api_version, kind, namespace, name), doc in last.items():
        resource = dynamic_client.resources.get(api_version=api_version, kind=kind)
        stored = resource.get(name=name, namespace=namespace).to_dict()
        assert stored["metadata"]["uid"], (kind, namespace, name)
        if kind == "ConfigMap":
            assert stored["data"] == doc["data"], f"{namespace}/{name} is not the last document's version"

    # Defaults come from the CRD schema, applied by the API server: the mistral pool sets neither field.
    picker = pools(api_client, "default").get("mistral")["spec"]["endpointPickerRef"]
    assert picker["failureMode"] == "FailClose"
    assert picker["kind"] == "Service"
    route = routes(api_client, "default").get("inference-pool-with-aigwroute")
    assert len(route["spec"]["rules"]) == 3


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        # maxItems: 15 on spec.rules in aigateway.envoyproxy.io_aigatewayroutes.yaml (both served versions).
        ([_rule(f"model-{i}") for i in range(16)], "Too many: 16: must have at most 15 items"),
        # One of the CRD's CEL rules (x-kubernetes-validations): the API server evaluates them too.
        ([_rule("model", name="route-not-found")], "rule name route-not-found is reserved"),
    ],
    ids=["16-rules", "reserved-rule-name"],
)
def test_api_server_rejects_invalid_ai_gateway_route(
    api_client: k8s.ApiClient, namespace: str, rules: list[dict[str, Any]], message: str
) -> None:
    api = routes(api_client, namespace)
    with pytest.raises(k8s.ApiException) as raised:
        api.create(_route("invalid", rules))
    assert raised.value.status == 422
    assert raised.value.body is not None
    status = json.loads(raised.value.body)
    assert status["reason"] == "Invalid"
    assert message in status["message"]
    # Nothing was stored.
    assert api.list()["items"] == []


def test_watch_from_list_resource_version_sees_creates(api_client: k8s.ApiClient, namespace: str) -> None:
    api = pools(api_client, namespace)
    api.create(_pool("before"))
    listed = api.list()
    assert [item["metadata"]["name"] for item in listed["items"]] == ["before"]
    resource_version = listed["metadata"]["resourceVersion"]

    # Created after the list and before the watch opens: the watch must replay it from the list's version.
    api.create(_pool("replayed"))
    stream = api.watch(resource_version)
    try:
        replayed = json.loads(stream.readline())
        assert replayed["type"] == "ADDED"
        assert replayed["object"]["metadata"]["name"] == "replayed"

        # Created while the watch is open: delivered live on the same stream.
        api.create(_pool("live"))
        live = json.loads(stream.readline())
        assert live["type"] == "ADDED"
        assert live["object"]["metadata"]["name"] == "live"
        assert int(live["object"]["metadata"]["resourceVersion"]) > int(resource_version)
    finally:
        stream.close()
        stream.release_conn()


def test_status_subresource_patch_round_trips(api_client: k8s.ApiClient, namespace: str) -> None:
    api = pools(api_client, namespace)
    created = api.create(_pool("pool"))
    status = {
        "parents": [
            {
                "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"},
                "conditions": [
                    {
                        "type": "Accepted",
                        "status": "True",
                        "reason": "Accepted",
                        "message": "accepted by xds-server",
                        "observedGeneration": created["metadata"]["generation"],
                        "lastTransitionTime": "2025-01-01T00:00:00Z",
                    }
                ],
            }
        ]
    }
    # The spec change rides along on purpose: through /status the API server must drop it.
    api.patch_status("pool", {"spec": {"targetPorts": [{"number": 9999}]}, "status": status})

    stored = api.get("pool")
    assert stored["status"] == status
    assert stored["spec"] == created["spec"]
    assert stored["metadata"]["generation"] == created["metadata"]["generation"]
    assert int(stored["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])


def _first_event(api: Objects, resource_version: str) -> dict[str, Any]:
    stream = api.watch(resource_version)
    try:
        return cast(dict[str, Any], json.loads(stream.readline()))
    finally:
        stream.close()
        stream.release_conn()


def test_watch_from_compacted_resource_version_is_gone(kube_cluster: KubeCluster, namespace: str) -> None:
    api = pools(kube_cluster.api_client, namespace)
    api.create(_pool("first"))
    old = api.list()["metadata"]["resourceVersion"]
    api.create(_pool("second"))
    # A second write after the old list guarantees old + 1 < new, so the revision a watch from `old` starts at is
    # strictly below the compaction point (etcd still serves a watch that starts exactly at it).
    api.create(_pool("filler"))
    new = api.list()["metadata"]["resourceVersion"]

    # Resource versions are opaque to clients, but this API server's are etcd revisions: compact etcd's history up
    # to the newer list, which discards the revisions a watch from the older one would need.
    kube_cluster.compact_etcd(int(new))

    gone = _first_event(api, old)
    assert gone["type"] == "ERROR"
    assert gone["object"]["code"] == 410
    assert gone["object"]["reason"] == "Expired"
    assert gone["object"]["message"] == "The resourceVersion for the provided watch is too old."

    # A list pinned to the compacted version is refused too, as a plain HTTP 410.
    with pytest.raises(k8s.ApiException) as raised:
        api.list(resource_version=old, resource_version_match="Exact")
    assert raised.value.status == 410

    # The recovery a client makes after 410: relist, then watch from the fresh version, which works.
    relisted = api.list()
    assert sorted(item["metadata"]["name"] for item in relisted["items"]) == ["filler", "first", "second"]
    api.create(_pool("third"))
    added = _first_event(api, relisted["metadata"]["resourceVersion"])
    assert added["type"] == "ADDED"
    assert added["object"]["metadata"]["name"] == "third"


def test_kubeconfig_file_is_usable(kube_cluster: KubeCluster) -> None:
    """The kubeconfig on disk is what other tools (kubectl, the project's own Kubernetes source) will be given."""
    assert Path(kube_cluster.kubeconfig).is_file()
    version = k8s.VersionApi(kube_cluster.api_client).get_code()
    assert version.git_version.startswith("v1.")
    crds = read_json(
        k8s.ApiextensionsV1Api(kube_cluster.api_client).list_custom_resource_definition(_preload_content=False)
    )
    names = {item["metadata"]["name"] for item in crds["items"]}
    assert {"inferencepools.inference.networking.k8s.io", "aigatewayroutes.aigateway.envoyproxy.io"} <= names
