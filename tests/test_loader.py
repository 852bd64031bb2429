"""The resource loader: kubectl apply semantics, typed validation, and errors that name what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from translators.loader import ObjectKey, keep_last_good, load_texts
from translators.resources import ConfigMap, EndpointSlice, InferencePool, Secret, parse_duration_ms
from xds_server.sources.files import load_paths

GATEWAY_CLASS = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: eg, namespace: ignored-for-cluster-scope}
spec: {controllerName: gateway.envoyproxy.io/gatewayclass-controller}
"""


def config_map(name: str, value: str, namespace: str | None = None) -> str:
    ns = f", namespace: {namespace}" if namespace else ""
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}{ns}}}\ndata: {{k: {value}}}\n"


def test_later_object_replaces_earlier_and_says_so_and_namespace_defaults() -> None:
    loaded = load_texts(
        [
            ("a.yaml", config_map("cm", "first") + "---\n" + GATEWAY_CLASS),
            ("b.yaml", config_map("cm", "second")),
        ]
    )
    assert loaded.errors == ()
    assert [str(w) for w in loaded.warnings] == [
        "b.yaml document 1: ConfigMap/default/cm: field metadata.name: defined twice, differently: this one replaces "
        "the one of a.yaml document 1, as kubectl apply would (remove one of them)"
    ]
    cm = loaded.get(ConfigMap, "default", "cm")
    assert cm is not None and cm.data == {"k": "second"}
    assert loaded.origins[ObjectKey("ConfigMap", "default", "cm")].file == "b.yaml"
    # Cluster-scoped kinds have no namespace, whatever the manifest says.
    assert ObjectKey("GatewayClass", "", "eg") in loaded.objects


def test_same_name_in_two_namespaces_are_two_objects() -> None:
    loaded = load_texts([("a.yaml", config_map("cm", "x") + "---\n" + config_map("cm", "y", "other"))])
    assert {c.namespace for c in loaded.of_kind(ConfigMap)} == {"default", "other"}


def test_invalid_object_is_reported_with_file_document_object_and_field() -> None:
    text = """
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: pool}
spec:
  selector: {matchLabels: {app: x}}
  targetPorts: [{number: 8000}]
  endpointPickerRef: {name: epp, port: {number: 9002}, failureMode: Sometimes}
"""
    loaded = load_texts([("pools.yaml", config_map("ok", "v") + "---\n" + text)])
    [error] = loaded.errors
    assert (error.origin.file, error.origin.document) == ("pools.yaml", 2)
    assert (error.kind, error.namespace, error.name) == ("InferencePool", "default", "pool")
    assert error.field == "spec.endpointPickerRef.failureMode"
    assert "FailOpen" in error.reason and "FailClose" in error.reason
    assert str(error).startswith("pools.yaml document 2: InferencePool/default/pool: field spec.endpointPickerRef")
    assert loaded.get(ConfigMap, "default", "ok") is not None  # the valid neighbour is kept


def test_broken_edit_keeps_the_earlier_valid_version() -> None:
    pool = """
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {{name: pool}}
spec: {{selector: {{matchLabels: {{app: x}}}}, targetPorts: [{{number: {port}}}]}}
"""
    loaded = load_texts([("a.yaml", pool.format(port=8000)), ("b.yaml", pool.format(port=99999))])
    [error] = loaded.errors
    assert error.field == "spec.targetPorts[0].number"
    kept = loaded.get(InferencePool, "default", "pool")
    assert kept is not None and kept.spec.target_ports[0].number == 8000


@pytest.mark.parametrize(
    ("document", "field", "reason"),
    [
        ("just a string", "", "document is a str, not a mapping"),
        ("apiVersion: v1\nmetadata: {name: x}", "kind", "kind is required"),
        ("kind: ConfigMap\nmetadata: {name: x}", "apiVersion", "apiVersion is required"),
        (
            "apiVersion: apps/v2\nkind: Deployment\nmetadata: {name: x}",
            "apiVersion",
            "version v2 of Deployment",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Not_A_Name}",
            "metadata.name",
            "not a valid name",
        ),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {}", "metadata.name", "Field required"),
        (
            "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: Backend\nmetadata: {name: b}\n"
            "spec: {endpoints: [{ip: {address: 10.0.0.300, port: 80}}]}",
            "spec.endpoints[0].ip.address",
            "does not appear to be an IPv4 or IPv6 address",
        ),
        (
            "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: Backend\nmetadata: {name: b}\n"
            "spec: {endpoints: [{ip: {address: 10.0.0.3, port: 80}, fqdn: {hostname: a.b, port: 80}}]}",
            "spec.endpoints[0]",
            "exactly one of fqdn, ip or unix",
        ),
        (
            "apiVersion: aigateway.envoyproxy.io/v1beta1\nkind: AIGatewayRoute\nmetadata: {name: r}\n"
            "spec: {rules: [{backendRefs: [{name: p, kind: InferencePool, group: inference.networking.k8s.io},"
            " {name: b}]}]}",
            "spec.rules[0]",
            "an InferencePool must be the only backendRef",
        ),
        (
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\n"
            "spec: {rules: [{timeouts: {request: soon}}]}",
            "spec.rules[0].timeouts.request",
            "is not a duration",
        ),
    ],
)
def test_error_table(document: str, field: str, reason: str) -> None:
    [error] = load_texts([("f.yaml", document)]).errors
    assert error.field == field
    assert reason in error.reason


def test_yaml_syntax_error_keeps_documents_before_it() -> None:
    loaded = load_texts([("f.yaml", config_map("before", "v") + "---\nkey: [unclosed\n")])
    [error] = loaded.errors
    assert error.origin.document == 2 and error.reason.startswith("invalid YAML")
    assert loaded.get(ConfigMap, "default", "before") is not None
    # Where, in the file's own lines, and what: not the parser's echo of the input.
    assert str(error) == (
        "f.yaml document 2: invalid YAML at line 7, column 1: did not find expected ',' or ']'"
        " (while parsing a flow sequence started at line 6, column 6)"
    )


def test_unknown_kinds_are_kept_aside_once_per_object() -> None:
    policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: r}\n"
    loaded = load_texts([("a.yaml", policy), ("b.yaml", policy)])
    assert loaded.errors == () and loaded.objects == {}
    [unknown] = loaded.unknown
    assert (unknown.kind, unknown.name, unknown.origin.file) == ("NetworkPolicy", "r", "b.yaml")


def test_list_kind_is_expanded() -> None:
    text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}\n"
    assert load_texts([("l.yaml", text)]).get(ConfigMap, "default", "a") is not None


def test_directory_files_load_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(config_map("cm", "from-b"))
    (tmp_path / "a.yml").write_text(config_map("cm", "from-a"))
    (tmp_path / "notes.txt").write_text("not a manifest: [")
    loaded = load_paths([tmp_path, tmp_path / "missing.yaml"])
    cm = loaded.get(ConfigMap, "default", "cm")
    assert cm is not None and cm.data == {"k": "from-b"}
    [twice] = loaded.warnings
    assert twice.origin.file.endswith("b.yaml") and "a.yml document 1" in twice.reason  # b's replaces a's
    [error] = loaded.errors
    assert error.origin.file.endswith("missing.yaml") and error.reason == "no such file or directory"
    assert str(error) == f"{tmp_path / 'missing.yaml'}: no such file or directory"  # no "?/?" for no object


def test_secret_values_never_appear_in_repr() -> None:
    text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {apiKey: sk-very-secret}\n"
    secret = load_texts([("s.yaml", text)]).get(Secret, "default", "s")
    assert secret is not None and secret.string_data == {"apiKey": "sk-very-secret"}
    assert "sk-very-secret" not in repr(secret)


@pytest.mark.parametrize(("text", "ms"), [("10s", 10_000), ("500ms", 500), ("1h30m", 5_400_000), ("1m1s", 61_000)])
def test_durations(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


def test_reload_keeps_the_last_good_version_of_an_object_an_edit_broke() -> None:
    before = load_texts([("a.yaml", config_map("one", "v1") + "---\n" + config_map("two", "v2"))])
    broken_two = config_map("one", "v10") + "---\n" + config_map("two", "v2").replace("data: {k: v2}", "data: [2]")
    after = keep_last_good(before, load_texts([("a.yaml", broken_two)]))
    assert after.errors and after.errors[0].name == "two"
    assert after.objects[ObjectKey("ConfigMap", "default", "one")].data == {"k": "v10"}  # type: ignore[attr-defined]
    assert after.objects[ObjectKey("ConfigMap", "default", "two")].data == {"k": "v2"}  # type: ignore[attr-defined]


def test_reload_of_a_file_that_no_longer_parses_keeps_its_objects_but_not_other_files_deletions() -> None:
    before = load_texts([("a.yaml", config_map("one", "v1")), ("b.yaml", config_map("gone", "v1"))])
    after = keep_last_good(before, load_texts([("a.yaml", "kind: [unclosed")]))
    assert after.errors and "invalid YAML" in after.errors[0].reason
    assert ObjectKey("ConfigMap", "default", "one") in after.objects
    assert ObjectKey("ConfigMap", "default", "gone") not in after.objects  # b.yaml was deleted: its objects go


def test_reload_removes_an_object_whose_document_was_deleted() -> None:
    before = load_texts([("a.yaml", config_map("one", "v1") + "---\n" + config_map("two", "v2"))])
    after = keep_last_good(before, load_texts([("a.yaml", config_map("one", "v1"))]))
    assert not after.errors
    assert list(after.objects) == [ObjectKey("ConfigMap", "default", "one")]


def test_an_endpoint_slice_with_null_endpoints_and_ports_is_an_empty_slice() -> None:
    """The API server writes an empty list as null (a slice created before its endpoints, as the Gateway API suite's
    HTTPRouteServiceTypes does): an empty slice, not an invalid object."""
    loaded = load_texts(
        [
            (
                "slice.yaml",
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
                "metadata: {name: s, labels: {kubernetes.io/service-name: svc}}\n"
                "addressType: IPv4\nendpoints: null\nports: null\n",
            )
        ]
    )
    assert not loaded.errors, [str(e) for e in loaded.errors]
    [found] = loaded.of_kind(EndpointSlice)
    assert (found.endpoints, found.ports) == ([], [])
