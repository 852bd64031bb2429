"""Translation golden files, compared exactly. Regenerate with `pytest tests/test_golden.py --update-golden`."""

from __future__ import annotations

import pytest

from tests.golden import TESTDATA, case_names, dump, render_case

REQUIRED_CASES = {
    "tutorial",
    "basic-aiservicebackend",
    "weighted-priority-backends",
    "regex-multi-header",
    "two-gateways-two-listeners",
    "hostnames",
    "httproute-inferencepool",
    "missing-references",
    "failopen-failclose",
    "model-name-override",
    "invalid-objects",
    "inferencepool-picker",
}


def test_every_required_case_exists() -> None:
    assert set(case_names()) >= REQUIRED_CASES


@pytest.mark.parametrize("case", case_names())
def test_golden(case: str, request: pytest.FixtureRequest) -> None:
    actual = dump(render_case(case))
    expected_file = TESTDATA / case / "expected.yaml"
    if request.config.getoption("--update-golden"):
        expected_file.parent.mkdir(parents=True, exist_ok=True)
        expected_file.write_text(actual)
    assert expected_file.exists(), f"{expected_file} missing: run pytest --update-golden and review it"
    assert actual == expected_file.read_text(), f"{case}: translation changed; review and run --update-golden"
