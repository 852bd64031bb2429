"""The upstream phase: per-(rule, backend) settings, API keys, attempt isolation, clusters, routes, and replies.

Settings are resolved from AIGatewayRoute backendRefs, AIServiceBackend mutations and BackendSecurityPolicy keys
(translators/upstream.py), flag the clusters that run the upstream ext_proc filter, and become ready-made ext_proc
replies (xds_server/extproc/upstream.py). Credentials must never show in a repr, a condition or rendered output.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import orjson
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from google.protobuf import struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from testing.ports import free_port
from translators.gatewayapi import translate
from translators.ir import (
    ApiKey,
    ApiSchema,
    BackendSettingsIR,
    ClusterIR,
    Condition,
    ConditionStatus,
    DirectAction,
    Discovery,
    Endpoint,
    EndpointGroup,
    ForwardAction,
    RouteIR,
    SchemaIR,
    TokenKind,
    TranslateOptions,
    Translation,
)
from translators.loader import ResourceSet, load_texts
from translators.runtime import runtime_tables
from translators.upstream import isolate_attempts
from translators.xds.clusters import HTTP_PROTOCOL_OPTIONS, cluster
from translators.xds.names import (
    BACKEND_ATTRIBUTE,
    EXTPROC_ATTRIBUTES_KEY,
    RULE_ATTRIBUTE,
    UPSTREAM_CODEC_FILTER,
    UPSTREAM_SETTINGS_FILTER,
    UPSTREAM_SETTINGS_METADATA,
    UPSTREAM_SETTINGS_MODE,
    UPSTREAM_TRANSLATION_MODE,
)
from translators.xds.render import translation_dict
from translators.xds.routes import PREVIOUS_PRIORITIES, route
from xds_server.control_plane import ControlPlane
from xds_server.extproc.protocol import PASS_THROUGH, Mode
from xds_server.extproc.upstream import NO_SETTINGS, UpstreamPlan, UpstreamPlans
from xds_server.serve import start_extproc
from xds_server.xds.cache import SnapshotCache
from xds_server.xds.streams import ClientRegistry

Doc = dict[str, Any]
KEY = "sk-live-UNIQUE-7f3a9c2e"  # a credential: must never appear in any repr, message or rendered output
AIGW = "aigateway.envoyproxy.io/v1beta1"
RULE0 = "aigatewayroute/default/llm/rule/0"


def _doc(api_version: str, kind: str, name: str, **fields: Any) -> Doc:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}, **fields}


def _gateway() -> list[Doc]:
    gateway_class = _doc(
        "gateway.networking.k8s.io/v1",
        "GatewayClass",
        "eg",
        spec={"controllerName": "gateway.envoyproxy.io/gatewayclass-controller"},
    )
    listeners = [{"name": "http", "protocol": "HTTP", "port": 80}]
    gateway = _doc(
        "gateway.networking.k8s.io/v1", "Gateway", "gw", spec={"gatewayClassName": "eg", "listeners": listeners}
    )
    return [gateway_class, gateway]


def _backend(name: str, address: str = "127.0.10.1", **spec: Any) -> list[Doc]:
    """An AIServiceBackend (with extra spec fields such as headerMutation) and the Backend it points at."""
    backend_ref = {"group": "gateway.envoyproxy.io", "kind": "Backend", "name": name}
    ai_spec = {"schema": {"name": "OpenAI"}, "backendRef": backend_ref}
    backend = _doc(
        "gateway.envoyproxy.io/v1alpha1",
        "Backend",
        name,
        spec={"endpoints": [{"ip": {"address": address, "port": 80}}]},
    )
    return [_doc(AIGW, "AIServiceBackend", name, spec={**ai_spec, **spec}), backend]


def _route(*rules: list[Doc]) -> Doc:
    """An AIGatewayRoute whose rule i matches model `m<i>` and sends to the given backendRefs."""
    spec_rules = [
        {"matches": [{"headers": [{"type": "Exact", "name": "x-ai-eg-model", "value": f"m{i}"}]}], "backendRefs": refs}
        for i, refs in enumerate(rules)
    ]
    return _doc(AIGW, "AIGatewayRoute", "llm", spec={"parentRefs": [{"name": "gw"}], "rules": spec_rules})


def _policy(name: str, type_: str, secret: str | None, target: str, created: str | None = None) -> Doc:
    target_ref = {"group": "aigateway.envoyproxy.io", "kind": "AIServiceBackend", "name": target}
    spec: Doc = {"type": type_, "targetRefs": [target_ref]}
    if type_ == "AzureCredentials":
        spec["azureCredentials"] = {"clientID": "app-1", "tenantID": "tenant-1", "clientSecretRef": {"name": secret}}
    elif type_ == "GCPCredentials":
        spec["gcpCredentials"] = {
            "projectName": "proj",
            "region": "us-east5",
            "credentialsFile": {"secretRef": {"name": secret}},
        }
    elif type_ == "AWSCredentials":  # with a Secret: a credentials file; without: OIDC exchange (not supported)
        source = (
            {"credentialsFile": {"secretRef": {"name": secret}}} if secret is not None else {"oidcExchangeToken": {}}
        )
        spec["awsCredentials"] = {"region": "us-east-1", **source}
    elif secret is not None:
        block = {"APIKey": "apiKey", "AzureAPIKey": "azureAPIKey", "AnthropicAPIKey": "anthropicAPIKey"}[type_]
        spec[block] = {"secretRef": {"name": secret}}
    policy = _doc(AIGW, "BackendSecurityPolicy", name, spec=spec)
    if created is not None:
        policy["metadata"]["creationTimestamp"] = created
    return policy


def _secret(name: str, data: dict[str, str] | None = None, string_data: dict[str, str] | None = None) -> Doc:
    secret = _doc("v1", "Secret", name)
    if data is not None:
        secret["data"] = data
    if string_data is not None:
        secret["stringData"] = string_data
    return secret


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _load(docs: list[Doc]) -> ResourceSet:
    resources = load_texts([("test.yaml", yaml.safe_dump_all(docs))])
    assert resources.errors == ()
    return resources


def _translate(*docs: Doc) -> Translation:
    return translate(_load([*_gateway(), *docs]))


def _settings(translation: Translation, backend: str, rule: str = RULE0) -> BackendSettingsIR:
    [found] = [
        s for s in translation.backend_settings if s.rule == rule and s.backend == f"aiservicebackend/default/{backend}"
    ]
    return found


def _condition(translation: Translation, kind: str, name: str, type_: str = "Accepted") -> Condition:
    [status] = [s for s in translation.statuses if s.ref.kind == kind and s.ref.name == name]
    [condition] = [c for c in status.conditions if c.type == type_]
    return condition


def _clusters(translation: Translation) -> dict[str, ClusterIR]:
    [gateway] = translation.gateways
    return {c.name: c for c in gateway.clusters}


def _routes(translation: Translation) -> dict[str, RouteIR]:
    [gateway] = translation.gateways
    return {r.rule: r for listener in gateway.listeners for r in listener.routes if r.rule}


def _keyed(policy_type: str, secret: Doc) -> list[Doc]:
    """Backend `a`, sent to by rule 0, with a policy `pol` of `policy_type` reading `secret` (named `key`)."""
    return [_route([{"name": "a"}]), *_backend("a"), _policy("pol", policy_type, "key", "a"), secret]


def _headers_of(reply: pb.ProcessingResponse) -> tuple[dict[str, bytes], list[str]]:
    mutation = reply.request_headers.response.header_mutation
    for option in mutation.set_headers:
        assert option.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    return {o.header.key: o.header.raw_value for o in mutation.set_headers}, list(mutation.remove_headers)


# --- merge precedence ---


def test_backend_ref_header_wins_over_backend_case_insensitively_and_names_are_lowercased() -> None:
    own = {"set": [{"name": "X-Tenant", "value": "backend"}, {"name": "X-Region", "value": "eu"}]}
    ref = {"name": "a", "headerMutation": {"set": [{"name": "x-TENANT", "value": "route"}]}}
    translation = _translate(_route([ref], [{"name": "a"}]), *_backend("a", headerMutation=own))
    assert _settings(translation, "a").set_headers == (("x-region", "eu"), ("x-tenant", "route"))
    # The other rule has no backendRef settings: only the backend's own, still lowercased.
    rule1 = _settings(translation, "a", "aigatewayroute/default/llm/rule/1")
    assert rule1.set_headers == (("x-region", "eu"), ("x-tenant", "backend"))


def test_a_header_set_at_one_level_and_removed_at_the_other_follows_the_backend_ref() -> None:
    own = {"set": [{"name": "X-Set-By-Backend", "value": "1"}], "remove": ["X-Removed-By-Backend"]}
    ref_mutation = {"set": [{"name": "x-removed-by-backend", "value": "2"}], "remove": ["x-set-by-BACKEND"]}
    translation = _translate(
        _route([{"name": "a", "headerMutation": ref_mutation}]), *_backend("a", headerMutation=own)
    )
    found = _settings(translation, "a")
    assert found.set_headers == (("x-removed-by-backend", "2"),)
    assert found.remove_headers == ("x-set-by-backend",)


def test_body_fields_follow_the_backend_ref_and_model_name_override_is_carried() -> None:
    own = {
        "set": [{"path": "temperature", "value": "0.2"}, {"path": "top_p", "value": "0.5"}],
        "remove": ["logit_bias", "seed"],
    }
    ref = {
        "name": "a",
        "modelNameOverride": "gpt-4o-mini",
        "bodyMutation": {
            "set": [{"path": "temperature", "value": "0.9"}, {"path": "seed", "value": "7"}],
            "remove": ["top_p"],
        },
    }
    translation = _translate(_route([ref], [{"name": "a"}]), *_backend("a", bodyMutation=own))
    found = _settings(translation, "a")
    assert found.model_name_override == "gpt-4o-mini"
    assert found.set_fields == (("seed", "7"), ("temperature", "0.9"))
    assert found.remove_fields == ("logit_bias", "top_p")
    assert found.changes_body
    plain = _settings(translation, "a", "aigatewayroute/default/llm/rule/1")
    assert plain.model_name_override is None  # the override belongs to rule 0's backendRef only
    assert plain.set_fields == (("temperature", "0.2"), ("top_p", "0.5"))


# --- API keys ---


@pytest.mark.parametrize(
    ("policy_type", "header", "value"),
    [
        ("APIKey", "authorization", f"Bearer {KEY}"),
        ("AzureAPIKey", "api-key", KEY),
        ("AnthropicAPIKey", "x-api-key", KEY),
    ],
)
@pytest.mark.parametrize("source", ["data", "stringData"])
def test_api_key_goes_in_the_policy_types_header_with_trailing_newline_stripped(
    policy_type: str, header: str, value: str, source: str
) -> None:
    secret = (
        _secret("key", data={"apiKey": _b64(KEY + "\n")})
        if source == "data"
        else _secret("key", string_data={"apiKey": KEY + "\n"})
    )
    translation = _translate(*_keyed(policy_type, secret))
    found = _settings(translation, "a")
    assert found.api_key == ApiKey(header, value)
    assert found.credential_error is None
    condition = _condition(translation, "BackendSecurityPolicy", "pol")
    assert (condition.status, condition.reason) == ("True", "Accepted")


@pytest.mark.parametrize(
    "own",
    [{"set": [{"name": "Authorization", "value": "Bearer from-mutation"}]}, {"remove": ["Authorization"]}],
    ids=["set", "remove"],
)
def test_the_credential_wins_over_a_mutation_of_its_header(own: Doc) -> None:
    ref = {"name": "a", "headerMutation": {"set": [{"name": "x-keep", "value": "1"}]}}
    translation = _translate(
        _route([ref]),
        *_backend("a", headerMutation=own),
        _policy("pol", "APIKey", "key", "a"),
        _secret("key", string_data={"apiKey": KEY}),
    )
    found = _settings(translation, "a")
    assert found.api_key == ApiKey("authorization", f"Bearer {KEY}")
    assert found.set_headers == (("x-keep", "1"),)
    assert found.remove_headers == ()


@pytest.mark.parametrize(
    ("extra", "policy", "reason"),
    [
        ([], _policy("pol", "APIKey", "key", "a"), "SecretNotFound"),
        ([_secret("key", data={"other": _b64(KEY)})], _policy("pol", "APIKey", "key", "a"), "InvalidSecret"),
        ([_secret("key", data={"apiKey": "*" + _b64(KEY)})], _policy("pol", "APIKey", "key", "a"), "InvalidSecret"),
        ([_secret("key", string_data={"apiKey": "  \n"})], _policy("pol", "APIKey", "key", "a"), "InvalidSecret"),
        ([], _policy("pol", "AWSCredentials", None, "a"), "Unsupported"),
    ],
    ids=["missing-secret", "missing-apiKey", "not-strict-base64", "blank-key", "aws-credentials"],
)
def test_an_unusable_policy_refuses_the_backends_requests_and_says_why(
    extra: list[Doc], policy: Doc, reason: str
) -> None:
    translation = _translate(_route([{"name": "a"}]), *_backend("a"), policy, *extra)
    found = _settings(translation, "a")
    assert found.api_key is None
    assert found.credential_error is not None and "default/pol" in found.credential_error
    condition = _condition(translation, "BackendSecurityPolicy", "pol")
    assert (condition.status, condition.reason) == ("False", reason)


def test_of_two_policies_on_one_backend_the_older_wins_and_the_other_is_conflicted() -> None:
    translation = _translate(
        _route([{"name": "a"}]),
        *_backend("a"),
        # The newer policy comes first: creation time decides, not document order or name.
        _policy("a-newer", "AzureAPIKey", "newer-key", "a", created="2026-02-01T00:00:00Z"),
        _policy("z-older", "APIKey", "older-key", "a", created="2026-01-01T00:00:00Z"),
        _secret("newer-key", string_data={"apiKey": "newer-value"}),
        _secret("older-key", string_data={"apiKey": KEY}),
    )
    assert _settings(translation, "a").api_key == ApiKey("authorization", f"Bearer {KEY}")
    conflicted = _condition(translation, "BackendSecurityPolicy", "a-newer")
    assert (conflicted.status, conflicted.reason) == ("False", "Conflicted")
    assert "z-older" in conflicted.message
    older = _condition(translation, "BackendSecurityPolicy", "z-older")
    assert (older.status, older.reason) == ("True", "Accepted")


# --- secrets never leak ---


def test_the_key_never_shows_in_reprs_conditions_or_rendered_output() -> None:
    unusable = "bad\x01" + KEY  # a control character makes it unusable: its message must not quote it either
    resources = _load(
        [
            *_gateway(),
            _route([{"name": "a", "priority": 0}, {"name": "b", "priority": 1}]),
            *_backend("a"),
            *_backend("b", "127.0.10.2"),
            _policy("pol", "APIKey", "key", "a"),
            _secret("key", data={"apiKey": _b64(KEY + "\n")}),
            _policy("bad", "AnthropicAPIKey", "bad-key", "b"),
            _secret("bad-key", string_data={"apiKey": unusable}),
        ]
    )
    translation = translate(resources)
    found = _settings(translation, "a")
    assert found.api_key is not None and found.api_key.value == f"Bearer {KEY}"  # it is there, just never shown
    assert _condition(translation, "BackendSecurityPolicy", "bad").reason == "InvalidSecret"
    tables = runtime_tables(translation)
    plans = {key: UpstreamPlans(tables.backend_settings).get(key) for key in tables.backend_settings}
    rendered = translation_dict(translation, resources.errors, TranslateOptions())
    shown = [
        repr(translation),
        repr(found),
        repr(tables),
        repr(plans),
        *(repr(p) for p in plans.values()),
        yaml.safe_dump(rendered),
        json.dumps(rendered),
        *(c.message for s in translation.statuses for c in s.conditions),
    ]
    for text in shown:
        assert KEY not in text
    assert "<redacted>" in yaml.safe_dump(rendered)


# --- attempt isolation ---

HEADER_NAMES = ["x-a", "x-b", "x-c", "authorization", "api-key", "x-api-key"]


@st.composite
def _backend_settings(draw: st.DrawFn, backend: str) -> BackendSettingsIR:
    """Settings as UpstreamSettings makes them: set, removed and credential headers are disjoint."""
    api_key = draw(st.none() | st.sampled_from(["authorization", "api-key", "x-api-key"]).map(lambda h: ApiKey(h, KEY)))
    taken = {api_key.header} if api_key is not None else set()
    # Each other header name is set, removed or left alone.
    fate = {n: draw(st.sampled_from(["set", "remove", "none"])) for n in HEADER_NAMES if n not in taken}
    set_names = [n for n, f in fate.items() if f == "set"]
    removed = [n for n, f in fate.items() if f == "remove"]
    return BackendSettingsIR(
        rule=RULE0,
        backend=backend,
        model_name_override=draw(st.none() | st.just("override")),
        set_headers=tuple(sorted((n, "v") for n in set_names)),
        remove_headers=tuple(sorted(removed)),
        api_key=api_key,
    )


@st.composite
def _rule_settings(draw: st.DrawFn) -> tuple[list[str], dict[str, BackendSettingsIR]]:
    backends = [f"aiservicebackend/default/b{i}" for i in range(draw(st.integers(2, 4)))]
    with_settings = draw(st.lists(st.sampled_from(backends), unique=True))
    return backends, {b: draw(_backend_settings(b)) for b in with_settings}


def _names(settings: BackendSettingsIR) -> set[str]:
    return {n for n, _ in settings.set_headers} | ({settings.api_key.header} if settings.api_key else set())


@settings(max_examples=150, deadline=None)
@given(_rule_settings())
def test_each_backend_removes_the_headers_only_other_backends_set(
    rule: tuple[list[str], dict[str, BackendSettingsIR]],
) -> None:
    backends, found = rule
    isolated = isolate_attempts(RULE0, backends, found)
    if not found:
        assert isolated == ()
        return
    assert [s.backend for s in isolated] == backends  # every backend gets an entry, settings or not
    for result in isolated:
        own = found.get(result.backend, BackendSettingsIR(rule=RULE0, backend=result.backend))
        mine = _names(own)
        assert _names(result) == mine
        assert not mine & set(result.remove_headers)  # never removes what it sets itself
        assert set(own.remove_headers) <= set(result.remove_headers)
        assert len(set(result.remove_headers)) == len(result.remove_headers)
        for other, theirs in found.items():
            if other != result.backend:
                assert _names(theirs) - mine <= set(result.remove_headers)
        # Nothing else about the backend's settings changes.
        assert (result.rule, result.api_key, result.set_headers, result.model_name_override) == (
            RULE0,
            own.api_key,
            own.set_headers,
            own.model_name_override,
        )


def test_a_single_backend_rule_keeps_its_settings_unchanged() -> None:
    only = BackendSettingsIR(
        RULE0, "aiservicebackend/default/a", set_headers=(("x-a", "1"),), api_key=ApiKey("api-key", KEY)
    )
    assert isolate_attempts(RULE0, ["aiservicebackend/default/a"], {only.backend: only}) == (only,)


def test_a_backend_without_settings_gets_one_that_removes_the_others_credential() -> None:
    translation = _translate(
        _route([{"name": "a"}, {"name": "plain", "priority": 1}]),
        *_backend("a"),
        *_backend("plain", "127.0.10.2"),
        _policy("pol", "AzureAPIKey", "key", "a"),
        _secret("key", string_data={"apiKey": KEY}),
    )
    plain = _settings(translation, "plain")
    assert plain.remove_headers == ("api-key",)
    assert (plain.api_key, plain.set_headers, plain.changes_body) == (None, (), False)


# --- clusters ---


def test_clusters_run_the_upstream_filter_only_for_backends_with_settings() -> None:
    translation = _translate(
        _route(
            [{"name": "own"}],
            [{"name": "ref", "modelNameOverride": "m"}],
            [{"name": "keyed"}],
            [{"name": "plain"}],
            [{"name": "plain"}, {"name": "own", "priority": 1}],
            [{"name": "plain"}, {"name": "plain2"}],
        ),
        *_backend("own", headerMutation={"remove": ["x-debug"]}),
        *_backend("ref", "127.0.10.2"),
        *_backend("keyed", "127.0.10.3"),
        *_backend("plain", "127.0.10.4"),
        *_backend("plain2", "127.0.10.5"),
        _policy("pol", "AWSCredentials", None, "keyed"),  # even an unusable policy: its requests must be refused
    )
    clusters = _clusters(translation)
    flags = {name.removeprefix("aiservicebackend/default/"): c.upstream_settings for name, c in clusters.items()}
    # A rule to one backend that leaves the body alone is Envoy's own (no filter); a body change or an unusable key
    # takes the service, on a cluster of its own.
    assert {k: v for k, v in flags.items() if not k.startswith("weighted/")} == {
        "own": False,
        "ref/upstream-settings": True,
        "keyed/upstream-settings": True,
        "plain": False,  # plain2 is only in weighted clusters
    }
    routes = _routes(translation)
    mixed = clusters[routes["aigatewayroute/default/llm/rule/4"].action.cluster]  # type: ignore[union-attr]
    both_plain = clusters[routes["aigatewayroute/default/llm/rule/5"].action.cluster]  # type: ignore[union-attr]
    assert mixed.name.startswith("weighted/") and mixed.upstream_settings
    assert both_plain.name.startswith("weighted/") and not both_plain.upstream_settings


def _cluster_ir(upstream_settings: bool, http2: bool = False) -> ClusterIR:
    group = EndpointGroup("aiservicebackend/default/a", (Endpoint("10.0.0.1", 80),))
    return ClusterIR(
        "aiservicebackend/default/a", Discovery.STATIC, (group,), http2=http2, upstream_settings=upstream_settings
    )


def _http_filters(built: Any) -> list[str] | None:
    if HTTP_PROTOCOL_OPTIONS not in built.typed_extension_protocol_options:
        return None
    options = http_protocol_options_pb2.HttpProtocolOptions()
    assert built.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Unpack(options)
    return [f.name for f in options.http_filters]


def test_envoy_cluster_has_the_upstream_filters_and_buffer_limit_only_when_flagged() -> None:
    flagged = cluster(_cluster_ir(True), 12345)
    assert _http_filters(flagged) == [UPSTREAM_SETTINGS_FILTER, UPSTREAM_CODEC_FILTER]
    assert flagged.per_connection_buffer_limit_bytes.value == 12345
    plain = cluster(_cluster_ir(False), 12345)
    assert _http_filters(plain) is None
    assert not plain.HasField("per_connection_buffer_limit_bytes")
    http2 = cluster(_cluster_ir(False, http2=True), 12345)
    assert _http_filters(http2) == []  # protocol options for HTTP/2, but no upstream filters
    assert not http2.HasField("per_connection_buffer_limit_bytes")


# --- routes: priority fallback ---


def test_rules_with_several_priorities_retry_on_the_next_priority_and_others_do_not() -> None:
    translation = _translate(
        _route(
            [{"name": "a", "priority": 0}, {"name": "b", "priority": 3}, {"name": "c", "priority": 9}],
            [{"name": "a"}, {"name": "b"}],
            [{"name": "a"}],
        ),
        *_backend("a"),
        *_backend("b", "127.0.10.2"),
        *_backend("c", "127.0.10.3"),
    )
    routes = _routes(translation)
    fallback = route(routes[RULE0]).route.retry_policy
    assert fallback.num_retries.value == 2  # two levels below the primary, gaps in the priorities dropped
    assert fallback.retry_priority.name == PREVIOUS_PRIORITIES
    assert list(fallback.retriable_status_codes) == [429]
    for rule in ("aigatewayroute/default/llm/rule/1", "aigatewayroute/default/llm/rule/2"):
        assert not route(routes[rule]).route.HasField("retry_policy")


# --- UpstreamPlan replies ---

BODY_SETTINGS = BackendSettingsIR(
    RULE0,
    "aiservicebackend/default/a",
    model_name_override="claude-sonnet",
    set_fields=(("max_tokens", "1024"), ("metadata", '{"team": "x"}')),
    remove_fields=("logit_bias", "absent"),
)


def test_body_reply_overrides_the_model_sets_and_removes_fields_and_fixes_content_length() -> None:
    body = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"1": 2}})
    reply = UpstreamPlan(BODY_SETTINGS).body_reply(body)
    common = reply.request_body.response
    rewritten = common.body_mutation.body
    assert orjson.loads(rewritten) == {
        "model": "claude-sonnet",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1024,  # a number, not the text "1024"
        "metadata": {"team": "x"},
    }
    assert {h.header.key: h.header.raw_value for h in common.header_mutation.set_headers} == {
        "content-length": str(len(rewritten)).encode()
    }


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"', b""])
def test_body_reply_passes_a_body_it_cannot_edit_through_unchanged(body: bytes) -> None:
    reply = UpstreamPlan(BODY_SETTINGS).body_reply(body)
    assert reply == PASS_THROUGH["request_body"]
    assert not reply.request_body.response.HasField("body_mutation")


def test_headers_only_settings_turn_the_body_off_and_keep_responses_skipped() -> None:
    only_headers = BackendSettingsIR(
        RULE0,
        "aiservicebackend/default/a",
        set_headers=(("x-region", "eu"),),
        remove_headers=("x-debug",),
        api_key=ApiKey("api-key", KEY),
    )
    reply = UpstreamPlan(only_headers).headers_reply
    assert reply.HasField("mode_override")
    assert reply.mode_override.request_body_mode == Mode.NONE
    assert reply.mode_override.response_header_mode == Mode.SKIP  # an override replaces the whole mode
    assert _headers_of(reply) == ({"x-region": b"eu", "api-key": KEY.encode()}, ["x-debug"])


def test_body_changing_settings_leave_the_filters_buffered_body_on_and_the_answer_off() -> None:
    """The answer's phase off too: in a cluster whose filter sees answers (another backend's are translated), an
    attempt that only changes the body must not have its answer buffered by the filter."""
    reply = UpstreamPlan(BODY_SETTINGS).headers_reply
    assert reply.WhichOneof("response") == "request_headers"
    assert reply.mode_override.request_body_mode == Mode.BUFFERED
    assert reply.mode_override.response_header_mode == Mode.SKIP


def test_a_credential_error_answers_503_without_any_key() -> None:
    broken = BackendSettingsIR(
        RULE0,
        "aiservicebackend/default/a",
        set_headers=(("x-token", KEY),),
        api_key=ApiKey("authorization", f"Bearer {KEY}"),
        credential_error="BackendSecurityPolicy default/pol is not usable",
    )
    reply = UpstreamPlan(broken).headers_reply
    assert reply.WhichOneof("response") == "immediate_response"
    assert reply.immediate_response.status.code == 503
    error = orjson.loads(reply.immediate_response.body)["error"]
    assert error["type"] == "server_error"
    assert "default/pol" in error["message"]
    assert KEY.encode() not in reply.SerializeToString()


# --- through a real gRPC server ---


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    port = free_port()
    control_plane = ControlPlane(SnapshotCache(), ClientRegistry())
    docs = [
        *_gateway(),
        _route([{"name": "a", "modelNameOverride": "renamed"}]),
        *_backend("a"),
        _policy("pol", "APIKey", "key", "a"),
        _secret("key", string_data={"apiKey": KEY}),
    ]
    control_plane.apply(control_plane.build(_load(docs)))
    server, picker = await start_extproc(control_plane, TranslateOptions(extproc_port=port))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    await picker.scraper.close()
    await server.stop(grace=None)


def _attempt(rule: str, backend: str, body: bytes) -> Iterator[pb.ProcessingRequest]:
    attributes = struct_pb2.Struct()
    attributes.update({RULE_ATTRIBUTE: rule, BACKEND_ATTRIBUTE: backend})
    headers = pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=":path", raw_value=b"/")]))
    yield pb.ProcessingRequest(request_headers=headers, attributes={EXTPROC_ATTRIBUTES_KEY: attributes})
    yield pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True))


async def test_the_service_answers_each_attempt_with_its_rule_and_backends_settings(channel: grpc.aio.Channel) -> None:
    stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)
    metadata = ((UPSTREAM_SETTINGS_METADATA, "1"),)
    body = b'{"model": "asked"}'

    unknown = _attempt("aigatewayroute/default/llm/rule/7", "aiservicebackend/default/a", body)
    answers = [r async for r in stub.Process(unknown, metadata=metadata)]
    assert answers == [NO_SETTINGS]  # headers only, then nothing more will come: the service ends the stream

    known = _attempt(RULE0, "aiservicebackend/default/a", body)
    headers, body_reply = [r async for r in stub.Process(known, metadata=metadata)]
    assert _headers_of(headers) == ({"authorization": f"Bearer {KEY}".encode()}, [])
    assert headers.mode_override.request_body_mode == Mode.BUFFERED
    assert orjson.loads(body_reply.request_body.response.body_mutation.body) == {"model": "renamed"}


# --- edge cases found in review ---


def test_integers_past_64_bits_survive_the_rewrite() -> None:
    huge = 123456789012345678901234567890
    reply = UpstreamPlan(BackendSettingsIR(RULE0, "b", model_name_override="m")).body_reply(
        json.dumps({"model": "x", "seed": huge, "text": "é"}).encode()
    )
    rewritten = reply.request_body.response.body_mutation.body
    assert json.loads(rewritten) == {"model": "m", "seed": huge, "text": "é"}


def test_a_model_name_override_lands_even_when_a_mutation_removes_model() -> None:
    settings = BackendSettingsIR(RULE0, "b", model_name_override="pinned", remove_fields=("model", "user"))
    reply = UpstreamPlan(settings).body_reply(b'{"model":"x","user":"u","n":1}')
    assert orjson.loads(reply.request_body.response.body_mutation.body) == {"n": 1, "model": "pinned"}


def test_a_header_value_with_a_control_character_is_an_error_for_its_object() -> None:
    docs = [*_gateway(), *_backend("a", headerMutation={"set": [{"name": "x-a", "value": "bad\r\nvalue"}]})]
    resources = load_texts([("test.yaml", yaml.safe_dump_all(docs))])
    assert [(e.kind, e.name) for e in resources.errors] == [("AIServiceBackend", "a")]
    assert "headerMutation" in resources.errors[0].field


def test_a_backend_of_another_api_is_sent_requests_through_the_service_which_sees_its_answers() -> None:
    """An Anthropic or Azure OpenAI backend needs its requests rewritten (and Anthropic's answers translated) on every
    attempt: it has settings even with nothing else set, and its cluster runs the service with the answer's phase."""
    translation = _translate(
        _route(
            [{"name": "claude"}], [{"name": "azure"}], [{"name": "a", "weight": 1}, {"name": "claude", "weight": 1}]
        ),
        *_backend("claude", schema={"name": "Anthropic", "version": "2023-06-01"}),
        *_backend("azure", schema={"name": "AzureOpenAI", "version": "2024-10-21"}),
        *_backend("a"),
    )
    assert _settings(translation, "claude").schema == SchemaIR(ApiSchema.ANTHROPIC, "2023-06-01")
    azure = _settings(translation, "azure", RULE0.replace("rule/0", "rule/1"))
    assert azure.schema == SchemaIR(ApiSchema.AZURE_OPENAI, "2024-10-21")
    for name in ("claude", "azure"):
        assert _condition(translation, "AIServiceBackend", name).status is ConditionStatus.TRUE
    clusters = _clusters(translation)
    claude = clusters["aiservicebackend/default/claude/upstream-settings"]
    assert claude.upstream_settings and claude.translates
    [weighted] = [c for name, c in clusters.items() if name.startswith("weighted/")]
    assert weighted.upstream_settings and weighted.translates  # one backend of the two translates: the filter sees all
    built = cluster(claude, 1 << 20)
    options = http_protocol_options_pb2.HttpProtocolOptions()
    built.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Unpack(options)
    [service, _codec] = options.http_filters
    assert service.name == UPSTREAM_SETTINGS_FILTER
    config = ext_proc_pb2.ExternalProcessor()
    service.typed_config.Unpack(config)
    assert config.processing_mode == UPSTREAM_TRANSLATION_MODE
    plain = cluster(
        _clusters(_translate(_route([{"name": "a"}]), *_backend("a", bodyMutation={"remove": ["n"]})))[
            "aiservicebackend/default/a/upstream-settings"
        ],
        1 << 20,
    )
    plain.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Unpack(options)
    options.http_filters[0].typed_config.Unpack(config)
    assert config.processing_mode == UPSTREAM_SETTINGS_MODE  # no answer phase where nothing is translated


AWS_FILE = "[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG\n"


def test_a_bedrock_backend_is_signed_with_the_credentials_file_of_its_aws_policy() -> None:
    translation = _translate(
        _route([{"name": "a"}]),
        *_backend("a", schema={"name": "AWSBedrock"}),
        _policy("pol", "AWSCredentials", "aws", "a"),
        _secret("aws", string_data={"credentials": AWS_FILE + "aws_session_token = FwoGZXIvYXdzE\n"}),
    )
    found = _settings(translation, "a")
    assert found.credential_error is None and found.api_key is None and found.aws is not None
    assert (found.aws.access_key_id, found.aws.region, found.aws.service) == ("AKIDEXAMPLE", "us-east-1", "bedrock")
    assert found.aws.session_token == "FwoGZXIvYXdzE"
    assert "wJalrXUtnFEMI" not in repr(found) and "FwoGZXIvYXdzE" not in repr(found)
    assert "wJalrXUtnFEMI" not in json.dumps(translation_dict(translation, (), TranslateOptions()), default=str)
    assert _condition(translation, "BackendSecurityPolicy", "pol").status is ConditionStatus.TRUE
    assert _clusters(translation)["aiservicebackend/default/a/upstream-settings"].translates


@pytest.mark.parametrize(
    ("docs", "said"),
    [
        ([], "speaks AWSBedrock, whose requests must be signed: it needs a policy of type AWSCredentials"),
        ([_policy("pol", "APIKey", "key", "a"), _secret("key", string_data={"apiKey": KEY})], "AWSCredentials"),
        (
            [_policy("pol", "AWSCredentials", "aws", "a"), _secret("aws", string_data={"credentials": "[other]\n"})],
            "no [default] profile",
        ),
        (
            [_policy("pol", "AWSCredentials", "aws", "a"), _secret("aws", string_data={"credentials": "[default]\n"})],
            "profile [default] lacks aws_access_key_id and aws_secret_access_key",
        ),
    ],
    ids=["no-policy", "api-key-policy", "no-profile", "no-keys"],
)
def test_a_bedrock_backend_that_cannot_sign_is_refused_with_the_reason(docs: list[Doc], said: str) -> None:
    translation = _translate(_route([{"name": "a"}]), *_backend("a", schema={"name": "AWSBedrock"}), *docs)
    found = _settings(translation, "a")
    assert found.aws is None and found.credential_error is not None
    conditions = [
        c.message
        for s in translation.statuses
        if s.ref.name in ("a", "pol") and s.ref.kind in ("AIServiceBackend", "BackendSecurityPolicy")
        for c in s.conditions
        if c.status is ConditionStatus.FALSE
    ]
    assert any(said in message for message in conditions), conditions


def test_aws_credentials_on_a_backend_of_another_api_are_refused() -> None:
    translation = _translate(
        _route([{"name": "a"}]),
        *_backend("a"),
        _policy("pol", "AWSCredentials", "aws", "a"),
        _secret("aws", string_data={"credentials": AWS_FILE}),
    )
    assert "AWS backends (AWSBedrock, AWSAnthropic) only" in (_settings(translation, "a").credential_error or "")
    assert "AWS backends (AWSBedrock, AWSAnthropic) only" in _condition(translation, "AIServiceBackend", "a").message


def test_azure_credentials_give_an_azure_backend_a_token_source_never_shown() -> None:
    translation = _translate(
        _route([{"name": "a"}]),
        *_backend("a", schema={"name": "AzureOpenAI"}),
        _policy("pol", "AzureCredentials", "entra", "a"),
        _secret("entra", string_data={"client-secret": "entra-not-a-real-secret"}),
    )
    found = _settings(translation, "a")
    assert found.credential_error is None and found.token is not None and found.needs_service
    assert (found.token.kind, found.token.key, found.token.client_id, found.token.tenant_id) == (
        TokenKind.AZURE_CLIENT_SECRET,
        "default/pol",
        "app-1",
        "tenant-1",
    )
    assert "entra-not-a-real-secret" not in repr(found)
    assert "entra-not-a-real-secret" not in json.dumps(
        translation_dict(translation, (), TranslateOptions()), default=str
    )
    assert "aiservicebackend/default/a/upstream-settings" in _clusters(translation)  # the service adds the token


@pytest.mark.parametrize(
    ("key_file", "said"),
    [
        ("{not json", "not JSON"),
        ('{"type": "authorized_user"}', 'its "type" is not "service_account"'),
        ('{"type": "service_account", "client_email": "a@b"}', "no private_key"),
    ],
)
def test_a_gcp_key_file_that_cannot_mint_is_refused_with_the_reason_and_never_quoted(key_file: str, said: str) -> None:
    translation = _translate(
        _route([{"name": "a"}]),
        *_backend("a", schema={"name": "AzureOpenAI"}),
        _policy("pol", "GCPCredentials", "sa", "a"),
        _secret("sa", string_data={"service_account.json": key_file}),
    )
    condition = _condition(translation, "BackendSecurityPolicy", "pol")
    assert condition.status is ConditionStatus.FALSE and said in condition.message and key_file not in condition.message


@pytest.mark.parametrize(
    ("schema", "said"),
    [
        ({"name": "Cohere"}, "schema Cohere is not translated by this controller yet"),
        ({"name": "OpenAI", "prefix": "/openai/v2"}, "schema prefix '/openai/v2' is not supported"),
        ({"name": "OpenAI", "version": "2024-10-21"}, "schema OpenAI has no version"),
        ({"name": "AzureOpenAI", "prefix": "v1"}, "schema AzureOpenAI has no prefix"),
        ({"name": "Anthropic", "prefix": "v1/extra"}, "schema prefix 'v1/extra' is not one path segment"),
    ],
)
def test_a_backend_whose_requests_would_need_translating_is_refused_not_sent_them(
    schema: dict[str, str], said: str
) -> None:
    """Requests go out in OpenAI's format on the client's path: a backend of another schema (or path prefix) would
    fail every one, so it is refused with the reason, and its rule answers 500 instead of forwarding."""
    translation = _translate(_route([{"name": "a"}], [{"name": "b"}]), *_backend("a", schema=schema), *_backend("b"))
    accepted = _condition(translation, "AIServiceBackend", "a")
    assert accepted.status is ConditionStatus.FALSE and said in accepted.message
    assert _condition(translation, "AIServiceBackend", "b").status is ConditionStatus.TRUE
    routes = _routes(translation)
    refused = routes[RULE0].action
    assert isinstance(refused, DirectAction) and refused.status == 500
    assert isinstance(routes[RULE0.replace("rule/0", "rule/1")].action, ForwardAction)
    resolved = _condition(translation, "AIGatewayRoute", "llm")
    assert said in resolved.message
