"""Which settings Envoy applies itself (route headers, an injected API key) and which stay with the
upstream-settings service (body changes, unusable credentials, rules over several backends)."""

from __future__ import annotations

from translators.ir import ApiKey, BackendSettingsIR, ClusterIR, Discovery, Endpoint, EndpointGroup, HeaderEditsIR
from translators.upstream import SERVICE_CLUSTER_SUFFIX, place_settings

RULE = "aigatewayroute/default/r/rule/0"
KEY = ApiKey("authorization", "Bearer sk-test")


def backend_cluster(*backends: str) -> ClusterIR:
    groups = tuple(EndpointGroup(b, (Endpoint("127.0.0.1", 8000 + i),), priority=i) for i, b in enumerate(backends))
    return ClusterIR(
        backends[0] if len(backends) == 1 else "weighted/x", Discovery.STATIC, groups, upstream_settings=True
    )


def test_headers_and_a_key_of_a_single_backend_are_envoys_own() -> None:
    settings = BackendSettingsIR(RULE, "b", set_headers=(("x-a", "1"),), remove_headers=("x-b",), api_key=KEY)
    placed = place_settings((settings,), backend_cluster("b"))
    assert placed.headers == HeaderEditsIR(set=(("x-a", "1"),), remove=("x-b",))
    assert placed.cluster.name == "b" and not placed.cluster.upstream_settings and placed.cluster.api_key == KEY


def test_a_key_alone_sets_no_route_headers() -> None:
    placed = place_settings((BackendSettingsIR(RULE, "b", api_key=KEY),), backend_cluster("b"))
    assert placed.headers is None and placed.cluster.api_key == KEY


def test_a_body_change_or_an_unusable_key_keeps_the_service_on_a_cluster_of_its_own() -> None:
    for settings in (
        BackendSettingsIR(RULE, "b", model_name_override="m", api_key=KEY),
        BackendSettingsIR(RULE, "b", remove_fields=("user",)),
        BackendSettingsIR(RULE, "b", credential_error="Secret default/s not found"),
    ):
        placed = place_settings((settings,), backend_cluster("b"))
        assert placed.cluster.name == "b" + SERVICE_CLUSTER_SUFFIX and placed.cluster.upstream_settings
        assert placed.cluster.api_key is None and placed.headers is None


def test_several_backends_keep_the_service() -> None:
    settings = (BackendSettingsIR(RULE, "a", api_key=KEY), BackendSettingsIR(RULE, "b"))
    cluster = backend_cluster("a", "b")
    placed = place_settings(settings, cluster)
    assert placed == type(placed)(None, cluster)


def test_no_settings_no_filter() -> None:
    placed = place_settings((), backend_cluster("b"))
    assert not placed.cluster.upstream_settings and placed.cluster.api_key is None
