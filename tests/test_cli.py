"""`xds-server translate` as a user runs it: a real subprocess, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from testing.cases import GATEWAYAPI as TESTDATA
from testing.cases import TUTORIAL


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xds_server.cli", *args], capture_output=True, text=True, check=False)


def test_invalid_objects_print_what_translated_and_exit_1() -> None:
    result = run("translate", str(TESTDATA / "invalid-objects" / "input.yaml"))
    assert result.returncode == 1
    document = yaml.safe_load(result.stdout)
    assert [g["gateway"] for g in document["gateways"]] == ["default/gw"]
    assert "errors" not in document  # errors go to stderr, one line each
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 6 and all(line.startswith("error: ") for line in lines)
    assert any(
        "AIGatewayRoute/default/bogus-match: field spec.rules[0].matches[0].headers[0].type" in ln for ln in lines
    )


def test_json_output_and_options() -> None:
    result = run(
        "translate",
        str(TUTORIAL),
        "-o",
        "json",
        "--listener-address",
        "0.0.0.0",
        "--extproc-address",
        "cp.internal:2000",
    )
    assert result.returncode == 0, result.stderr
    [gateway] = json.loads(result.stdout)["gateways"]
    assert gateway["listeners"][0]["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 80}
    extproc = next(c for c in gateway["clusters"] if c["name"] == "xds-server/extproc")
    assert extproc["type"] == "STRICT_DNS"
    address = extproc["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "cp.internal", "port_value": 2000}


def test_resolver_hook_maps_cluster_local_fqdn_to_service_pods(tmp_path: Path) -> None:
    pod = """
apiVersion: v1
kind: Pod
metadata: {name: basic-0, labels: {app: envoy-ai-gateway-basic-testupstream}}
spec: {containers: [{name: c, ports: [{containerPort: 8080}]}]}
status: {podIP: 127.0.1.7, phase: Running, conditions: [{type: Ready, status: "True"}]}
"""
    (tmp_path / "pod.yaml").write_text(pod)
    files = [str(p) for p in sorted(TUTORIAL.glob("*.yaml"))] + [str(tmp_path / "pod.yaml")]
    without = yaml.safe_load(run("translate", *files).stdout)["gateways"][0]
    with_hook = yaml.safe_load(run("translate", *files, "--resolve-cluster-local").stdout)["gateways"][0]
    name = "aiservicebackend/default/envoy-ai-gateway-basic-testupstream"
    assert next(c for c in without["clusters"] if c["name"] == name)["type"] == "STRICT_DNS"
    assert next(c for c in with_hook["clusters"] if c["name"] == name)["type"] == "EDS"
    [assignment] = [a for a in with_hook["endpoints"] if a["cluster_name"] == name]
    address = assignment["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert address == {"address": "127.0.1.7", "port_value": 8080}  # Service port 80 -> targetPort 8080


def test_bad_option_is_a_usage_error() -> None:
    result = run("translate", str(TUTORIAL), "--extproc-address", "no-port")
    assert result.returncode == 2 and "HOST:PORT" in result.stderr


def test_an_extproc_socket_becomes_a_pipe_address_of_the_extproc_cluster() -> None:
    result = run("translate", str(TUTORIAL), "-o", "json", "--extproc-address", "unix:/run/user/7/xds-server/x.sock")
    assert result.returncode == 0, result.stderr
    [gateway] = json.loads(result.stdout)["gateways"]
    [cluster] = [c for c in gateway["clusters"] if c["name"] == "xds-server/extproc"]
    [group] = cluster["load_assignment"]["endpoints"]
    assert group["lb_endpoints"][0]["endpoint"]["address"] == {"pipe": {"path": "/run/user/7/xds-server/x.sock"}}
    assert cluster["type"] == "STATIC" and "transport_socket" not in cluster
    for bad in ("unix:relative.sock", "127.0.0.1"):
        refused = run("translate", str(TUTORIAL), "--extproc-address", bad)
        assert refused.returncode == 2 and "--extproc-address" in refused.stderr, bad


def test_bootstrap_reaches_the_users_ads_socket_by_default_and_tcp_or_tls_by_flag(tmp_path: Path) -> None:
    env_run = subprocess.run(
        [sys.executable, "-m", "xds_server.cli", "bootstrap", "--gateway", "default/gw"],
        capture_output=True,
        text=True,
        check=True,
        env={"XDG_RUNTIME_DIR": "/run/user/7", "PATH": "/usr/bin:/bin"},
    )
    [ads] = yaml.safe_load(env_run.stdout)["static_resources"]["clusters"]
    endpoint = ads["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint == {"address": {"pipe": {"path": "/run/user/7/xds-server/ads.sock"}}}
    assert ads["type"] == "STATIC"

    tcp = run("bootstrap", "--gateway", "default/gw", "--xds-address", "127.0.0.1:18000")
    [ads] = yaml.safe_load(tcp.stdout)["static_resources"]["clusters"]
    assert "transport_socket" not in ads
    address = ads["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address == {"socket_address": {"address": "127.0.0.1", "port_value": 18000}}

    flags = ["--tls-dir", str(tmp_path), "--tls-server-name", "xds-server.system.svc.cluster.local"]
    tls = run("bootstrap", "--gateway", "default/gw", "--xds-address", "127.0.0.1:18000", *flags)
    [ads] = yaml.safe_load(tls.stdout)["static_resources"]["clusters"]
    context = ads["transport_socket"]["typed_config"]
    assert context["sni"] == "xds-server.system.svc.cluster.local"
    sds = context["common_tls_context"]["tls_certificate_sds_secret_configs"][0]["sds_config"]["path_config_source"]
    assert sds == {"path": f"{tmp_path}/sds-certificate.json", "watched_directory": {"path": str(tmp_path)}}

    alone = run("bootstrap", "--gateway", "default/gw", "--tls-dir", str(tmp_path))
    assert alone.returncode == 2 and "--tls-dir and --tls-server-name go together" in alone.stderr
    assert run("bootstrap", "--gateway", "no-slash").returncode == 2


def test_objects_of_unsupported_kinds_are_warned_about_and_exit_0() -> None:
    result = run("translate", str(TESTDATA / "unsupported-kinds" / "input.yaml"))
    assert result.returncode == 0, result.stderr
    warnings = sorted(line for line in result.stderr.splitlines() if line.startswith("warning: "))
    assert len(warnings) == 5, result.stderr  # the ServiceMonitor (not a gateway group) is not one of them
    assert warnings[-2] == (
        "warning: SecurityPolicy default/require-jwt: SecurityPolicy (gateway.envoyproxy.io) is not implemented by "
        "this controller; not enforced: authentication and authorization (the routes it targets are open)"
    )


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == "xds-server 0.1.0"  # pyproject.toml's version


def test_the_model_length_limit_is_an_option_within_what_envoys_regex_budget_allows() -> None:
    result = run("translate", str(TUTORIAL), "-o", "json", "--max-model-length", "64")
    assert result.returncode == 0, result.stderr
    [gateway] = json.loads(result.stdout)["gateways"]
    [routes] = gateway["routes"]
    [too_long] = [r for v in routes["virtual_hosts"] for r in v["routes"] if r["name"].endswith("/model-too-long")]
    assert too_long["match"]["headers"][0]["string_match"]["safe_regex"]["regex"].endswith("{65,}")
    assert too_long["direct_response"]["body_format"]["json_format"]["error"]["message"] == (
        "'model' is longer than 64 characters"
    )
    for out_of_range in ("0", "1000"):  # RE2 counts to 1,000 at most
        refused = run("translate", str(TUTORIAL), "--max-model-length", out_of_range)
        assert refused.returncode == 2 and "between 1 and 999" in refused.stderr
