"""The routes a virtual host that routes by model is translated to: the request-side error contract in Envoy's own
routes (order, AI roles, the per-route filter configs each turns on) and `/v1/models` per host; and the listener
around them: its filter chain (the AI filter: model routing and usage, of JSON answers and event streams alike)
and its usage log to the control plane. End to end (with Envoy answering) in e2e/test_model_router.py."""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest
from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.http.dynamic_modules.v3 import dynamic_modules_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import (
    header_mutation_pb2 as early_header_mutation_pb2,
)
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from translators.gatewayapi import translate
from translators.gatewayapi.model_routes import NOT_A_STRING
from translators.ir import (
    AiRole,
    DirectAction,
    ForwardAction,
    HeaderMatchIR,
    HeaderMatchKind,
    JsonReply,
    ListenerIR,
    TranslateOptions,
    Translation,
    VirtualHostIR,
)
from translators.loader import load_texts
from translators.xds import listeners
from translators.xds.ai_listener import STDOUT_LOGGER
from translators.xds.gateway import gateway_resources
from translators.xds.memo import Memo
from translators.xds.model import USAGE_LOG_BATCH_BYTES, USAGE_LOG_FLUSH_MS, ai_filter_config, ai_filter_route_config
from translators.xds.names import (
    AI_FILTER,
    AI_MODULE,
    CONTENT_LENGTH_FILTER,
    ECHO_LIMIT,
    EXTPROC_CLUSTER,
    INTERNAL_HEADER_PREFIXES,
    JSON_BODY_HEADER,
    METERING_METADATA_NAMESPACE,
    MODEL_HEADER,
    MODELS_PATH,
    NOT_A_HEADER_VALUE,
    PICKER_FILTER,
    PICKER_POOL_METADATA,
    ROUTER_FILTER,
    USAGE_RECORD_ATTRIBUTE,
    USAGE_RECORD_LINES,
    XDS_METADATA_NAMESPACE,
)
from translators.xds.routes import route_configuration

GATEWAY = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: eg}
spec: {controllerName: gateway.envoyproxy.io/gatewayclass-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec: {gatewayClassName: eg, listeners: [{name: http, protocol: HTTP, port: 80}]}
---
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIServiceBackend
metadata: {name: a}
spec: {schema: {name: OpenAI}, backendRef: {group: gateway.envoyproxy.io, kind: Backend, name: a}}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {name: a}
spec: {endpoints: [{ip: {address: 127.0.0.1, port: 8080}}]}
"""
# Rule 2 matches two headers, so it takes precedence over rules 0 and 1 (Gateway API: more header matches first).
MANIFESTS = (
    GATEWAY
    + """
---
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIGatewayRoute
metadata: {name: everywhere, creationTimestamp: "2025-01-02T03:04:05Z"}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{headers: [{type: Exact, name: x-ai-eg-model, value: model-a}]}]
    backendRefs: [{name: a}]
  - matches: [{headers: [{type: RegularExpression, name: x-ai-eg-model, value: "llama-.*"}]}]
    backendRefs: [{name: a}]
  - matches: [{headers: [{type: Exact, name: x-ai-eg-model, value: model-g}, {name: x-tier, value: gold}]}]
    backendRefs: [{name: a}]
---
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIGatewayRoute
metadata: {name: team, creationTimestamp: "2025-06-01T00:00:00+00:00"}
spec:
  parentRefs: [{name: gw}]
  hostnames: ["*.team.example"]
  rules:
  - matches: [{headers: [{type: Exact, name: x-ai-eg-model, value: model-t}]}]
    backendRefs: [{name: a}]
  - matches: [{headers: [{type: Exact, name: x-ai-eg-model, value: model-a}]}]
    backendRefs: [{name: a}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: plain}
spec: {gatewayClassName: eg, listeners: [{name: http, protocol: HTTP, port: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web}
spec:
  parentRefs: [{name: plain}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{group: gateway.envoyproxy.io, kind: Backend, name: a}]
"""
)
POOL = """
---
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIGatewayRoute
metadata: {name: pooled}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{headers: [{type: Exact, name: x-ai-eg-model, value: model-p}]}]
    backendRefs: [{group: inference.networking.k8s.io, kind: InferencePool, name: p}]
  - matches: [{headers: [{type: Exact, name: x-ai-eg-model, value: model-a}]}]
    backendRefs: [{name: a}]
---
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: p}
spec:
  targetPorts: [{number: 8000}]
  selector: {matchLabels: {app: p}}
  endpointPickerRef: {name: p-epp, port: {number: 9002}}
"""
EVERYWHERE = "aigatewayroute/default/everywhere/rule/{}/match/0"
TEAM = "aigatewayroute/default/team/rule/{}/match/0"
# The routes after a host's model routes, with the answer each gives (None: it forwards or lists).
TRAILING = [
    ("models", None),
    ("unsupported-path", (404, "unsupported_path")),
    ("no-body", (400, "missing_model")),
    ("model-not-a-string", (400, "invalid_model")),
    ("route-not-found", (404, "model_not_found")),
    ("model-missing", (400, "missing_model")),
    ("entry-unsized", (400, "invalid_json")),
    ("entry", (400, "invalid_json")),
]


def translated(text: str) -> Translation:
    translation = translate(load_texts([("manifests.yaml", text)]))
    errors = [s for s in translation.statuses for c in s.conditions if c.status != "True"]
    assert not errors, errors
    return translation


def listener(translation: Translation, gateway: str = "default/gw") -> ListenerIR:
    [found] = next(g for g in translation.gateways if g.key == gateway).listeners
    return found


def vhost(translation: Translation, domain: str, gateway: str = "default/gw") -> VirtualHostIR:
    return next(v for v in listener(translation, gateway).virtual_hosts if v.domains == (domain,))


def xds_vhost(translation: Translation, domain: str, gateway: str = "default/gw") -> route_components_pb2.VirtualHost:
    config: route_pb2.RouteConfiguration = route_configuration(listener(translation, gateway), Memo()).message
    return next(v for v in config.virtual_hosts if list(v.domains) == [domain])


def unpack(route: route_components_pb2.Route, name: str, message: Message) -> Message:
    """The config a route gives filter `name` (wrapped in a FilterConfig: such filters are off by default)."""
    wrapper = route_components_pb2.FilterConfig()
    assert route.typed_per_filter_config[name].Unpack(wrapper)
    assert not wrapper.is_optional
    assert wrapper.config.Unpack(message), (route.name, name)
    return message


def extproc(route: route_components_pb2.Route, name: str) -> ext_proc_pb2.ExtProcPerRoute:
    found = unpack(route, name, ext_proc_pb2.ExtProcPerRoute())
    assert isinstance(found, ext_proc_pb2.ExtProcPerRoute)
    return found


def envoy_text(text_format: str) -> str:
    """What Envoy answers for a text format that holds no command: `%%` is a `%`, and a lone `%` would start one."""
    assert re.fullmatch(r"([^%]|%%)*", text_format), f"a substitution command in {text_format!r}"
    return text_format.replace("%%", "%")


def models_of(vhost: route_components_pb2.VirtualHost) -> dict[str, object]:
    [route] = [r for r in vhost.routes if r.match.path == MODELS_PATH]
    reply = route.direct_response
    assert reply.status == 200 and reply.body_format.content_type == "application/json"
    document: dict[str, object] = json.loads(envoy_text(reply.body_format.text_format_source.inline_string))
    return document


def listed(vhost: route_components_pb2.VirtualHost) -> list[str]:
    data = models_of(vhost)["data"]
    assert isinstance(data, list)
    return [m["id"] for m in data]


def short(name: str, vhost_name: str) -> str:
    return name.removeprefix(vhost_name + "/")


# --- order and answers ---


def test_routes_go_exact_models_refusals_other_model_routes_then_the_contract_and_the_entry_last() -> None:
    translation = translated(MANIFESTS)
    refusals = ["model-not-a-header-value", "model-too-long"]
    # More header matches first; the refusals before the regex rule, the first that could take a model they refuse.
    everywhere = [EVERYWHERE.format(2), EVERYWHERE.format(0), *refusals, EVERYWHERE.format(1)]
    expected = {
        "*": [*everywhere, *(name for name, _ in TRAILING)],
        # The host's own routes, then those of the wildcard that covers it.
        "*.team.example": [TEAM.format(0), TEAM.format(1), *everywhere, *(name for name, _ in TRAILING)],
    }
    for domain, names in expected.items():
        ir = vhost(translation, domain)
        assert [short(r.name, ir.name) for r in ir.routes] == names
        assert [short(r.name, ir.name) for r in xds_vhost(translation, domain).routes] == names  # kept in xDS


@pytest.mark.parametrize(
    ("match", "refused_first"),
    [
        ("[{type: Exact, name: x-ai-eg-model, value: model-a}]", False),
        ("[{type: Exact, name: X-AI-EG-Model, value: model-a}]", False),
        (f"[{{type: Exact, name: x-ai-eg-model, value: {'m' * 256}}}]", False),
        (f"[{{type: Exact, name: x-ai-eg-model, value: {'m' * 257}}}]", True),  # longer than the refusal's limit
        (f"[{{type: Exact, name: x-ai-eg-model, value: {'é' * 257}}}]", True),  # characters, not bytes
        ("[{type: RegularExpression, name: x-ai-eg-model, value: model-a}]", True),
        ("[{type: Exact, name: x-tier, value: gold}]", True),  # takes any model
    ],
)
def test_the_refusals_come_before_a_rule_that_could_take_a_model_they_refuse(match: str, refused_first: bool) -> None:
    manifests = (
        GATEWAY
        + f"""
---
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIGatewayRoute
metadata: {{name: one}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{headers: {match}}}]
    backendRefs: [{{name: a}}]
"""
    )
    ir = vhost(translated(manifests), "*")
    names = [short(r.name, ir.name) for r in ir.routes]
    rule = "aigatewayroute/default/one/rule/0/match/0"
    refusals = ["model-not-a-header-value", "model-too-long"]
    assert names[:3] == ([*refusals, rule] if refused_first else [rule, *refusals])


def test_each_route_of_the_contract_answers_its_status_and_code() -> None:
    ir = vhost(translated(MANIFESTS), "*")
    by_name = {short(r.name, ir.name): r for r in ir.routes}
    for refusal in ("model-not-a-header-value", "model-too-long"):
        action = by_name[refusal].action
        assert isinstance(action, DirectAction)
        assert (action.status, action.code) == (400, "invalid_model")
        assert "%REQ" not in action.message  # nothing of the model is echoed
    for name, answer in TRAILING:
        action = by_name[name].action
        if answer is None:
            assert isinstance(action, JsonReply) and action.status == 200
        else:
            assert isinstance(action, DirectAction), name
            assert (action.status, action.code, action.error_type) == (*answer, "invalid_request_error")
    route_not_found = by_name["route-not-found"].action
    assert isinstance(route_not_found, DirectAction)
    assert f"%REQ({MODEL_HEADER}):{ECHO_LIMIT}%" in route_not_found.message  # the echo is bounded


def test_what_the_refusals_match() -> None:
    """Python's `re` reads these RE2 patterns alike (Envoy matches a header's whole value)."""
    ir = vhost(translated(MANIFESTS), "*")
    by_name = {short(r.name, ir.name): r for r in ir.routes}
    [control] = by_name["model-not-a-header-value"].headers
    for value in ["a\nb", "\x00", "x\r\ny: 1", "\x7f", "tail\x1f"]:
        assert re.fullmatch(control.value, value) and NOT_A_HEADER_VALUE.search(value)
    for value in ["model-a", "tab\there", "é", "50%"]:
        assert not re.fullmatch(control.value, value) and not NOT_A_HEADER_VALUE.search(value)
    # Envoy matches header values as bytes: so does this check (a Latin-1 reading of the UTF-8 bytes).
    [too_long] = by_name["model-too-long"].headers
    for value in ["m" * 257, "é" * 257, "模" * 257, "😀" * 257, "a\n" * 200, "m" * 100_000]:
        assert re.fullmatch(too_long.value, value.encode().decode("latin-1"), re.DOTALL), value[:3]
    for value in ["m" * 256, "é" * 256, "模" * 256, "😀" * 256, "model-a"]:
        assert not re.fullmatch(too_long.value, value.encode().decode("latin-1"), re.DOTALL), value[:3]
    [not_a_string] = by_name["model-not-a-string"].headers
    assert not_a_string.value == NOT_A_STRING
    for value in ["42", "-1.5e3", "true", "false", "[1,2]", '{"a":1}', "[]"]:
        assert re.fullmatch(NOT_A_STRING, value), value
    for value in ["model-a", "4o-mini", "truely", "gpt-4", "null-model"]:
        assert not re.fullmatch(NOT_A_STRING, value), value
    [unsupported] = by_name["unsupported-path"].headers
    assert unsupported.name == ":path" and unsupported.invert
    for path in ["/v1/chat/completions", "/v1/completions?x=1", "/v1/embeddings"]:
        assert re.fullmatch(unsupported.value, path)
    for path in ["/v1/responses", "/v1/chat/completions/", "/v2/completions", "/"]:
        assert not re.fullmatch(unsupported.value, path)


# --- AI roles and the filters each route turns on ---


def test_each_route_turns_on_the_filters_of_its_role() -> None:
    translation = translated(MANIFESTS)
    ir = vhost(translation, "*")
    routes = {r.name: r for r in xds_vhost(translation, "*").routes}
    roles = {short(r.name, ir.name): r.ai for r in ir.routes}
    assert roles == {
        "model-not-a-header-value": AiRole.REFUSAL,
        "model-too-long": AiRole.REFUSAL,
        **dict.fromkeys([EVERYWHERE.format(i) for i in range(3)], AiRole.MODEL),
        "models": None,
        "unsupported-path": None,
        "no-body": None,
        "model-not-a-string": AiRole.REFUSAL,
        "route-not-found": AiRole.REFUSAL,
        "model-missing": AiRole.REFUSAL,
        "entry-unsized": AiRole.ENTRY_UNSIZED,
        "entry": AiRole.ENTRY,
    }
    for route_ir in ir.routes:
        route = routes[route_ir.name]
        configs = set(route.typed_per_filter_config)
        if route_ir.ai in (AiRole.ENTRY, AiRole.ENTRY_UNSIZED):
            # Reads the body's model (with a JSON content type where none was sent), and the answer's usage; a body
            # without Content-Length (only such a request starts on entry-unsized) gets one.
            unsized = route_ir.ai is AiRole.ENTRY_UNSIZED
            assert route_ir.headers == (
                (HeaderMatchIR("content-length", kind=HeaderMatchKind.ABSENT),) if unsized else ()
            )
            assert configs == {AI_FILTER} | ({CONTENT_LENGTH_FILTER} if unsized else set())
            per_route = unpack(route, AI_FILTER, dynamic_modules_pb2.DynamicModuleFilterPerRoute())
            assert per_route == ai_filter_route_config()
        elif route_ir.ai is AiRole.MODEL:
            # The filters the entry route put in the chain run on: the route itself turns nothing on.
            assert isinstance(route_ir.action, ForwardAction) and route.route.cluster == route_ir.action.cluster
            assert configs == set(), route.name
        elif route_ir.ai is AiRole.REFUSAL:
            assert configs == set() and route.HasField("direct_response"), route.name
        else:  # answered before any body is read: no AI filter runs
            assert configs == set() and route.HasField("direct_response"), route.name


def test_with_a_pool_on_the_listener_the_picker_is_off_but_where_a_route_goes_to_the_pool() -> None:
    translation = translated(GATEWAY + POOL)
    assert listener(translation).runs_picker
    ir = vhost(translation, "*")
    routes = {r.name: r for r in xds_vhost(translation, "*").routes}
    pooled = "aigatewayroute/default/pooled/rule/0/match/0"
    for route_ir in ir.routes:
        route = routes[route_ir.name]
        if route_ir.ai is None:
            assert PICKER_FILTER not in route.typed_per_filter_config, route.name
            continue
        picker = extproc(route, PICKER_FILTER)
        if route.name == pooled:
            metadata = [(h.key, h.value) for h in picker.overrides.grpc_initial_metadata]
            assert not picker.disabled and metadata == [(PICKER_POOL_METADATA, "default/p")]
            assert set(route.typed_per_filter_config) == {PICKER_FILTER}  # metered like any model route: by the chain
        else:
            assert picker == ext_proc_pb2.ExtProcPerRoute(disabled=True), route.name
            if route_ir.ai not in (AiRole.ENTRY, AiRole.ENTRY_UNSIZED):
                assert set(route.typed_per_filter_config) == {PICKER_FILTER}, route.name
    entry = routes[f"{ir.name}/entry"]
    assert set(entry.typed_per_filter_config) == {AI_FILTER, PICKER_FILTER}


def test_a_virtual_host_of_plain_http_routes_gets_none_of_these_routes() -> None:
    translation = translated(MANIFESTS)
    ir = vhost(translation, "*", gateway="default/plain")
    assert [r.name for r in ir.routes] == ["httproute/default/web/rule/0/match/0"]
    assert ir.models == () and all(r.ai is None for r in ir.routes)
    [route] = xds_vhost(translation, "*", gateway="default/plain").routes
    assert not route.typed_per_filter_config and route.HasField("route")


def test_the_ai_filter_is_told_the_headers_and_the_namespace_the_routes_and_logs_read() -> None:
    """The module's config starts with the two headers and the namespace, one per line, in the order
    native/ai_filter.c reads them: the names stay defined in names.py, and the headers it sets are all internal ones
    (stripped from clients before routing)."""
    config = ai_filter_config()
    assert config.dynamic_module_config.name == AI_MODULE and config.dynamic_module_config.do_not_close
    names = wrappers_pb2.StringValue()
    assert config.filter_config.Unpack(names)
    assert names.value.split("\n")[:3] == [MODEL_HEADER, JSON_BODY_HEADER, METERING_METADATA_NAMESPACE]
    headers = (MODEL_HEADER, JSON_BODY_HEADER)
    assert all(header.startswith(INTERNAL_HEADER_PREFIXES) for header in headers)
    route = ai_filter_route_config()
    assert route.dynamic_module_config == config.dynamic_module_config
    assert not route.per_route_config_name  # deprecated in Envoy 1.40: a warning on every load


# --- the listener: filter chain and usage log ---


def manager(translation: Translation, gateway: str = "default/gw") -> hcm_pb2.HttpConnectionManager:
    built = listeners.listener(listener(translation, gateway), TranslateOptions())
    [chain] = built.filter_chains
    [network] = chain.filters
    found = hcm_pb2.HttpConnectionManager()
    assert network.typed_config.Unpack(found)
    return found


def filter_config(hcm: hcm_pb2.HttpConnectionManager, name: str, message: Message) -> Message:
    [found] = [f for f in hcm.http_filters if f.name == name]
    assert found.typed_config.Unpack(message), name
    return message


AI_FILTERS = [AI_FILTER, CONTENT_LENGTH_FILTER]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (MANIFESTS, [*AI_FILTERS, ROUTER_FILTER]),
        (GATEWAY + POOL, [*AI_FILTERS, PICKER_FILTER, ROUTER_FILTER]),
    ],
    ids=["ai", "ai-with-pool"],
)
def test_an_ai_listener_runs_the_ai_filter_content_length_picker_and_router_in_order(
    text: str, names: list[str]
) -> None:
    """Off at the listener and turned on by the entry route: the AI filter and content length (their work needs the
    body, which only AI requests have) and the picker (on where a route goes to a pool); the router always last. No
    ext_proc meters answers: the AI filter reads JSON answers and event streams alike."""
    hcm = manager(translated(text))
    assert [f.name for f in hcm.http_filters] == names
    off = {AI_FILTER, CONTENT_LENGTH_FILTER, PICKER_FILTER}
    assert [f.disabled for f in hcm.http_filters] == [name in off for name in names]
    assert filter_config(hcm, AI_FILTER, dynamic_modules_pb2.DynamicModuleFilter()) == ai_filter_config()


def test_a_plain_http_listener_runs_only_the_router_and_logs_no_usage() -> None:
    hcm = manager(translated(MANIFESTS), gateway="default/plain")
    assert [f.name for f in hcm.http_filters] == [ROUTER_FILTER]
    assert not hcm.access_log
    assert not hcm.HasField("local_reply_config")


def test_ai_listeners_log_ai_requests_on_stdout_and_the_ai_filter_exports_the_usage_log() -> None:
    """Envoy's one access log is the JSON line on stdout; the usage log is the AI filter's, exported to the control
    plane's server (EXTPROC_CLUSTER) by the module, which its config names with the batch's interval and size."""
    for text in (MANIFESTS, GATEWAY + POOL):
        hcm = manager(translated(text))
        assert [log.name for log in hcm.access_log] == [STDOUT_LOGGER]
    config = wrappers_pb2.StringValue()
    assert ai_filter_config().filter_config.Unpack(config)
    lines = config.value.split("\n")
    assert lines == [
        MODEL_HEADER,
        JSON_BODY_HEADER,
        METERING_METADATA_NAMESPACE,
        XDS_METADATA_NAMESPACE,  # where an endpoint names its backend
        str(ECHO_LIMIT),
        EXTPROC_CLUSTER,
        str(USAGE_LOG_FLUSH_MS),
        str(USAGE_LOG_BATCH_BYTES),
    ]
    assert 0 < USAGE_LOG_FLUSH_MS <= 1000
    # Batches flush on the interval, and stay under gRPC's 4 MiB message limit.
    assert 64 * 1024 <= USAGE_LOG_BATCH_BYTES <= 2 * 1024 * 1024


def test_the_usage_records_last_line_is_the_routed_model() -> None:
    """The client's model is the body's last line (read as the rest of the body, whatever it holds); the answer's
    model, the backend's choice, is the attribute: no other line is a value a client or a backend chose."""
    assert USAGE_RECORD_LINES[-1] == "model"
    assert USAGE_RECORD_ATTRIBUTE not in USAGE_RECORD_LINES
    assert len(set(USAGE_RECORD_LINES)) == len(USAGE_RECORD_LINES)


def test_the_endpoints_carry_the_backend_the_usage_log_and_access_log_read() -> None:
    """The custom tag and %UPSTREAM_METADATA% read what the clusters' endpoints say; the access log prints the
    usage both usage filters write."""
    translation = translated(MANIFESTS)
    [gateway] = [g for g in translation.gateways if g.key == "default/gw"]
    resources = gateway_resources(gateway, TranslateOptions())
    [cluster] = [c for c in resources.clusters if c.name == "aiservicebackend/default/a"]
    [endpoint] = [e for group in cluster.load_assignment.endpoints for e in group.lb_endpoints]
    assert endpoint.metadata.filter_metadata[XDS_METADATA_NAMESPACE]["backend"] == "aiservicebackend/default/a"
    [stdout] = [log for log in manager(translation).access_log if log.name == STDOUT_LOGGER]
    config = stream_pb2.StdoutAccessLog()
    assert stdout.typed_config.Unpack(config)
    fields = config.log_format.json_format.fields
    assert fields["backend"].string_value == f"%UPSTREAM_METADATA({XDS_METADATA_NAMESPACE}:backend)%"
    assert fields["model"].string_value == f"%REQ({MODEL_HEADER}):{ECHO_LIMIT}%"  # a client-sized model is cut
    usage = {"response_model", "input_tokens", "output_tokens", "total_tokens"}
    for key in usage:
        assert fields[key].string_value == f"%DYNAMIC_METADATA({METERING_METADATA_NAMESPACE}:{key})%"


def test_the_access_log_writes_ai_requests_and_refused_or_failed_ones() -> None:
    """Envoy writes the requests that are not AI requests (no JSON body marker: the AI filter writes those) answered
    400 or more: not a plain route's answered ones."""
    [stdout] = [log for log in manager(translated(MANIFESTS)).access_log if log.name == STDOUT_LOGGER]
    marker, status = stdout.filter.and_filter.filters
    header = marker.header_filter.header
    assert (header.name, header.present_match, header.invert_match) == (JSON_BODY_HEADER, True, True)
    comparison = status.status_code_filter.comparison
    assert (comparison.op, comparison.value.default_value) == (accesslog_pb2.ComparisonFilter.GE, 400)


def test_the_listener_strips_the_internal_headers_a_client_could_send() -> None:
    """A client's x-ai-eg-model (or marker) never reaches the matchers or the logs."""
    hcm = manager(translated(MANIFESTS))
    [extension] = hcm.early_header_mutation_extensions
    config = early_header_mutation_pb2.HeaderMutation()
    assert extension.typed_config.Unpack(config)
    prefixes = [m.remove_on_match.key_matcher.prefix for m in config.mutations]
    assert prefixes == list(INTERNAL_HEADER_PREFIXES)
    for header in (MODEL_HEADER, JSON_BODY_HEADER):
        assert header.startswith(tuple(prefixes)), header


# --- /v1/models ---


def created(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp).timestamp())


def test_models_lists_each_hosts_exact_models_once_with_its_routes_creation_time() -> None:
    translation = translated(MANIFESTS)
    everywhere, team = created("2025-01-02T03:04:05Z"), created("2025-06-01T00:00:00+00:00")
    assert everywhere == 1735787045

    def entry(name: str, at: int) -> dict[str, object]:
        return {"id": name, "object": "model", "created": at, "owned_by": "xds-server"}

    # Regex matches ("llama-.*") are not listable; model-a, named by both routes, is listed once, where first named.
    assert models_of(xds_vhost(translation, "*")) == {
        "object": "list",
        "data": [entry("model-g", everywhere), entry("model-a", everywhere)],
    }
    assert models_of(xds_vhost(translation, "*.team.example")) == {
        "object": "list",
        "data": [entry("model-t", team), entry("model-a", team), entry("model-g", everywhere)],
    }
    assert [(m.name, m.created) for m in vhost(translation, "*.team.example").models] == [
        ("model-t", team),
        ("model-a", team),
        ("model-g", everywhere),
    ]


def test_a_route_without_a_creation_time_lists_its_models_as_created_at_0() -> None:
    text = GATEWAY + POOL  # route `pooled` has no creationTimestamp
    data = models_of(xds_vhost(translated(text), "*"))["data"]
    assert data == [
        {"id": "model-p", "object": "model", "created": 0, "owned_by": "xds-server"},
        {"id": "model-a", "object": "model", "created": 0, "owned_by": "xds-server"},
    ]


def ai_route(*models: str, name: str = "listed") -> str:
    """An AIGatewayRoute with one Exact rule per model, as JSON (YAML reads it, whatever the names hold)."""
    rules = [
        {"matches": [{"headers": [{"name": MODEL_HEADER, "value": m}]}], "backendRefs": [{"name": "a"}]} for m in models
    ]
    document = {
        "apiVersion": "aigateway.envoyproxy.io/v1beta1",
        "kind": "AIGatewayRoute",
        "metadata": {"name": name, "creationTimestamp": "2025-01-02T03:04:05Z"},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": rules},
    }
    return GATEWAY + "\n---\n" + json.dumps(document)


def test_a_percent_in_a_model_name_is_listed_and_matched_as_it_is() -> None:
    """Envoy reads `%` in a direct response's text as a command: the xDS body doubles it, the client gets one."""
    names = ["50%-off", "%REQ(x-ai-eg-model)%", "100%%", "modèle-ü"]
    translation = translated(ai_route(*names))
    config = xds_vhost(translation, "*")
    inline = next(r for r in config.routes if r.match.path == MODELS_PATH).direct_response.body_format
    assert (
        "50%%-off" in inline.text_format_source.inline_string and "modèle-ü" in inline.text_format_source.inline_string
    )
    assert listed(config) == names
    ir = vhost(translation, "*")
    [models] = [r.action for r in ir.routes if r.name.endswith("/models")]
    assert isinstance(models, JsonReply)
    assert envoy_text(inline.text_format_source.inline_string) == models.body  # the same JSON text, byte for byte
    # Header matches are not formats: the model routes match the name exactly as written.
    exact = [
        h.string_match.exact
        for r in config.routes
        for h in r.match.headers
        if h.name == MODEL_HEADER and h.string_match.exact
    ]
    assert exact == names


model_names = st.text(
    st.characters(codec="utf-8", max_codepoint=0xFFFF, exclude_categories=("Cc", "Cs")), min_size=1, max_size=12
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["model-a", "%", "x"]) | model_names, min_size=1, max_size=8))
def test_models_lists_any_exact_model_names_in_route_order_once_each(names: list[str]) -> None:
    translation = translated(ai_route(*names))
    once = list(dict.fromkeys(names))
    config = xds_vhost(translation, "*")
    assert listed(config) == once
    assert [m.name for m in vhost(translation, "*").models] == once
    data = models_of(config)["data"]
    assert isinstance(data, list) and {m["created"] for m in data} == {1735787045}


def test_a_rule_that_names_no_model_is_a_default_reached_only_after_the_body_is_read() -> None:
    """Every model route requires the JSON-object marker: a request never starts on one (clients' markers are
    stripped), so a rule without a model match cannot take requests before their body names the model."""
    default_rule = {"matches": [], "backendRefs": [{"name": "a"}]}
    named_rule = {
        "matches": [{"headers": [{"name": MODEL_HEADER, "value": "model-a"}]}],
        "backendRefs": [{"name": "a"}],
    }
    document = {
        "apiVersion": "aigateway.envoyproxy.io/v1beta1",
        "kind": "AIGatewayRoute",
        "metadata": {"name": "with-default"},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": [default_rule, named_rule]},
    }
    host = vhost(translated(GATEWAY + "\n---\n" + json.dumps(document)), "*")
    model_routes = [r for r in host.routes if r.ai is AiRole.MODEL]
    assert [r.rule for r in model_routes] == [
        "aigatewayroute/default/with-default/rule/1",  # the named model first: more headers, higher precedence
        "aigatewayroute/default/with-default/rule/0",
    ]
    marker = HeaderMatchIR(JSON_BODY_HEADER, kind=HeaderMatchKind.PRESENT)
    assert all(marker in r.headers for r in model_routes)
    assert host.routes[-1].ai is AiRole.ENTRY and not host.routes[-1].headers  # where requests start
    assert [m.name for m in host.models] == ["model-a"]
