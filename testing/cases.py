"""The translation cases under testdata/, in two layers, as Envoy Gateway keeps them:

1. Gateway API resources -> IR: testdata/gatewayapi/<case>/input.yaml (a case of INPUT_DIRS reads a directory of
   manifests instead: the tutorial is the project's own example, kept runnable) -> output.yaml.
2. IR -> xDS: testdata/xds/<case>/ir.yaml (an `XdsCase`: the TranslateOptions and the Gateways' IR) -> xds.yaml.

A layer-2 input is a file in its own right: it was first written from the case's layer-1 IR, and is not rewritten
from it when the translator changes. tests/test_golden.py compares both layers' outputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from translators.gatewayapi import translate
from translators.ir import GatewayIR, TranslateOptions, Translation
from translators.ir_yaml import from_data
from translators.loader import ResourceSet, load_texts
from translators.xds.gateway import gateway_resources
from translators.xds.render import resources_dict
from xds_server.sources.files import manifest_files

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = ROOT / "testdata"
GATEWAYAPI = TESTDATA / "gatewayapi"  # layer 1: <case>/input.yaml -> <case>/output.yaml
XDS = TESTDATA / "xds"  # layer 2: <case>/ir.yaml -> <case>/xds.yaml
# Not configuration: the data path's request and answer translation per provider schema (tests/test_schema_*.py).
PROVIDERS = TESTDATA / "providers"
TUTORIAL = ROOT / "examples" / "tutorial"
# The verbatim tutorial, kept beside the repository (../shared/seed); XDS_SERVER_SEED points elsewhere.
SEED = Path(os.environ.get("XDS_SERVER_SEED", ROOT.parent / "shared" / "seed"))
# Layer-1 cases whose manifests live elsewhere.
INPUT_DIRS = {"tutorial": TUTORIAL}
OPTIONS = TranslateOptions()


def case_names() -> list[str]:
    """The layer-1 cases: every testdata/gatewayapi/<case>/input.yaml, and INPUT_DIRS."""
    return sorted({p.parent.name for p in GATEWAYAPI.glob("*/input.yaml")} | set(INPUT_DIRS))


def xds_case_names() -> list[str]:
    """The layer-2 cases: every testdata/xds/<case>/ir.yaml."""
    return sorted(p.parent.name for p in XDS.glob("*/ir.yaml"))


def load_case(case: str) -> ResourceSet:
    """A layer-1 case's resources; files are named relative to the repository, so outputs do not depend on where
    it is."""
    files = manifest_files([INPUT_DIRS[case]]) if case in INPUT_DIRS else [GATEWAYAPI / case / "input.yaml"]
    return load_texts((f.relative_to(ROOT).as_posix(), f.read_text()) for f in files)


def translate_case(case: str) -> Translation:
    return translate(load_case(case), OPTIONS)


@dataclass(frozen=True)
class XdsCase:
    """A layer-2 input, testdata/xds/<case>/ir.yaml: what `gateway_resources` is given for each Gateway."""

    options: TranslateOptions
    gateways: tuple[GatewayIR, ...]


def load_xds_case(case: str) -> XdsCase:
    return from_data(XdsCase, yaml.safe_load((XDS / case / "ir.yaml").read_text()))


def xds_resources(case: str) -> list[dict[str, Any]]:
    """A layer-2 case's output: per Gateway of its ir.yaml, the xDS resources as `xds-server translate` prints them."""
    ir = load_xds_case(case)
    return [resources_dict(gateway_resources(gateway, ir.options)) for gateway in ir.gateways]
