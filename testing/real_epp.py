"""The Gateway API Inference Extension's Endpoint Picker (EPP, built by bench/peers/build.sh) as a process against a
test API server (testing/kube_cluster.py), picking for an InferencePool whose pods are vLLM simulators, behind a real
Envoy provisioned by `xds-server serve --kubernetes` in reference picker mode (its cluster default).

There is no kubelet: every "pod" is a Pod object whose status (podIP, Ready, Running) is written through the status
subresource, and whose process runs on that podIP, a loopback address of its own. The EPP runs with the chart's
default plugins (queue, kv-cache and prefix scorers) and reads the Pods, the InferencePool and InferenceObjectives
from the API server as it would in a cluster; it listens on all interfaces, on free ports (its Service maps port
9002 to the gRPC one), with its default self-signed TLS.

Shared by e2e/kube/test_real_epp.py (are the EPP's picks honoured?) and bench/epp_side_by_side.py (what does a pick
cost, against the embedded picker?).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import random
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient

from testing.kube_cluster import KubeCluster
from testing.kube_envoy import KubeEnvoy, start_provisioned_envoy
from testing.kube_objects import apply
from testing.manifests import TUTORIAL_PICKER_CONFIG, gateway
from testing.ports import free_port, port_free_on
from testing.processes import Serve, stop_process
from testing.sims import SimProcess, start_sim
from testing.web import Response, eventually_async, request

POOL = "llama"
POOL_GROUP = "inference.networking.k8s.io"
MODEL = "llama"
HOSTNAME = "llama.example"  # the pool's HTTPRoute matches this Host
TIMEOUT = 90.0  # generous for a loaded 2-core machine; bounds a hang, never measures speed

# Polls a blocking probe in a thread until it holds (testing.web.eventually_async), with this module's patience.
eventually = functools.partial(eventually_async, seconds=TIMEOUT)


# --- Pods without a kubelet ---------------------------------------------------------------------------------------


def pod_object(name: str, labels: dict[str, str], port: int) -> Any:
    """A Pod's manifest, as the client takes it instead of a V1Pod (Any: its stubs want the model class)."""
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
    def start(
        cls, binary: Path, kubeconfig: Path, namespace: str, log: Path, token: str, verbosity: int = 3
    ) -> EndpointPicker:
        """`verbosity` 3 logs a "Request handled" record per request (`picks`); a benchmark runs it lower, so the
        logging of every request is not counted as the cost of picking."""
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
            f"-v={verbosity}",
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
                stub: Any = health_pb2_grpc.HealthStub(channel)  # generated code without type annotations
                answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
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
        """The endpoint(s) it chose for each request so far, in order, from its "Request handled" log records
        (logged at verbosity 3 and above)."""
        lines = self.log.read_text(errors="replace").splitlines()
        return [json.loads(line)["endpoint"] for line in lines if '"msg":"Request handled"' in line]


# --- the objects and the processes around it ----------------------------------------------------------------------


def start_pod(name: str, host: str, port: int, log: Path, args: Sequence[str]) -> SimProcess:
    """One pod of the pool: a vLLM simulator on `host:port`, named `name` (its `x-inference-pod` answers)."""
    arguments = ["--host", host, "--port", str(port), "--seed", "1", *args]
    return start_sim("vllm", arguments, host, port, log, env={"POD_NAME": name})


def stop_sims(sims: Mapping[str, SimProcess]) -> None:
    for sim in sims.values():
        sim.kill()


def start_sims(directory: Path, names: Sequence[str], args: Sequence[str]) -> dict[str, SimProcess]:
    """The pool's pods, one simulator each on a loopback address of its own and one port free on them all (pods of
    a pool share their targetPort); none left running if one fails to start."""
    octet = random.randint(1, 254)
    hosts = {name: f"127.{octet}.93.{i + 1}" for i, name in enumerate(names)}
    port = port_free_on(list(hosts.values()))
    started: dict[str, SimProcess] = {}
    try:
        for name, host in hosts.items():
            started[name] = start_pod(name, host, port, directory / f"{name}.log", args)
    except BaseException:
        stop_sims(started)
        raise
    return started


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
                "hostnames": [HOSTNAME],
                "rules": [{"backendRefs": [{"group": POOL_GROUP, "kind": "InferencePool", "name": POOL}]}],
            },
        },
    ]
    return docs


@dataclass
class Lab:
    """The running setup: Envoy's listener at `url`, the pool's pods (name -> ip:port), the processes."""

    namespace: str
    url: str
    endpoints: dict[str, str]
    sims: dict[str, SimProcess]
    epp: EndpointPicker
    serve: Serve
    envoy: KubeEnvoy

    def chat(self, stream: bool = False) -> Response:
        # A fresh prompt each time, its nonce first: no prefix (64-character block) is shared with an earlier
        # request, so the prefix scorer gives every pod the same score and the load decides.
        content = f"{uuid.uuid4().hex} Say this is a test"
        payload: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 5}
        if stream:
            payload["stream"] = True
        headers = {"host": HOSTNAME, "content-type": "application/json"}
        return request(self.url, "POST", "/v1/chat/completions", json.dumps(payload).encode(), headers)


def add_pods(core: k8s.CoreV1Api, namespace: str, sims: dict[str, SimProcess], epp: EndpointPicker) -> None:
    """The pool's Pods (one per simulator, on its address) and the EPP's, all Ready."""
    # Without kube-controller-manager nobody creates the namespace's default ServiceAccount, which Pods need.
    core.create_namespaced_service_account(namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="default")))
    target_port = next(iter(sims.values())).port
    for name, sim in sims.items():
        core.create_namespaced_pod(namespace, pod_object(name, {"app": POOL}, target_port))
        make_ready(core, namespace, name, sim.host)
    # Its Pod only has to exist (and be Ready) for the Service to resolve: the address is a loopback one near the
    # simulators', and the EPP, listening on every interface, answers there.
    epp_host = f"{next(iter(sims.values())).host.rsplit('.', 1)[0]}.10"
    core.create_namespaced_pod(namespace, pod_object("epp-0", {"app": "epp"}, epp.grpc_port))
    make_ready(core, namespace, "epp-0", epp_host)


async def start_lab(
    cleanup: contextlib.ExitStack,
    binary: Path,
    cluster: KubeCluster,
    namespace: str,
    directory: Path,
    sims: dict[str, SimProcess],
    verbosity: int = 3,
) -> Lab:
    """The EPP, `serve --kubernetes` (reference picker mode) and its provisioned Envoy for a pool over `sims` in
    `namespace`, up until a first chat completion through Envoy answers 200. Every process is stopped by `cleanup`."""
    api_client = cluster.api_client
    discovery_cache = str(cluster.workdir / "discovery-cache.json")
    dynamic = DynamicClient(api_client, cache_file=discovery_cache)  # type: ignore[no-untyped-call]  # unannotated
    core = k8s.CoreV1Api(api_client)
    listen_port = free_port()

    epp = EndpointPicker.start(binary, cluster.kubeconfig, namespace, directory / "epp.log", cluster.token, verbosity)
    cleanup.callback(stop_process, epp.process)
    extra = ["--namespace", namespace, "--lease-namespace", namespace, "--privileged-port-offset", "10000"]
    extra += ["--controller-namespace", namespace]  # its Envoy's objects and certificate beside the test's
    extra += ["--log-format", "console"]  # --endpoint-picker is left at its cluster default: reference
    serve = Serve(cluster.kubeconfig, free_port(), free_port(), directory / "serve.log", extra=extra)
    cleanup.callback(stop_process, serve.process)

    apply(dynamic, pool_manifests(next(iter(sims.values())).port, epp.grpc_port, listen_port), namespace)
    add_pods(core, namespace, sims, epp)

    await eventually(epp.serving, "the EPP's health service SERVING (pool synced)")
    await eventually(lambda: epp.sample("inference_pool_ready_pods", name=POOL) == len(sims), "EPP sees the pods")

    assert "leader" in await serve.ready(seconds=TIMEOUT)
    assert await serve.document("/debug/pools") == []  # reference mode: our embedded picker serves no pool
    envoy = await start_provisioned_envoy(directory, serve, api_client, namespace, f"{namespace}/gw")
    cleanup.callback(envoy.stop)
    await envoy.wait_live()
    endpoints = {name: f"{sim.host}:{sim.port}" for name, sim in sims.items()}
    lab = Lab(namespace, f"http://127.0.0.1:{listen_port}", endpoints, sims, epp, serve, envoy)
    await eventually(lambda: lab.chat().status_code == 200, "a first answer through Envoy")
    return lab
