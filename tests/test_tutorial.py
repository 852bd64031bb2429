"""The tutorial through `xds-server translate`: the project's own example always, the verbatim seed when present."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from testing.cases import OPTIONS, SEED, TUTORIAL
from translators.gatewayapi import translate
from translators.loader import ObjectKey
from translators.xds.gateway import gateway_resources
from translators.xds.names import AI_FILTER
from translators.xds.render import resources_dict
from xds_server.sources.files import load_paths

MODELS = {"meta-llama/Llama-3.1-8B-Instruct", "mistral:latest", "some-cool-self-hosted-model"}
needs_seed = pytest.mark.skipif(
    not SEED.is_dir(),
    reason=f"optional verbatim tutorial copy not found at {SEED} (XDS_SERVER_SEED names another folder)",
)


def _cli_translate(path: Path) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "xds_server.cli", "translate", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # The seed's step 04 applies its own RoleBinding and ClusterRoleBinding under step 03's names, binding another
    # ServiceAccount: a real cluster keeps 04's, and the first picker loses its grants. Said, as it must be.
    rebound = {"RoleBinding/default/pod-read-binding", "ClusterRoleBinding/auth-reviewer-binding"}
    said = {line.split(": ")[2] for line in result.stderr.splitlines()}
    assert said == (rebound if path == SEED else set()), result.stderr
    assert all(line.startswith("warning: ") and "defined twice" in line for line in result.stderr.splitlines())
    document: dict[str, Any] = yaml.safe_load(result.stdout)
    return document


def _check_tutorial_output(document: dict[str, Any]) -> None:
    [gateway] = document["gateways"]
    assert gateway["gateway"] == "default/inference-pool-with-aigwroute"
    [route_config] = gateway["routes"]
    [vhost] = route_config["virtual_hosts"]
    model_matches = {
        header["string_match"]["exact"]
        for route in vhost["routes"]
        for header in route["match"].get("headers", [])
        if header["name"] == "x-ai-eg-model" and "exact" in header.get("string_match", {})
    }
    assert model_matches == MODELS
    # Where AI requests start: the body's model is read there, and a body that is not JSON is answered there.
    entry = vhost["routes"][-1]
    assert entry["direct_response"]["status"] == 400 and AI_FILTER in entry["typed_per_filter_config"]
    clusters = {c["name"]: c for c in gateway["clusters"]}
    for pool in ("vllm-llama3-8b-instruct", "mistral"):
        cluster = clusters[f"inferencepool/default/{pool}"]
        assert cluster["type"] == "EDS"
        policy = cluster["load_balancing_policy"]["policies"][0]["typed_extension_config"]
        assert policy["name"] == "envoy.load_balancing_policies.override_host"
    basic = clusters["aiservicebackend/default/envoy-ai-gateway-basic-testupstream"]
    assert basic["type"] == "STRICT_DNS"
    address = basic["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert address == {
        "address": "envoy-ai-gateway-basic-testupstream.default.svc.cluster.local",
        "port_value": 80,
    }


def test_translate_cli_on_the_example_tutorial() -> None:
    _check_tutorial_output(_cli_translate(TUTORIAL))


@needs_seed
def test_translate_cli_on_the_seed() -> None:
    _check_tutorial_output(_cli_translate(SEED))


@needs_seed
def test_seed_and_example_give_the_same_envoy_configuration() -> None:
    def rendered(path: Path) -> list[dict[str, Any]]:
        resources = load_paths([path])
        assert resources.errors == ()
        return [resources_dict(gateway_resources(g, OPTIONS)) for g in translate(resources, OPTIONS).gateways]

    assert rendered(SEED) == rendered(TUTORIAL)


@needs_seed
def test_seed_applies_like_kubectl() -> None:
    resources = load_paths([SEED])
    # 03 and 04 both define ConfigMap default/plugins-config: the later file wins.
    origin = resources.origins[ObjectKey("ConfigMap", "default", "plugins-config")]
    assert Path(origin.file).name == "04-mistral-inference-deploy.yaml"
    # Every kind in the seed is typed; RBAC objects defined twice are applied twice, the later one kept.
    assert resources.unknown == ()
    role = resources.origins[ObjectKey("Role", "default", "pod-read")]
    assert Path(role.file).name == "04-mistral-inference-deploy.yaml"
    assert ObjectKey("ClusterRole", "", "auth-reviewer") in resources.objects
    assert resources.objects[ObjectKey("InferencePool", "default", "mistral")].namespace == "default"
