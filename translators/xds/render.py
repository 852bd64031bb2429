"""xDS resources -> plain data (for YAML/JSON output and golden files), in a stable order."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from google.protobuf.json_format import MessageToJson
from google.protobuf.message import Message

from translators.ir import (
    BackendSettingsIR,
    Condition,
    ObjectStatus,
    ParentRefIR,
    PoolIR,
    TranslateOptions,
    Translation,
)
from translators.loader import LoadError
from translators.xds.gateway import XdsResources, gateway_resources
from translators.xds.override_host import json_descriptor_pool

_FIRST_KEYS = {"@type": 0, "name": 1}


def _canonical(value: Any) -> Any:
    """Protobuf maps and Structs come out in hash order; sort keys (type and name first) for stable output."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (_FIRST_KEYS.get(k, 2), k))
        return {k: _canonical(value[k]) for k in keys}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def message_dict(message: Message) -> dict[str, Any]:
    """Proto field names (snake_case, as in Envoy's YAML docs), keys in a stable order.

    Packed configs are read with descriptors that know the fields Envoy has and xds-protos lacks (`override_host`).
    """
    text = MessageToJson(message, preserving_proto_field_name=True, descriptor_pool=json_descriptor_pool())
    result: dict[str, Any] = _canonical(json.loads(text))
    return result


def resources_dict(resources: XdsResources) -> dict[str, Any]:
    return {
        "gateway": resources.gateway,
        "listeners": [message_dict(m) for m in resources.listeners],
        "routes": [message_dict(m) for m in resources.routes],
        "clusters": [message_dict(m) for m in resources.clusters],
        "endpoints": [message_dict(m) for m in resources.endpoints],
        **({"secrets": [_secret_dict(m) for m in resources.secrets]} if resources.secrets else {}),
    }


def _secret_dict(secret: Message) -> dict[str, Any]:
    """A certificate with its private key redacted, an API key redacted: output is shown, logged and kept in golden
    files."""
    shown = message_dict(secret)
    if "tls_certificate" in shown:
        shown["tls_certificate"]["private_key"] = {"inline_string": REDACTED}
    else:
        shown["generic_secret"]["secret"] = {"inline_string": REDACTED}
    return shown


def _conditions(conditions: tuple[Condition, ...]) -> list[dict[str, str]]:
    return [{k: str(v) for k, v in asdict(c).items()} for c in conditions]


def _parent_ref(parent: ParentRefIR) -> dict[str, Any]:
    """As Kubernetes writes a parentRef: every field that has a value."""
    fields = {
        "group": parent.group,
        "kind": parent.kind,
        "namespace": parent.namespace,
        "name": parent.name,
        "section_name": parent.section_name,
        "port": parent.port,
    }
    return {k: v for k, v in fields.items() if v is not None}


def status_dict(status: ObjectStatus) -> dict[str, Any]:
    """What this controller says of one object: its own conditions, then (routes and pools) one entry per parent
    Gateway, or (Gateways) one entry per listener."""
    shown: dict[str, Any] = {
        "kind": status.ref.kind,
        "namespace": status.ref.namespace,
        "name": status.ref.name,
        "generation": status.generation,
        "conditions": _conditions(status.conditions),
    }
    if status.parents:
        shown["parents"] = [
            {"parent_ref": _parent_ref(p.parent), "conditions": _conditions(p.conditions)} for p in status.parents
        ]
    if status.listeners:
        shown["listeners"] = [
            {
                "name": listener.name,
                "supported_kinds": [{"group": group, "kind": kind} for group, kind in listener.supported_kinds],
                "attached_routes": listener.attached_routes,
                "conditions": _conditions(listener.conditions),
            }
            for listener in status.listeners
        ]
    return shown


def pool_dict(pool: PoolIR) -> dict[str, Any]:
    """What the pool's picker is given (`picker`: whether the embedded picker serves the pool at all); the endpoints
    are left out, they are the members' addresses and ports.

    The picker config's text is shown line by line, which YAML prints far more readably than one long string.
    """
    config: dict[str, Any] = {"origin": pool.picker_config.origin}
    if pool.picker_config.error is not None:
        config["error"] = pool.picker_config.error
    if pool.picker_config.text is not None:
        config["text_lines"] = pool.picker_config.text.splitlines()
    return {
        "namespace": pool.namespace,
        "name": pool.name,
        "fail_open": pool.fail_open,
        "picker": pool.picker.value,
        "picker_service": pool.picker_service,
        "members": [asdict(m) for m in pool.members],
        "objectives": [asdict(o) for o in pool.objectives],
        "picker_config": config,
    }


REDACTED = "<redacted>"


def settings_dict(settings: BackendSettingsIR) -> dict[str, Any]:
    """The upstream-phase settings of a (rule, backend), with the credential's value never shown."""
    hidden = ("schema", "aws", "token")  # shown below, without their secrets
    shown = {k: v for k, v in asdict(settings).items() if v not in (None, ()) and k not in hidden}
    if settings.token is not None:
        token = settings.token
        shown["token"] = {"kind": str(token.kind), "policy": token.key, "scope": token.scope, "secret": REDACTED}
    if settings.aws is not None:
        signed = {"credentials": REDACTED, "region": settings.aws.region, "service": settings.aws.service}
        shown["aws"] = signed
    if settings.translates:
        schema = settings.schema
        shown["schema"] = {k: str(v) for k, v in (("name", schema.name), ("version", schema.version)) if v is not None}
        if schema.prefix is not None:
            shown["schema"]["prefix"] = schema.prefix
    if settings.api_key is not None:
        shown["api_key"] = {"header": settings.api_key.header, "value": REDACTED}
    return shown


def error_dict(error: LoadError) -> dict[str, Any]:
    return {
        "file": error.origin.file,
        "document": error.origin.document,
        "kind": error.kind,
        "namespace": error.namespace,
        "name": error.name,
        "field": error.field,
        "reason": error.reason,
    }


def translation_dict(
    translation: Translation, errors: tuple[LoadError, ...], options: TranslateOptions
) -> dict[str, Any]:
    """Everything `xds-server translate` prints: per-Gateway resources, pools, object conditions, load errors."""
    return {
        "gateways": [resources_dict(gateway_resources(g, options)) for g in translation.gateways],
        "pools": [pool_dict(p) for p in translation.pools],
        "backend_settings": [settings_dict(s) for s in translation.backend_settings],
        "status": [status_dict(s) for s in translation.statuses],
        "errors": [error_dict(e) for e in errors],
    }
