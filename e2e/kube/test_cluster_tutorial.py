"""The tutorial in cluster mode, end to end, on a whole local cluster: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and the local node (testing/localnode: kubelet, service proxy, cluster DNS). The charts are installed
with helm, the tutorial applied as a user applies it, and its three requests sent to the Gateway's address: the
controller, the Envoys it provisions, the vLLM simulators, the test upstreams and the Inference Extension's own
Endpoint Picker all run as pods, from their images' local programs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from kubernetes import client as k8s
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from testing.cluster_tutorial import (
    SECONDS,
    Tutorial,
    eventually,
    install_tutorial,
    pods_of,
    ready_pod_names,
    ready_replicas,
)
from testing.helm import Helm
from testing.kube_cluster import KubeCluster
from testing.local_cluster import CONTROLLER_CHART, SYSTEM, local_cluster
from testing.web import http_get, request

from .conftest import _ensure_binaries

LLAMA, MISTRAL, BASIC = "meta-llama/Llama-3.1-8B-Instruct", "mistral:latest", "some-cool-self-hosted-model"
CONTROLLERS = "app.kubernetes.io/name=xds-server"  # the controller pods, in SYSTEM


@pytest.fixture(scope="module")
def installed(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory, epp_binary: Path, helm_binary: Path
) -> Iterator[tuple[KubeCluster, Helm]]:
    """The whole cluster with the charts installed. `epp_binary` first: the node runs the EPP image from that build."""
    _ensure_binaries(pytestconfig)
    with local_cluster(tmp_path_factory.mktemp("cluster"), helm_binary) as (cluster, helm):
        yield cluster, helm


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


@pytest.fixture(scope="module")
def tutorial(installed: tuple[KubeCluster, Helm]) -> Tutorial:
    """Applied once for the module's tests, in their order: reference picker, disruptions, embedded picker."""
    return asyncio.run(install_tutorial(*installed))


POOLS = {"vllm-llama3-8b-instruct": LLAMA, "mistral-upstream": MISTRAL}
PICKERS = {"vllm-llama3-8b-instruct": "vllm-llama3-8b-instruct-epp", "mistral-upstream": "mistral-epp"}


async def assert_three_answers(tutorial: Tutorial) -> CompletionUsage | None:
    """The seed README's three requests, each from a pod of the right Deployment, and a 404 for an unknown model.
    Each model answers 200 exactly once; returns the basic backend's usage."""
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
    completion: ChatCompletion = raw.parse()
    assert completion.choices[0].message.content and completion.model == BASIC
    assert raw.headers["x-inference-pod"] in ready_pod_names(api, "default", "app=envoy-ai-gateway-basic-testupstream")
    for deployment, model in POOLS.items():

        def answering(m: str = model) -> tuple[int, dict[str, str], str] | bool:
            return (answer := chat(url, m))[0] == 200 and answer

        _, headers, text = await eventually(answering, f"{model} answering 200")
        body = json.loads(text)
        assert body["object"] == "chat.completion" and body["model"] == model, body
        assert headers["x-inference-pod"] in ready_pod_names(api, "default", f"app={deployment}")
    unknown = chat(url, "no-such-model")
    assert unknown[0] == 404 and json.loads(unknown[2])["error"]["code"] == "model_not_found", unknown
    return completion.usage


def controller_samples(api: k8s.ApiClient) -> list[Sample]:
    """Every sample of every ready controller pod's /metrics, read at its pod address on its admin port: each replica
    counts only the usage records exported to it, and an Envoy's exports may reach any of them (the ext_proc Service
    balances connections), so a total is a sum over the replicas."""
    ready = ready_pod_names(api, SYSTEM, CONTROLLERS)
    samples: list[Sample] = []
    for pod in pods_of(api, SYSTEM, CONTROLLERS):
        if pod.metadata.name not in ready:
            continue
        [port] = [p.container_port for c in pod.spec.containers for p in c.ports or [] if p.name == "admin"]
        status, text = http_get(f"http://{pod.status.pod_ip}:{port}/metrics", timeout=10.0)
        assert status == 200, (pod.metadata.name, status, text[:300])
        samples += (sample for family in text_string_to_metric_families(text) for sample in family.samples)
    return samples


def metered(api: k8s.ApiClient) -> dict[str, float]:
    """What the controllers metered so far from the Envoys' usage records: the answered requests (error_type "") per
    model, and the basic model's output tokens (the answers that counted them, and their total)."""
    samples = controller_samples(api)

    def total(name: str, **labels: str) -> float:
        """The sum over the series with `labels`, whatever their other labels (response model, backend)."""
        return sum((s.value for s in samples if s.name == name and labels.items() <= s.labels.items()), 0.0)

    answered = {
        f"{model} requests": total("gen_ai_server_request_duration_count", gen_ai_request_model=model, error_type="")
        for model in (LLAMA, MISTRAL, BASIC)
    }
    output = {"gen_ai_request_model": BASIC, "error_type": "", "gen_ai_token_type": "output"}
    return answered | {
        f"{BASIC} output counts": total("gen_ai_client_token_usage_count", **output),
        f"{BASIC} output tokens": total("gen_ai_client_token_usage_sum", **output),
    }


async def test_the_tutorial_answers_in_cluster_mode_through_the_real_endpoint_picker(tutorial: Tutorial) -> None:
    cluster, api = tutorial.cluster, tutorial.cluster.api_client
    before = {picker: len(epp_picks(cluster, api, picker)) for picker in PICKERS.values()}
    metered_before = await asyncio.to_thread(metered, api)
    usage = await assert_three_answers(tutorial)
    # Each pool's request went through its own real Endpoint Picker, which chose one of the pool's pods.
    for deployment, picker in PICKERS.items():
        picks = epp_picks(cluster, api, picker)
        assert len(picks) > before[picker], (picker, picks)
        pod_ips = {p.status.pod_ip for p in pods_of(api, "default", f"app={deployment}")}
        assert picks[-1].split(":")[0] in pod_ips, (picks, pod_ips)
    # The provisioned Envoys' AI filter exports each request's usage record to a controller (OpenTelemetry Export on
    # its ext_proc port, mutual TLS), which turns it into the GenAI metrics: one more answered request per model,
    # and the basic backend's output tokens as its answer counted them (the test upstream's canned usage).
    assert usage is not None and usage.completion_tokens > 0, usage
    growth = {key: 1.0 for key in metered_before} | {f"{BASIC} output tokens": float(usage.completion_tokens)}
    wanted = {key: metered_before[key] + grown for key, grown in growth.items()}
    last: dict[str, float] = {}

    def reached() -> bool:
        last.update(metered(api))
        return all(last[key] >= value for key, value in wanted.items())

    try:
        await eventually(reached, f"the controllers' GenAI metrics at least {wanted}", seconds=30.0)
    except AssertionError as short:
        raise AssertionError(f"{short}\nmetered before the requests {metered_before}, last {last}") from None


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


def upgrade_controller(tutorial: Tutorial, setting: str) -> None:
    """`helm upgrade` of the controller chart with one value changed; back once the Deployment is available."""
    chart = str(CONTROLLER_CHART)
    tutorial.helm.run(
        "upgrade", "xds-server", chart, "--namespace", SYSTEM, "--reuse-values", "--set", setting, "--wait"
    )


def scale(api: k8s.ApiClient, deployment: str, replicas: int, namespace: str = "default") -> None:
    k8s.AppsV1Api(api).patch_namespaced_deployment_scale(deployment, namespace, {"spec": {"replicas": replicas}})


def leader(api: k8s.ApiClient) -> str | None:
    """The controller pod holding the Lease (its identity is `<hostname>_<uuid>`, and a pod's hostname is its name)."""
    try:
        lease = k8s.CoordinationV1Api(api).read_namespaced_lease("xds-server", SYSTEM)
    except k8s.ApiException:
        return None
    assert lease.spec is not None
    holder = lease.spec.holder_identity or ""
    return holder.split("_", 1)[0] or None


async def test_pods_come_and_go_and_the_controller_rolls_without_a_failed_request(tutorial: Tutorial) -> None:
    api = tutorial.cluster.api_client
    with RequestLoop(tutorial.url) as loop:
        await eventually(lambda: loop.sent >= 6, "the request loop under way")
        sent = [loop.sent]  # at the start of each disruption, and at the end: requests ran through every one
        # A pool grows and shrinks: the picker sees new pods, and the removed ones are drained first.
        scale(api, "mistral-upstream", 4)
        await ready_replicas(api, "mistral-upstream", 4)
        scale(api, "mistral-upstream", 2)
        await ready_replicas(api, "mistral-upstream", 2)
        # A pod of the other pool is deleted and replaced by its ReplicaSet.
        [victim, *_] = sorted(ready_pod_names(api, "default", "app=vllm-llama3-8b-instruct"))
        k8s.CoreV1Api(api).delete_namespaced_pod(victim, "default")
        await ready_replicas(api, "vllm-llama3-8b-instruct", 3)
        sent.append(loop.sent)
        # The controller goes to two replicas with leader election, and its leader is killed.
        await asyncio.to_thread(upgrade_controller, tutorial, "replicas=2")  # the request loop runs meanwhile
        first = await eventually(lambda: leader(api), "a controller holding the Lease")
        k8s.CoreV1Api(api).delete_namespaced_pod(first, SYSTEM, grace_period_seconds=0)
        await eventually(lambda: (now := leader(api)) not in (None, first) and now, "another controller leading")
        await eventually(lambda: len(ready_pod_names(api, SYSTEM, CONTROLLERS)) == 2, "two ready controllers again")
        sent.append(loop.sent)
        await eventually(lambda: loop.sent >= sent[-1] + 6, "requests after the leader changed")
    done = await loop.stopped()
    assert done.failures == [], (
        f"{len(done.failures)} of {done.sent} requests failed: {done.failures[:3]} ... {done.failures[-3:]}"
    )
    assert sent == sorted(set(sent)), f"no request during a disruption: requests sent at each mark {sent}"
    await assert_three_answers(tutorial)


async def test_the_embedded_picker_serves_the_pools_without_the_endpoint_pickers(tutorial: Tutorial) -> None:
    cluster, api = tutorial.cluster, tutorial.cluster.api_client
    upgrade_controller(tutorial, "endpointPicker=embedded")
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


def restart_controllers(api: k8s.ApiClient) -> None:
    """`kubectl rollout restart`: a new pod template, so the Deployment replaces its pods one by one."""
    stamp = {"kubectl.kubernetes.io/restartedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    patch = {"spec": {"template": {"metadata": {"annotations": stamp}}}}
    k8s.AppsV1Api(api).patch_namespaced_deployment("xds-server", SYSTEM, patch)


def rolled_out(api: k8s.ApiClient, generation: int) -> bool:
    deployment = k8s.AppsV1Api(api).read_namespaced_deployment("xds-server", SYSTEM)
    status = deployment.status
    assert status is not None
    return bool(
        status.observed_generation is not None
        and status.observed_generation > generation
        and status.updated_replicas == deployment.spec.replicas
        and status.ready_replicas == deployment.spec.replicas
        and (status.replicas or 0) == deployment.spec.replicas
    )


async def test_a_rolling_restart_of_the_controllers_fails_no_request_through_the_embedded_picker(
    tutorial: Tutorial,
) -> None:
    """The pools' requests now each call a controller's ext_proc (the embedded picker): a rolling restart of the two
    replicas, each stopping gracefully (readiness first, streams in flight finished), must fail none of them."""
    api = tutorial.cluster.api_client
    metadata = k8s.AppsV1Api(api).read_namespaced_deployment("xds-server", SYSTEM).metadata
    assert metadata is not None and metadata.generation is not None
    generation = metadata.generation
    with RequestLoop(tutorial.url) as loop:
        await eventually(lambda: loop.sent >= 6, "the request loop under way")
        start = loop.sent
        restart_controllers(api)
        await eventually(lambda: rolled_out(api, generation), "both controllers replaced", seconds=3 * SECONDS)
        await eventually(lambda: loop.sent >= start + 12, "requests through the restart")
    done = await loop.stopped()
    assert done.failures == [], (
        f"{len(done.failures)} of {done.sent} requests failed: {done.failures[:3]} ... {done.failures[-3:]}"
    )
