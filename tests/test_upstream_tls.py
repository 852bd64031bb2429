"""TLS to upstreams, one rule at a time: the resource models, which TLS each backend gets (translators/upstream_tls.py),
API keys that never travel in plain HTTP over the network (translators/upstream.py), the transport sockets Envoy gets
(translators/xds/upstream_tls.py), and where the kind is registered. The golden case upstream-tls shows them together.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from testing.certificates import TestCertificateAuthority
from translators.gatewayapi import translate
from translators.ir import (
    CaSource,
    ClusterIR,
    Discovery,
    Endpoint,
    EndpointGroup,
    SanKind,
    SubjectNameIR,
    TranslateOptions,
    Translation,
    UpstreamTlsIR,
)
from translators.loader import ResourceSet, load_texts
from translators.resources import BackendTLSPolicy
from translators.upstream_tls import UpstreamTls
from translators.xds.clusters import cluster, load_assignment
from translators.xds.gateway import gateway_resources
from translators.xds.upstream_tls import TRANSPORT_SOCKET_MATCH_NAMESPACE, upstream_tls_context
from xds_server.cli import build_parser, translate_options
from xds_server.sources.kubernetes.kinds import BY_NAME, watched_kinds

Doc = dict[str, Any]
ROOT = Path(__file__).resolve().parent.parent
EG = "gateway.envoyproxy.io/v1alpha1"
GWAPI = "gateway.networking.k8s.io/v1"
AIGW = "aigateway.envoyproxy.io/v1beta1"
CA = TestCertificateAuthority("unit test CA")
OTHER_CA = TestCertificateAuthority("another unit test CA")


def _doc(api_version: str, kind: str, name: str, **fields: Any) -> Doc:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}, **fields}


def _load(*docs: Doc) -> ResourceSet:
    return load_texts([("test.yaml", yaml.safe_dump_all(docs))])


def _loaded(*docs: Doc) -> ResourceSet:
    resources = _load(*docs)
    assert resources.errors == ()
    return resources


def _backend(name: str, endpoints: list[Doc], tls: Doc | None = None) -> Doc:
    spec: Doc = {"endpoints": endpoints}
    if tls is not None:
        spec["tls"] = tls
    return _doc(EG, "Backend", name, spec=spec)


def _ip(address: str, port: int = 8080) -> Doc:
    return {"ip": {"address": address, "port": port}}


def _fqdn(hostname: str, port: int) -> Doc:
    return {"fqdn": {"hostname": hostname, "port": port}}


def _config_map(name: str, pem: str | None) -> Doc:
    return _doc("v1", "ConfigMap", name, data={"ca.crt": pem} if pem is not None else {})


def _policy(name: str, targets: list[Doc], validation: Doc, api_version: str = GWAPI) -> Doc:
    return _doc(api_version, "BackendTLSPolicy", name, spec={"targetRefs": targets, "validation": validation})


def _service_target(name: str, section: str | None = None) -> Doc:
    target = {"group": "", "kind": "Service", "name": name}
    return {**target, "sectionName": section} if section else target


def _service(name: str, ports: list[tuple[str, int]]) -> Doc:
    return _doc(
        "v1", "Service", name, spec={"selector": {"app": name}, "ports": [{"name": n, "port": p} for n, p in ports]}
    )


def _conditions(translation: Translation, kind: str, name: str) -> dict[str, tuple[str, str, str]]:
    [status] = [s for s in translation.statuses if (s.ref.kind, s.ref.name) == (kind, name)]
    return {c.type: (c.status.value, c.reason, c.message) for c in status.conditions}


def _gateway() -> list[Doc]:
    gateway_class = _doc(
        GWAPI, "GatewayClass", "eg", spec={"controllerName": "gateway.envoyproxy.io/gatewayclass-controller"}
    )
    listeners = [{"name": "http", "protocol": "HTTP", "port": 80}]
    return [gateway_class, _doc(GWAPI, "Gateway", "gw", spec={"gatewayClassName": "eg", "listeners": listeners})]


# --- resource models and registration ---


@pytest.mark.parametrize(
    ("tls", "problem"),
    [
        (
            {"caCertificateRefs": [{"kind": "ConfigMap", "name": "ca"}], "wellKnownCACertificates": "System"},
            "cannot both be set",
        ),
        (
            {"insecureSkipVerify": True, "caCertificateRefs": [{"kind": "ConfigMap", "name": "ca"}]},
            "insecureSkipVerify",
        ),
        ({"insecureSkipVerify": True, "wellKnownCACertificates": "System"}, "insecureSkipVerify"),
        ({"sni": "Not_A_Hostname"}, "pattern"),
    ],
)
def test_backend_tls_settings_envoy_gateway_refuses_do_not_load(tls: Doc, problem: str) -> None:
    [error] = _load(_backend("b", [_ip("10.0.0.1")], tls)).errors
    assert error.field.startswith("spec.tls") and problem in error.reason, error


@pytest.mark.parametrize(
    "validation",
    [
        {"hostname": "a.example"},  # no trust source
        {
            "hostname": "a.example",
            "wellKnownCACertificates": "System",
            "caCertificateRefs": [{"kind": "ConfigMap", "name": "x"}],
        },
        {"wellKnownCACertificates": "System"},  # no hostname
        {
            "hostname": "a.example",
            "wellKnownCACertificates": "System",
            "subjectAltNames": [{"type": "Hostname", "uri": "spiffe://a/b"}],
        },
    ],
)
def test_a_policy_gateway_api_would_refuse_does_not_load(validation: Doc) -> None:
    errors = _load(_policy("p", [_service_target("s")], validation)).errors
    assert errors and all(e.kind == "BackendTLSPolicy" for e in errors), errors


def test_both_served_versions_of_the_policy_load_and_another_does_not() -> None:
    validation = {"hostname": "a.example", "wellKnownCACertificates": "System"}
    resources = _load(
        _policy("v1", [_service_target("s")], validation),
        _policy("alpha", [_service_target("s")], validation, "gateway.networking.k8s.io/v1alpha3"),
        _policy("beta", [_service_target("s")], validation, "gateway.networking.k8s.io/v1beta1"),
    )
    assert [p.name for p in resources.of_kind(BackendTLSPolicy)] == ["alpha", "v1"]
    [error] = resources.errors
    assert error.name == "beta" and "v1beta1" in error.reason


def test_the_cluster_source_watches_the_policy_at_its_storage_version() -> None:
    kind = BY_NAME["BackendTLSPolicy"]
    assert kind in watched_kinds()
    assert kind.path("ns") == "/apis/gateway.networking.k8s.io/v1/namespaces/ns/backendtlspolicies"


def _chart_rules(definition: str) -> list[Doc]:
    text = (ROOT / "charts" / "xds-server" / "templates" / "_helpers.tpl").read_text()
    match = re.search(r'\{\{- define "' + re.escape(definition) + r'" -\}\}\n(.*?)\{\{- end -\}\}', text, re.S)
    assert match is not None, definition
    rules: list[Doc] = yaml.safe_load(match.group(1))
    return rules


def test_the_chart_lets_the_controller_list_and_watch_every_kind_it_watches() -> None:
    rules = _chart_rules("xds-server.watchRules") + _chart_rules("xds-server.clusterRules")
    for kind in watched_kinds():
        verbs = {
            verb
            for rule in rules
            if kind.group in rule["apiGroups"] and kind.plural in rule["resources"]
            for verb in rule["verbs"]
        }
        assert {"get", "list", "watch"} <= verbs, kind.kind


# --- which TLS each backend gets ---


def test_a_port_policy_wins_over_a_whole_service_policy_and_neither_is_conflicted() -> None:
    resources = _loaded(
        _service("svc", [("https", 8443), ("admin", 9443)]),
        _policy("whole", [_service_target("svc")], {"hostname": "whole.example", "wellKnownCACertificates": "System"}),
        _policy(
            "port", [_service_target("svc", "https")], {"hostname": "port.example", "wellKnownCACertificates": "System"}
        ),
    )
    tls = UpstreamTls(resources)
    assert (tls.service("default", "svc", 8443).tls or UpstreamTlsIR(CaSource.NONE)).sni == "port.example"
    assert (tls.service("default", "svc", 9443).tls or UpstreamTlsIR(CaSource.NONE)).sni == "whole.example"
    translation = translate(resources)
    for name in ("whole", "port"):
        assert _conditions(translation, "BackendTLSPolicy", name)["Accepted"][0] == "True"


def test_a_policy_on_a_port_the_service_lacks_does_not_attach() -> None:
    resources = _loaded(
        _service("svc", [("https", 8443)]),
        _policy("p", [_service_target("svc", "grpc")], {"hostname": "a.example", "wellKnownCACertificates": "System"}),
    )
    assert UpstreamTls(resources).service("default", "svc", 8443).tls is None
    accepted = _conditions(translate(resources), "BackendTLSPolicy", "p")["Accepted"]
    assert accepted[:2] == ("False", "TargetNotFound") and "no port named grpc" in accepted[2]


def test_only_the_usable_ca_certificates_are_trusted_and_the_others_are_named() -> None:
    resources = _loaded(
        _service("svc", [("https", 8443)]),
        _config_map("good", CA.pem),
        _config_map("garbage", "not a certificate"),
        _policy(
            "p",
            [_service_target("svc")],
            {
                "hostname": "svc.example",
                "caCertificateRefs": [
                    {"group": "", "kind": "ConfigMap", "name": "good"},
                    {"group": "", "kind": "ConfigMap", "name": "garbage"},
                    {"group": "", "kind": "ConfigMap", "name": "absent"},
                ],
            },
        ),
    )
    tls = UpstreamTls(resources).service("default", "svc", 8443).tls
    assert tls is not None and tls.ca is CaSource.INLINE
    assert tls.ca_pem.strip() == CA.pem.strip()
    assert tls.verify_names == (SubjectNameIR(SanKind.DNS, "svc.example"),)
    conditions = _conditions(translate(resources), "BackendTLSPolicy", "p")
    assert conditions["Accepted"][0] == "True"
    status, reason, message = conditions["ResolvedRefs"]
    assert (status, reason) == ("False", "InvalidCACertificateRef")
    assert "garbage: ca.crt holds no PEM certificate" in message and "absent: not found" in message


def test_a_ca_reference_of_another_kind_is_invalid_kind_and_refuses_the_route() -> None:
    resources = _loaded(
        *_gateway(),
        _service("svc", [("https", 8443)]),
        _policy(
            "p",
            [_service_target("svc")],
            {"hostname": "a.example", "caCertificateRefs": [{"group": "example.com", "kind": "Vault", "name": "v"}]},
        ),
        _doc(
            GWAPI,
            "HTTPRoute",
            "r",
            spec={"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "svc", "port": 8443}]}]},
        ),
    )
    translation = translate(resources)
    conditions = _conditions(translation, "BackendTLSPolicy", "p")
    assert conditions["ResolvedRefs"][:2] == ("False", "InvalidKind")
    assert conditions["Accepted"][:2] == ("False", "NoValidCACertificate")
    [route] = translation.gateways[0].listeners[0].routes
    assert getattr(route.action, "status", None) == 500


def test_tls_that_names_no_trust_source_verifies_against_the_system_cas() -> None:
    tls = UpstreamTls(_loaded(_backend("b", [_ip("10.0.0.1", 8443)], {"sni": "b.example"}))).backend("default", "b").tls
    assert tls == UpstreamTlsIR(
        CaSource.SYSTEM, sni="b.example", verify_names=(SubjectNameIR(SanKind.DNS, "b.example"),)
    )


def test_an_ip_backend_without_sni_sends_none_and_verifies_the_chain_only() -> None:
    resources = _loaded(
        _config_map("ca", CA.pem),
        _backend("b", [_ip("10.0.0.1", 8443)], {"caCertificateRefs": [{"kind": "ConfigMap", "name": "ca"}]}),
    )
    tls = UpstreamTls(resources).backend("default", "b").tls
    assert tls is not None and tls.sni is None and tls.verify_names == ()


@pytest.mark.parametrize(
    ("endpoints", "tls", "refusal"),
    [
        ([_fqdn("a.example", 443), _ip("10.0.0.1", 80)], None, "fqdn endpoints on port 443 (TLS) and others"),
        ([_fqdn("a.example", 443), _fqdn("b.example", 443)], None, "need one SNI: set tls.sni"),
        ([_fqdn("a.example", 8443), _fqdn("b.example", 8443)], {"wellKnownCACertificates": "System"}, "set tls.sni"),
        (
            [_fqdn("a.example", 443)],
            {"wellKnownCACertificates": "example.com/corporate"},
            "is not supported (System is)",
        ),
    ],
)
def test_tls_that_cannot_be_set_up_refuses_instead_of_sending_plain_text(
    endpoints: list[Doc], tls: Doc | None, refusal: str
) -> None:
    target = UpstreamTls(_loaded(_backend("b", endpoints, tls))).backend("default", "b")
    assert target.tls is None and target.refusal is not None and refusal in target.refusal.message


def test_one_sni_for_several_hostnames_is_fine_when_given() -> None:
    backend = _backend("b", [_fqdn("a.example", 443), _fqdn("b.example", 443)], {"sni": "api.example"})
    tls = UpstreamTls(_loaded(backend)).backend("default", "b").tls
    assert tls is not None and tls.sni == "api.example" and tls.ca is CaSource.SYSTEM


def test_a_backend_policy_wins_over_the_backends_own_settings() -> None:
    resources = _loaded(
        _backend("b", [_fqdn("b.example", 8443)], {"insecureSkipVerify": True, "sni": "own.example"}),
        _policy(
            "p",
            [{"group": "gateway.envoyproxy.io", "kind": "Backend", "name": "b"}],
            {"hostname": "policy.example", "wellKnownCACertificates": "System"},
        ),
    )
    tls = UpstreamTls(resources).backend("default", "b").tls
    assert tls is not None and (tls.ca, tls.sni) == (CaSource.SYSTEM, "policy.example")


# --- API keys and plain HTTP ---


def _keyed(endpoints: list[Doc], tls: Doc | None = None, annotation: str | None = None) -> Translation:
    """One AIGatewayRoute rule to AIServiceBackend `ai`, in front of Backend `b`, with an API key policy."""
    policy = _doc(
        AIGW,
        "BackendSecurityPolicy",
        "key",
        spec={
            "type": "APIKey",
            "apiKey": {"secretRef": {"name": "key"}},
            "targetRefs": [{"group": "aigateway.envoyproxy.io", "kind": "AIServiceBackend", "name": "ai"}],
        },
    )
    if annotation is not None:
        policy["metadata"]["annotations"] = {"xds-server.io/allow-plaintext-credentials": annotation}
    route_rule = {
        "matches": [{"headers": [{"type": "Exact", "name": "x-ai-eg-model", "value": "m"}]}],
        "backendRefs": [{"name": "ai"}],
    }
    return translate(
        _loaded(
            *_gateway(),
            _doc(AIGW, "AIGatewayRoute", "r", spec={"parentRefs": [{"name": "gw"}], "rules": [route_rule]}),
            _doc(
                AIGW,
                "AIServiceBackend",
                "ai",
                spec={
                    "schema": {"name": "OpenAI"},
                    "backendRef": {"group": "gateway.envoyproxy.io", "kind": "Backend", "name": "b"},
                },
            ),
            _backend("b", endpoints, tls),
            policy,
            _doc("v1", "Secret", "key", stringData={"apiKey": "sk-unit"}),
        )
    )


@pytest.mark.parametrize(
    ("endpoints", "tls", "annotation", "sent"),
    [
        ([_ip("127.3.4.5")], None, None, True),  # loopback
        ([_ip("::1")], None, None, True),
        ([{"unix": {"path": "/run/model.sock"}}], None, None, True),
        ([_ip("10.0.0.1")], None, None, False),  # the network, in plain text
        ([_ip("127.0.0.1"), _ip("10.0.0.1")], None, None, False),  # one endpoint off the machine is enough
        ([_fqdn("localhost", 8080)], None, None, False),  # a name is never taken for loopback
        ([_fqdn("api.example", 443)], None, None, True),  # TLS, as port 443 implies
        ([_ip("10.0.0.1")], {"wellKnownCACertificates": "System", "sni": "a.example"}, None, True),
        ([_ip("10.0.0.1")], {"insecureSkipVerify": True}, None, True),  # encrypted, if unverified: as asked
        ([_ip("10.0.0.1")], None, "true", True),
        ([_ip("10.0.0.1")], None, "yes", False),  # only "true" says so
    ],
)
def test_an_api_key_travels_in_plain_http_only_to_loopback_or_when_the_policy_says_so(
    endpoints: list[Doc], tls: Doc | None, annotation: str | None, sent: bool
) -> None:
    translation = _keyed(endpoints, tls, annotation)
    [settings] = translation.backend_settings
    accepted = _conditions(translation, "BackendSecurityPolicy", "key")["Accepted"]
    if sent:
        assert settings.api_key is not None and settings.credential_error is None
        assert accepted[0] == "True"
    else:
        assert settings.api_key is None and settings.credential_error is not None
        assert accepted[:2] == ("False", "PlaintextUpstream")
        assert "xds-server.io/allow-plaintext-credentials" in accepted[2]
        ai_backend = _conditions(translation, "AIServiceBackend", "ai")["Accepted"]
        assert ai_backend[:2] == ("False", "InvalidBackendSecurityPolicy")


# --- xDS ---

_TLS_A = UpstreamTlsIR(CaSource.INLINE, CA.pem, "a.example", (SubjectNameIR(SanKind.DNS, "a.example"),))
_TLS_B = UpstreamTlsIR(CaSource.INLINE, OTHER_CA.pem, "b.example", (SubjectNameIR(SanKind.URI, "spiffe://b/c"),))


def _cluster_of(*reached: UpstreamTlsIR | None) -> ClusterIR:
    groups = tuple(
        EndpointGroup(f"backend/default/b{i}", (Endpoint(f"10.0.0.{i + 1}", 8443),), tls=tls)
        for i, tls in enumerate(reached)
    )
    return ClusterIR("c", Discovery.STATIC, groups)


def _context(message: Any) -> tls_pb2.UpstreamTlsContext:
    context = tls_pb2.UpstreamTlsContext()
    assert message.typed_config.Unpack(context)
    return context


def test_backends_reached_alike_share_one_socket_and_carry_no_match_metadata() -> None:
    ir = _cluster_of(_TLS_A, _TLS_A)
    built = cluster(ir, 1024)
    assert _context(built.transport_socket).sni == "a.example"
    assert not built.transport_socket_matches
    for locality in load_assignment(ir).endpoints:
        assert TRANSPORT_SOCKET_MATCH_NAMESPACE not in locality.lb_endpoints[0].metadata.filter_metadata
    assert not cluster(_cluster_of(None, None), 1024).HasField("transport_socket")


def test_a_tls_backend_beside_a_plain_one_gets_its_socket_by_endpoint_metadata() -> None:
    ir = _cluster_of(_TLS_A, None)
    built = cluster(ir, 1024)
    assert not built.HasField("transport_socket")  # the default: the plain backend's
    [match] = built.transport_socket_matches
    assert dict(match.match) == {"backend": "backend/default/b0"}
    assert _context(match.transport_socket).sni == "a.example"
    metadata = [
        dict(loc.lb_endpoints[0].metadata.filter_metadata[TRANSPORT_SOCKET_MATCH_NAMESPACE])
        for loc in load_assignment(ir).endpoints
    ]
    assert metadata == [{"backend": "backend/default/b0"}, {"backend": "backend/default/b1"}]


def test_backends_all_on_tls_but_differently_never_fall_through_to_plain_text() -> None:
    built = cluster(_cluster_of(_TLS_A, _TLS_B), 1024)
    assert [m.name for m in built.transport_socket_matches] == ["backend/default/b0", "backend/default/b1"]
    assert _context(built.transport_socket).sni == "a.example"


def test_the_context_verifies_what_the_ir_says_and_offers_the_clusters_protocol() -> None:
    context = upstream_tls_context(_TLS_B, "/unused", http2=True)
    assert list(context.common_tls_context.alpn_protocols) == ["h2"]
    validation = context.common_tls_context.validation_context
    assert validation.trusted_ca.inline_string == OTHER_CA.pem
    [san] = validation.match_typed_subject_alt_names
    assert (san.san_type, san.matcher.exact) == (san.URI, "spiffe://b/c")
    insecure = upstream_tls_context(UpstreamTlsIR(CaSource.NONE, sni="x.example"), "/unused", http2=False)
    assert not insecure.common_tls_context.HasField("validation_context")
    assert list(insecure.common_tls_context.alpn_protocols) == ["http/1.1"] and insecure.sni == "x.example"


def test_the_system_ca_bundle_is_the_file_the_options_name() -> None:
    route = _doc(
        GWAPI,
        "HTTPRoute",
        "r",
        spec={
            "parentRefs": [{"name": "gw"}],
            "rules": [{"backendRefs": [{"group": "gateway.envoyproxy.io", "kind": "Backend", "name": "b"}]}],
        },
    )
    translation = translate(_loaded(*_gateway(), route, _backend("b", [_fqdn("api.example", 443)])))
    args = build_parser().parse_args(["translate", "x.yaml", "--system-ca-bundle", "/custom/cas.pem"])
    options = translate_options(args)
    assert options.system_ca_bundle == "/custom/cas.pem"
    assert TranslateOptions().system_ca_bundle == "/etc/ssl/certs/ca-certificates.crt"
    [built] = [c for c in gateway_resources(translation.gateways[0], options).clusters if c.name == "backend/default/b"]
    validation = _context(built.transport_socket).common_tls_context.validation_context
    assert validation.trusted_ca.filename == "/custom/cas.pem"
    [rewriting] = [r for r in translation.gateways[0].listeners[0].routes if r.rule]
    assert getattr(rewriting.action, "host_rewrite", False)  # Host: the backend's hostname, as its certificate says
