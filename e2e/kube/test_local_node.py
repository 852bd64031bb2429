"""The local node's kubelet, asserted directly (the tutorial and the conformance suites only exercise it): an image it
has no program for, a crashing container under each restart policy, the downward API and volumes as the process sees
them, a Secret change reaching the mounted files, and a deleted pod's processes and network going away."""

from __future__ import annotations

import base64
import functools
import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from e2e.kube.conftest import _ensure_binaries
from testing.kube_cluster import KubeCluster, binary_dir, running_cluster
from testing.kube_objects import fresh_namespace
from testing.localnode.network import create_network
from testing.web import Response, eventually_async, request

SECONDS = 90.0  # bounds a hang on a loaded machine; nothing asserts on speed
eventually = functools.partial(eventually_async, seconds=SECONDS)
TESTUPSTREAM = "docker.io/envoyproxy/ai-gateway-testupstream:latest"
VLLM = "ghcr.io/llm-d/llm-d-inference-sim:v0.4.0"
PROJECT = "xds-server:latest"
ENVOY = "docker.io/envoyproxy/envoy:distroless-dev"


@pytest.fixture(scope="module")
def cluster(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    _ensure_binaries(pytestconfig)
    network = create_network()
    try:
        with running_cluster(
            tmp_path_factory.mktemp("node"), binary_dir(), crds=None, network=network, local_node=True
        ) as running:
            yield running
    finally:
        network.destroy()


@pytest.fixture
def core(cluster: KubeCluster) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(cluster.api_client)


@pytest.fixture
def namespace(core: k8s.CoreV1Api) -> str:
    return fresh_namespace(core)


def pod(name: str, container: dict[str, Any], **spec: Any) -> k8s.V1Pod:
    # The client validates a dict argument into this very model; validating it here types the call.
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": [container], **spec}}
    return k8s.V1Pod.model_validate(body)


def status(core: k8s.CoreV1Api, namespace: str, name: str) -> Any:
    return core.read_namespaced_pod(name, namespace).status


def container_state(core: k8s.CoreV1Api, namespace: str, name: str) -> Any:
    statuses = status(core, namespace, name).container_statuses or []
    return statuses[0] if statuses else None


async def test_an_image_without_a_local_program_waits_and_says_why(core: k8s.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_pod(namespace, pod("web", {"name": "web", "image": "nginx:1.27"}))
    # (ContainerCreating first while the new namespace's kube-root-ca.crt, which every pod mounts, is published.)
    waiting = await eventually(
        lambda: (
            (c := container_state(core, namespace, "web"))
            and (w := c.state.waiting)
            and w.reason != "ContainerCreating"
            and w
        ),
        "a reason other than ContainerCreating",
    )
    assert waiting.reason == "ErrImagePull" and "'nginx:1.27'" in waiting.message, waiting
    assert status(core, namespace, "web").phase == "Pending"
    events = await eventually(
        lambda: [e for e in core.list_namespaced_event(namespace).items if e.reason == "Failed"], "a Failed event"
    )
    assert events[0].involved_object.name == "web" and events[0].type == "Warning"
    assert "nginx:1.27" in events[0].message and "envoyproxy/envoy" in events[0].message


async def test_a_crashing_container_restarts_with_always_and_fails_the_pod_with_never(
    core: k8s.CoreV1Api, namespace: str
) -> None:
    crash = {"name": "c", "image": PROJECT, "args": ["no-such-command"]}  # argparse: exit status 2
    core.create_namespaced_pod(namespace, pod("always", crash))
    core.create_namespaced_pod(namespace, pod("never", crash, restartPolicy="Never"))
    restarted = await eventually(
        lambda: (c := container_state(core, namespace, "always")) and c.restart_count >= 2 and c, "two restarts"
    )
    assert restarted.last_state.terminated.exit_code == 2, restarted.last_state
    assert status(core, namespace, "always").phase == "Running"  # restartPolicy Always: never terminal
    failed = await eventually(lambda: (s := status(core, namespace, "never")).phase == "Failed" and s, "Failed")
    [never] = failed.container_statuses
    assert never.restart_count == 0 and never.state.terminated.exit_code == 2, never


async def test_the_process_sees_its_downward_api_env_volumes_and_secret_updates(
    core: k8s.CoreV1Api, namespace: str, cluster: KubeCluster
) -> None:
    """An Envoy whose bootstrap comes from a ConfigMap volume answers with a file from a Secret volume: both mounts
    at their mountPath inside the pod; the vLLM simulator names itself from a downward-API env variable."""
    secret = {"metadata": {"name": "answer"}, "data": {"text": b64("first")}}
    core.create_namespaced_secret(namespace, k8s.V1Secret.model_validate(secret))
    config_map = {"metadata": {"name": "boot"}, "data": {"envoy.yaml": BOOTSTRAP}}
    core.create_namespaced_config_map(namespace, k8s.V1ConfigMap.model_validate(config_map))
    envoy = {
        "name": "envoy",
        "image": ENVOY,
        "args": ["-c", "/etc/envoy/envoy.yaml", "--log-level", "warn"],
        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
        "volumeMounts": [
            {"name": "boot", "mountPath": "/etc/envoy", "readOnly": True},
            {"name": "answer", "mountPath": "/data", "readOnly": True},
        ],
    }
    volumes = [{"name": "boot", "configMap": {"name": "boot"}}, {"name": "answer", "secret": {"secretName": "answer"}}]
    core.create_namespaced_pod(namespace, pod("envoy", envoy, volumes=volumes))
    sim = {
        "name": "sim",
        "image": VLLM,
        "args": ["--model", "m", "--port", "8000"],
        "env": [
            {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAME", "value": "$(ME).$(UNDEFINED)"},  # $(VAR) expansion; an unknown one stays
        ],
    }
    core.create_namespaced_pod(namespace, pod("sim", sim))

    ip = await eventually(lambda: (s := status(core, namespace, "envoy")).pod_ip and s.conditions and s.pod_ip, "IP")
    answer = await eventually(lambda: answered(f"http://{ip}:8080", "GET", "/"), "Envoy answering")
    assert answer.text == "first"
    sim_ip = await eventually(lambda: status(core, namespace, "sim").pod_ip, "the simulator's IP")
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    chat = await eventually(
        lambda: answered(f"http://{sim_ip}:8000", "POST", "/v1/chat/completions", body), "the simulator answering"
    )
    assert chat.headers["x-inference-pod"] == "sim.$(UNDEFINED)", chat.headers

    # A Secret change reaches the mounted files (the kubelet's atomic `..data` swap), as Envoy's file SDS needs.
    core.patch_namespaced_secret("answer", namespace, {"data": {"text": b64("second")}})
    pods = cluster.workdir / "node" / "pods"
    [files] = list(pods.glob(f"{namespace}_envoy_*/volumes/answer"))
    await eventually(lambda: (files / "text").read_text() == "second", "the new Secret in the pod's volume")
    assert (files / "..data").is_symlink() and (files / "text").resolve().parent == (files / "..data").resolve()


async def test_a_deleted_pod_stops_its_process_and_loses_its_network(core: k8s.CoreV1Api, namespace: str) -> None:
    container = {"name": "up", "image": TESTUPSTREAM, "readinessProbe": {"tcpSocket": {"port": 8080}}}
    core.create_namespaced_pod(namespace, pod("up", container))
    ready = await eventually(
        lambda: (c := container_state(core, namespace, "up")) and c.ready and c, "the container ready"
    )
    pid = int(ready.container_id.removeprefix("local://"))
    netns = next(line.split()[0] for line in ip_netns() if pid_in(line.split()[0], pid))
    core.delete_namespaced_pod("up", namespace)  # default grace: SIGTERM, the test upstream exits at once

    def gone() -> bool:
        try:
            core.read_namespaced_pod("up", namespace)
        except k8s.ApiException as error:
            missing: bool = error.status == 404
            return missing
        return False

    await eventually(gone, "the pod deleted after its containers stopped")
    assert not os.path.exists(f"/proc/{pid}")
    assert netns not in [line.split()[0] for line in ip_netns()]


# --- helpers ------------------------------------------------------------------------------------------------------


def answered(url: str, method: str, path: str, body: bytes | None = None) -> Response | None:
    """The answer when it is a 200; None while nothing listens yet (a pod without a readiness probe is Ready as soon
    as it runs)."""
    try:
        answer = request(url, method, path, body)
    except OSError:
        return None
    return answer if answer.status_code == 200 else None


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def ip_netns() -> list[str]:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.splitlines()


def pid_in(netns: str, pid: int) -> bool:
    pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
    return str(pid) in pids


# Envoy answering every request on :8080 with the Secret's file.
BOOTSTRAP = """
static_resources:
  listeners:
  - name: answer
    address: {socket_address: {address: 0.0.0.0, port_value: 8080}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: answer
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                direct_response: {status: 200, body: {filename: /data/text}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""
