"""`xds-server up` as a user runs it: the tutorial's manifests (the verbatim seed and the project's example) with
real Envoy and simulator processes, the three requests of the seed's README, scaling by editing a file, shutdown
by SIGTERM and by SIGKILL, a crashed pod restarted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from testing.cases import SEED, TUTORIAL
from testing.manifests import backend_route, gateway
from testing.ports import loopback_address
from testing.processes import Up, listening_tcp_ports, run_processes
from testing.web import Response, eventually, http_get, request, upstream

GATEWAY = "default/inference-pool-with-aigwroute"
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
MISTRAL = "mistral:latest"
BASIC = "some-cool-self-hosted-model"


def chat(url: str, model: str) -> Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi. Say this is a test"}]}
    return request(url, "POST", "/v1/chat/completions", json.dumps(body).encode(), {"content-type": "application/json"})


def pods_of(document: dict[str, Any], deployment: str) -> set[str]:
    """Names of the ready file's pods of one Deployment (`<deployment>-<hash>-<suffix>`)."""
    names = {pod["name"].partition("/")[2] for pod in document["pods"]}
    return {name for name in names if name.rsplit("-", 2)[0] == deployment}


def assert_chat_completion(answer: Response, model: str) -> None:
    assert answer.status_code == 200, (model, answer.status_code, answer.text)
    body = answer.json()
    assert body["choices"][0]["message"]["role"] == "assistant" and body["choices"][0]["message"]["content"], body
    assert body["object"] == "chat.completion" and body["model"] == model, body


def assert_tutorial_answers(up: Up) -> None:
    """The seed README's three requests, each from the right place, and a 404 for a model nobody serves."""
    document = up.document
    assert [g["gateway"] for g in document["gateways"]] == [GATEWAY]
    assert up.url == f"http://{up.listen_host}:10080"  # the Gateway's port 80, offset by 10000

    # The ordinary backend, through the official SDK: Backend FQDN -> Service -> the one basic testupstream pod.
    client = openai.OpenAI(base_url=f"{up.url}/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=BASIC, messages=[{"role": "user", "content": "Hi. Say this is a test"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content and completion.model == BASIC
    assert raw.headers["x-inference-pod"] in pods_of(document, "envoy-ai-gateway-basic-testupstream")

    unknown = chat(up.url, "no-such-model")
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["error"]["code"] == "model_not_found", unknown.text

    mistral = chat(up.url, MISTRAL)
    assert_chat_completion(mistral, MISTRAL)
    assert mistral.headers["x-inference-pod"] in pods_of(document, "mistral-upstream")

    llama = chat(up.url, LLAMA)
    assert_chat_completion(llama, LLAMA)
    assert llama.json()["usage"]["total_tokens"] > 0
    assert llama.headers["x-inference-pod"] in pods_of(document, "vllm-llama3-8b-instruct")


@pytest.fixture
def started() -> Iterator[list[Up]]:
    """Every `up` a test starts is killed afterwards if it still runs, whatever happened."""
    runs: list[Up] = []
    yield runs
    for up in runs:
        if up.process.poll() is None:
            up.stop(signal.SIGKILL)


def start(started: list[Up], paths: list[Path], directory: Path) -> Up:
    directory.mkdir()
    up = Up(paths, directory)
    started.append(up)
    up.ready()
    return up


def assert_stops_cleanly(up: Up) -> None:
    assert up.processes(), "the run's processes should be running before the stop"
    sockets = assert_private_control_plane(up)
    assert up.stop(signal.SIGTERM) == 0, up.tail()
    assert up.processes() == []
    assert not up.ready_file.exists()
    assert not sockets.exists()  # the run's socket directory goes with it


def assert_private_control_plane(up: Up) -> Path:
    """ADS and ext_proc on Unix sockets only this user may open, in a directory of the run's (0700); the `up`
    process listens on no TCP port but its admin's. Returns the directory."""
    control = up.document["control_plane"]
    paths = [Path(control[name].removeprefix("unix:")) for name in ("xds", "extproc")]
    assert all(control[name].startswith("unix:") for name in ("xds", "extproc")), control
    [directory] = {path.parent for path in paths}
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700 and directory.stat().st_uid == os.getuid()
    for path in paths:
        assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600, path
    admin_port = int(control["admin"].rsplit(":", 1)[1])
    assert listening_tcp_ports(up.process.pid) == {admin_port}
    assert f"ADS {control['xds']}, ext_proc {control['extproc']}" in up.output.read_text()
    return directory


@pytest.mark.skipif(
    not SEED.is_dir(),
    reason=f"optional verbatim tutorial copy not found at {SEED} (XDS_SERVER_SEED names another folder)",
)
def test_the_seed_tutorial_runs_unmodified(tmp_path: Path, started: list[Up]) -> None:
    up = start(started, [SEED], tmp_path / "seed")
    output = up.output.read_text()
    assert f"gateway {GATEWAY} ready at {up.url}" in output
    assert "default/mistral" in output and "ConfigMap default/plugins-config key default-plugins.yaml" in output
    assert "RBAC object(s)" in output  # what `up` skips is said
    for pod in up.document["pods"]:
        assert pod["ready"] and pod["address"].startswith("127.0.") and pod["address"] != "127.0.0.1"
    assert len(up.document["pods"]) == 7  # 3 vLLM + 3 mistral + 1 basic; the two pickers are embedded
    assert_tutorial_answers(up)
    assert_stops_cleanly(up)


def test_the_example_tutorial_scales_by_editing_the_file(tmp_path: Path, started: list[Up]) -> None:
    manifests = tmp_path / "tutorial"
    shutil.copytree(TUTORIAL, manifests)
    up = start(started, [manifests], tmp_path / "run")
    assert_tutorial_answers(up)
    assert len(pods_of(up.document, "mistral-upstream")) == 3

    answers: list[tuple[float, int, str]] = []  # (when, status, pod)
    done = threading.Event()

    def send() -> None:
        while not done.is_set():
            answer = chat(up.url, MISTRAL)
            answers.append((time.monotonic(), answer.status_code, answer.headers.get("x-inference-pod", "")))

    sender = threading.Thread(target=send)
    sender.start()
    try:
        time.sleep(0.5)
        pool_file = manifests / "02-mistral-pool.yaml"
        text = pool_file.read_text()
        assert text.count("replicas: 3\n") == 1
        pool_file.write_text(text.replace("replicas: 3\n", "replicas: 1\n"))
        edited = time.monotonic()
        time.sleep(4.0)
    finally:
        done.set()
        sender.join()

    failed = [answer for answer in answers if answer[1] != 200]
    assert not failed, failed[:5]
    late = [pod for when, _, pod in answers if when > edited + 2.0]
    assert len(late) >= 5 and len(set(late)) == 1, set(late)
    assert pods_of(up.refresh(), "mistral-upstream") == set(late)  # the pod that is left, and only it
    output = up.output.read_text()
    assert "Deployment default/mistral-upstream: 3 -> 1 replicas" in output
    assert output.count(": stopping (scaled down)") == 2
    assert_stops_cleanly(up)


TESTUPSTREAM = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
spec:
  replicas: 1
  selector:
    matchLabels: {app: echo}
  template:
    metadata:
      labels: {app: echo}
    spec:
      containers:
      - name: testupstream
        image: docker.io/envoyproxy/ai-gateway-testupstream:latest
        ports:
        - containerPort: 8080
        readinessProbe:
          httpGet: {path: /health, port: 8080}
          periodSeconds: 1
      - name: sidecar
        image: example.com/team/unknown-sidecar:1.0
"""
GATEWAY_TO_ECHO = """\
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: local}
spec: {controllerName: xds-server.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web}
spec:
  gatewayClassName: local
  listeners: [{name: http, protocol: HTTP, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo}
spec:
  parentRefs: [{name: web}]
  rules: [{backendRefs: [{name: echo, port: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
"""


def test_a_crashed_pod_restarts_and_a_killed_runner_leaves_no_child(tmp_path: Path, started: list[Up]) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "echo.yaml").write_text(TESTUPSTREAM)
    (manifests / "gateway.yaml").write_text(GATEWAY_TO_ECHO)
    up = start(started, [manifests], tmp_path / "run")
    assert "example.com/team/unknown-sidecar:1.0 has no local stand-in" in up.output.read_text()
    assert up.document["pods"] == []  # a pod with an unrecognised container does not exist
    assert [g["gateway"] for g in up.document["gateways"]] == ["default/web"]
    assert http_get(f"{up.url}/health")[0] == 503  # the route's Service has no ready pod

    (manifests / "echo.yaml").write_text(TESTUPSTREAM.split("      - name: sidecar")[0])
    [pod] = eventually(lambda: [p for p in up.refresh()["pods"] if p["ready"]], "the echo pod, without its sidecar")
    assert pod["name"].startswith("default/echo-")
    eventually(lambda: http_get(f"{up.url}/health")[0] == 200, "the Gateway reaches the pod")
    [first] = [pid for pid in up.processes() if "testupstream" in Path(f"/proc/{pid}/cmdline").read_text()]

    os.kill(first, signal.SIGKILL)
    eventually(lambda: len([pid for pid in up.processes() if pid != first]) == 2, "a restarted process, and Envoy")
    eventually(lambda: http_get(f"http://{pod['address']}:8080/health")[0] == 200, "the same address serves again")
    assert "testupstream was killed by signal 9; restarting in 1s (restart 1)" in up.output.read_text()
    eventually(lambda: up.refresh()["pods"] == [pod], "the pod ready again")

    up.stop(signal.SIGKILL)
    eventually(lambda: run_processes(up.document["run_id"]) == [], "no child outlives a SIGKILLed runner")


def test_a_gateway_whose_port_another_process_holds_is_announced_once_the_port_is_free(
    tmp_path: Path, started: list[Up]
) -> None:
    """A second `up` (or anything else) on the Gateway's port: `up` says the port is taken and that it keeps trying,
    announces no URL (which would reach the other process), and serves as soon as the port is free."""
    host, port = loopback_address()
    squatter = socket.socket()
    squatter.bind((host, port))
    squatter.listen()
    answers = upstream("127.0.4.9", "from-the-backend")
    manifest = tmp_path / "gateway.yaml"
    manifest.write_text(gateway([port]) + "---" + backend_route("web", "127.0.4.9", next(answers)))
    try:
        (tmp_path / "run").mkdir()
        up = Up([manifest], tmp_path / "run", listen_host=host)
        started.append(up)
        document = up.ready()
        assert document["gateways"] == [], document  # not announced: its URL would reach the other process
        output = up.output.read_text()
        assert f"cannot bind '{host}:{port}'" in output and "tried again until the port is free" in output, up.tail()
        assert "ready at" not in output, up.tail()
        squatter.close()
        eventually(lambda: bool(up.refresh()["gateways"]), "the Gateway announced once its port is free", 30)
        assert up.url == f"http://{host}:{port}"
        assert http_get(f"{up.url}/") == (200, "from-the-backend")
        assert f"gateway default/gw ready at http://{host}:{port}" in up.output.read_text()
        assert up.stop(signal.SIGTERM) == 0, up.tail()
    finally:
        squatter.close()
        next(answers, None)
