"""xDS resources -> plain data (for YAML/JSON output and golden files), in a stable order."""

from __future__ import annotations

from typing import Any

import json

from google.protobuf.json_format import MessageToJson
from google.protobuf.message import Message

from translators.xds import XdsResources


def message_dict(message: Message) -> dict[str, Any]:
    """Proto field names (snake_case, as in Envoy's YAML docs); plain dicts, never OrderedDicts."""
    result: dict[str, Any] = json.loads(MessageToJson(message, preserving_proto_field_name=True, indent=None))
    return result


def resources_dict(resources: XdsResources) -> dict[str, Any]:
    return {
        "gateway": resources.gateway,
        "listeners": [message_dict(m) for m in resources.listeners],
        "routes": [message_dict(m) for m in resources.routes],
        "clusters": [message_dict(m) for m in resources.clusters],
        "endpoints": [message_dict(m) for m in resources.endpoints],
    }
