"""Unknown fields in files: found against the CRDs' schemas (translators/resources/fields.json), reported with their
path, and the object refused while every other object is served."""

from __future__ import annotations

import json
from pathlib import Path

from translators.loader import load_texts
from translators.resources import AIGatewayRoute, Gateway
from translators.resources.fields import FIELDS_FILE, generate, unknown_fields

ROOT = Path(__file__).resolve().parent.parent
CRDS = ROOT / "charts" / "xds-server-crds" / "charts" / "upstream" / "files"

ROUTE = """
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIGatewayRoute
metadata: {name: typo}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matchs: [{headers: [{type: Exact, name: x-ai-eg-model, value: mistral}]}]
    backendRefs: [{name: mistral, weigth: 2}]
"""
GATEWAY = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: eg
  listeners: [{name: http, protocol: HTTP, port: 80}]
"""


def test_the_committed_field_trees_are_the_charts_crds() -> None:
    """`python -m translators.resources.fields charts/xds-server-crds/charts/upstream/files` after a CRD update."""
    assert json.loads(FIELDS_FILE.read_text()) == generate(CRDS)


def test_a_misspelled_field_refuses_its_object_with_the_path_and_the_rest_is_served() -> None:
    loaded = load_texts([("routes.yaml", ROUTE), ("gateway.yaml", GATEWAY)])
    assert loaded.of_kind(AIGatewayRoute) == []
    assert [g.name for g in loaded.of_kind(Gateway)] == ["gw"]
    assert [(e.field, e.reason) for e in loaded.errors] == [
        ("spec.rules[0].matchs", "unknown field"),
        ("spec.rules[0].backendRefs[0].weigth", "unknown field"),
    ]
    assert str(loaded.errors[0]) == (
        "routes.yaml document 1: AIGatewayRoute/default/typo: field spec.rules[0].matchs: unknown field"
    )


def test_known_shapes_pass_maps_lists_and_preserved_fields_included() -> None:
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r", "labels": {"anything": "goes"}},  # metadata is not checked against the CRD
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": [{"name": "a"}]}],
        },
        "status": {"parents": []},  # the controller's: not checked
    }
    assert unknown_fields("gateway.networking.k8s.io", "v1", "HTTPRoute", route) == []
    assert unknown_fields("gateway.networking.k8s.io", "v1", "HTTPRoute", {**route, "sepc": {}}) == ["sepc"]
    # A kind without a CRD here (a core kind) is not checked.
    assert unknown_fields("", "v1", "Service", {"spec": {"whatever": 1}}) == []


def test_at_most_twenty_are_reported() -> None:
    spec = {f"field{i}": i for i in range(50)}
    found = unknown_fields("gateway.networking.k8s.io", "v1", "Gateway", {"spec": spec})
    assert len(found) == 20 and found[0] == "spec.field0"
