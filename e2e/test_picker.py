"""The embedded Endpoint Picker behind real Envoy: `xds-server serve`, Envoy, and vLLM simulators on loopback.

Each simulator is a pod on its own 127.x.y.z address, all on one port (the pools' targetPort), naming itself in
`x-inference-pod`. The pools share the pods under different labels:
- `llama`: the default profile (queue 2, kv 2, prefix 3), FailClose, buffered body; 3 pods.
- `duplex`: the same pods, FULL_DUPLEX_STREAMED body mode chosen by its route.
- `conformance`: the Inference Extension's conformance config (header-based-testing-filter and the served
  endpoint verifier), FailOpen.
- `tiny`: one pod that runs one sequence at a time, saturated as soon as one request waits; objective `batch`
  is sheddable.
- `empty`: no pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from testing.envoy import Envoy
from testing.gateway_run import gateway_running
from testing.manifests import CONFORMANCE_PICKER_CONFIG, gateway, inference_objective, inference_pool, pod, pool_route
from testing.ports import free_port, port_free_on
from testing.processes import Serve
from testing.sims import SimProcess, start_sim
from testing.web import Response, eventually, http_get, request
from translators.xds.names import TEST_SELECTION_HEADER

POOLS = ("llama", "duplex", "conformance")
TINY_CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: utilization-detector
  parameters: {queueDepthThreshold: 0}
"""


# Model routing first (the router reads `model` from the body), then the picker of the pool that model goes to.
AI_ROUTE_TO_POOL = """
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIGatewayRoute
metadata: {name: ai}
spec:
  parentRefs: [{name: gw}]
  hostnames: ["ai.example"]
  rules:
  - matches: [{headers: [{type: Exact, name: x-ai-eg-model, value: llama}]}]
    backendRefs: [{group: inference.networking.k8s.io, kind: InferencePool, name: llama}]
"""


def start_vllm(name: str, host: str, port: int, log: Path, *more: str) -> SimProcess:
    args = ["--host", host, "--port", str(port), "--model", "llama", "--seed", "1", *more]
    return start_sim("vllm", args, host, port, log, env={"POD_NAME": name})


class PickerGateway:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        octet = random.randint(1, 254)
        self.hosts = [f"127.{octet}.90.{i}" for i in (1, 2, 3, 4)]
        self.port = port_free_on(self.hosts)
        fast: tuple[str, ...] = ("--max-num-seqs", "2", "--inter-token-latency", "2ms", "--prefill-overhead", "2ms")
        fast += ("--prefill-time-per-token", "0.01ms", "--max-model-len", "60000", "--kv-cache-blocks", "8192")
        self.sims = [
            start_vllm(f"llama-{i}", host, self.port, tmp_path / f"sim-{i}.log", *fast)
            for i, host in enumerate(self.hosts[:3])
        ]
        self.sims.append(
            start_vllm("tiny-0", self.hosts[3], self.port, tmp_path / "sim-tiny.log", "--max-num-seqs", "1")
        )
        self.listen_port = free_port()
        self.url = f"http://127.0.0.1:{self.listen_port}"
        self.manifests = tmp_path / "manifests"
        self.manifests.mkdir()
        self.write_manifests(not_ready=set())
        self.xds_port, self.admin_port = free_port(), free_port()
        log = tmp_path / "serve.log"
        self.serve = Serve(self.manifests, self.xds_port, self.admin_port, log, ["--picker-debug"])
        asyncio.run(self.serve.ready())
        self.envoy = Envoy(tmp_path, "default/gw", self.xds_port)
        asyncio.run(self.envoy.wait_live())
        eventually(lambda: self.chat("llama").status_code == 200, "the llama pool answers")

    def write_manifests(self, not_ready: set[str]) -> None:
        documents = [
            gateway([self.listen_port]),
            inference_pool("llama", self.port),
            inference_pool("duplex", self.port),
            inference_pool("conformance", self.port, failure_mode="FailOpen", config=CONFORMANCE_PICKER_CONFIG),
            inference_pool("tiny", self.port, config=TINY_CONFIG),
            inference_pool("empty", self.port),
            inference_objective("batch", "tiny", -1),
            pool_route("llama", "llama", "llama.example"),
            pool_route("duplex", "duplex", "duplex.example", body_mode="FULL_DUPLEX_STREAMED"),
            pool_route("conformance", "conformance", "conformance.example"),
            pool_route("tiny", "tiny", "tiny.example"),
            pool_route("empty", "empty", "empty.example"),
            pod("tiny-0", self.hosts[3], {"app": "tiny"}),
            AI_ROUTE_TO_POOL,
        ]
        for index, host in enumerate(self.hosts[:3]):
            for pool in POOLS:
                name = f"{pool}-{index}"
                documents.append(pod(name, host, {"app": pool}, ready=f"llama-{index}" not in not_ready))
        (self.manifests / "all.yaml").write_text("---".join(documents))

    def chat(
        self, pool: str, prompt: str = "Hi. Say this is a test", headers: dict[str, str] | None = None, **body: Any
    ) -> Response:
        payload = {"model": "llama", "messages": [{"role": "user", "content": prompt}], "max_tokens": 5, **body}
        all_headers = {"host": f"{pool}.example", "content-type": "application/json", **(headers or {})}
        return request(self.url, "POST", "/v1/chat/completions", json.dumps(payload).encode(), all_headers)

    def pool_document(self, pool: str) -> dict[str, Any]:
        return asyncio.run(self.serve.document(f"/debug/pools/default/{pool}"))

    def close(self) -> None:
        self.envoy.stop()
        if self.serve.process.poll() is None:
            self.serve.terminate()
        for sim in self.sims:
            sim.kill()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PickerGateway]:
    gateway = PickerGateway(tmp_path_factory.mktemp("picker"))
    try:
        yield gateway
    finally:
        gateway.close()


def pods_of(responses: list[Response]) -> Counter[str]:
    return Counter(r.headers["x-inference-pod"] for r in responses)


def test_load_spreads_across_the_pool(gw: PickerGateway) -> None:
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: gw.chat("llama", f"question {i} " * 3), range(30)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    assert set(pods_of(answers)) <= {"llama-0", "llama-1", "llama-2"}
    assert len(pods_of(answers)) >= 2, pods_of(answers)


def test_requests_sharing_a_long_prefix_go_to_the_same_pod(gw: PickerGateway) -> None:
    system = "You are the assistant of the tutorial; answer briefly and cite the manual. " * 40
    for group in range(3):
        answers = [gw.chat("llama", f"{group} {system} question {i}") for i in range(5)]
        assert all(a.status_code == 200 for a in answers)
        assert len(pods_of(answers)) == 1, pods_of(answers)


def test_an_ai_gateway_route_runs_the_router_then_the_picker(gw: PickerGateway) -> None:
    answer = gw.chat("ai", headers={"x-gateway-picker-debug": "true"})
    assert answer.status_code == 200, answer.text
    explained = json.loads(answer.headers["x-gateway-picker-scores"])
    assert explained["endpoints"][explained["picked"][0]]["pod"] == answer.headers["x-inference-pod"]
    unknown = gw.chat("ai", model="not-served")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_debug_header_explains_the_pick_and_debug_pools_shows_live_metrics(gw: PickerGateway) -> None:
    answer = gw.chat("llama", headers={"x-gateway-picker-debug": "true"})
    explained = json.loads(answer.headers["x-gateway-picker-scores"])
    picked = explained["picked"][0]
    assert explained["endpoints"][picked]["pod"] == answer.headers["x-inference-pod"]
    assert set(explained["weights"]) == {"queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer"}
    document = gw.pool_document("llama")
    assert {e["pod"] for e in document["endpoints"]} == {"llama-0", "llama-1", "llama-2"}
    assert all(e["scrapeError"] is None and e["ageSeconds"] < 5 for e in document["endpoints"])
    assert document["config"]["origin"].startswith("default profile")


def test_a_pod_with_a_full_queue_is_avoided(gw: PickerGateway) -> None:
    busy_sim = gw.sims[0]  # llama-0: two running slots, the rest waits

    def occupy(_: int) -> int:
        body = {"model": "llama", "messages": [{"role": "user", "content": "long"}], "max_tokens": 400}
        return request(busy_sim.url, "POST", "/v1/chat/completions", json.dumps(body).encode()).status_code

    with ThreadPoolExecutor(8) as pool:
        load = [pool.submit(occupy, i) for i in range(8)]
        eventually(
            lambda: any(
                e["pod"] == "llama-0" and e.get("waiting", 0) >= 3 for e in gw.pool_document("llama")["endpoints"]
            ),
            "the picker sees llama-0's queue",
        )
        answers = [gw.chat("llama", f"other question {i}") for i in range(10)]
        assert all(f.result() == 200 for f in load)
    assert "llama-0" not in pods_of(answers), pods_of(answers)


def test_full_duplex_body_mode_passes_a_large_body_whole(gw: PickerGateway) -> None:
    prompt = "lorem ipsum " * 12_000  # 144 kB: three 62,000-byte chunks at most, each way
    answer = gw.chat("duplex", prompt)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-inference-pod"].startswith("llama-")
    assert answer.json()["usage"]["prompt_tokens"] > 30_000  # the simulator read the whole prompt


@pytest.mark.parametrize("count", [1, 2, 3])
def test_gateway_following_epp_routing(gw: PickerGateway, count: int) -> None:
    """Conformance `GatewayFollowingEPPRouting`: 100 requests at concurrency 10 land only on the listed pods."""
    allowed = gw.hosts[:count]
    selection = {"test-epp-endpoint-selection": ",".join(allowed)}
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda i: gw.chat("conformance", f"critic {i}", selection), range(100)))
    assert all(a.status_code == 200 for a in answers)
    assert set(pods_of(answers)) <= {f"llama-{i}" for i in range(count)}


def test_gateway_destination_endpoint_served(gw: PickerGateway) -> None:
    """Conformance `GatewayDestinationEndpointServed`: Envoy reports the served endpoint, the picker echoes it."""
    for index, host in enumerate(gw.hosts[:3]):
        answer = gw.chat("conformance", "critic", {"test-epp-endpoint-selection": host})
        assert answer.headers["x-inference-pod"] == f"llama-{index}"
        assert answer.headers["x-conformance-test-served-endpoint"] == f"{host}:{gw.port}"


def test_sheddable_requests_get_429_on_a_saturated_pool(gw: PickerGateway) -> None:
    tiny = gw.sims[3]

    def occupy(_: int) -> int:
        body = {"model": "llama", "messages": [{"role": "user", "content": "long"}], "max_tokens": 150}
        return request(tiny.url, "POST", "/v1/chat/completions", json.dumps(body).encode()).status_code

    with ThreadPoolExecutor(3) as pool:
        load = [pool.submit(occupy, i) for i in range(3)]
        eventually(
            lambda: gw.pool_document("tiny")["endpoints"][0].get("waiting", 0) >= 1, "the picker sees tiny's queue"
        )
        shed = gw.chat("tiny", headers={"x-gateway-inference-objective": "batch"})
        assert shed.status_code == 429
        assert shed.json()["error"]["code"] == "pool_saturated"
        kept = gw.chat("tiny")  # priority 0 is never shed: it waits its turn
        assert kept.status_code == 200
        assert all(f.result() == 200 for f in load)


def test_a_pool_without_ready_pods_answers_503_json(gw: PickerGateway) -> None:
    answer = gw.chat("empty")
    assert answer.status_code == 503
    assert set(answer.json()["error"]) == {"message", "type", "code"}


def test_a_pod_turning_not_ready_drains(gw: PickerGateway) -> None:
    gw.write_manifests(not_ready={"llama-1"})
    started = time.monotonic()
    eventually(lambda: len(gw.pool_document("llama")["endpoints"]) == 2, "llama-1 leaves the pool")
    print(f"llama-1 left the picker's candidates {time.monotonic() - started:.2f}s after the edit")
    answers = [gw.chat("llama", f"drain {i}") for i in range(20)]
    assert all(a.status_code == 200 for a in answers)
    assert "llama-1" not in pods_of(answers)
    gw.write_manifests(not_ready=set())
    eventually(lambda: len(gw.pool_document("llama")["endpoints"]) == 3, "llama-1 is back")


def test_a_pick_costs_two_messages_unless_the_answer_needs_the_picker(gw: PickerGateway) -> None:
    """The fewest messages the protocol allows: a buffered pick reads the headers and the body, and turns the
    response phase off, unless a response plugin (the conformance pool's served-endpoint verifier) or asked-for
    scores need the answer."""

    def messages_for(pool: str, headers: dict[str, str] | None = None) -> int:
        before = asyncio.run(gw.envoy.stat_total("ext_proc.stream_msgs_sent"))
        answer = gw.chat(pool, "count my messages", headers)
        assert answer.status_code == 200, answer.text
        return asyncio.run(gw.envoy.stat_total("ext_proc.stream_msgs_sent")) - before

    assert messages_for("llama") == 2
    assert messages_for("conformance", {TEST_SELECTION_HEADER: f"{gw.hosts[0]}:{gw.port}"}) == 3
    assert messages_for("llama", {"x-gateway-picker-debug": "true"}) == 3


def test_when_the_picker_fails_fail_open_answers_and_fail_close_refuses(gw: PickerGateway) -> None:
    """Last in this module: it stops the control plane, and with it the picker Envoy calls."""
    assert gw.serve.terminate() == 0
    eventually(lambda: http_get(f"http://127.0.0.1:{gw.admin_port}/healthz", timeout=0.5)[0] != 200, "serve gone")
    opened = [gw.chat("conformance", f"no picker {i}") for i in range(6)]
    assert all(a.status_code == 200 for a in opened), [a.text for a in opened]
    assert set(pods_of(opened)) <= {"llama-0", "llama-1", "llama-2"}
    closed = gw.chat("llama")
    assert closed.status_code == 503
    assert set(closed.json()["error"]) == {"message", "type", "code"}


class SoloPool:
    """A pool of its own (`solo`, on `hosts`), with vLLM simulators on the `alive` ones only, behind `serve` and
    Envoy: the other pods are in the pool, Ready as far as the control plane knows, and refuse connections."""

    def __init__(self, tmp_path: Path, hosts: list[str], alive: list[str], config: str | None = None) -> None:
        self._stack = contextlib.ExitStack()
        port = port_free_on(hosts)
        self.sims: dict[str, SimProcess] = {}
        try:
            for i, host in enumerate(hosts):
                if host in alive:
                    self.sims[host] = start_vllm(f"solo-{i}", host, port, tmp_path / f"sim-{i}.log")
                    self._stack.callback(self.sims[host].kill)
            documents = [inference_pool("solo", port, config=config), pool_route("solo", "solo", "solo.example")]
            documents += [pod(f"solo-{i}", host, {"app": "solo"}) for i, host in enumerate(hosts)]
            run = self._stack.enter_context(gateway_running(tmp_path, documents))
        except BaseException:
            self._stack.close()
            raise
        self.url, self.envoy = run.url, run.envoy

    def chat(self, headers: dict[str, str] | None = None) -> Response:
        body = json.dumps({"model": "llama", "messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 3})
        sent = {"host": "solo.example", "content-type": "application/json", **(headers or {})}
        return request(self.url, "POST", "/v1/chat/completions", body.encode(), sent)

    def retries(self) -> int:
        return int(asyncio.run(self.envoy.stat_total("upstream_rq_retry")))

    def stop(self) -> None:
        self._stack.close()


def solo_hosts(count: int) -> list[str]:
    octet = random.randint(1, 254)
    return [f"127.{octet}.91.{i}" for i in range(1, count + 1)]


def test_a_request_whose_pod_died_is_retried_on_the_pickers_fallback_endpoint(tmp_path: Path) -> None:
    """The pick carries fallback endpoints and pool routes retry on a refused or dropped connection: a pod killed
    (before the control plane hears of it) costs a retry, not a failed request."""
    hosts = solo_hosts(3)
    pool = SoloPool(tmp_path, hosts, alive=hosts)
    try:
        first = eventually(lambda: (r := pool.chat()).status_code == 200 and r, "the pool answers")
        # The same long prompt again: prefix affinity sends it to the pod that answered first. Kill that one.
        dead = first.headers["x-inference-pod"]
        pool.sims[hosts[int(dead.rsplit("-", 1)[1])]].kill()
        retried_before = pool.retries()
        answers = [pool.chat() for _ in range(10)]
        assert [a.status_code for a in answers] == [200] * 10, [a.text for a in answers]
        assert dead not in {a.headers["x-inference-pod"] for a in answers}
        assert pool.retries() > retried_before  # the dead pod was picked, then skipped
    finally:
        pool.stop()


def test_a_pick_of_one_dead_pod_is_retried_on_pods_not_tried_yet(tmp_path: Path) -> None:
    """A picker that names a single endpoint (the Inference Extension's does) leaves the retries to the cluster's
    round robin. While a pod is deleted and its replacement is not listening yet, two of the pool's pods refuse: a
    retry must not draw the pod that just refused, or the request fails with two good pods left.

    Here the picked pod and one more are dead, two are alive; the conformance filter makes the pick exactly the
    dead pod named in the request."""
    hosts = solo_hosts(4)
    pool = SoloPool(tmp_path, hosts, alive=hosts[2:], config=CONFORMANCE_PICKER_CONFIG)
    try:
        alive = {TEST_SELECTION_HEADER: hosts[2]}
        eventually(lambda: pool.chat(alive).status_code == 200, "the pool answers")
        retried_before = pool.retries()
        answers = [pool.chat({TEST_SELECTION_HEADER: hosts[i % 2]}) for i in range(16)]
        assert [a.status_code for a in answers] == [200] * 16, [a.text for a in answers]
        assert {a.headers["x-inference-pod"] for a in answers} <= {"solo-2", "solo-3"}
        assert pool.retries() >= retried_before + 16  # every pick was a dead pod, and was retried
    finally:
        pool.stop()
