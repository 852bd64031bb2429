"""Options shared by tests/ and e2e/."""

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite the golden outputs (testdata/gatewayapi, testdata/xds, testdata/providers), not compare",
    )


@pytest.fixture
def update(request: pytest.FixtureRequest) -> bool:
    """--update-golden was given: a golden test rewrites its outputs before comparing."""
    return bool(request.config.getoption("--update-golden"))
