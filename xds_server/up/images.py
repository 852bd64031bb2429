"""Which local program stands in for a container image, recognised by repository name (registry and tag ignored)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from enum import StrEnum


class Runtime(StrEnum):
    TESTUPSTREAM = "testupstream"  # Envoy AI Gateway's test upstream -> `xds-server sim testupstream`
    VLLM = "vllm"  # llm-d-inference-sim -> `xds-server sim vllm` (accepts its flags)
    PICKER = "picker"  # the Inference Extension's Endpoint Picker: embedded in the control plane, no process


# Repository path suffixes, matched on whole path segments.
KNOWN_REPOSITORIES = {
    "ai-gateway-testupstream": Runtime.TESTUPSTREAM,
    "llm-d-inference-sim": Runtime.VLLM,
    "gateway-api-inference-extension/epp": Runtime.PICKER,
}


def repository(image: str) -> str:
    """`docker.io/envoyproxy/ai-gateway-testupstream:latest` -> `envoyproxy/ai-gateway-testupstream`."""
    name = image.split("@", 1)[0]  # digest
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:  # a tag (a colon before the last slash is a registry port)
        name = name[:colon]
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]  # a registry host
    return "/".join(parts)


def recognise(image: str | None) -> Runtime | None:
    repo = repository(image or "")
    for suffix, runtime in KNOWN_REPOSITORIES.items():
        if repo == suffix or repo.endswith("/" + suffix):
            return runtime
    return None


def command(runtime: Runtime, args: Sequence[str], host: str) -> list[str]:
    """The simulator with the manifest's args; `--host` last, so the pod listens on its own address only."""
    return [sys.executable, "-m", "xds_server.cli", "sim", runtime.value, *args, "--host", host]
