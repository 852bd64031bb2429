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
import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient

from testing.kube_cluster import KubeCluster
from testing.real_epp import MODEL, POOL, POOL_GROUP, Lab, eventually, start_lab, start_sims, stop_sims
from testing.sims import SimProcess
from testing.web import Response

PODS = ("vllm-0", "vllm-1", "vllm-2")
BUSY = "vllm-2"  # loaded directly in the second half, so the EPP must steer around it
REQUESTS = 12


# --- small helpers ------------------------------------------------------------------------------------------------


def read(dynamic: DynamicClient, api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any]:
    found: dict[str, Any] = (
        dynamic.resources.get(api_version=api_version, kind=kind).get(name=name, namespace=namespace).to_dict()
    )
    return found


def condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


async def requests_follow_the_picks(lab: Lab, count: int, stream: bool = False) -> list[str]:
    """`count` requests through Envoy, one at a time; each must have been scheduled by the EPP exactly once and
    answered by the endpoint it chose. Returns the pods that answered."""
    served = []
    for _ in range(count):
        before = len(lab.epp.picks())
        answer = await asyncio.to_thread(lab.chat, stream)
        assert answer.status_code == 200, answer.text
        if stream:  # the EPP echoes each response chunk back to Envoy as it comes (FULL_DUPLEX_STREAMED)
            events = [line for line in answer.text.splitlines() if line.startswith("data: ")]
            assert events[-1] == "data: [DONE]", answer.text
            assert json.loads(events[0].removeprefix("data: "))["object"] == "chat.completion.chunk", answer.text
        else:
            assert answer.json()["choices"], answer.text
        pod = answer.headers["x-inference-pod"]

        # The record is written before the EPP answers Envoy; polled only in case the file lags.
        def picked(before: int = before) -> list[str] | bool:
            return len(p := lab.epp.picks()) > before and p

        picks = await eventually(picked, "the EPP's pick", seconds=30)
        assert len(picks) == before + 1, picks[before:]
        assert picks[before] == lab.endpoints[pod], (pod, picks[before])
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
    # One sequence at a time, default (real-time) latencies: a request of 5 tokens takes ~0.1 s, one of 4000 about
    # 80 s, so a few of those keep a queue for the rest of the test.
    started = start_sims(tmp_path, PODS, ["--model", MODEL, "--max-num-seqs", "1"])
    try:
        yield started
    finally:
        stop_sims(started)


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
    dynamic_client: DynamicClient,
) -> None:
    core = k8s.CoreV1Api(api_client)

    with contextlib.ExitStack() as cleanup:  # every process stopped however the test ends
        lab = await start_lab(cleanup, epp_binary, kube_cluster, namespace, tmp_path, sims)
        epp = lab.epp

        # 1. Every request goes where the EPP said.
        before = epp.sample("inference_model_request_total", model_name=MODEL)
        served = await requests_follow_the_picks(lab, REQUESTS)
        assert len(set(served)) >= 2, served  # equal scores: the max-score picker breaks ties at random
        await requests_follow_the_picks(lab, 2, stream=True)
        # The EPP counted them (it records a request once it has its body, before picking).
        assert epp.sample("inference_model_request_total", model_name=MODEL) - before >= REQUESTS + 2

        # 2. Load one simulator: once the EPP has scraped its queue, nothing goes there, and still each request
        # lands where the EPP said. 5 requests, so 4 wait: the EPP's gauge is the pods' total queue divided by
        # their count in integers, 0 until the total reaches the pod count.
        load_directly(sims[BUSY], 5)
        await eventually(lambda: epp.sample("inference_pool_average_queue_size", name=POOL) > 0, "EPP sees a queue")
        served = await requests_follow_the_picks(lab, REQUESTS)
        assert BUSY not in served, served

        # 3. Our controller wrote the pool's status: an Accepted parent for our Gateway, its refs resolved.
        def parent() -> dict[str, Any] | None:
            pool = read(dynamic_client, f"{POOL_GROUP}/v1", "InferencePool", POOL, namespace)
            parents: list[dict[str, Any]] = (pool.get("status") or {}).get("parents") or []
            for entry in parents:
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
