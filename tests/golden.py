"""Golden cases: testdata/<case>/input.yaml (or a directory of manifests) -> testdata/<case>/expected.yaml."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from translators.gatewayapi import translate
from translators.ir import TranslateOptions
from translators.loader import ResourceSet, load_texts, manifest_files
from translators.xds.render import translation_dict

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = ROOT / "testdata"
TUTORIAL = ROOT / "examples" / "tutorial"
# The verbatim tutorial, kept beside the repository (../shared/seed); XDS_SERVER_SEED points elsewhere.
SEED = Path(os.environ.get("XDS_SERVER_SEED", ROOT.parent / "shared" / "seed"))
# Cases whose manifests live elsewhere: the tutorial is the project's own example, kept runnable.
INPUT_DIRS = {"tutorial": TUTORIAL}
OPTIONS = TranslateOptions()


def case_names() -> list[str]:
    cases = {p.parent.name for p in TESTDATA.glob("*/input.yaml")} | set(INPUT_DIRS)
    return sorted(cases)


def load_case(case: str) -> ResourceSet:
    """Files are named relative to the case so expected.yaml does not depend on where the repo is."""
    base = INPUT_DIRS.get(case, TESTDATA / case)
    files = manifest_files([base]) if base.is_dir() and case in INPUT_DIRS else [base / "input.yaml"]
    return load_texts((f.relative_to(ROOT).as_posix(), f.read_text()) for f in files)


def render_case(case: str) -> dict[str, Any]:
    resources = load_case(case)
    return translation_dict(translate(resources, OPTIONS), resources.errors, OPTIONS)


def dump(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False, width=120)
