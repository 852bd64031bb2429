"""The command lines of kube-controller-manager and kube-scheduler for the test cluster with a pod network
(testing/kube_cluster.py starts them, after the API server, through the same process machinery).

Both talk to the API server on the network's node address, each through a kubeconfig with a token of its own user
(system:kube-controller-manager, system:kube-scheduler: the users the API server's bootstrap RBAC policy binds to the
roles these components need), without leader election (one replica), and serve HTTPS on the node address on a
random port with the API server's certificate (whose SANs include the node address), so startup can wait for their
/healthz, which the default --authorization-always-allow-paths let an anonymous client read.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from testing.localnode.network import ClusterNetwork

# Each component's user (the token file's user name, which RBAC authorizes), by binary name.
COMPONENT_USERS = {
    "kube-controller-manager": "system:kube-controller-manager",
    "kube-scheduler": "system:kube-scheduler",
}
# A bound on a hang, as in kube_cluster: both are healthy within seconds on an idle machine.
COMPONENT_READY_TIMEOUT = 120.0


def _serving(pki: dict[str, Path], network: ClusterNetwork, port: int) -> list[str]:
    return [
        f"--bind-address={network.node_ip}",
        f"--secure-port={port}",
        # Otherwise each generates a self-signed certificate, which nothing could verify.
        f"--tls-cert-file={pki['serving_cert']}",
        f"--tls-private-key-file={pki['serving_key']}",
    ]


def controller_manager_argv(
    binary: Path, kubeconfig: Path, pki: dict[str, Path], network: ClusterNetwork, port: int, workdir: Path
) -> list[str]:
    return [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        # The on-by-default set, spelled out: deployment, replicaset, endpointslice, garbage collector, namespace,
        # serviceaccount, serviceaccount-token, node lifecycle, pod GC, root-ca-certificate-publisher and the rest.
        # Controllers whose prerequisites are absent (node IPAM without --allocate-node-cidrs, CSR signing without
        # --cluster-signing-* files, cloud controllers without a cloud provider) log that they are skipped.
        "--controllers=*",
        # Each controller acts as its own ServiceAccount in kube-system (system:serviceaccount:kube-system:<name>,
        # bound by the bootstrap policy), as in kubeadm clusters: the controller manager's own user only creates
        # those accounts and requests their tokens. Their tokens are signed by the API server (TokenRequest).
        "--use-service-account-credentials=true",
        # The API server's signing key: the serviceaccount-token controller fills legacy token Secrets with it (it
        # does not start without one).
        f"--service-account-private-key-file={pki['sa_key']}",
        # What the root-ca-certificate-publisher writes into every namespace's kube-root-ca.crt ConfigMap (and the
        # legacy token Secrets' ca.crt): the cluster CA, which signed the API server's certificate.
        f"--root-ca-file={pki['ca']}",
        "--leader-elect=false",
        f"--service-cluster-ip-range={network.service_cidr}",
        # The network gives pods their addresses (network.add_pod), not the node's spec.podCIDR.
        "--allocate-node-cidrs=false",
        # No --cluster-signing-cert-file/--cluster-signing-key-file: nothing here submits CertificateSigningRequests
        # (no kubelet TLS bootstrap), and the CSR signing controller is simply skipped without them.
        *_serving(pki, network, port),
        f"--cert-dir={workdir / 'kube-controller-manager-certs'}",
    ]


def scheduler_argv(
    binary: Path, kubeconfig: Path, pki: dict[str, Path], network: ClusterNetwork, port: int, workdir: Path
) -> list[str]:
    # A configuration file rather than the flags --kubeconfig and --leader-elect: the scheduler has deprecated
    # --kubeconfig, and ignores such flags when a configuration file is given.
    config = workdir / "kube-scheduler.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubescheduler.config.k8s.io/v1",
                "kind": "KubeSchedulerConfiguration",
                "clientConnection": {"kubeconfig": str(kubeconfig)},
                "leaderElection": {"leaderElect": False},
            },
            sort_keys=False,
        )
    )
    return [
        str(binary),
        f"--config={config}",
        *_serving(pki, network, port),
        f"--cert-dir={workdir / 'kube-scheduler-certs'}",
    ]
