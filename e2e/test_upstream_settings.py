"""Per-backend settings in the upstream phase, with real Envoy, `xds-server serve` and testupstream processes.

Each attempt gets the settings of the backend Envoy chose for it: a model name override and body mutations arrive
in the upstream's body with a matching Content-Length, an API key from a Secret replaces the client's Authorization
(and shows nowhere else), and when the primary backend answers 503 the retry lands on the secondary backend with
the secondary's settings. Token metrics add up exactly over a known workload.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from testing.envoy import Envoy
from testing.manifests import gateway
from testing.ports import free_port
from testing.processes import Serve
from testing.sims import b64, start_testupstream
from testing.web import Response, eventually, http_get, metric, request

PRIMARY, SECONDARY = "127.0.9.1", "127.0.9.2"
API_KEY = "sk-e2e-not-a-real-key-5f2a9c"
FALLBACK_REQUEST = {"model": "fallback", "messages": [{"role": "user", "content": "hi"}]}


def compact(document: Mapping[str, object]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


# What the secondary must receive: its own model override, and none of the primary's body or header settings.
FALLBACK_AT_SECONDARY = compact({**FALLBACK_REQUEST, "model": "secondary-model"})


def manifests(primary_port: int, secondary_port: int, api_key: str = API_KEY) -> str:
    def backend(name: str, address: str, port: int, extra: str = "") -> str:
        return f"""
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIServiceBackend
metadata: {{name: {name}}}
spec:
  schema: {{name: OpenAI}}
  backendRef: {{group: gateway.envoyproxy.io, kind: Backend, name: {name}}}{extra}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {{name: {name}}}
spec:
  endpoints: [{{ip: {{address: "{address}", port: {port}}}}}]
"""

    failing = """
  headerMutation:
    set: [{name: x-response-status, value: "503"}]
  bodyMutation:
    set: [{path: seed, value: "42"}]"""
    route = """
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIGatewayRoute
metadata: {name: settings}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{headers: [{type: Exact, name: x-ai-eg-model, value: override-me}]}]
    backendRefs: [{name: primary, modelNameOverride: pinned-model}]
  - matches: [{headers: [{type: Exact, name: x-ai-eg-model, value: keyed}]}]
    backendRefs: [{name: keyed}]
  - matches: [{headers: [{type: Exact, name: x-ai-eg-model, value: mutated}]}]
    backendRefs:
    - name: primary
      headerMutation: {set: [{name: x-tenant, value: blue}], remove: [x-client-debug]}
      bodyMutation: {set: [{path: temperature, value: "0.25"}], remove: [user]}
  - matches: [{headers: [{type: Exact, name: x-ai-eg-model, value: headers-only}]}]
    backendRefs:
    - name: primary
      headerMutation: {set: [{name: x-quota, value: "50%"}], remove: [x-client-debug]}
  - matches: [{headers: [{type: Exact, name: x-ai-eg-model, value: fallback}]}]
    backendRefs:
    - {name: failing, priority: 0}
    - name: secondary
      priority: 1
      modelNameOverride: secondary-model
      headerMutation:
        set:
        - {name: x-expected-testupstream-id, value: secondary}
        - {name: x-expected-request-body, value: "FALLBACK_BODY_B64"}
  - matches: [{headers: [{type: Exact, name: x-ai-eg-model, value: counted}]}]
    backendRefs: [{name: secondary}]
  - matches: [{headers: [{type: Exact, name: x-ai-eg-model, value: unkeyed}]}]
    backendRefs: [{name: unkeyed}]
  - matches: [{headers: [{type: Exact, name: x-ai-eg-model, value: unkeyed-first}]}]
    backendRefs: [{name: unkeyed, priority: 0}, {name: backup, priority: 1}]
"""
    route = route.replace("FALLBACK_BODY_B64", b64(FALLBACK_AT_SECONDARY))
    policy = f"""
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: BackendSecurityPolicy
metadata: {{name: keyed}}
spec:
  type: APIKey
  apiKey: {{secretRef: {{name: keyed}}}}
  targetRefs: [{{group: aigateway.envoyproxy.io, kind: AIServiceBackend, name: keyed}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: keyed}}
stringData: {{apiKey: "{api_key}"}}
---
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: BackendSecurityPolicy
metadata: {{name: unkeyed}}
spec:
  type: APIKey
  apiKey: {{secretRef: {{name: not-there}}}}
  targetRefs: [{{group: aigateway.envoyproxy.io, kind: AIServiceBackend, name: unkeyed}}]
"""
    documents = [
        route,
        backend("primary", PRIMARY, primary_port),
        backend("keyed", PRIMARY, primary_port),
        backend("failing", PRIMARY, primary_port, failing),
        backend("secondary", SECONDARY, secondary_port),
        backend("unkeyed", PRIMARY, primary_port),
        backend("backup", SECONDARY, secondary_port),
        policy,
    ]
    return "---".join(documents)


class Gateway:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.primary = start_testupstream("primary", PRIMARY, tmp_path / "primary.log")
        self.secondary = start_testupstream("secondary", SECONDARY, tmp_path / "secondary.log")
        self.listen_port = free_port()
        self.url = f"http://127.0.0.1:{self.listen_port}"
        files = tmp_path / "manifests"
        files.mkdir()
        self.manifest_file = files / "gateway.yaml"
        self.write_manifests(API_KEY)
        self.xds_port, self.admin_port, extproc_port = free_port(), free_port(), free_port()
        self.serve_log = tmp_path / "serve.log"
        extra = ["--extproc-address", f"127.0.0.1:{extproc_port}"]
        self.serve = Serve(files, self.xds_port, self.admin_port, self.serve_log, extra)
        asyncio.run(self.serve.ready())
        self.envoy = Envoy(tmp_path, "default/gw", self.xds_port)
        asyncio.run(self.envoy.wait_live())
        eventually(lambda: self.chat("counted").status_code == 200, "routes served")

    def write_manifests(self, api_key: str) -> None:
        text = gateway([self.listen_port]) + "---" + manifests(self.primary.port, self.secondary.port, api_key)
        self.manifest_file.write_text(text)

    def chat(self, model: str, headers: dict[str, str] | None = None, **fields: object) -> Response:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}).encode()
        return request(self.url, "POST", "/v1/chat/completions", body, headers)

    def close(self) -> None:
        self.envoy.stop()
        self.serve.terminate()
        self.primary.kill()
        self.secondary.kill()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    environment = Gateway(tmp_path_factory.mktemp("upstream-settings"))
    try:
        yield environment
    finally:
        environment.close()


def test_model_name_override_reaches_the_upstream_with_a_matching_content_length(gw: Gateway) -> None:
    sent = {"model": "override-me", "messages": [{"role": "user", "content": "hi"}], "n": 1}
    rewritten = compact({**sent, "model": "pinned-model"})
    headers = {
        "x-expected-testupstream-id": "primary",
        "x-expected-request-body": b64(rewritten),
        "x-expected-headers": b64(f"content-length:{len(rewritten)}"),
    }
    answer = request(gw.url, "POST", "/v1/chat/completions", compact(sent), headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-model"] == "pinned-model"


def test_body_and_header_mutations_of_the_backend_ref(gw: Gateway) -> None:
    sent = {"model": "mutated", "user": "someone", "messages": [], "temperature": 1.5}
    expected = compact({"model": "mutated", "messages": [], "temperature": 0.25})
    headers = {
        "x-client-debug": "1",
        "x-expected-request-body": b64(expected),
        "x-expected-headers": b64("x-tenant:blue"),
        "x-non-expected-request-headers": b64("x-client-debug"),
    }
    answer = request(gw.url, "POST", "/v1/chat/completions", compact(sent), headers)
    assert answer.status_code == 200, answer.text


def test_settings_envoy_applies_itself_call_no_service(gw: Gateway) -> None:
    """A rule to one backend whose settings leave the body alone (headers, an API key) is served by Envoy alone: the
    route sets and removes the headers (a `%` in a value arrives as written), the cluster injects the key from an SDS
    secret. A body change still takes the upstream-settings service, one stream per attempt."""
    started = asyncio.run(gw.envoy.stat_total("ext_proc.streams_started"))
    headers = {
        "x-client-debug": "1",
        "x-expected-headers": b64("x-quota:50%"),
        "x-non-expected-request-headers": b64("x-client-debug"),
    }
    assert gw.chat("headers-only", headers).status_code == 200
    assert gw.chat("keyed", {"x-expected-headers": b64(f"authorization:Bearer {API_KEY}")}).status_code == 200
    assert asyncio.run(gw.envoy.stat_total("ext_proc.streams_started")) == started
    assert gw.chat("override-me").status_code == 200
    assert asyncio.run(gw.envoy.stat_total("ext_proc.streams_started")) == started + 1


def test_the_api_key_replaces_the_client_authorization_and_is_shown_nowhere(gw: Gateway) -> None:
    headers = {
        "authorization": "Bearer client-supplied",
        "x-expected-headers": b64(f"authorization:Bearer {API_KEY}"),
    }
    answer = gw.chat("keyed", headers)
    assert answer.status_code == 200, answer.text
    # Without the backend's key the upstream sees the client's header: the check above is what tells them apart.
    assert gw.chat("override-me", headers).status_code == 400
    for path in ("/debug/snapshots", "/debug/status", "/debug/clients", "/metrics"):
        status, text = http_get(f"http://127.0.0.1:{gw.admin_port}{path}")
        assert status == 200 and API_KEY not in text, path
    status, dump = http_get(f"{gw.envoy.admin}/config_dump")
    assert status == 200 and API_KEY not in dump
    assert API_KEY not in gw.serve_log.read_text()


def test_a_backend_whose_key_is_missing_is_never_called_without_it(gw: Gateway) -> None:
    # Were the request sent, the primary would see no Authorization and answer 400 to this check instead.
    answer = gw.chat("unkeyed", {"x-expected-headers": b64("authorization:none")})
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["error"]["code"] == "backend_credentials_unavailable"
    status, text = http_get(f"http://127.0.0.1:{gw.admin_port}/debug/status")
    assert status == 200 and "Secret default/not-there not found" in text


def test_a_rule_falls_back_past_a_backend_whose_key_is_unusable(gw: Gateway) -> None:
    # Envoy would not retry the upstream phase's refusal, so the translation leaves that backend out of the rule.
    answer = gw.chat("unkeyed-first", {"x-expected-testupstream-id": "secondary"})
    assert answer.status_code == 200, answer.text
    status, text = http_get(f"http://127.0.0.1:{gw.admin_port}/debug/status")
    assert status == 200 and "AIServiceBackend unkeyed left out" in text


def test_a_rotated_key_is_used_without_a_restart(gw: Gateway) -> None:
    rotated = API_KEY + "-rotated"
    expect_rotated = {"x-expected-headers": b64(f"authorization:Bearer {rotated}")}
    assert gw.chat("keyed", expect_rotated).status_code == 400  # still the old key
    gw.write_manifests(rotated)
    try:
        eventually(lambda: gw.chat("keyed", expect_rotated).status_code == 200, "rotated key in use")
    finally:
        gw.write_manifests(API_KEY)
        expect_first = {"x-expected-headers": b64(f"authorization:Bearer {API_KEY}")}
        eventually(lambda: gw.chat("keyed", expect_first).status_code == 200, "first key back")


def test_a_large_body_is_rewritten_whole(gw: Gateway) -> None:
    content = "lorem ipsum " * 250_000  # 3 MB: far past Envoy's default 1 MiB buffers
    sent = {"model": "override-me", "messages": [{"role": "user", "content": content}]}
    length = len(compact({**sent, "model": "pinned-model"}))
    answer = request(
        gw.url, "POST", "/v1/chat/completions", compact(sent), {"x-expected-headers": b64(f"content-length:{length}")}
    )
    assert answer.status_code == 200, answer.text[:300]
    assert answer.headers["x-model"] == "pinned-model"


def test_a_failing_primary_falls_back_to_the_secondary_with_its_settings(gw: Gateway) -> None:
    retries_before = asyncio.run(gw.envoy.stat_total("upstream_rq_retry_success"))
    answer = request(gw.url, "POST", "/v1/chat/completions", compact(FALLBACK_REQUEST))
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-testupstream-id"] == "secondary"
    assert answer.headers["x-model"] == "secondary-model"
    # The primary was tried first: its 503 was retried, and the retry succeeded.
    assert asyncio.run(gw.envoy.stat_total("upstream_rq_retry_success")) == retries_before + 1


def test_token_metrics_add_up_over_a_known_workload(gw: Gateway) -> None:
    usage = {"prompt_tokens": 7, "completion_tokens": 11, "total_tokens": 18}
    reply = compact({"id": "x", "object": "chat.completion", "model": "counted-v1", "choices": [], "usage": usage})
    labels = {"gen_ai_request_model": "counted", "gen_ai_response_model": "counted-v1"}
    before = {
        kind: metric(
            http_get(f"http://127.0.0.1:{gw.admin_port}/metrics")[1],
            "gen_ai_client_token_usage_sum",
            gen_ai_token_type=kind,
            **labels,
        )
        for kind in ("input", "output")
    }
    for _ in range(5):
        answer = gw.chat("counted", {"x-response-body": b64(reply)})
        assert answer.status_code == 200 and answer.json()["usage"] == usage

    def sums() -> dict[str, float]:
        text = http_get(f"http://127.0.0.1:{gw.admin_port}/metrics")[1]
        return {k: metric(text, "gen_ai_client_token_usage_sum", gen_ai_token_type=k, **labels) for k in before}

    eventually(lambda: sums() == {"input": before["input"] + 35, "output": before["output"] + 55}, "token sums")
