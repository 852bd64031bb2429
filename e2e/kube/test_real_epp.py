"""The real Endpoint Picker behind our Envoy, in cluster mode: `xds-server serve --kubernetes` (reference picker
mode, the default there), a real Envoy for its Gateway, and the Gateway API Inference Extension's EPP v1.0.2
(built from the Go module proxy by bench/peers/build.sh; fixture `epp_binary`) as a process against the session's
API server, picking among vLLM simulators for an InferencePool.

There is no kubelet: every "pod" is a Pod object whose status (podIP, Ready, Running) the test writes through the
status subresource, and whose process the test starts on that podIP, a loopback address of its own. The EPP runs
with the chart's default plugins (queue, kv-cache and prefix scorers) and reads the same Pods, the InferencePool
and InferenceObjectives from the API server as it would in a cluster; it listens on all interfaces, on free ports
(its Service maps port 9002 to the gRPC one), with its default self-signed TLS.

How "the EPP's picks are honoured" is checked, request by request: the EPP (at `-v 3`) logs one "Request handled"
record per request it schedules, with the endpoint it chose; the simulator that answered names itself in
`x-inference-pod`. Requests are sent one at a time, so after each answer exactly one new record must be there, and
its endpoint must be the answering pod's. (The request id in the record cannot serve as the key: Envoy treats a
loopback client as external and replaces its `x-request-id`.) Streamed answers too, which the EPP echoes chunk by
chunk. Then one simulator is loaded (requests sent to it directly, so its vLLM queue grows); once the EPP's own
metrics show it has scraped that queue, no request through Envoy may reach it, and each still lands where the EPP
said.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import json
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient

from testing.kube_cluster import KubeCluster
from testing.kube_envoy import start_provisioned_envoy
from testing.manifests import TUTORIAL_PICKER_CONFIG, gateway
from testing.ports import free_port, port_free_on
from testing.processes import Serve, stop_process
from testing.sims import SimProcess, start_sim
from testing.web import Response, eventually_async, request

POOL = "llama"
POOL_GROUP = "inference.networking.k8s.io"
MODEL = "llama"
PODS = ("vllm-0", "vllm-1", "vllm-2")
BUSY = "vllm-2"  # loaded directly in the second half, so the EPP must steer around it
TIMEOUT = 90.0  # generous for a loaded 2-core machine; bounds a hang, never measures speed
REQUESTS = 12


# --- small helpers ------------------------------------------------------------------------------------------------


def apply(dynamic: DynamicClient, docs: list[dict[str, Any]], namespace: str | None) -> None:
    for doc in docs:
        resource = dynamic.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        target = namespace if resource.namespaced else None
        dynamic.server_side_apply(resource, body=doc, namespace=target, field_manager="e2e", force_conflicts=True)


def read(dynamic: DynamicClient, api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any]:
    found: dict[str, Any] = (
        dynamic.resources.get(api_version=api_version, kind=kind).get(name=name, namespace=namespace).to_dict()
    )
    return found


def condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


# Polls a blocking probe in a thread until it holds (testing.web.eventually_async), with this file's patience.
eventually = functools.partial(eventually_async, seconds=TIMEOUT)


def pod_object(name: str, labels: dict[str, str], port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "server", "image": "sim", "ports": [{"containerPort": port}]}]},
    }


def make_ready(core: k8s.CoreV1Api, namespace: str, name: str, ip: str) -> None:
    """What a kubelet would write once the pod's container is up: Running, its IP, Ready."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = {
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
        }
    }
    core.patch_namespaced_pod_status(name, namespace, status)


# --- the Endpoint Picker process ----------------------------------------------------------------------------------


@dataclass
class EndpointPicker:
    """The EPP binary as a process: gRPC (ext_proc, TLS), health and metrics on free ports of all interfaces."""

    process: subprocess.Popen[bytes]
    log: Path
    grpc_port: int
    health_port: int
    metrics_port: int
    token: str

    @classmethod
    def start(cls, binary: Path, kubeconfig: Path, namespace: str, log: Path, token: str) -> EndpointPicker:
        # It binds ":<port>", so the ports must be free on every interface, not only on one loopback address.
        grpc_port, health_port, metrics_port = (free_port("0.0.0.0") for _ in range(3))
        config = log.parent / "epp-plugins.yaml"
        config.write_text(TUTORIAL_PICKER_CONFIG)  # the chart's default-plugins.yaml
        command = [
            str(binary),
            f"--kubeconfig={kubeconfig}",
            f"--pool-name={POOL}",
            f"--pool-namespace={namespace}",
            f"--config-file={config}",
            f"--grpc-port={grpc_port}",
            f"--grpc-health-port={health_port}",
            f"--metrics-port={metrics_port}",
            "--refresh-prometheus-metrics-interval=500ms",  # its pool gauges, which the test polls
            "--enable-pprof=false",
            "--zap-encoder=json",
            "-v=3",  # "Request handled" with the request id and the endpoint it chose
        ]
        with log.open("ab") as out:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        return cls(process, log, grpc_port, health_port, metrics_port, token)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def alive(self) -> None:
        assert self.process.poll() is None, f"the EPP exited with {self.process.returncode}:\n{self.tail()}"

    def serving(self) -> bool:
        """Its gRPC health service says SERVING: without leader election, once it has synced the pool."""
        self.alive()
        with grpc.insecure_channel(f"127.0.0.1:{self.health_port}") as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            except grpc.RpcError:
                return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    def metrics(self) -> str:
        """Its Prometheus text. controller-runtime guards the endpoint with TokenReview and SubjectAccessReview
        against the API server, so it takes the cluster admin's bearer token."""
        self.alive()
        connection = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=10)
        try:
            connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {self.token}"})
            answer = connection.getresponse()
            text = answer.read().decode()
            assert answer.status == 200, f"EPP /metrics: {answer.status} {text}"
            return text
        finally:
            connection.close()

    def sample(self, metric: str, /, **labels: str) -> float:
        """The sum of the samples of `metric` whose labels include `labels`."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(metric + "{") and not line.startswith(metric + " "):
                continue
            found = line[line.index("{") + 1 : line.rindex("}")] if "{" in line else ""
            if all(f'{k}="{v}"' in found for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def picks(self) -> list[str]:
        """The endpoint(s) it chose for each request so far, in order, from its "Request handled" log records."""
        lines = self.log.read_text(errors="replace").splitlines()
        return [json.loads(line)["endpoint"] for line in lines if '"msg":"Request handled"' in line]


# --- the test -----------------------------------------------------------------------------------------------------


def pool_manifests(target_port: int, epp_grpc_port: int, listen_port: int) -> list[dict[str, Any]]:
    """Our Gateway, the pool (its picker: Service `epp`, port 9002 -> the EPP's gRPC port) and a route to it."""
    docs = [d for d in yaml.safe_load_all(gateway([listen_port])) if d]
    docs += [
        {
            "apiVersion": f"{POOL_GROUP}/v1",
            "kind": "InferencePool",
            "metadata": {"name": POOL},
            "spec": {
                "targetPorts": [{"number": target_port}],
                "selector": {"matchLabels": {"app": POOL}},
                "endpointPickerRef": {"name": "epp", "port": {"number": 9002}, "failureMode": "FailClose"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "epp"},
            "spec": {
                "selector": {"app": "epp"},
                "ports": [{"name": "grpc-ext-proc", "port": 9002, "targetPort": epp_grpc_port}],
            },
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": POOL},
            "spec": {
                "parentRefs": [{"name": "gw"}],
                "hostnames": ["llama.example"],
                "rules": [{"backendRefs": [{"group": POOL_GROUP, "kind": "InferencePool", "name": POOL}]}],
            },
        },
    ]
    return docs


@dataclass
class Lab:
    namespace: str
    url: str
    endpoints: dict[str, str]  # pod name -> ip:port
    sims: dict[str, SimProcess]
    epp: EndpointPicker

    def chat(self, stream: bool = False) -> Response:
        # A fresh prompt each time, its nonce first: no prefix (64-character block) is shared with an earlier
        # request, so the prefix scorer gives every pod the same score and the load decides.
        content = f"{uuid.uuid4().hex} Say this is a test"
        payload = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 5}
        if stream:
            payload["stream"] = True
        headers = {"host": "llama.example", "content-type": "application/json"}
        return request(self.url, "POST", "/v1/chat/completions", json.dumps(payload).encode(), headers)

    async def requests_follow_the_picks(self, count: int, stream: bool = False) -> list[str]:
        """`count` requests through Envoy, one at a time; each must have been scheduled by the EPP exactly once and
        answered by the endpoint it chose. Returns the pods that answered."""
        served = []
        for _ in range(count):
            before = len(self.epp.picks())
            answer = await asyncio.to_thread(self.chat, stream)
            assert answer.status_code == 200, answer.text
            if stream:  # the EPP echoes each response chunk back to Envoy as it comes (FULL_DUPLEX_STREAMED)
                events = [line for line in answer.text.splitlines() if line.startswith("data: ")]
                assert events[-1] == "data: [DONE]", answer.text
                assert json.loads(events[0].removeprefix("data: "))["object"] == "chat.completion.chunk", answer.text
            else:
                assert answer.json()["choices"], answer.text
            pod = answer.headers["x-inference-pod"]
            # The record is written before the EPP answers Envoy; polled only in case the file lags.
            picks = await eventually(
                lambda b=before: len(p := self.epp.picks()) > b and p, "the EPP's pick", seconds=30
            )
            assert len(picks) == before + 1, picks[before:]
            assert picks[before] == self.endpoints[pod], (pod, picks[before])
            served.append(pod)
        return served


def load_directly(sim: SimProcess, requests: int) -> None:
    """Long requests straight to one simulator (not through Envoy), in daemon threads: with one running sequence
    at a time, all but one of them wait in its vLLM queue for minutes (until the simulator is stopped)."""

    def send() -> None:
        body = json.dumps({"model": MODEL, "prompt": "Count to a very large number", "max_tokens": 4000})
        connection = http.client.HTTPConnection(sim.host, sim.port, timeout=600)
        try:
            connection.request("POST", "/v1/completions", body, {"content-type": "application/json"})
            connection.getresponse().read()
        except OSError:
            pass  # the simulator was stopped under it at the end of the test
        finally:
            connection.close()

    for _ in range(requests):
        threading.Thread(target=send, daemon=True).start()


@pytest.fixture
def sims(tmp_path: Path) -> Iterator[dict[str, SimProcess]]:
    octet = random.randint(1, 254)
    hosts = {name: f"127.{octet}.93.{i + 1}" for i, name in enumerate(PODS)}
    port = port_free_on(list(hosts.values()))
    started: dict[str, SimProcess] = {}
    try:
        for name, host in hosts.items():
            # One sequence at a time, default (real-time) latencies: a request of 5 tokens takes ~0.1 s, one of
            # 4000 about 80 s, so a few of those keep a queue for the rest of the test.
            args = ["--host", host, "--port", str(port), "--model", MODEL, "--max-num-seqs", "1", "--seed", "1"]
            started[name] = start_sim("vllm", args, host, port, tmp_path / f"{name}.log", env={"POD_NAME": name})
        yield started
    finally:
        for sim in started.values():
            sim.kill()


def picker_missing(answer: Response) -> Response | None:
    """`answer` if it is the pool's 500 for a missing picker (not, e.g., a failed call while Envoy updates)."""
    if answer.status_code != 500 or answer.headers.get_content_type() != "application/json":
        return None
    return answer if answer.json().get("error", {}).get("code") == "endpoint_picker_missing" else None


async def test_the_real_endpoint_picker_chooses_and_envoy_follows(
    epp_binary: Path,  # first: a build failure shows before anything else starts
    kube_cluster: KubeCluster,
    api_client: k8s.ApiClient,
    namespace: str,
    tmp_path: Path,
    sims: dict[str, SimProcess],
) -> None:
    dynamic = DynamicClient(api_client, cache_file=str(kube_cluster.workdir / "discovery-cache.json"))
    core = k8s.CoreV1Api(api_client)
    target_port = next(iter(sims.values())).port
    endpoints = {name: f"{sim.host}:{sim.port}" for name, sim in sims.items()}
    epp_host = f"{next(iter(sims.values())).host.rsplit('.', 1)[0]}.10"
    listen_port = free_port()

    with contextlib.ExitStack() as cleanup:  # every process stopped however the test ends
        epp = EndpointPicker.start(
            epp_binary, kube_cluster.kubeconfig, namespace, tmp_path / "epp.log", kube_cluster.token
        )
        cleanup.callback(stop_process, epp.process)
        extra = ["--namespace", namespace, "--lease-namespace", namespace, "--privileged-port-offset", "10000"]
        extra += ["--controller-namespace", namespace]  # its Envoy's objects and certificate beside the test's
        extra += ["--log-format", "console"]  # --endpoint-picker is left at its cluster default: reference
        serve = Serve(kube_cluster.kubeconfig, free_port(), free_port(), tmp_path / "serve.log", extra=extra)
        cleanup.callback(stop_process, serve.process)

        apply(dynamic, pool_manifests(target_port, epp.grpc_port, listen_port), namespace)
        # Without kube-controller-manager nobody creates the namespace's default ServiceAccount, which Pods need.
        core.create_namespaced_service_account(
            namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="default"))
        )
        for name, sim in sims.items():
            core.create_namespaced_pod(namespace, pod_object(name, {"app": POOL}, target_port))
            make_ready(core, namespace, name, sim.host)
        core.create_namespaced_pod(namespace, pod_object("epp-0", {"app": "epp"}, epp.grpc_port))
        make_ready(core, namespace, "epp-0", epp_host)

        await eventually(epp.serving, "the EPP's health service SERVING (pool synced)")
        await eventually(lambda: epp.sample("inference_pool_ready_pods", name=POOL) == len(PODS), "EPP sees 3 pods")

        assert "leader" in await serve.ready(seconds=TIMEOUT)
        assert await serve.document("/debug/pools") == []  # reference mode: our embedded picker serves no pool
        envoy = await start_provisioned_envoy(tmp_path, serve, api_client, namespace, f"{namespace}/gw")
        cleanup.callback(envoy.stop)
        await envoy.wait_live()
        lab = Lab(namespace, f"http://127.0.0.1:{listen_port}", endpoints, sims, epp)
        await eventually(lambda: lab.chat().status_code == 200, "a first answer through Envoy")

        # 1. Every request goes where the EPP said.
        before = epp.sample("inference_model_request_total", model_name=MODEL)
        served = await lab.requests_follow_the_picks(REQUESTS)
        assert len(set(served)) >= 2, served  # equal scores: the max-score picker breaks ties at random
        await lab.requests_follow_the_picks(2, stream=True)
        # The EPP counted them (it records a request once it has its body, before picking).
        assert epp.sample("inference_model_request_total", model_name=MODEL) - before >= REQUESTS + 2

        # 2. Load one simulator: once the EPP has scraped its queue, nothing goes there, and still each request
        # lands where the EPP said. 5 requests, so 4 wait: the EPP's gauge is the pods' total queue divided by
        # their count in integers, 0 until the total reaches the pod count.
        load_directly(sims[BUSY], 5)
        await eventually(lambda: epp.sample("inference_pool_average_queue_size", name=POOL) > 0, "EPP sees a queue")
        served = await lab.requests_follow_the_picks(REQUESTS)
        assert BUSY not in served, served

        # 3. Our controller wrote the pool's status: an Accepted parent for our Gateway, its refs resolved.
        def parent() -> dict[str, Any] | None:
            pool = read(dynamic, f"{POOL_GROUP}/v1", "InferencePool", POOL, namespace)
            for entry in (pool.get("status") or {}).get("parents") or []:
                ref = entry["parentRef"]
                if ref.get("name") == "gw" and ref.get("namespace", namespace) == namespace:
                    return entry
            return None

        entry = await eventually(
            lambda: (p := parent()) and (condition(p["conditions"], "Accepted") or {}).get("status") == "True" and p,
            "the InferencePool has an Accepted parent",
        )
        assert (condition(entry["conditions"], "ResolvedRefs") or {}).get("status") == "True", entry

        # 4. Without the EPP's Service the pool cannot be served: 500 JSON, and the status says why.
        core.delete_namespaced_service("epp", namespace)
        missing = await eventually(lambda: picker_missing(lab.chat()), "500 endpoint_picker_missing once it is gone")
        assert missing.json()["error"]["message"] == (
            f"InferencePool {namespace}/{POOL} has no Endpoint Picker to call: Service {namespace}/epp not found"
        )
        refs = await eventually(
            lambda: (
                (p := parent()) and (c := condition(p["conditions"], "ResolvedRefs")) and c["status"] == "False" and c
            ),
            "ResolvedRefs False once the Service is gone",
        )
        assert refs["reason"] == "InvalidExtensionRef", refs
