"""Fixtures for tests against a real Kubernetes API server (etcd + kube-apiserver built from pinned sources).

`kube_cluster` (session scope) builds the binaries if the cache lacks them, starts the control plane on loopback
with every CRD from the repository's charts/xds-server-crds/crds applied (XDS_SERVER_CRDS names another folder),
and stops it at the end of the session however the tests ended.
The cluster support itself is testing/kube_cluster.py, shared with the benchmarks (bench.kube_propagation).
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient

from testing.kube_cluster import KubeCluster, binaries_present, binary_dir, build_binaries, running_cluster


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
    return DynamicClient(kube_cluster.api_client, cache_file=str(kube_cluster.workdir / "discovery-cache.json"))


@pytest.fixture
def namespace(api_client: k8s.ApiClient) -> str:
    """A fresh namespace per test, so tests sharing the session's cluster never see each other's objects.

    Not deleted afterwards: without kube-controller-manager a deleted namespace stays Terminating forever, and the
    whole cluster goes away at the end of the session anyway.
    """
    name = f"t-{uuid.uuid4().hex[:10]}"
    k8s.CoreV1Api(api_client).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    return name
