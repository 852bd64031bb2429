"""Reference mode: a pool's routes call the Endpoint Picker its endpointPickerRef names (a Service of the pool's
namespace, at a Service port), over a cluster of that Service's ready pods; the embedded picker leaves the pool
alone. Who picks is the pool annotation xds-server.io/endpoint-picker, else TranslateOptions.endpoint_picker."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format

from translators.gatewayapi import translate
from translators.ir import PickerMode, PoolIR, TranslateOptions, Translation
from translators.loader import load_texts
from translators.runtime import runtime_tables
from translators.xds.gateway import XdsResources, gateway_resources
from translators.xds.memo import Memo
from translators.xds.names import ENDPOINT_PICKER_ANNOTATION, PICKER_FILTER, PICKER_POOL_METADATA, REFERENCE_PICKER_MODE
from xds_server.epp.picker import EndpointPicker
from xds_server.epp.scrape import Scraper, Target

Doc = dict[str, Any]
REFERENCE = TranslateOptions(endpoint_picker=PickerMode.REFERENCE)
EMBEDDED = TranslateOptions()


def _doc(api_version: str, kind: str, name: str, **fields: Any) -> Doc:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}, **fields}


def _gateway() -> list[Doc]:
    return [
        _doc(
            "gateway.networking.k8s.io/v1",
            "GatewayClass",
            "eg",
            spec={"controllerName": "gateway.envoyproxy.io/gatewayclass-controller"},
        ),
        _doc(
            "gateway.networking.k8s.io/v1",
            "Gateway",
            "gw",
            spec={"gatewayClassName": "eg", "listeners": [{"name": "http", "protocol": "HTTP", "port": 80}]},
        ),
    ]


def _pool(
    name: str,
    annotation: str | None = None,
    service: str | None = "epp",
    port: int = 9002,
    failure_mode: str = "FailClose",
    kind: str = "Service",
    pod_ip: str = "10.0.0.1",
) -> list[Doc]:
    """Pool `name` over pods app=<name>, one ready pod of it at `pod_ip`, and an HTTPRoute for host <name>.example."""
    spec: Doc = {"selector": {"matchLabels": {"app": name}}, "targetPorts": [{"number": 8000}]}
    if service is not None:
        group = "" if kind == "Service" else "example.com"
        spec["endpointPickerRef"] = {
            "group": group,
            "kind": kind,
            "name": service,
            "port": {"number": port},
            "failureMode": failure_mode,
        }
    pool = _doc("inference.networking.k8s.io/v1", "InferencePool", name, spec=spec)
    if annotation is not None:
        pool["metadata"]["annotations"] = {ENDPOINT_PICKER_ANNOTATION: annotation}
    route = _doc(
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        name,
        spec={
            "parentRefs": [{"name": "gw"}],
            "hostnames": [f"{name}.example"],
            "rules": [
                {"backendRefs": [{"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": name}]}
            ],
        },
    )
    return [pool, route, _pod(f"{name}-0", pod_ip, {"app": name})]


def _service(name: str = "epp", port: int = 9002, target: int | str = "grpc", app_protocol: str | None = None) -> Doc:
    service_port: Doc = {"port": port, "targetPort": target}
    if app_protocol is not None:
        service_port["appProtocol"] = app_protocol
    return _doc("v1", "Service", name, spec={"selector": {"app": name}, "ports": [service_port]})


def _pod(name: str, ip: str | None, labels: dict[str, str], ready: bool = True, grpc_port: int = 9002) -> Doc:
    status: Doc = {"conditions": [{"type": "Ready", "status": str(ready)}]}
    if ip is not None:
        status["podIP"] = ip
    pod = _doc(
        "v1",
        "Pod",
        name,
        spec={"containers": [{"name": "server", "ports": [{"name": "grpc", "containerPort": grpc_port}]}]},
        status=status,
    )
    pod["metadata"]["labels"] = labels
    return pod


def _translate(docs: list[Doc], options: TranslateOptions = EMBEDDED) -> Translation:
    resources = load_texts([("test.yaml", yaml.safe_dump_all([*_gateway(), *docs]))])
    assert resources.errors == ()
    return translate(resources, options)


def _xds(translation: Translation, options: TranslateOptions = EMBEDDED, memo: Memo | None = None) -> XdsResources:
    [gateway] = translation.gateways
    return gateway_resources(gateway, options, memo)


def _pool_ir(translation: Translation, name: str) -> PoolIR:
    return next(p for p in translation.pools if p.name == name)


def _route(resources: XdsResources, host: str) -> route_components_pb2.Route:
    [config] = resources.routes
    vhost = next(v for v in config.virtual_hosts if host in v.domains)
    [found] = vhost.routes
    return found


def _picker_overrides(route: route_components_pb2.Route) -> ext_proc_pb2.ExtProcOverrides:
    filter_config = route_components_pb2.FilterConfig()
    route.typed_per_filter_config[PICKER_FILTER].Unpack(filter_config)
    per_route = ext_proc_pb2.ExtProcPerRoute()
    filter_config.config.Unpack(per_route)
    return per_route.overrides


def _cluster(resources: XdsResources, name: str) -> cluster_pb2.Cluster:
    return next(c for c in resources.clusters if c.name == name)


def _endpoints(resources: XdsResources, cluster: str) -> set[tuple[str, int]]:
    assignment = next(a for a in resources.endpoints if a.cluster_name == cluster)
    return {
        (e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
        for locality in assignment.endpoints
        for e in locality.lb_endpoints
    }


EPP_CLUSTER = "epp/default/epp/9002"


@pytest.mark.parametrize(
    ("option", "annotation", "expected"),
    [
        (EMBEDDED, None, PickerMode.EMBEDDED),
        (REFERENCE, None, PickerMode.REFERENCE),
        (EMBEDDED, "reference", PickerMode.REFERENCE),
        (REFERENCE, "embedded", PickerMode.EMBEDDED),
        (REFERENCE, "neither", PickerMode.REFERENCE),  # not a mode: the option decides
        (EMBEDDED, "neither", PickerMode.EMBEDDED),
    ],
)
def test_the_pool_annotation_overrides_the_option(
    option: TranslateOptions, annotation: str | None, expected: PickerMode
) -> None:
    translation = _translate([*_pool("chat", annotation), _service()], option)
    assert _pool_ir(translation, "chat").picker is expected
    resources = _xds(translation, option)
    overrides = _picker_overrides(_route(resources, "chat.example"))
    names = {c.name for c in resources.clusters}
    if expected is PickerMode.REFERENCE:
        assert overrides.grpc_service.envoy_grpc.cluster_name == EPP_CLUSTER
        assert EPP_CLUSTER in names
    else:
        assert not overrides.HasField("grpc_service")  # the listener filter's: the control plane's ext_proc server
        assert [(m.key, m.value) for m in overrides.grpc_initial_metadata] == [(PICKER_POOL_METADATA, "default/chat")]
        assert EPP_CLUSTER not in names


def test_a_pool_without_an_endpoint_picker_ref_is_served_by_the_embedded_picker() -> None:
    translation = _translate(_pool("chat", "reference", service=None), REFERENCE)
    assert _pool_ir(translation, "chat").picker is PickerMode.EMBEDDED
    overrides = _picker_overrides(_route(_xds(translation, REFERENCE), "chat.example"))
    assert not overrides.HasField("grpc_service")


def test_the_route_calls_the_referenced_picker_in_full_duplex_mode() -> None:
    docs = [
        *_pool("open", failure_mode="FailOpen", pod_ip="10.0.0.1"),
        *_pool("shut", failure_mode="FailClose", pod_ip="10.0.0.2"),
        *_pool("local", annotation="embedded", pod_ip="10.0.0.3"),
        _service(),
    ]
    resources = _xds(_translate(docs, REFERENCE), REFERENCE)
    for host, fail_open in (("open.example", True), ("shut.example", False)):
        overrides = _picker_overrides(_route(resources, host))
        assert overrides.grpc_service.envoy_grpc.cluster_name == EPP_CLUSTER
        assert overrides.grpc_service.envoy_grpc.authority == "epp.default.svc:9002"
        assert overrides.processing_mode == REFERENCE_PICKER_MODE
        assert overrides.failure_mode_allow.value is fail_open
        assert not overrides.grpc_initial_metadata
    # Both pools name the same Service port: one cluster.
    assert [c.name for c in resources.clusters].count(EPP_CLUSTER) == 1
    local = _picker_overrides(_route(resources, "local.example"))
    assert not local.HasField("grpc_service") and not local.HasField("processing_mode")


def test_the_picker_cluster_is_http2_eds_of_the_services_ready_pods_at_the_target_port() -> None:
    pods = [
        _pod("epp-0", "10.1.0.1", {"app": "epp"}),
        _pod("epp-1", "10.1.0.2", {"app": "epp"}),
        _pod("epp-2", "10.1.0.3", {"app": "epp"}, ready=False),  # not Ready
        _pod("epp-3", None, {"app": "epp"}),  # no IP yet
        _pod("other", "10.1.0.5", {"app": "other"}),  # not selected
    ]
    docs = [*_pool("chat", "reference"), _service(target="grpc"), *pods]
    memo = Memo()
    before = _xds(_translate(docs), memo=memo)
    assert _endpoints(before, EPP_CLUSTER) == {("10.1.0.1", 9002), ("10.1.0.2", 9002)}
    built = _cluster(before, EPP_CLUSTER)
    assert built.type == cluster_pb2.Cluster.EDS
    assert built.connect_timeout.seconds == 10
    protocol = http_protocol_options_pb2.HttpProtocolOptions()
    built.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Unpack(protocol)
    assert protocol.explicit_http_config.HasField("http2_protocol_options")  # gRPC
    tls = tls_pb2.UpstreamTlsContext()
    built.transport_socket.typed_config.Unpack(tls)
    assert list(tls.common_tls_context.alpn_protocols) == ["h2"]
    assert not tls.common_tls_context.HasField("validation_context")  # the EPP's certificate is self-signed
    # The pool cluster is what it always was: the EPP's choice is honoured only among the pool's own endpoints.
    assert _endpoints(before, "inferencepool/default/chat") == {("10.0.0.1", 8000)}

    memo.next_build()
    pods[0]["status"]["conditions"][0]["status"] = "False"
    after = _xds(_translate(docs), memo=memo)
    assert _endpoints(after, EPP_CLUSTER) == {("10.1.0.2", 9002)}
    assert after.routes == before.routes  # the EPP's pods are EDS only: no route changes


def test_a_service_port_speaking_h2c_is_reached_in_cleartext() -> None:
    docs = [*_pool("chat", "reference"), _service(target=9002, app_protocol="kubernetes.io/h2c")]
    docs.append(_pod("epp-0", "10.1.0.1", {"app": "epp"}))
    resources = _xds(_translate(docs))
    assert not _cluster(resources, EPP_CLUSTER).HasField("transport_socket")
    assert _endpoints(resources, EPP_CLUSTER) == {("10.1.0.1", 9002)}


@pytest.mark.parametrize(
    ("extra", "pool_args", "why"),
    [
        ([], {}, "Service default/epp not found"),
        ([_service(port=9003)], {}, "Service default/epp has no port 9002"),
        ([_service()], {"kind": "Picker"}, "kind Picker of group 'example.com' is not supported"),
    ],
)
def test_a_missing_picker_service_answers_500(extra: list[Doc], pool_args: dict[str, Any], why: str) -> None:
    translation = _translate([*_pool("chat", "reference", failure_mode="FailOpen", **pool_args), *extra])
    [cluster] = [c for c in translation.gateways[0].clusters if c.pool is not None]
    assert cluster.pool is not None and cluster.pool.picker is not None
    assert why in (cluster.pool.picker.missing or "")
    resources = _xds(translation)
    route = _route(resources, "chat.example")
    assert route.direct_response.status == 500  # whatever the failure mode: there is no picker to fail open from
    body = json_format.MessageToDict(route.direct_response.body_format.json_format)
    assert body["error"]["code"] == "endpoint_picker_missing" and body["error"]["type"] == "server_error"
    assert body["error"]["message"].startswith("InferencePool default/chat has no Endpoint Picker to call: ")
    assert why in body["error"]["message"]
    assert PICKER_FILTER not in route.typed_per_filter_config
    assert not any(c.name.startswith("epp/") for c in resources.clusters)
    [parent] = next(s for s in translation.statuses if s.ref.name == "chat" and s.ref.kind == "InferencePool").parents
    resolved = next(c for c in parent.conditions if c.type == "ResolvedRefs")
    assert (resolved.status, resolved.reason) == ("False", "InvalidExtensionRef")


class _RecordingScraper(Scraper):
    def __init__(self) -> None:
        super().__init__()
        self.targets: dict[str, Target] = {}

    def set_targets(self, targets: Any) -> None:
        self.targets = dict(targets)


def test_the_embedded_picker_leaves_reference_pools_alone() -> None:
    docs = [*_pool("chat", "reference"), *_pool("local", pod_ip="10.0.0.2"), _service()]
    docs.append(_pod("epp-0", "10.1.0.1", {"app": "epp"}))
    tables = runtime_tables(_translate(docs))
    assert set(tables.pools) == {"default/local"}
    scraper = _RecordingScraper()
    picker = EndpointPicker(scraper)
    picker.follow(tables)
    assert set(picker.pools) == {"default/local"}
    assert set(scraper.targets) == {"10.0.0.2:8000"}  # local-0; chat-0 is for chat's own EPP to scrape
