"""Options shared by tests/ and e2e/."""

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite the golden outputs (testdata/gatewayapi/*/output.yaml, testdata/xds/*/xds.yaml), not compare",
    )
