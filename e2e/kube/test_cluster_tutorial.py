"""The tutorial in cluster mode, end to end, on a whole local cluster: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and the local node (testing/localnode: kubelet, service proxy, cluster DNS). The charts are installed
with helm, the tutorial applied as a user applies it, and its three requests sent to the Gateway's address: the
controller, the Envoys it provisions, the vLLM simulators, the test upstreams and the Inference Extension's own
Endpoint Picker all run as pods, from their images' local programs."""

from __future__ import annotations

import asyncio
import functools
import time
import json
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Tutorial:
    cluster: KubeCluster
    helm: Helm
    url: str  # the Gateway's address, as a user finds it
    docs: list[dict[str, Any]]


async def install_tutorial(cluster: KubeCluster, helm: Helm) -> Tutorial:
    """The charts with helm, then the tutorial, until its Gateway is Programmed and has an address."""
    api = cluster.api_client
    assert "STATUS: deployed" in helm.run("install", "xds-server-crds", str(CRDS_CHART))
    manifest = documents(helm.run("get", "manifest", "xds-server-crds"))
    wait_for_crds(api, [d for d in manifest if d["kind"] == "CustomResourceDefinition"])
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
            name, replicas = deployment["metadata"]["name"], int(deployment["spec"].get("replicas", 1))
            await ready_replicas(api, name, replicas, f"{path.name}: ")
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
    return Tutorial(cluster, helm, url, docs)


async def ready_replicas(api: k8s.ApiClient, deployment: str, replicas: int, what: str = "") -> None:
    """Until the Deployment's pods are exactly `replicas`, all ready (terminating ones gone)."""

    def settled() -> bool:
        pods = pods_of(api, "default", f"app={deployment}")
        return len(pods) == replicas and len(ready_pod_names(api, "default", f"app={deployment}")) == replicas

    await eventually(settled, f"{what}Deployment {deployment} with exactly {replicas} ready pod(s)")


@pytest.fixture(scope="module")
def tutorial(local_cluster: KubeCluster, helm_binary: Path) -> Tutorial:
    """Installed once for the module's tests, in their order: reference picker, disruptions, embedded picker."""
    return asyncio.run(install_tutorial(local_cluster, helm_for(local_cluster, helm_binary)))


POOLS = {"vllm-llama3-8b-instruct": LLAMA, "mistral-upstream": MISTRAL}
PICKERS = {"vllm-llama3-8b-instruct": "vllm-llama3-8b-instruct-epp", "mistral-upstream": "mistral-epp"}


async def assert_three_answers(tutorial: Tutorial) -> None:
    """The seed README's three requests, each from a pod of the right Deployment, and a 404 for an unknown model."""
    api, url = tutorial.cluster.api_client, tutorial.url
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
    for deployment, model in POOLS.items():
        _, headers, text = await eventually(
            lambda m=model: (answer := chat(url, m))[0] == 200 and answer, f"{model} answering 200"
        )
        body = json.loads(text)
        assert body["object"] == "chat.completion" and body["model"] == model, body
        assert headers["x-inference-pod"] in ready_pod_names(api, "default", f"app={deployment}")
    unknown = chat(url, "no-such-model")
    assert unknown[0] == 404 and json.loads(unknown[2])["error"]["code"] == "model_not_found", unknown


async def test_the_tutorial_answers_in_cluster_mode_through_the_real_endpoint_picker(tutorial: Tutorial) -> None:
    cluster, api = tutorial.cluster, tutorial.cluster.api_client
    before = {picker: len(epp_picks(cluster, api, picker)) for picker in PICKERS.values()}
    await assert_three_answers(tutorial)
    # Each pool's request went through its own real Endpoint Picker, which chose one of the pool's pods.
    for deployment, picker in PICKERS.items():
        picks = epp_picks(cluster, api, picker)
        assert len(picks) > before[picker], (picker, picks)
        pod_ips = {p.status.pod_ip for p in pods_of(api, "default", f"app={deployment}")}
        assert picks[-1].split(":")[0] in pod_ips, (picks, pod_ips)


class RequestLoop:
    """Chat requests to the Gateway one after the other (the three models in turn) until stopped, counting every
    answer that is not a 200: what a client sees while the cluster changes under it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent = 0
        self.failures: list[tuple[str, int, str]] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        models = (LLAMA, MISTRAL, BASIC)
        while not self._stop.is_set():
            model = models[self.sent % len(models)]
            try:
                status, _, text = await asyncio.to_thread(chat, self.url, model)
            except OSError as error:
                status, text = 0, repr(error)
            self.sent += 1
            if status != 200:
                self.failures.append((model, status, f"{time.strftime('%H:%M:%S')} {text[:300]}"))

    def __enter__(self) -> RequestLoop:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    async def stopped(self) -> RequestLoop:
        self._stop.set()
        if self._task is not None:
            await self._task
        return self


def scale(api: k8s.ApiClient, deployment: str, replicas: int, namespace: str = "default") -> None:
    k8s.AppsV1Api(api).patch_namespaced_deployment_scale(deployment, namespace, {"spec": {"replicas": replicas}})


def leader(api: k8s.ApiClient) -> str | None:
    """The controller pod holding the Lease (its identity is `<hostname>_<uuid>`, and a pod's hostname is its name)."""
    try:
        lease = k8s.CoordinationV1Api(api).read_namespaced_lease("xds-server", SYSTEM)
    except k8s.ApiException:
        return None
    holder = lease.spec.holder_identity or ""
    return holder.split("_", 1)[0] or None


async def test_pods_come_and_go_and_the_controller_rolls_without_a_failed_request(tutorial: Tutorial) -> None:
    api = tutorial.cluster.api_client
    controllers = "app.kubernetes.io/name=xds-server"
    with RequestLoop(tutorial.url) as loop:
        await eventually(lambda: loop.sent >= 6, "the request loop under way")
        # A pool grows and shrinks: the picker sees new pods, and the removed ones are drained first.
        scale(api, "mistral-upstream", 4)
        await ready_replicas(api, "mistral-upstream", 4)
        scale(api, "mistral-upstream", 2)
        await ready_replicas(api, "mistral-upstream", 2)
        # A pod of the other pool is deleted and replaced by its ReplicaSet.
        [victim, *_] = sorted(ready_pod_names(api, "default", "app=vllm-llama3-8b-instruct"))
        k8s.CoreV1Api(api).delete_namespaced_pod(victim, "default")
        await ready_replicas(api, "vllm-llama3-8b-instruct", 3)
        # The controller goes to two replicas with leader election, and its leader is killed.
        tutorial.helm.run(
            "upgrade",
            "xds-server",
            str(CONTROLLER_CHART),
            "--namespace",
            SYSTEM,
            "--reuse-values",
            "--set",
            "replicas=2",
            "--wait",
        )
        first = await eventually(lambda: leader(api), "a controller holding the Lease")
        k8s.CoreV1Api(api).delete_namespaced_pod(first, SYSTEM, grace_period_seconds=0)
        await eventually(lambda: (now := leader(api)) not in (None, first) and now, "another controller leading")
        await eventually(lambda: len(ready_pod_names(api, SYSTEM, controllers)) == 2, "two ready controllers again")
        sent_before = loop.sent
        await eventually(lambda: loop.sent >= sent_before + 6, "requests after the leader changed")
    done = await loop.stopped()
    assert done.failures == [], f"{len(done.failures)} of {done.sent} requests failed: {done.failures[:3]} ... {done.failures[-3:]}"
    assert done.sent > 30, done.sent
    await assert_three_answers(tutorial)


async def test_the_embedded_picker_serves_the_pools_without_the_endpoint_pickers(tutorial: Tutorial) -> None:
    cluster, api = tutorial.cluster, tutorial.cluster.api_client
    tutorial.helm.run(
        "upgrade",
        "xds-server",
        str(CONTROLLER_CHART),
        "--namespace",
        SYSTEM,
        "--reuse-values",
        "--set",
        "endpointPicker=embedded",
        "--wait",
    )
    # The new controllers translate the pools to the embedded picker; Envoy takes the new routes.
    picks = {picker: len(epp_picks(cluster, api, picker)) for picker in PICKERS.values()}

    async def pickers_bypassed() -> bool:
        before = {picker: len(epp_picks(cluster, api, picker)) for picker in PICKERS.values()}
        await assert_three_answers(tutorial)
        return {picker: len(epp_picks(cluster, api, picker)) for picker in PICKERS.values()} == before

    for _ in range(int(SECONDS)):
        if await pickers_bypassed():
            break
        await asyncio.sleep(1)
    else:
        raise AssertionError(f"the Endpoint Pickers still pick after the switch to embedded: {picks}")
    # And it stays so: more requests, still no pick by the EPPs.
    await assert_three_answers(tutorial)
    assert await pickers_bypassed()
