"""The tutorial in cluster mode, end to end, on a whole local cluster: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and the local node (testing/localnode: kubelet, service proxy, cluster DNS). The charts are installed
with helm, the tutorial applied as a user applies it, and its three requests sent to the Gateway's address: the
controller, the Envoys it provisions, the vLLM simulators, the test upstreams and the Inference Extension's own
Endpoint Picker all run as pods, from their images' local programs."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient

from testing.cases import SEED, TUTORIAL
from testing.helm import Helm
from testing.kube_cluster import KubeCluster, binary_dir, running_cluster, wait_for_crds
from testing.kube_objects import apply, documents
from testing.localnode.network import create_network
from testing.web import eventually_async, request

from .conftest import _ensure_binaries

ROOT = Path(__file__).resolve().parents[2]
CONTROLLER_CHART = ROOT / "charts" / "xds-server"
CRDS_CHART = ROOT / "charts" / "xds-server-crds"
SYSTEM = "xds-server-system"
# The verbatim tutorial when it is beside the repository, else the project's own copy of it.
TUTORIAL_DIR = SEED if SEED.is_dir() else TUTORIAL
LLAMA, MISTRAL, BASIC = "meta-llama/Llama-3.1-8B-Instruct", "mistral:latest", "some-cool-self-hosted-model"
SECONDS = 180.0  # pods start, the EPP syncs, Envoy connects: generous for a loaded 2-core machine
eventually = functools.partial(eventually_async, seconds=SECONDS)


@pytest.fixture(scope="module")
def local_cluster(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory, epp_binary: Path
) -> Iterator[KubeCluster]:
    """A whole cluster without CRDs (the CRD chart installs them). `epp_binary` first: the node runs the EPP image
    from that build."""
    _ensure_binaries(pytestconfig)
    network = create_network()
    try:
        with running_cluster(
            tmp_path_factory.mktemp("cluster"), binary_dir(), crds=None, network=network, local_node=True
        ) as cluster:
            yield cluster
    finally:
        network.destroy()


def helm_for(cluster: KubeCluster, helm_binary: Path) -> Helm:
    return Helm(helm_binary, cluster.workdir / "helm", cluster.kubeconfig)


def namespaces(core: k8s.CoreV1Api) -> set[str]:
    return {item.metadata.name for item in core.list_namespace().items}


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
    services = k8s.CoreV1Api(api).list_service_for_all_namespaces(label_selector=selector).items
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


def chat(url: str, model: str) -> tuple[int, dict[str, str], str]:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi. Say this is a test"}]}
    answer = request(
        url, "POST", "/v1/chat/completions", json.dumps(body).encode(), {"content-type": "application/json"}
    )
    return answer.status_code, dict(answer.headers), answer.text


def epp_picks(cluster: KubeCluster, api: k8s.ApiClient, deployment: str) -> list[str]:
    """The endpoints the Endpoint Picker of `deployment` chose so far, from its "Request handled" log records (the
    local node keeps each container's log under <workdir>/node/pods/<namespace>_<pod>_<uid>/)."""
    picks = []
    for pod in pods_of(api, "default", f"app={deployment}"):
        for log in (cluster.workdir / "node" / "pods").glob(f"default_{pod.metadata.name}_*/epp.log"):
            for line in log.read_text(errors="replace").splitlines():
                if '"msg":"Request handled"' in line:
                    picks.append(str(json.loads(line)["endpoint"]))
    return picks


async def test_the_tutorial_answers_in_cluster_mode_through_the_real_endpoint_picker(
    local_cluster: KubeCluster, helm_binary: Path
) -> None:
    cluster = local_cluster
    api = cluster.api_client
    helm = helm_for(cluster, helm_binary)
    crds = helm.run("install", "xds-server-crds", str(CRDS_CHART))
    assert "STATUS: deployed" in crds
    crd_docs = [
        d for d in documents(helm.run("get", "manifest", "xds-server-crds")) if d["kind"] == "CustomResourceDefinition"
    ]
    wait_for_crds(api, crd_docs)
    # --wait: helm's own readiness (the Deployment available), which needs the kubelet's pod status to be true.
    helm.run("install", "xds-server", str(CONTROLLER_CHART), "--namespace", SYSTEM, "--create-namespace", "--wait")

    # File by file, as the tutorial's README goes, waiting for each file's Deployments to be ready before the next:
    # the seed's 04 replaces the RoleBinding that 03 gave the first picker (both are named pod-read-binding), so
    # that picker must have synced its pool before (a watch, once open, is not re-authorized).
    dynamic = DynamicClient(api, cache_file=str(cluster.workdir / "discovery-cache.json"))
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
            name, wanted = deployment["metadata"]["name"], int(deployment["spec"].get("replicas", 1))
            await eventually(
                lambda n=name, w=wanted: len(ready_pod_names(api, "default", f"app={n}")) == w,
                f"{path.name}: Deployment {name} with {wanted} ready pod(s)",
            )
    [gateway] = [d for d in docs if d["kind"] == "Gateway"]
    name, namespace = gateway["metadata"]["name"], gateway["metadata"].get("namespace", "default")
    custom = k8s.CustomObjectsApi(api)

    def programmed() -> dict[str, Any] | None:
        found: dict[str, Any] = custom.get_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", namespace, "gateways", name
        )
        return found if condition_true(found, "Programmed") else None

    await eventually(programmed, f"Gateway {namespace}/{name} Programmed (its Envoy connected and ACKed)")
    url = await eventually(lambda: gateway_url(api, cluster, gateway), "the Gateway's Service address")
    pools = {"vllm-llama3-8b-instruct": LLAMA, "mistral-upstream": MISTRAL}

    # The ordinary backend, through the official SDK: Backend FQDN -> cluster DNS -> Service -> its one pod.
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

    def basic() -> Any:
        try:
            return client.chat.completions.with_raw_response.create(
                model=BASIC, messages=[{"role": "user", "content": "Hi. Say this is a test"}]
            )
        except openai.APIError:
            return None  # the Gateway's routes may still be on their way

    raw = await eventually(basic, "the basic backend answering through the Gateway")
    completion = raw.parse()
    assert completion.choices[0].message.content and completion.model == BASIC
    assert raw.headers["x-inference-pod"] in ready_pod_names(api, "default", "app=envoy-ai-gateway-basic-testupstream")

    # The two pools: through their real Endpoint Pickers, which choose the pod.
    for deployment, model in pools.items():
        epp = "mistral" if deployment == "mistral-upstream" else deployment
        before = len(epp_picks(cluster, api, f"{epp}-epp"))
        _, headers, text = await eventually(
            lambda m=model: (answer := chat(url, m))[0] == 200 and answer, f"{model} answering 200"
        )
        body = json.loads(text)
        assert body["object"] == "chat.completion" and body["model"] == model, body
        assert headers["x-inference-pod"] in ready_pod_names(api, "default", f"app={deployment}")
        picks = await eventually(
            lambda e=epp, b=before: (p := epp_picks(cluster, api, f"{e}-epp"))[b:] and p, f"{epp}-epp's pick"
        )
        pod_ips = {p.status.pod_ip for p in pods_of(api, "default", f"app={deployment}")}
        assert picks[-1].split(":")[0] in pod_ips, (picks, pod_ips)

    unknown = chat(url, "no-such-model")
    assert unknown[0] == 404 and json.loads(unknown[2])["error"]["code"] == "model_not_found", unknown
