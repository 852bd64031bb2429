"""The tutorial applied to a local cluster (testing/local_cluster.py) as a user applies it, until its Gateway is
Programmed and reachable: shared by the cluster e2e tests and the bring-up benchmark."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, cast

from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient

from testing.cases import SEED, TUTORIAL
from testing.helm import Helm
from testing.kube_cluster import KubeCluster
from testing.kube_objects import apply, documents
from testing.web import eventually_async

# The verbatim tutorial when it is beside the repository, else the project's own copy of it.
TUTORIAL_DIR = SEED if SEED.is_dir() else TUTORIAL
SECONDS = 180.0  # pods start, the EPP syncs, Envoy connects: generous for a loaded 2-core machine
eventually = functools.partial(eventually_async, seconds=SECONDS)


def namespaces(core: k8s.CoreV1Api) -> set[str]:
    items: list[Any] = core.list_namespace().items
    return {str(item.metadata.name) for item in items}


def condition_true(obj: dict[str, Any], kind: str) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions)


def pods_of(api: k8s.ApiClient, namespace: str, selector: str) -> list[Any]:
    return list(k8s.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items)


def ready_pod_names(api: k8s.ApiClient, namespace: str, selector: str) -> set[str]:
    return {
        pod.metadata.name
        for pod in pods_of(api, namespace, selector)
        if any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    }


def gateway_url(api: k8s.ApiClient, cluster: KubeCluster, gateway: dict[str, Any]) -> str | None:
    """Where a user reaches the Gateway: the LoadBalancer's ingress address at the listener's port, or a node's
    address at the NodePort, as `kubectl get service` shows the provisioned Service."""
    meta = gateway["metadata"]
    selector = f"gateway.envoyproxy.io/owning-gateway-name={meta['name']}"
    selector += f",gateway.envoyproxy.io/owning-gateway-namespace={meta['namespace']}"
    services: list[Any] = k8s.CoreV1Api(api).list_service_for_all_namespaces(label_selector=selector).items
    if not services:
        return None
    [service] = services
    [port] = service.spec.ports
    if service.spec.type == "LoadBalancer":
        ingress = (service.status.load_balancer.ingress or []) if service.status.load_balancer else []
        return f"http://{ingress[0].ip}:{port.port}" if ingress else None
    assert service.spec.type == "NodePort", service.spec.type
    assert cluster.network is not None
    return f"http://{cluster.network.node_ip}:{port.node_port}" if port.node_port else None


@dataclass(frozen=True)
class Tutorial:
    cluster: KubeCluster
    helm: Helm
    url: str  # the Gateway's address, as a user finds it
    docs: list[dict[str, Any]]


async def install_tutorial(cluster: KubeCluster, helm: Helm) -> Tutorial:
    """The tutorial, until its Gateway is Programmed and has an address."""
    api = cluster.api_client
    # File by file, as the tutorial's README goes, waiting for each file's Deployments to be ready before the next:
    # the seed's 04 replaces the RoleBinding that 03 gave the first picker (both are named pod-read-binding), so
    # that picker must have synced its pool before (a watch, once open, is not re-authorized).
    discovery_cache = str(cluster.workdir / "discovery-cache.json")
    dynamic = DynamicClient(api, cache_file=discovery_cache)  # type: ignore[no-untyped-call]  # unannotated
    core = k8s.CoreV1Api(api)
    docs: list[dict[str, Any]] = []
    for path in sorted(TUTORIAL_DIR.glob("*.yaml")):
        file_docs = documents(path.read_text())
        docs += file_docs
        # The seed puts its EnvoyProxy into envoy-gateway-system, which an Envoy Gateway install would have made.
        for wanted in {d["metadata"].get("namespace", "default") for d in file_docs} - namespaces(core):
            core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=wanted)))
        apply(dynamic, file_docs)
        for deployment in (d for d in file_docs if d["kind"] == "Deployment"):
            name, replicas = deployment["metadata"]["name"], int(deployment["spec"].get("replicas", 1))
            await ready_replicas(api, name, replicas, f"{path.name}: ")
    [gateway] = [d for d in docs if d["kind"] == "Gateway"]
    name, namespace = gateway["metadata"]["name"], gateway["metadata"].get("namespace", "default")
    custom = k8s.CustomObjectsApi(api)

    def programmed() -> dict[str, Any] | None:
        found = cast(
            dict[str, Any],
            custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", namespace, "gateways", name),
        )
        return found if condition_true(found, "Programmed") else None

    await eventually(programmed, f"Gateway {namespace}/{name} Programmed (its Envoy connected and ACKed)")
    url = await eventually(lambda: gateway_url(api, cluster, gateway), "the Gateway's Service address")
    return Tutorial(cluster, helm, url, docs)


async def ready_replicas(api: k8s.ApiClient, deployment: str, replicas: int, what: str = "") -> None:
    """Until the Deployment's pods are exactly `replicas`, all ready (terminating ones gone)."""

    def settled() -> bool:
        pods = pods_of(api, "default", f"app={deployment}")
        return len(pods) == replicas and len(ready_pod_names(api, "default", f"app={deployment}")) == replicas

    await eventually(settled, f"{what}Deployment {deployment} with exactly {replicas} ready pod(s)")
