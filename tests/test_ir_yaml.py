"""translators.ir_yaml: IR dataclasses <-> plain data, both ways, for every golden case and for generated IR."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testing.cases import XdsCase, case_names, load_case, load_xds_case, translate_case, xds_case_names
from testing.golden import dump
from translators.ir import (
    AddressKind,
    ApiKey,
    BackendSettingsIR,
    ClusterIR,
    DirectAction,
    Discovery,
    Endpoint,
    EndpointGroup,
    ForwardAction,
    GatewayIR,
    ObjectRef,
    PathKind,
    PathMatchIR,
    PoolBalancing,
    RouteIR,
    TranslateOptions,
    Translation,
)
from translators.ir_yaml import DISCRIMINATOR, REDACTED, from_data, to_data
from translators.loader import LoadError
from translators.xds import render


def _redacted(value: Any) -> Any:
    """`value` with every secret field (declared repr=False) as ir_yaml reads it back."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: REDACTED if not f.repr and getattr(value, f.name) is not None else _redacted(getattr(value, f.name))
            for f in dataclasses.fields(value)
        }
        return dataclasses.replace(value, **changes)
    if isinstance(value, tuple):
        return tuple(_redacted(item) for item in value)
    return value


def _through_yaml(data: Any) -> Any:
    return yaml.safe_load(dump(data))


@pytest.mark.parametrize("case", case_names())
def test_every_case_ir_round_trips(case: str) -> None:
    translation = translate_case(case)
    assert from_data(Translation, _through_yaml(to_data(translation))) == _redacted(translation)
    errors = load_case(case).errors
    assert from_data(tuple[LoadError, ...], _through_yaml(to_data(errors))) == errors


@pytest.mark.parametrize("case", xds_case_names())
def test_every_xds_input_round_trips(case: str) -> None:
    ir = load_xds_case(case)
    assert from_data(XdsCase, _through_yaml(to_data(ir))) == ir


def test_a_case_with_keys_is_redacted() -> None:
    """The round trip above is not vacuous about secrets: some case has a key, and it is never written."""
    translation = translate_case("upstream-settings")
    keys = [s.api_key for s in translation.backend_settings if s.api_key is not None]
    assert keys
    text = dump(to_data(translation))
    assert all(key.value not in text for key in keys)
    assert f"value: {REDACTED}" in text


_SETTINGS = st.builds(
    BackendSettingsIR,
    model_name_override=...,
    set_headers=...,
    remove_headers=...,
    set_fields=...,
    remove_fields=...,
    api_key=st.none() | st.from_type(ApiKey),
    credential_error=...,
)
_TRANSLATIONS = st.builds(
    Translation,
    gateways=st.lists(st.from_type(GatewayIR), max_size=2).map(tuple),
    backend_settings=st.lists(_SETTINGS, max_size=3).map(tuple),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_TRANSLATIONS)
def test_generated_ir_round_trips(translation: Translation) -> None:
    assert from_data(Translation, to_data(translation)) == _redacted(translation)


@settings(max_examples=60, deadline=None)
@given(st.from_type(RouteIR), st.from_type(TranslateOptions))
def test_generated_ir_round_trips_through_yaml(route: RouteIR, options: TranslateOptions) -> None:
    assert from_data(RouteIR, _through_yaml(to_data(route))) == route
    assert from_data(TranslateOptions, _through_yaml(to_data(options))) == options


def test_enums_are_values_and_defaults_are_left_out() -> None:
    assert to_data(Endpoint("10.0.0.1", 8000)) == {"address": "10.0.0.1", "port": 8000}
    assert to_data(Endpoint("/run/s.sock", 0, AddressKind.UNIX)) == {
        "address": "/run/s.sock",
        "port": 0,
        "kind": "unix",
    }
    assert to_data(TranslateOptions()) == {}
    assert from_data(TranslateOptions, {}) == TranslateOptions()


def test_only_unions_of_several_dataclasses_are_discriminated() -> None:
    route = RouteIR("r", PathMatchIR(PathKind.PREFIX, "/"), (), DirectAction(404, "no", "NotFound", "404"))
    data = to_data(route)
    assert data["action"] == {
        DISCRIMINATOR: "DirectAction",
        "status": 404,
        "message": "no",
        "error_type": "NotFound",
        "code": "404",
    }
    assert data["path"] == {"kind": "prefix", "value": "/"}  # a field named kind is a field, not the discriminator
    cluster = ClusterIR(
        "c", Discovery.EDS, (EndpointGroup("b", ()),), PoolBalancing(ObjectRef("InferencePool", "ns", "p"), True)
    )
    assert to_data(cluster)["pool"] == {
        "pool": {"kind": "InferencePool", "namespace": "ns", "name": "p"},
        "fail_open": True,
    }
    assert from_data(ClusterIR, to_data(cluster)) == cluster


def test_secrets_are_never_written() -> None:
    assert REDACTED == render.REDACTED
    settings_ir = BackendSettingsIR("rule", "backend", api_key=ApiKey("authorization", "Bearer sk-secret"))
    data = to_data(settings_ir)
    assert data["api_key"] == {"header": "authorization", "value": REDACTED}
    assert "sk-secret" not in dump(data)
    assert from_data(BackendSettingsIR, data).api_key == ApiKey("authorization", REDACTED)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"cluster": "c", "timeout_ms": None, "retries": 1}, "action: ForwardAction has no field retries"),
        ({"timeout_ms": 5}, "action: ForwardAction needs field cluster"),
        ({DISCRIMINATOR: "Nope", "cluster": "c"}, "action: @kind must name one of ForwardAction, DirectAction"),
        ({"cluster": "c", "timeout_ms": "5s"}, "action.timeout_ms: '5s' is none of"),
        ({"cluster": "c", "timeout_ms": True}, "action.timeout_ms: True is none of"),
    ],
)
def test_bad_data_is_refused_where_it_is(data: dict[str, Any], message: str) -> None:
    route = {"name": "r", "path": {"kind": "prefix", "value": "/"}, "headers": [], "action": data}
    if DISCRIMINATOR not in data:
        route["action"] = {DISCRIMINATOR: "ForwardAction", **data}
    with pytest.raises(ValueError, match=re.escape(message)):
        from_data(RouteIR, route)


def test_bad_values_name_their_path() -> None:
    gateway = {
        "namespace": "ns",
        "name": "g",
        "listeners": [],
        "clusters": [{"name": "c", "discovery": "DNS", "groups": []}],
    }
    with pytest.raises(ValueError, match=r"clusters\[0\]\.discovery: 'DNS' is not a Discovery"):
        from_data(GatewayIR, gateway)
    with pytest.raises(ValueError, match=r"gateways: expected a list"):
        from_data(XdsCase, {"options": {}, "gateways": {}})
    assert from_data(tuple[GatewayIR, ...], []) == ()


def test_writing_a_wrong_value_fails() -> None:
    with pytest.raises(TypeError, match="port: expected int"):
        to_data(Endpoint("a", "80"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"action: .* is none of"):
        to_data(RouteIR("r", PathMatchIR(PathKind.EXACT, "/"), (), "nowhere"))  # type: ignore[arg-type]
    assert to_data(ForwardAction("c", None)) == {"cluster": "c", "timeout_ms": None}
