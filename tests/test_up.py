"""The pure parts of `xds-server up`: image recognition, pod names and environment, probes, addresses, backoff."""

from __future__ import annotations

import random
import socket

import pytest
import yaml

from translators.loader import load_texts
from translators.resources import Deployment, Pod
from xds_server.up.addresses import LoopbackAddresses
from xds_server.up.images import Runtime, recognise, repository
from xds_server.up.pods import (
    TEMPLATE_HASH_LABEL,
    container_env,
    expand,
    plan_deployment,
    pod_identity,
    pod_name,
    pod_object,
    with_pods,
)
from xds_server.up.processes import HEALTHY_RUN_SECONDS, MAX_BACKOFF_SECONDS, backoff, next_restart
from xds_server.up.readiness import Probe, UnsupportedProbe, readiness_probe

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: sim, namespace: team}
spec:
  replicas: 2
  selector: {matchLabels: {app: sim}}
  template:
    metadata: {labels: {app: sim}}
    spec:
      containers:
      - name: vllm
        image: ghcr.io/llm-d/llm-d-inference-sim:v0.4.0
        args: ["--model", "m", "--port", "$(PORT)"]
        ports: [{name: http, containerPort: 8000}]
        env:
        - {name: PORT, value: "8000"}
        - {name: URL, value: "http://$(POD_IP):$(PORT)/$$(KEPT)"}
        - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
        - {name: NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: NS, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
        - {name: APP, valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}}
        - {name: LEVEL, valueFrom: {configMapKeyRef: {name: settings, key: level}}}
        - {name: TOKEN, valueFrom: {secretKeyRef: {name: creds, key: token}}}
        - {name: GONE, valueFrom: {configMapKeyRef: {name: settings, key: missing}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: team}
data: {level: debug}
---
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: team}
data: {token: czNjcjN0}
"""


@pytest.mark.parametrize(
    ("image", "repo", "runtime"),
    [
        ("docker.io/envoyproxy/ai-gateway-testupstream:latest", "envoyproxy/ai-gateway-testupstream", "testupstream"),
        ("envoyproxy/ai-gateway-testupstream", "envoyproxy/ai-gateway-testupstream", "testupstream"),
        ("ghcr.io/llm-d/llm-d-inference-sim:v0.4.0", "llm-d/llm-d-inference-sim", "vllm"),
        ("localhost:5000/llm-d-inference-sim@sha256:abc", "llm-d-inference-sim", "vllm"),
        ("registry.k8s.io/gateway-api-inference-extension/epp:v1.0.1", "gateway-api-inference-extension/epp", "picker"),
        ("nginx:1.27", "nginx", None),
        ("example.com/my-llm-d-inference-sim:1", "my-llm-d-inference-sim", None),  # whole path segments only
    ],
)
def test_images_are_recognised_by_repository(image: str, repo: str, runtime: str | None) -> None:
    assert repository(image) == repo
    assert recognise(image) == (Runtime(runtime) if runtime else None)


def test_pods_get_replicaset_names_labels_and_the_manifest_environment() -> None:
    resources = load_texts([("sim.yaml", DEPLOYMENT)])
    [deployment] = resources.of_kind(Deployment)
    plan = plan_deployment(deployment)
    assert plan.replicas == 2 and [c.runtime for c in plan.containers] == [Runtime.VLLM]
    name = pod_name(plan, random.Random(7))
    deployment_name, template_hash, suffix = name.rsplit("-", 2)
    assert deployment_name == "sim" and template_hash == plan.template_hash and len(suffix) == 5
    pod = pod_identity(plan, name, "127.0.9.3")
    assert pod.labels == {"app": "sim", TEMPLATE_HASH_LABEL: plan.template_hash}

    env, problems = container_env(plan.containers[0].container, pod, resources)
    assert env == {
        "PORT": "8000",
        "URL": "http://$(POD_IP):8000/$(KEPT)",  # only variables defined before are expanded
        "POD_IP": "127.0.9.3",
        "NAME": name,
        "NS": "team",
        "APP": "sim",
        "LEVEL": "debug",
        "TOKEN": "s3cr3t",
    }
    assert problems == ["env GONE: configMapKeyRef settings/missing not found"]
    assert expand("$(PORT)", env) == "8000"


def test_the_template_hash_follows_the_template_not_the_replicas() -> None:
    document = yaml.safe_load(DEPLOYMENT.split("---")[0])
    base = plan_deployment(Deployment.model_validate(document)).template_hash
    document["spec"]["replicas"] = 5
    assert plan_deployment(Deployment.model_validate(document)).template_hash == base
    document["spec"]["template"]["spec"]["containers"][0]["args"] = ["--model", "other"]
    assert plan_deployment(Deployment.model_validate(document)).template_hash != base


def test_unknown_images_and_pickers_have_no_pods() -> None:
    document = yaml.safe_load(DEPLOYMENT.split("---")[0])
    document["spec"]["template"]["spec"]["containers"].append({"name": "side", "image": "nginx"})
    plan = plan_deployment(Deployment.model_validate(document))
    assert plan.unrecognised == ("nginx",) and plan.replicas == 0
    document["spec"]["template"]["spec"]["containers"] = [
        {"name": "epp", "image": "registry.k8s.io/gateway-api-inference-extension/epp:v1.0.1"}
    ]
    plan = plan_deployment(Deployment.model_validate(document))
    assert plan.picker and plan.replicas == 0 and plan.containers == ()


def test_pod_objects_join_the_loaded_manifests() -> None:
    resources = load_texts([("sim.yaml", DEPLOYMENT)])
    plan = plan_deployment(resources.of_kind(Deployment)[0])
    ready = pod_object(plan, pod_identity(plan, "sim-a", "127.0.9.1"), True, False, "2026-01-01T00:00:00Z")
    leaving = pod_object(plan, pod_identity(plan, "sim-b", "127.0.9.2"), True, True, "2026-01-01T00:00:00Z")
    merged = with_pods(resources, {key: (pod, origin) for key, pod, origin in (ready, leaving)})
    pods = {pod.name: pod for pod in merged.of_kind(Pod)}
    assert pods["sim-a"].is_ready and pods["sim-a"].status.pod_ip == "127.0.9.1"
    assert not pods["sim-b"].is_ready  # terminating: out of every endpoint list at once
    assert len(merged.of_kind(Deployment)) == 1 and merged.errors == resources.errors


def test_readiness_probes_from_the_manifest() -> None:
    deployment = load_texts([("sim.yaml", DEPLOYMENT)]).of_kind(Deployment)[0]
    ports = deployment.spec.template.spec.containers[0].ports
    assert readiness_probe(None, ports) == Probe("listening", 8000, period=1.0)
    http = readiness_probe({"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 1}, ports)
    assert (http.action, http.port, http.path, http.period, http.failure_threshold) == (
        "httpGet",
        8000,
        "/health",
        1,
        3,
    )
    grpc = readiness_probe({"grpc": {"port": 9003, "service": "inference-extension"}, "initialDelaySeconds": 5}, ports)
    assert (grpc.action, grpc.port, grpc.service, grpc.initial_delay) == ("grpc", 9003, "inference-extension", 5)
    assert readiness_probe({"tcpSocket": {"port": 8000}}, ports).action == "tcpSocket"
    with pytest.raises(UnsupportedProbe, match="exec"):
        readiness_probe({"exec": {"command": ["true"]}}, ports)
    with pytest.raises(UnsupportedProbe, match="nope"):
        readiness_probe({"httpGet": {"port": "nope"}}, ports)


def test_loopback_addresses_are_never_127_0_0_1_and_skip_taken_ports() -> None:
    addresses = LoopbackAddresses(random.Random(3))
    first = addresses.allocate([8080])
    assert first.startswith("127.0.") and first != "127.0.0.1" and first.split(".")[2] != "0"
    second_guess = first.rsplit(".", 1)[0] + "." + str(int(first.rsplit(".", 1)[1]) + 1)
    with socket.socket() as taken:
        taken.bind((second_guess, 8080))
        taken.listen()
        assert addresses.allocate([8080]) not in (first, second_guess)


def test_restart_backoff_doubles_up_to_a_cap() -> None:
    assert [backoff(n) for n in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff(20) == MAX_BACKOFF_SECONDS


def test_the_first_restart_waits_a_second_and_a_crash_loop_doubles() -> None:
    """The README's 1 s, doubling: also after a process that ran healthy for a while (it restarted at once before)."""
    assert next_restart(0, 0.5) == (1, 1.0)  # a first crash, early
    assert next_restart(5, HEALTHY_RUN_SECONDS + 1) == (1, 1.0)  # after a healthy run: starts over at 1 s, not 0
    assert next_restart(1, 0.5) == (2, 2.0) and next_restart(2, 0.5) == (3, 4.0)
