"""A whole cluster on this machine with the project's charts installed: the pod network, etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, the local node (kubelet, service proxy, DNS), then the CRD chart and the
controller chart with helm, the controller ready. Shared by the cluster e2e tests and conformance/run.py.

Needs root (the pod network) and the Go-built tools, each cached after its first build: the Kubernetes binaries
(e2e/kube/build-binaries.sh) and helm (e2e/kube/build-helm.sh), built here when missing; the images the caller's
pods run (the Endpoint Picker: bench/peers/build.sh epp; echo-basic and coredns: conformance/build.sh) are the
caller's to build.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from testing.helm import Helm
from testing.kube_cluster import KubeCluster, build_binaries, running_cluster, wait_for_crds
from testing.kube_objects import documents
from testing.localnode.network import create_network

ROOT = Path(__file__).resolve().parent.parent
CONTROLLER_CHART = ROOT / "charts" / "xds-server"
CRDS_CHART = ROOT / "charts" / "xds-server-crds"
HELM_BUILD = ROOT / "e2e" / "kube" / "build-helm.sh"
SYSTEM = "xds-server-system"  # the controller's namespace


def build_helm() -> Path:
    """helm v4 from the Go module proxy (cached; its progress goes to our stderr)."""
    out = subprocess.run(["bash", str(HELM_BUILD)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def install_charts(cluster: KubeCluster, helm: Helm, values: dict[str, Any] | None = None) -> None:
    """The CRD chart (until its CRDs are served), then the controller chart into xds-server-system until helm
    finds its Deployment available (which takes the local kubelet's pod status)."""
    assert "STATUS: deployed" in helm.run("install", "xds-server-crds", str(CRDS_CHART))
    manifest = documents(helm.run("get", "manifest", "xds-server-crds"))
    wait_for_crds(cluster.api_client, [d for d in manifest if d["kind"] == "CustomResourceDefinition"])
    install = ["install", "xds-server", str(CONTROLLER_CHART), "--namespace", SYSTEM, "--create-namespace", "--wait"]
    helm.run(*install, values=values)


@contextlib.contextmanager
def local_cluster(
    workdir: Path, helm_binary: Path | None = None, values: dict[str, Any] | None = None
) -> Iterator[tuple[KubeCluster, Helm]]:
    """The cluster with the charts installed (`values` for the controller chart), for the `with` block; everything
    is stopped and the pod network removed on the way out."""
    bin_dir = build_binaries()
    helm_path = helm_binary or build_helm()
    network = create_network()
    try:
        with running_cluster(workdir, bin_dir, crds=None, network=network, local_node=True) as cluster:
            helm = Helm(helm_path, workdir / "helm", cluster.kubeconfig)
            install_charts(cluster, helm, values)
            yield cluster, helm
    finally:
        network.destroy()
