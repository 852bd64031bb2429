"""Fixtures for tests against a real Kubernetes API server (etcd + kube-apiserver built from pinned sources).

`kube_cluster` (session scope) builds the binaries if the cache lacks them, starts the control plane on loopback
with every CRD of the repository's CRD chart applied (charts/xds-server-crds/charts/upstream/files; XDS_SERVER_CRDS
names another folder), and stops it at the end of the session however the tests ended.
The cluster support itself is testing/kube_cluster.py, shared with the benchmarks (bench.kube_propagation).
`epp_binary` (session scope) is the Inference Extension's Endpoint Picker, built by bench/peers/build.sh when the
cache lacks it; `helm_binary` (session scope) is helm v4, built by e2e/kube/build-helm.sh when the cache lacks it.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient

from testing.kube_cluster import KubeCluster, binaries_present, binary_dir, build_binaries, running_cluster
from testing.kube_objects import fresh_namespace


def _ensure_binaries(config: pytest.Config) -> None:
    if binaries_present(binary_dir()):
        return
    # A cold build takes about 5 minutes: show its progress instead of letting pytest capture it, so a plain
    # `python -m pytest` does not look hung.
    capture = config.pluginmanager.getplugin("capturemanager")
    disabled = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
    with disabled:
        print("\ne2e/kube: building etcd and kube-apiserver (once per version, cached) ...", file=sys.stderr)
        build_binaries()


@pytest.fixture(scope="session")
def kube_cluster(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    """A running API server with the CRDs Established: kubeconfig path, ApiClient, etcd URL."""
    _ensure_binaries(pytestconfig)
    # pytest keeps the last few runs' temp dirs, so the process logs survive for a look after a failure.
    with running_cluster(tmp_path_factory.mktemp("kube"), binary_dir()) as cluster:
        yield cluster


@pytest.fixture
def api_client(kube_cluster: KubeCluster) -> k8s.ApiClient:
    return kube_cluster.api_client


@pytest.fixture
def dynamic_client(kube_cluster: KubeCluster) -> DynamicClient:
    # Its discovery cache goes to the cluster's work dir, not a shared file in /tmp named after the (random) URL.
    cache_file = str(kube_cluster.workdir / "discovery-cache.json")
    return DynamicClient(kube_cluster.api_client, cache_file=cache_file)  # type: ignore[no-untyped-call]  # unannotated


@pytest.fixture
def namespace(api_client: k8s.ApiClient) -> str:
    """A fresh namespace per test, so tests sharing the session's cluster never see each other's objects.

    Not deleted afterwards: without kube-controller-manager a deleted namespace stays Terminating forever, and the
    whole cluster goes away at the end of the session anyway.
    """
    return fresh_namespace(k8s.CoreV1Api(api_client))


PEERS_BUILD = Path(__file__).resolve().parents[2] / "bench" / "peers" / "build.sh"


def _run_streaming_stderr(command: list[str]) -> tuple[int, str, str]:
    """Runs `command`; its stderr is shown as it comes (a cold Go build takes minutes) and also kept."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kept: list[str] = []

    def relay() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            kept.append(line)
            print(line, end="", file=sys.stderr, flush=True)

    relaying = threading.Thread(target=relay, daemon=True)
    relaying.start()
    assert process.stdout is not None
    stdout = process.stdout.read()  # not communicate(): that would read stderr too, away from the relay
    process.wait()
    relaying.join()
    return process.returncode, stdout, "".join(kept)


@pytest.fixture(scope="session")
def epp_binary(pytestconfig: pytest.Config) -> Path:
    """The Gateway API Inference Extension's Endpoint Picker v1.0.2 (`go install .../cmd/epp@v1.0.2` from the Go
    module proxy, by bench/peers/build.sh, cached under ~/.cache/xds-server/peers like the BBR peer). A cold build
    shows its progress on stderr; anything but a built or cached binary fails with the command and its output."""
    command = ["bash", str(PEERS_BUILD), "epp"]
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    disabled = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
    with disabled:
        returncode, stdout, stderr = _run_streaming_stderr(command)
    found = re.search(r"^epp: (?:cached|built) (\S+)", stdout, re.MULTILINE)
    if returncode != 0 or found is None or not os.access(found[1], os.X_OK):
        pytest.fail(
            f"building the Endpoint Picker failed: {' '.join(command)} exited {returncode}\n"
            f"stdout:\n{stdout}\nstderr:\n{stderr}",
            pytrace=False,
        )
    return Path(found[1])


HELM_BUILD = Path(__file__).resolve().parent / "build-helm.sh"


@pytest.fixture(scope="session")
def helm_binary(pytestconfig: pytest.Config) -> Path:
    """helm v4, built by e2e/kube/build-helm.sh (`go install helm.sh/helm/v4/cmd/helm@<version>` from the Go module
    proxy, cached under ~/.cache/xds-server/helm/<version>/). A cold build shows its progress on stderr; anything but
    a built or cached binary fails with the command and its output."""
    command = ["bash", str(HELM_BUILD)]
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    disabled = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
    with disabled:
        returncode, stdout, stderr = _run_streaming_stderr(command)
    lines = stdout.strip().splitlines()
    if returncode != 0 or not lines or not os.access(lines[-1], os.X_OK):
        pytest.fail(
            f"building helm failed: {' '.join(command)} exited {returncode}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            pytrace=False,
        )
    return Path(lines[-1])
