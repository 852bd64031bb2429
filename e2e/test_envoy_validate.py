"""Real Envoy accepts what we generate: every IR -> xDS golden case (testdata/xds/<case>/ir.yaml), its resources
built by the current code, run through `envoy --mode validate`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from testing.cases import xds_case_names, xds_resources
from testing.static_bootstrap import static_bootstrap
from xds_server.envoy import envoy_binary, envoy_environment


def _validate(bootstrap: dict[str, object], path: Path, base_id: int) -> subprocess.CompletedProcess[str]:
    path.write_text(yaml.safe_dump(bootstrap))
    return subprocess.run(
        [
            str(envoy_binary()),
            "--mode",
            "validate",
            "-c",
            str(path),
            "--base-id",
            str(base_id),
            "-l",
            "error",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=envoy_environment(),
    )


@pytest.mark.parametrize("case", xds_case_names())
def test_envoy_accepts_golden_case(case: str, tmp_path: Path) -> None:
    gateways = xds_resources(case)
    assert gateways, f"{case} translates to no gateway"
    for index, gateway in enumerate(gateways):
        result = _validate(static_bootstrap(gateway), tmp_path / f"{index}.yaml", 1000 + os.getpid() % 20000 + index)
        assert result.returncode == 0, f"{case} {gateway['gateway']}: {result.stdout}{result.stderr}"
        assert "OK" in result.stdout


def test_envoy_rejects_a_broken_configuration(tmp_path: Path) -> None:
    """The check is real: a route to a cluster that does not exist fails validation."""
    gateway = xds_resources("tutorial")[0]
    bootstrap = static_bootstrap(gateway)
    manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    manager["route_config"]["validate_clusters"] = True
    forwarding = next(r for r in manager["route_config"]["virtual_hosts"][0]["routes"] if "route" in r)
    forwarding["route"]["cluster"] = "no-such-cluster"
    result = _validate(bootstrap, tmp_path / "broken.yaml", 30000 + os.getpid() % 20000)
    assert result.returncode != 0
    assert "no-such-cluster" in result.stdout + result.stderr
