"""Runs the upstream conformance suites against a cluster and our GatewayClass, and keeps their reports.

    python conformance/run.py --kubeconfig K --gateway-class C             both suites; reports in conformance/reports
    python conformance/run.py --kubeconfig K --gateway-class C --suite gateway-api --run-test HTTPRouteWeight
    python conformance/run.py --list                                       the tests of each suite (no cluster needed)
    python conformance/run.py --kubeconfig K --gateway-class C --dry-run   the command lines only
    sudo python conformance/run.py --local-cluster                         a whole local cluster (root: its pod
                                                                           network), the charts, GatewayClass
                                                                           xds-server, then both suites

The suites are the test binaries conformance/build.sh builds (and this script builds when missing): the Gateway API
conformance suite (sigs.k8s.io/gateway-api/conformance, one run per --profile, default GATEWAY-HTTP) and the Gateway
API Inference Extension suite. Each run writes reports/gateway-api-<version>-<profile>.yaml or
reports/inference-extension-<version>.yaml (the suite's ConformanceReport, as it wrote it) and the whole `go test -v`
output beside it (.log, not committed). A report is only replaced by a run that wrote one: a suite that fails before
its tests run (GatewayClass not Accepted, base pods never Ready, ...) writes none, and the log says why.

The two suites use the same namespaces (gateway-conformance-infra, gateway-conformance-app-backend) and delete them
when they finish without waiting, so before each run this waits until no namespace of either suite is left; a run
whose namespaces are still terminating would fail. See conformance/README.md for what the suites expect of the
cluster.

Gateway API v1.6.1 writes its report before its tests marked Parallel have run and counts them as passed
(kubernetes-sigs/gateway-api#5142): the report is kept as written, and this compares it with the log's failures.

Exit status: 0 when every suite ran and passed, 1 otherwise (a report may still show which tests failed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUILD = HERE / "build.sh"
REPORTS = HERE / "reports"

# The namespaces the suites' base manifests create; both suites create the first two.
SUITE_NAMESPACES = ("gateway-conformance-infra", "gateway-conformance-app-backend", "gateway-conformance-web-backend")

# Core features of the Gateway API profiles (sigs.k8s.io/gateway-api/conformance/utils/suite/profiles.go). Passed as
# --supported-features so the suite does not infer the features from the GatewayClass's status.supportedFeatures.
PROFILE_CORE_FEATURES = {
    "GATEWAY-HTTP": ("Gateway", "HTTPRoute", "ReferenceGrant"),
    "GATEWAY-GRPC": ("Gateway", "GRPCRoute", "ReferenceGrant"),
    "GATEWAY-TLS": ("Gateway", "TLSRoute", "ReferenceGrant"),
    "GATEWAY-TCP": ("Gateway", "TCPRoute", "ReferenceGrant"),
    "GATEWAY-UDP": ("Gateway", "UDPRoute", "ReferenceGrant"),
}


def pinned_version(module_dir: str, module: str) -> str:
    """The version conformance/gomod/<module_dir>/go.mod pins `module` at."""
    text = (HERE / "gomod" / module_dir / "go.mod").read_text()
    match = re.search(rf"^\s*{re.escape(module)}\s+(v\S+)", text, re.MULTILINE)
    if match is None:
        raise SystemExit(f"run.py: {module} is not pinned in conformance/gomod/{module_dir}/go.mod")
    return match.group(1)


def project_version() -> str:
    match = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    return f"v{match.group(1)}" if match else "unknown"


def binaries() -> dict[str, Path]:
    """conformance/build.sh's binaries by name, built when missing (cold: about two minutes on 2 cores)."""
    result = subprocess.run([str(BUILD)], check=False, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise SystemExit(f"run.py: {BUILD} failed (exit {result.returncode}); its stderr is above")
    found = {}
    for line in result.stdout.splitlines():
        name, _, path = line.partition(" ")
        found[name] = Path(path)
    return found


@dataclass
class Run:
    """One invocation of a suite binary."""

    name: str  # the report's file name without .yaml
    binary: Path
    args: list[str]

    @property
    def report(self) -> Path:
        return REPORTS / f"{self.name}.yaml"

    @property
    def log(self) -> Path:
        return REPORTS / f"{self.name}.log"

    def argv(self, report: Path) -> list[str]:
        return [str(self.binary), *self.args, f"--report-output={report}"]


def implementation_flags(args: argparse.Namespace) -> list[str]:
    return [
        f"--organization={args.organization}",
        f"--project={args.project}",
        f"--url={args.url}",
        f"--version={args.version}",
        f"--contact={args.contact}",
        f"--mode={args.mode}",
    ]


def go_test_flags(args: argparse.Namespace) -> list[str]:
    # A compiled test binary has no timeout unless given one (`go test` would impose 10 minutes).
    return ["-test.v", "-test.run=^TestConformance$", f"-test.timeout={args.test_timeout}"]


def gateway_api_runs(args: argparse.Namespace, binary: Path) -> list[Run]:
    version = pinned_version("gateway-api", "sigs.k8s.io/gateway-api/conformance")
    runs = []
    for profile in args.profile:
        flags = [*go_test_flags(args), f"--gateway-class={args.gateway_class}", f"--conformance-profiles={profile}"]
        if args.supported_features:
            flags.append(f"--supported-features={args.supported_features}")
        elif not args.infer_features:
            core = PROFILE_CORE_FEATURES.get(profile)
            if core is None:
                raise SystemExit(f"run.py: no core features known for profile {profile}: pass --supported-features")
            flags.append(f"--supported-features={','.join(core)}")
        if args.skip_tests:
            flags.append(f"--skip-tests={args.skip_tests}")
        if args.run_test:
            flags.append(f"--run-test={args.run_test}")
        if args.timeout_config_overrides:
            flags.append(f"--timeout-config-overrides={args.timeout_config_overrides}")
        if args.allow_crds_mismatch:
            flags.append("--allow-crds-mismatch")
        if args.no_cleanup:
            flags += ["--cleanup-base-resources=false", "--cleanup-test-resources=false"]
        if args.debug:
            flags.append("--debug")
        flags += implementation_flags(args) + args.extra
        runs.append(Run(f"gateway-api-{version}-{profile.lower()}", binary, flags))
    return runs


def inference_extension_run(args: argparse.Namespace, binary: Path) -> Run:
    version = pinned_version("inference-extension", "sigs.k8s.io/gateway-api-inference-extension")
    flags = [
        *go_test_flags(args),
        f"--gateway-class={args.gateway_class}",
        # The suite is built on the Gateway API v1.4.0 conformance framework, which refuses Gateway API CRDs of
        # another bundle version (ours are v1.6.1); with this flag it runs and reports gatewayAPIVersion UNDEFINED.
        "--allow-crds-mismatch",
    ]
    if args.skip_tests:
        flags.append(f"--skip-tests={args.skip_tests}")
    if args.run_test:
        flags.append(f"--run-test={args.run_test}")
    if args.no_cleanup:
        flags.append("--cleanup-base-resources=false")  # the only cleanup flag this suite has
    if args.debug:
        flags.append("--debug")
    flags += implementation_flags(args) + args.extra
    return Run(f"inference-extension-{version}", binary, flags)


def wait_for_namespaces_gone(kubeconfig: str, timeout: float) -> None:
    """Waits until none of the suites' namespaces exists (a previous run's may still be terminating)."""
    from kubernetes import client, config  # the test extra; imported here so --list and --dry-run need no cluster
    from kubernetes.client.exceptions import ApiException

    try:
        api_client = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError) as error:
        raise SystemExit(f"run.py: cannot use kubeconfig {kubeconfig}: {error}") from error
    try:
        core = client.CoreV1Api(api_client)
        deadline = time.monotonic() + timeout
        while True:
            try:
                names: set[str] = set()
                for item in core.list_namespace(_request_timeout=10).items:
                    if item.metadata is not None and item.metadata.name:
                        names.add(item.metadata.name)
            except (ApiException, OSError) as error:
                raise SystemExit(f"run.py: cannot list namespaces with {kubeconfig}: {error}") from error
            left = sorted(names.intersection(SUITE_NAMESPACES))
            if not left:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"run.py: namespaces {', '.join(left)} still exist after {timeout:.0f} s")
            print(f"run.py: waiting for namespaces {', '.join(left)} to go", file=sys.stderr, flush=True)
            time.sleep(5)
    finally:
        api_client.close()


# What --quiet shows of the suite's `go test -v` output (all of it goes to the log).
_HEADLINE = re.compile(r"^\s*(--- (PASS|FAIL|SKIP)|=== RUN\s+TestConformance/\S+$|(PASS|FAIL|ok)\b)|Test Setup:|Error:")


def execute(run: Run, kubeconfig: str, quiet: bool) -> bool:
    """Runs one suite; True when it exited 0 and wrote its report."""
    REPORTS.mkdir(parents=True, exist_ok=True)
    pending = run.report.with_name(f".{run.report.name}.tmp")
    pending.unlink(missing_ok=True)
    argv = run.argv(pending)
    env = dict(os.environ, KUBECONFIG=kubeconfig)
    started = time.monotonic()
    print(f"run.py: {run.name}: {shlex.join(argv)}", file=sys.stderr, flush=True)
    with run.log.open("w") as log:
        log.write(f"# {datetime.datetime.now(datetime.UTC).isoformat()} KUBECONFIG={kubeconfig}\n")
        log.write(f"# {shlex.join(argv)}\n")
        process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=HERE)
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            if not quiet or _HEADLINE.search(line):
                sys.stdout.write(line)
                sys.stdout.flush()
        code = process.wait()
    seconds = time.monotonic() - started
    if not pending.exists():
        print(
            f"run.py: {run.name}: exit {code} after {seconds:.0f} s and no report (the suite stopped before its tests"
            f" ran); {run.report} left as it was; see {run.log}",
            file=sys.stderr,
        )
        return False
    pending.replace(run.report)
    print(f"run.py: {run.name}: exit {code} after {seconds:.0f} s; report {run.report}", file=sys.stderr)
    report = yaml.safe_load(run.report.read_text()) or {}
    for line in summary(report):
        print(f"    {line}", file=sys.stderr)
    unreported = failed_in_log(run.log.read_text()) - failed_in_report(report)
    if unreported:
        # Gateway API v1.6.1 writes its report before the tests marked Parallel have run, and counts them as passed
        # (kubernetes-sigs/gateway-api#5142, fixed in v1.6.2). The report is kept as the suite wrote it.
        print(
            f"run.py: {run.name}: these tests FAILED (see the log) but the report counts them as passed, an upstream"
            f" bug (kubernetes-sigs/gateway-api#5142): {', '.join(sorted(unreported))}",
            file=sys.stderr,
        )
    sys.stderr.flush()
    return code == 0 and not unreported


def summary(report: dict[str, Any]) -> list[str]:
    """Each profile's results as the report states them."""
    lines = []
    for profile in report.get("profiles") or []:
        for part in ("core", "extended"):
            status = profile.get(part)
            if status:
                counts = status.get("statistics") or {}
                numbers = ", ".join(f"{key} {counts.get(key, 0)}" for key in ("Passed", "Failed", "Skipped"))
                lines.append(f"{profile.get('name')} {part}: {status.get('result')} ({numbers})")
                lines += [f"  failed: {name}" for name in status.get("failedTests") or []]
                lines += [f"  skipped: {name}" for name in status.get("skippedTests") or []]
    return lines


def failed_in_report(report: dict[str, Any]) -> set[str]:
    return {
        name
        for profile in report.get("profiles") or []
        for part in ("core", "extended")
        for name in (profile.get(part) or {}).get("failedTests") or []
    }


def failed_in_log(log: str) -> set[str]:
    """The suite's tests (subtests of TestConformance, not their own subtests) that `go test -v` says failed."""
    return set(re.findall(r"^\s*--- FAIL: TestConformance/([^/\s]+) \(", log, re.MULTILINE))


def list_tests(found: dict[str, Path]) -> None:
    """Each suite's tests as its binary lists them (--list-tests), marking what the runs here would run."""
    for name, binary in (("gateway-api", found["gateway-api"]), ("inference-extension", found["inference-extension"])):
        out = subprocess.run(
            [str(binary), "-list-tests", "-test.run=^TestListTests$"], check=True, stdout=subprocess.PIPE, text=True
        ).stdout
        tests = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        print(f"{name}: {len(tests)} tests")
        for test in tests:
            if name == "gateway-api":
                core = ",".join(test["coreProfiles"]) or "-"
                print(f"  {test['name']:<58} features {','.join(test['features']):<56} core in {core}")
            else:
                core = "yes" if test["core"] else "no"
                print(f"  {test['name']:<58} features {','.join(test['features']) or '-':<56} core {core}")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python conformance/run.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="default: $KUBECONFIG")
    parser.add_argument("--gateway-class", help="the GatewayClass under test (must exist and be Accepted)")
    parser.add_argument("--suite", choices=("gateway-api", "inference-extension", "all"), default="all")
    parser.add_argument(
        "--profile",
        action="append",
        help="Gateway API conformance profile, one run and report each (repeatable; default GATEWAY-HTTP)",
    )
    parser.add_argument(
        "--supported-features",
        help="Gateway API suite: comma-separated features claimed (default: the profile's core features only)",
    )
    parser.add_argument(
        "--infer-features",
        action="store_true",
        help="Gateway API suite: pass no features; the suite reads the GatewayClass's status.supportedFeatures",
    )
    parser.add_argument("--skip-tests", help="comma-separated test names to skip (the report becomes `partial`)")
    parser.add_argument("--run-test", help="one test only (debugging; the report covers that test)")
    parser.add_argument(
        "--timeout-config-overrides",
        help="Gateway API suite only, e.g. 'GatewayMustHaveAddress:300;NamespacesMustBeReady:600' (seconds)",
    )
    parser.add_argument("--allow-crds-mismatch", action="store_true", help="Gateway API suite (always on for IE)")
    parser.add_argument("--no-cleanup", action="store_true", help="leave the suites' resources in the cluster")
    parser.add_argument("--debug", action="store_true", help="the suites' --debug (request/response dumps)")
    parser.add_argument("--test-timeout", default="2h", help="per suite run, a Go duration (default 2h)")
    parser.add_argument("--namespace-timeout", type=float, default=600, help="seconds to wait for old namespaces")
    parser.add_argument("--organization", default="xds-server")
    parser.add_argument("--project", default="xds-server")
    parser.add_argument("--url", default="local", help="the report's implementation.url (a repository or site)")
    parser.add_argument("--version", default=project_version(), help="default: pyproject.toml's version")
    parser.add_argument("--contact", default="local", help="comma-separated maintainers (GitHub handles, e-mail)")
    parser.add_argument("--mode", default="default", help="the implementation's operating mode in the report")
    parser.add_argument("--quiet", action="store_true", help="show test results only; everything is in the log")
    parser.add_argument("--list", action="store_true", help="list the suites' tests and exit (no cluster needed)")
    parser.add_argument("--dry-run", action="store_true", help="print the command lines and exit")
    parser.add_argument(
        "--local-cluster",
        action="store_true",
        help="start a whole cluster on this machine (testing/local_cluster.py: needs root), install the charts and a"
        " GatewayClass of the controller (named by --gateway-class, default xds-server), run the suites against it,"
        " stop it",
    )
    parser.add_argument("--workdir", type=Path, help="--local-cluster: where its logs go (default: a temp dir)")
    parser.add_argument("extra", nargs="*", help="after --: more flags for every suite binary")
    args = parser.parse_args(argv)
    args.profile = args.profile or ["GATEWAY-HTTP"]
    if args.local_cluster:
        args.gateway_class = args.gateway_class or LOCAL_GATEWAY_CLASS
    if not args.list and not args.gateway_class:
        parser.error("--gateway-class is required")
    if not args.list and not args.dry_run and not args.kubeconfig and not args.local_cluster:
        parser.error("--kubeconfig (or $KUBECONFIG) is required")
    return args


LOCAL_GATEWAY_CLASS = "xds-server"
CONTROLLER_NAME = "gateway.envoyproxy.io/gatewayclass-controller"  # the chart's default controllerName
GATEWAY_CLASS_SECONDS = 180.0


def accepted_gateway_class(api_client: Any, name: str) -> None:
    """Creates the GatewayClass of our controller and waits until the controller accepts it (both suites check it
    first, and give up after 180 s)."""
    from kubernetes import client

    custom = client.CustomObjectsApi(api_client)
    body = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": name},
        "spec": {"controllerName": CONTROLLER_NAME},
    }
    custom.create_cluster_custom_object("gateway.networking.k8s.io", "v1", "gatewayclasses", body)
    deadline = time.monotonic() + GATEWAY_CLASS_SECONDS
    while time.monotonic() < deadline:
        found = cast(
            dict[str, Any], custom.get_cluster_custom_object("gateway.networking.k8s.io", "v1", "gatewayclasses", name)
        )
        conditions = (found.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Accepted" and c.get("status") == "True" for c in conditions):
            return
        time.sleep(0.5)
    raise SystemExit(f"run.py: GatewayClass {name} not Accepted after {GATEWAY_CLASS_SECONDS:.0f} s")


def run_suites(args: argparse.Namespace, runs: list[Run], kubeconfig: str) -> bool:
    passed = True
    for run in runs:
        wait_for_namespaces_gone(kubeconfig, args.namespace_timeout)
        passed = execute(run, kubeconfig, args.quiet) and passed
    return passed


def on_local_cluster(args: argparse.Namespace, runs: list[Run]) -> bool:
    """The suites against a whole local cluster, started for them and stopped after."""
    import tempfile

    sys.path.insert(0, str(ROOT))  # the repository's test support (run as `python conformance/run.py`)
    from testing.local_cluster import local_cluster

    peers = subprocess.run(["bash", str(ROOT / "bench" / "peers" / "build.sh"), "epp"], check=False, text=True)
    if peers.returncode != 0:
        raise SystemExit("run.py: building the Endpoint Picker the Inference Extension suite runs failed")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="xds-server-conformance-"))
    print(f"run.py: local cluster in {workdir} (its logs stay there)", file=sys.stderr, flush=True)
    with local_cluster(workdir) as (cluster, _):
        accepted_gateway_class(cluster.api_client, args.gateway_class)
        return run_suites(args, runs, str(cluster.kubeconfig))


def main(argv: Sequence[str] = sys.argv[1:]) -> int:
    # SIGTERM unwinds like Ctrl-C: a local cluster is then stopped and its pod network removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    args = parse(argv)
    found = binaries()
    if args.list:
        list_tests(found)
        return 0
    runs: list[Run] = []
    if args.suite in ("gateway-api", "all"):
        runs += gateway_api_runs(args, found["gateway-api"])
    if args.suite in ("inference-extension", "all"):
        runs.append(inference_extension_run(args, found["inference-extension"]))
    if args.no_cleanup and len(runs) > 1:
        raise SystemExit("run.py: --no-cleanup leaves namespaces a next run would wait for: one suite only")
    if args.dry_run:
        for run in runs:
            print(f"KUBECONFIG={shlex.quote(args.kubeconfig or '<kubeconfig>')} {shlex.join(run.argv(run.report))}")
        return 0
    if args.local_cluster:
        return 0 if on_local_cluster(args, runs) else 1
    return 0 if run_suites(args, runs, str(Path(args.kubeconfig).resolve())) else 1


if __name__ == "__main__":
    sys.exit(main())
