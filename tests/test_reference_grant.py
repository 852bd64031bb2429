"""ReferenceGrant: cross-namespace backendRefs (HTTPRoute, AIGatewayRoute) and Secret refs (BackendSecurityPolicy) are
allowed exactly when a grant in the target's namespace names the source (from) and the target (to, and its name when
the grant has one); anything else is RefNotPermitted, and removing the grant revokes access."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from translators.backends import ReferenceGrants
from translators.gatewayapi import translate
from translators.ir import Translation
from translators.loader import ResourceSet, load_texts
from translators.resources import AIGatewayRoute, HTTPRoute, ReferenceGrant

Doc = dict[str, Any]
GATEWAY_API = "gateway.networking.k8s.io"
AIGW = "aigateway.envoyproxy.io"
INFERENCE = "inference.networking.k8s.io"


def _doc(api_version: str, kind: str, name: str, namespace: str, **fields: Any) -> Doc:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": namespace}, **fields}


def _grant(
    namespace: str, source: tuple[str, str, str], targets: list[Doc], name: str = "grant", version: str = "v1beta1"
) -> Doc:
    group, kind, from_namespace = source
    spec = {"from": [{"group": group, "kind": kind, "namespace": from_namespace}], "to": targets}
    return _doc(f"{GATEWAY_API}/{version}", "ReferenceGrant", name, namespace, spec=spec)


def _load(docs: list[Doc]) -> ResourceSet:
    resources = load_texts([("all.yaml", yaml.safe_dump_all(docs))])
    assert not resources.errors, resources.errors
    return resources


BASE = [
    {
        "apiVersion": f"{GATEWAY_API}/v1",
        "kind": "GatewayClass",
        "metadata": {"name": "eg"},
        "spec": {"controllerName": "gateway.envoyproxy.io/gatewayclass-controller"},
    },
    _doc(
        f"{GATEWAY_API}/v1",
        "Gateway",
        "gw",
        "apps",
        spec={
            "gatewayClassName": "eg",
            "listeners": [
                {"name": "http", "protocol": "HTTP", "port": 80, "allowedRoutes": {"namespaces": {"from": "All"}}}
            ],
        },
    ),
    _doc("v1", "Service", "svc", "models", spec={"selector": {"app": "svc"}, "ports": [{"port": 80}]}),
    _doc(
        f"{INFERENCE}/v1",
        "InferencePool",
        "pool",
        "models",
        spec={"selector": {"matchLabels": {"app": "pool"}}, "targetPorts": [{"number": 8000}]},
    ),
    _doc(
        "gateway.envoyproxy.io/v1alpha1",
        "Backend",
        "upstream",
        "models",
        spec={"endpoints": [{"ip": {"address": "10.0.0.1", "port": 80}}]},
    ),
    _doc(
        f"{AIGW}/v1beta1",
        "AIServiceBackend",
        "llm",
        "models",
        spec={
            "schema": {"name": "OpenAI"},
            "backendRef": {"group": "gateway.envoyproxy.io", "kind": "Backend", "name": "upstream"},
        },
    ),
]


def _http_route(backend: Doc, namespace: str = "apps") -> Doc:
    spec = {"parentRefs": [{"name": "gw", "namespace": "apps"}], "rules": [{"backendRefs": [backend]}]}
    return _doc(f"{GATEWAY_API}/v1", "HTTPRoute", "r", namespace, spec=spec)


def _ai_route(backend: Doc) -> Doc:
    rule = {"matches": [{"headers": [{"name": "x-ai-eg-model", "value": "m"}]}], "backendRefs": [backend]}
    return _doc(
        f"{AIGW}/v1beta1", "AIGatewayRoute", "r", "apps", spec={"parentRefs": [{"name": "gw"}], "rules": [rule]}
    )


def _resolved(translation: Translation, kind: str) -> tuple[str, str]:
    [status] = [s for s in translation.statuses if s.ref.kind == kind and s.ref.name == "r"]
    [parent] = status.parents
    [found] = [c for c in parent.conditions if c.type == "ResolvedRefs"]
    return str(found.status), found.reason


SERVICE_REF = {"name": "svc", "namespace": "models", "port": 80}
POOL_REF = {"group": INFERENCE, "kind": "InferencePool", "name": "pool", "namespace": "models"}
HTTP_FROM_APPS = (GATEWAY_API, "HTTPRoute", "apps")


@pytest.mark.parametrize(
    ("grants", "verdict"),
    [
        ([], ("False", "RefNotPermitted")),
        ([_grant("models", HTTP_FROM_APPS, [{"group": "", "kind": "Service"}])], ("True", "ResolvedRefs")),
        (
            [_grant("models", HTTP_FROM_APPS, [{"group": "", "kind": "Service", "name": "svc"}])],
            ("True", "ResolvedRefs"),
        ),
        (
            [_grant("models", HTTP_FROM_APPS, [{"group": "", "kind": "Service", "name": "other"}])],
            ("False", "RefNotPermitted"),
        ),
        ([_grant("models", HTTP_FROM_APPS, [{"group": "", "kind": "Secret"}])], ("False", "RefNotPermitted")),
        (
            [_grant("models", (GATEWAY_API, "HTTPRoute", "elsewhere"), [{"group": "", "kind": "Service"}])],
            ("False", "RefNotPermitted"),
        ),
        (
            [_grant("models", (AIGW, "AIGatewayRoute", "apps"), [{"group": "", "kind": "Service"}])],
            ("False", "RefNotPermitted"),
        ),
        (
            [_grant("apps", HTTP_FROM_APPS, [{"group": "", "kind": "Service"}])],
            ("False", "RefNotPermitted"),
        ),  # wrong place
        (
            [_grant("models", HTTP_FROM_APPS, [{"group": "", "kind": "Service"}], version="v1")],
            ("True", "ResolvedRefs"),
        ),
    ],
)
def test_an_http_route_reaches_a_service_of_another_namespace_only_with_a_grant(
    grants: list[Doc], verdict: tuple[str, str]
) -> None:
    translation = translate(_load([*BASE, *grants, _http_route(SERVICE_REF)]))
    assert _resolved(translation, "HTTPRoute") == verdict
    clusters = {c.name for g in translation.gateways for c in g.clusters}
    assert ("service/models/svc/80" in clusters) == (verdict[0] == "True")


def test_a_granted_pool_of_another_namespace_is_served_and_lists_the_gateway_as_parent() -> None:
    grant = _grant("models", HTTP_FROM_APPS, [{"group": INFERENCE, "kind": "InferencePool"}])
    translation = translate(_load([*BASE, grant, _http_route(POOL_REF)]))
    assert _resolved(translation, "HTTPRoute") == ("True", "ResolvedRefs")
    [pool] = [s for s in translation.statuses if s.ref.kind == "InferencePool"]
    assert [(p.parent.namespace, p.parent.name) for p in pool.parents] == [("apps", "gw")]
    revoked = translate(_load([*BASE, _http_route(POOL_REF)]))
    assert _resolved(revoked, "HTTPRoute") == ("False", "RefNotPermitted")
    [pool] = [s for s in revoked.statuses if s.ref.kind == "InferencePool"]
    assert pool.parents == ()


@pytest.mark.parametrize(
    ("target", "granted"),
    [
        ({"group": AIGW, "kind": "AIServiceBackend", "name": "llm"}, True),
        ({"group": AIGW, "kind": "AIServiceBackend", "name": "x"}, False),
    ],
)
def test_an_ai_gateway_route_reaches_a_granted_ai_service_backend(target: Doc, granted: bool) -> None:
    grant = _grant("models", (AIGW, "AIGatewayRoute", "apps"), [target])
    translation = translate(_load([*BASE, grant, _ai_route({"name": "llm", "namespace": "models"})]))
    assert _resolved(translation, "AIGatewayRoute") == (
        ("True", "ResolvedRefs") if granted else ("False", "RefNotPermitted")
    )


def test_an_ai_gateway_route_reaches_a_granted_pool() -> None:
    grant = _grant("models", (AIGW, "AIGatewayRoute", "apps"), [{"group": INFERENCE, "kind": "InferencePool"}])
    ref = {"group": INFERENCE, "kind": "InferencePool", "name": "pool", "namespace": "models"}
    translation = translate(_load([*BASE, grant, _ai_route(ref)]))
    assert _resolved(translation, "AIGatewayRoute") == ("True", "ResolvedRefs")


def _policy(secret_namespace: str) -> list[Doc]:
    return [
        _doc(
            f"{AIGW}/v1beta1",
            "BackendSecurityPolicy",
            "key",
            "models",
            spec={"type": "APIKey", "apiKey": {"secretRef": {"name": "key", "namespace": secret_namespace}}},
        ),
        _doc("v1", "Secret", "key", secret_namespace, stringData={"apiKey": "sk-1"}),
    ]


@pytest.mark.parametrize(
    ("to", "accepted"),
    [
        (None, False),
        ({"group": "", "kind": "Secret", "name": "key"}, True),
        ({"group": "", "kind": "Secret", "name": "k2"}, False),
    ],
)
def test_a_security_policy_reads_a_secret_of_another_namespace_only_with_a_grant(
    to: Doc | None, accepted: bool
) -> None:
    grants = [_grant("vault", (AIGW, "BackendSecurityPolicy", "models"), [to])] if to is not None else []
    translation = translate(_load([*BASE, *_policy("vault"), *grants]))
    [status] = [s for s in translation.statuses if s.ref.kind == "BackendSecurityPolicy"]
    [condition] = status.conditions
    assert (str(condition.status), condition.reason) == (
        ("True", "Accepted") if accepted else ("False", "RefNotPermitted")
    )


def test_the_check_itself() -> None:
    resources = _load(
        [
            *BASE,
            _grant(
                "models",
                HTTP_FROM_APPS,
                [{"group": "", "kind": "Service", "name": "svc"}, {"group": INFERENCE, "kind": "InferencePool"}],
            ),
            _http_route(SERVICE_REF),
            _http_route(SERVICE_REF, namespace="models"),
        ]
    )
    grants = ReferenceGrants(resources)
    route = resources.get(HTTPRoute, "apps", "r")
    assert route is not None
    assert grants.allows(route, "", "Service", "models", "svc")
    assert not grants.allows(route, "", "Service", "models", "other")
    assert grants.allows(route, INFERENCE, "InferencePool", "models", "anything")
    assert not grants.allows(route, "", "Service", "vault", "svc")
    assert grants.allows(route, "", "Secret", "apps", "same-namespace")  # no grant needed
    local = resources.get(HTTPRoute, "models", "r")
    assert local is not None and not grants.allows(local, "", "Service", "apps", "x")  # grants do not go back
    [grant] = resources.of_kind(ReferenceGrant)
    assert grant.spec.to[1].name is None and grant.group == GATEWAY_API and AIGatewayRoute.group == AIGW


def test_a_grant_without_from_or_to_is_a_load_error() -> None:
    bad = _doc(
        f"{GATEWAY_API}/v1beta1",
        "ReferenceGrant",
        "g",
        "models",
        spec={"from": [], "to": [{"group": "", "kind": "Service"}]},
    )
    resources = load_texts([("g.yaml", yaml.safe_dump(bad))])
    [error] = resources.errors
    assert error.kind == "ReferenceGrant" and "from" in error.field


@pytest.mark.parametrize("granted", [False, True])
def test_an_ai_service_backend_reaches_a_backend_of_another_namespace_only_with_a_grant(granted: bool) -> None:
    ref = {"group": "gateway.envoyproxy.io", "kind": "Backend", "name": "upstream", "namespace": "models"}
    backend = _doc(
        f"{AIGW}/v1beta1", "AIServiceBackend", "remote", "apps", spec={"schema": {"name": "OpenAI"}, "backendRef": ref}
    )
    grant = _grant(
        "models", (AIGW, "AIServiceBackend", "apps"), [{"group": "gateway.envoyproxy.io", "kind": "Backend"}]
    )
    translation = translate(_load([*BASE, backend, *([grant] if granted else []), _ai_route({"name": "remote"})]))
    [status] = [s for s in translation.statuses if s.ref.kind == "AIServiceBackend" and s.ref.name == "remote"]
    [condition] = status.conditions
    assert (str(condition.status), condition.reason) == (
        ("True", "Accepted") if granted else ("False", "RefNotPermitted")
    )
    assert _resolved(translation, "AIGatewayRoute") == (
        ("True", "ResolvedRefs") if granted else ("False", "RefNotPermitted")
    )
