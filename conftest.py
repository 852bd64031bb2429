"""Options shared by tests/ and e2e/."""

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite testdata/<case>/expected.yaml from the current translator instead of comparing",
    )
