"""Golden files of both translation layers, compared exactly (layout: testing/cases.py).

Resources -> IR: testdata/gatewayapi/<case>/input.yaml -> output.yaml. IR -> xDS: testdata/xds/<case>/ir.yaml ->
xds.yaml. `pytest tests/test_golden.py --update-golden` rewrites the outputs, and writes a missing ir.yaml from the
case's layer-1 IR; `python -m testing.golden --regenerate-ir CASE` rewrites an existing one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testing.cases import GATEWAYAPI, INPUT_DIRS, PROVIDERS, TESTDATA, XDS, case_names, xds_case_names
from testing.golden import (
    GATEWAYAPI_FILES,
    XDS_FILES,
    gatewayapi_output,
    ir_file,
    ir_input,
    output_file,
    xds_file,
    xds_output,
)


def _dirs(layer: Path) -> set[str]:
    return {p.name for p in layer.iterdir() if p.is_dir()} if layer.is_dir() else set()


def _compare(file: Path, actual: str, update: bool, case: str) -> None:
    if update:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(actual)
    assert file.exists(), f"{file} missing: run pytest tests/test_golden.py --update-golden and review it"
    assert actual == file.read_text(), f"{case}: {file.name} changed; review and run --update-golden"


# Every directory under a layer is a case, so an output left without its input fails instead of being skipped.
@pytest.mark.parametrize("case", sorted(set(case_names()) | _dirs(GATEWAYAPI)))
def test_gatewayapi_to_ir(case: str, update: bool) -> None:
    assert case in case_names(), f"{GATEWAYAPI / case} has no input.yaml"
    _compare(output_file(case), gatewayapi_output(case), update, case)


# Each layer-1 case is a layer-2 case too: its ir.yaml, once written, is an input of its own.
@pytest.mark.parametrize("case", sorted(set(xds_case_names()) | set(case_names()) | _dirs(XDS)))
def test_ir_to_xds(case: str, update: bool) -> None:
    ir = ir_file(case)
    if update and not ir.exists() and case in case_names():
        ir.parent.mkdir(parents=True, exist_ok=True)
        ir.write_text(ir_input(case))
    if case in case_names():
        assert ir.exists(), f"{ir} missing: pytest tests/test_golden.py --update-golden writes it from layer 1"
    assert ir.exists(), f"{ir} missing, and {case} is no layer-1 case to write it from"
    _compare(xds_file(case), xds_output(case), update, case)


def test_testdata_holds_only_the_two_layers() -> None:
    assert {p.name for p in TESTDATA.iterdir()} <= {GATEWAYAPI.name, XDS.name, PROVIDERS.name}
    for layer, names in ((GATEWAYAPI, GATEWAYAPI_FILES), (XDS, XDS_FILES)):
        for case in _dirs(layer):
            strays = {p.name for p in (layer / case).iterdir()} - set(names)
            assert not strays, f"{layer / case}: unexpected {sorted(strays)}; a case holds only {names}"
    for case in INPUT_DIRS:
        assert not (GATEWAYAPI / case / "input.yaml").exists(), f"{case} reads {INPUT_DIRS[case]}, not input.yaml"
