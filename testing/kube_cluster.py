"""A throwaway Kubernetes control plane: real etcd and kube-apiserver, for the e2e tests of e2e/kube (through its
conftest) and for benchmarks; with a pod network, also kube-controller-manager and kube-scheduler, for a local node.

The binaries come from e2e/kube/build-binaries.sh (pinned in e2e/kube/gomod/, cached by version). `running_cluster`
starts etcd and kube-apiserver on random free 127.0.0.1 ports with a fresh CA, serving certificate, service-account
key and a `system:masters` token, applies the CRDs (by default the files the repository's CRD chart renders,
charts/xds-server-crds/charts/upstream/files), and stops its processes on the way out, whatever happened inside.

Without a network that is all: no controllers, no nodes. Given a `ClusterNetwork` (testing/localnode/network.py,
created and destroyed by the caller) the API server serves on the network's node address instead, with the network's
Service range and the `kubernetes` Service pointing at it, and the controller manager and scheduler
(testing/kube_controllers.py) run against it, so Deployments make Pods, Pods get scheduled onto Nodes, Services get
EndpointSlices and namespaces get their `default` ServiceAccount and `kube-root-ca.crt`.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import functools
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from testing.certificates import TestCertificateAuthority
from testing.kube_controllers import (
    COMPONENT_READY_TIMEOUT,
    COMPONENT_USERS,
    controller_manager_argv,
    scheduler_argv,
)
from testing.localnode.network import ClusterNetwork
from testing.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
KUBE_DIR = ROOT / "e2e" / "kube"
BUILD_SCRIPT = KUBE_DIR / "build-binaries.sh"
# The upstream CRDs the controller reads, as the CRD chart ships them; XDS_SERVER_CRDS points at another folder.
CRDS = Path(os.environ.get("XDS_SERVER_CRDS", ROOT / "charts" / "xds-server-crds" / "charts" / "upstream" / "files"))

# Generous: on the 2 shared cores a cold kube-apiserver takes several seconds to run its post-start hooks, and a
# loaded CI machine can take much longer. These bound a hang; nothing asserts on how fast things are.
ETCD_READY_TIMEOUT = 60.0
APISERVER_READY_TIMEOUT = 180.0
CRD_ESTABLISHED_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
# libyaml when PyYAML has it: the CRDs are megabytes, about 4 s per cluster start with the pure-Python loader.
_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
LOG_TAIL_LINES = 40


class ClusterStartError(RuntimeError):
    """Startup failed; the message carries the tail of the process logs."""


@dataclass(frozen=True)
class KubeCluster:
    """What a test needs to talk to the cluster (and, for compaction, to etcd underneath it)."""

    kubeconfig: Path
    api_client: k8s.ApiClient
    server: str
    token: str
    ca_file: Path
    etcd_url: str
    workdir: Path
    # The pod network the control plane serves (API server on its node address, controllers and scheduler running);
    # None for the bare loopback API server.
    network: ClusterNetwork | None
    _apiserver: _ApiServer = field(repr=False, compare=False)

    def restart_apiserver(self, down_seconds: float = 0.0) -> None:
        """Stops kube-apiserver (SIGTERM), waits `down_seconds`, starts it again on the same port and waits until it
        is ready: what clients see when a control-plane node restarts. etcd, and so every object, stays. Call it on
        the main thread: the new process dies with the thread that starts it (PR_SET_PDEATHSIG), and a worker
        thread (`asyncio.to_thread`) ends with its event loop."""
        self._apiserver.restart(down_seconds)

    def compact_etcd(self, revision: int) -> None:
        """Compact etcd's history up to `revision` through its JSON gRPC gateway.

        kube-apiserver resource versions are etcd revisions, so after this a watch from an older resourceVersion
        can no longer be served. physical=true waits until the compaction is applied to the backend.
        """
        body = json.dumps({"revision": str(revision), "physical": True}).encode()
        request = urllib.request.Request(
            f"{self.etcd_url}/v3/kv/compaction", data=body, headers={"Content-Type": "application/json"}
        )
        with _open(request, timeout=30) as response:
            response.read()


# --- binaries -----------------------------------------------------------------------------------------------------


def binary_dir() -> Path:
    """Where build-binaries.sh puts (or has put) the pinned binaries; asks the script so the path rule lives there."""
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-dir"], check=True, capture_output=True, text=True, timeout=60
    )
    return Path(out.stdout.strip().splitlines()[-1])


def binaries_present(directory: Path) -> bool:
    names = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
    return all(os.access(directory / name, os.X_OK) for name in names)


def build_binaries() -> Path:
    """Run the build script (a no-op when cached). Its progress goes to our stderr: a cold build takes minutes."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


# --- certificates and credentials ---------------------------------------------------------------------------------


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)
    path.chmod(0o600)


def _make_pki(directory: Path, extra_ips: Sequence[str] = ()) -> dict[str, Path]:
    """A CA, a serving certificate for 127.0.0.1/localhost (and `extra_ips`) signed by it, and a service-account
    signing key.

    EC P-256 throughout: generating it is instant (RSA would add noticeable startup time) and both kube-apiserver's
    TLS stack and its service-account token signer (ES256) accept it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    authority = TestCertificateAuthority("xds-server-test-ca")
    # The in-cluster names too, so a client configured the in-cluster way still verifies the server.
    in_cluster = ("kubernetes", "kubernetes.default", "kubernetes.default.svc")
    serving = authority.issue(("localhost", *in_cluster), ("127.0.0.1", *extra_ips), common_name="kube-apiserver")
    paths = {
        "ca": directory / "ca.crt",
        "serving_cert": directory / "apiserver.crt",
        "serving_key": directory / "apiserver.key",
        "sa_key": directory / "service-account.key",
        "sa_pub": directory / "service-account.pub",
    }
    paths["ca"].write_text(authority.pem)
    serving.write(directory, "apiserver")
    sa_key = ec.generate_private_key(ec.SECP256R1())
    _write_key(paths["sa_key"], sa_key)
    # The verifying side wants the public half on its own: kube-apiserver does not derive it from a PKCS#8 file.
    paths["sa_pub"].write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return paths


def _write_kubeconfig(path: Path, server: str, ca_file: Path, token: str, user: str = "admin") -> None:
    # CA embedded as data so the kubeconfig stays valid if it is copied out of the work dir for debugging.
    ca_data = base64.b64encode(ca_file.read_bytes()).decode()
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority-data": ca_data}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": user, "namespace": "default"}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(kubeconfig, sort_keys=False))
    path.chmod(0o600)


# --- processes ----------------------------------------------------------------------------------------------------


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: if pytest is killed outright (no teardown), the kernel kills the child too, so
    no etcd or kube-apiserver outlives the test run. SIGKILL, not SIGTERM: both would get SIGTERM at the same moment,
    and etcd's graceful stop then waits for the API server's open watches while the API server waits for etcd."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} unreadable)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def failure(self, what: str) -> ClusterStartError:
        return ClusterStartError(f"{self.name} {what}; last lines of {self.log}:\n{log_tail(self.log)}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time; always reaps the process."""
        if self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=STOP_TIMEOUT)


def _start(name: str, argv: list[str], log: Path, started: list[_Process]) -> _Process:
    """Start a process and record it in `started` at once, so it is stopped even if waiting for it fails."""
    with log.open("wb") as out:
        # The child keeps its own copy of the descriptor; ours can close at once.
        # A session of its own: Ctrl-C in the terminal then reaches only pytest, whose teardown stops the API
        # server before etcd, instead of interrupting both at once.
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    process = _Process(name, popen, log)
    started.append(process)
    return process


def _wait_until(process: _Process, timeout: float, what: str, probe: Callable[[], bool]) -> None:
    """Poll `probe` until it returns True; fail early, with the log tail, if the process exits meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        if process.popen.poll() is not None:
            raise process.failure(f"exited with status {process.popen.returncode} before it was {what}")
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
            if probe():
                return
        if time.monotonic() > deadline:
            raise process.failure(f"was not {what} after {timeout:.0f} s")
        time.sleep(0.2)


def _open(request: urllib.request.Request, timeout: float, context: ssl.SSLContext | None = None) -> Any:
    """urlopen that ignores *_proxy environment variables: everything here is on loopback."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers).open(request, timeout=timeout)


def _get(url: str, context: ssl.SSLContext | None = None, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with _open(request, timeout=5, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        # /readyz answers 500 with the failing checks while post-start hooks run: "not yet", not an error.
        return err.code, err.read()


def _start_etcd(etcd: Path, data_dir: Path, log: Path, started: list[_Process]) -> tuple[_Process, str]:
    client_port, peer_port = free_port(), free_port()
    client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    argv = [
        str(etcd),
        "--name=test",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=test={peer_url}",
        "--initial-cluster-state=new",
        # Throwaway data on a disk shared with other jobs: fsync would only make the tests slower.
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]
    process = _start("etcd", argv, log, started)

    def healthy() -> bool:
        status, body = _get(f"{client_url}/health")
        return status == 200 and json.loads(body).get("health") == "true"

    _wait_until(process, ETCD_READY_TIMEOUT, "healthy", healthy)
    return process, client_url


def _start_apiserver(
    apiserver: Path,
    etcd_url: str,
    pki: dict[str, Path],
    token_file: Path,
    token: str,
    workdir: Path,
    started: list[_Process],
    network: ClusterNetwork | None,
) -> tuple[_ApiServer, str]:
    # On the node address with a network, so pods on its bridge reach it (directly, or through the `kubernetes`
    # Service, whose endpoint is the advertised address); binding that address:0 also proves the port free there.
    host = network.node_ip if network is not None else "127.0.0.1"
    port = free_port(host)
    server = f"https://{host}:{port}"
    argv = [
        str(apiserver),
        f"--etcd-servers={etcd_url}",
        f"--bind-address={host}",
        # Without it the API server looks for a non-loopback interface to advertise, which a sandbox may not have.
        f"--advertise-address={host}",
        f"--secure-port={port}",
        # Unused with explicit certificates, but otherwise it defaults to /var/run/kubernetes.
        f"--cert-dir={workdir / 'apiserver-certs'}",
        f"--tls-cert-file={pki['serving_cert']}",
        f"--tls-private-key-file={pki['serving_key']}",
        f"--token-auth-file={token_file}",
        "--authorization-mode=RBAC",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki['sa_pub']}",
        f"--service-account-signing-key-file={pki['sa_key']}",
        # Without a network: serve lists and watches from etcd, not from the API server's watch cache: the cache
        # keeps serving a resourceVersion for a while after etcd compacted it, so with it a test could not force
        # "410 Gone" on demand. With a network, as a real cluster runs: kube-controller-manager 1.36 checks that its
        # informers have seen its own writes, which without the cache fails its syncs ("read version ... is not as
        # new as written version") and leaves ReplicaSets unscaled.
        f"--watch-cache={'true' if network is not None else 'false'}",
    ]
    if network is None:
        argv += [
            # Only allocates ClusterIPs to Services written to this API server; no traffic goes there.
            "--service-cluster-ip-range=10.0.0.0/24",
            # The `kubernetes` Service's endpoints would be 127.0.0.1, which endpoint validation rejects; nothing
            # here needs them.
            "--endpoint-reconciler-type=none",
        ]
    else:
        # The default (lease) endpoint reconciler stays: it points the `kubernetes` Service, whose ClusterIP is the
        # first of the range (network.kubernetes_service_ip), at node_ip:port, where the service proxy forwards.
        argv.append(f"--service-cluster-ip-range={network.service_cidr}")
    context = ssl.create_default_context(cafile=str(pki["ca"]))

    def ready() -> bool:
        status, _ = _get(f"{server}/readyz", context, token)
        return status == 200

    handle = _ApiServer(argv, workdir, ready, started)
    handle.start()
    return handle, server


@dataclass
class _ApiServer:
    """The kube-apiserver process, restartable on the same port (the kubeconfig names it)."""

    argv: list[str]
    workdir: Path
    ready: Callable[[], bool]
    started: list[_Process]
    runs: int = 0

    @property
    def process(self) -> _Process:
        return next(p for p in reversed(self.started) if p.name == "kube-apiserver")

    def start(self) -> None:
        self.runs += 1
        log = self.workdir / ("kube-apiserver.log" if self.runs == 1 else f"kube-apiserver-{self.runs}.log")
        process = _start("kube-apiserver", self.argv, log, self.started)
        _wait_until(process, APISERVER_READY_TIMEOUT, "ready (/readyz)", self.ready)

    def restart(self, down_seconds: float) -> None:
        self.process.stop()
        time.sleep(down_seconds)
        self.start()


# --- CRDs ---------------------------------------------------------------------------------------------------------


def crd_documents(directory: Path) -> list[dict[str, Any]]:
    if not directory.is_dir():
        raise ClusterStartError(
            f"CRD directory {directory} not found (the default is charts/xds-server-crds/charts/upstream/files in the "
            "repository; XDS_SERVER_CRDS overrides it)"
        )
    documents = [
        doc
        for path in sorted(directory.glob("*.yaml"))
        for doc in yaml.load_all(path.read_text(), Loader=_YAML_LOADER)
        if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition"
    ]
    if not documents:
        raise ClusterStartError(f"no CustomResourceDefinition in {directory}")
    return documents


def read_json(response: Any) -> Any:
    """Body of a `_preload_content=False` response, read to the end before the connection goes back to the pool
    (an unread body would be taken for the next response's status line)."""
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


def _condition_true(crd: dict[str, Any], kind: str) -> bool:
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions)


def apply_crds(api_client: k8s.ApiClient, documents: list[dict[str, Any]]) -> None:
    """Create every CRD, then wait until each is Established and its versions are in discovery.

    Established means the API server serves the resource; discovery can trail it a little, and clients that resolve
    kinds through discovery (kubectl, the dynamic client) would otherwise race it.
    """
    api = k8s.ApiextensionsV1Api(api_client)
    for doc in documents:
        # The raw dict goes through as-is; _preload_content=False skips the typed model, whose validation of CRD
        # status fields is stricter than the API server's.
        read_json(api.create_custom_resource_definition(body=doc, _preload_content=False))  # type: ignore[arg-type]
    wait_for_crds(api_client, documents)


def wait_for_crds(api_client: k8s.ApiClient, documents: list[dict[str, Any]]) -> None:
    """Until every CRD of `documents` (created by whoever) is Established and in discovery."""
    api = k8s.ApiextensionsV1Api(api_client)
    deadline = time.monotonic() + CRD_ESTABLISHED_TIMEOUT
    pending = {doc["metadata"]["name"]: doc for doc in documents}
    while pending:
        for name in list(pending):
            crd = read_json(api.read_custom_resource_definition(name, _preload_content=False))
            if _condition_true(crd, "Established") and _served_in_discovery(api_client, crd):
                del pending[name]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise ClusterStartError(f"CRDs not established after {CRD_ESTABLISHED_TIMEOUT:.0f} s: {sorted(pending)}")
        time.sleep(0.2)


def _served_in_discovery(api_client: k8s.ApiClient, crd: dict[str, Any]) -> bool:
    spec = crd["spec"]
    for version in spec["versions"]:
        if not version.get("served"):
            continue
        try:
            group_version = read_json(
                k8s.CustomObjectsApi(api_client).get_api_resources(
                    spec["group"], version["name"], _preload_content=False
                )
            )
        except k8s.ApiException:
            return False
        resources = group_version.get("resources", [])
        if not any(r.get("name") == spec["names"]["plural"] for r in resources):
            return False
    return True


# --- the whole thing ----------------------------------------------------------------------------------------------


def _start_controllers(
    bin_dir: Path,
    server: str,
    pki: dict[str, Path],
    tokens: dict[str, str],
    network: ClusterNetwork,
    workdir: Path,
    started: list[_Process],
) -> None:
    """kube-controller-manager, then kube-scheduler, each with its own kubeconfig (its own token, so the API server
    sees it as the user the bootstrap RBAC policy authorizes), each waited for on its /healthz."""
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    for name, build_argv in (("kube-controller-manager", controller_manager_argv), ("kube-scheduler", scheduler_argv)):
        user = COMPONENT_USERS[name]
        kubeconfig = workdir / f"{name}.kubeconfig"
        _write_kubeconfig(kubeconfig, server, pki["ca"], tokens[user], user=user)
        port = free_port(network.node_ip)
        argv = build_argv(bin_dir / name, kubeconfig, pki, network, port, workdir)
        process = _start(name, argv, workdir / f"{name}.log", started)
        healthy = functools.partial(_answers_ok, f"https://{network.node_ip}:{port}/healthz", context)
        _wait_until(process, COMPONENT_READY_TIMEOUT, "healthy (/healthz)", healthy)


LOCAL_NODE_NAME = "local-node"


def _start_local_node(
    server: str,
    kubeconfig: Path,
    pki: dict[str, Path],
    token: str,
    network: ClusterNetwork,
    workdir: Path,
    started: list[_Process],
) -> None:
    """`python -m testing.localnode` with the admin kubeconfig, until its Node is Ready and the `default` namespace
    has the ServiceAccount every pod there needs."""
    argv = [sys.executable, "-m", "testing.localnode", "--kubeconfig", str(kubeconfig)]
    argv += ["--network-index", str(network.index), "--workdir", str(workdir / "node"), "--node-name", LOCAL_NODE_NAME]
    process = _start("local-node", argv, workdir / "local-node.log", started)
    context = ssl.create_default_context(cafile=str(pki["ca"]))

    def ready() -> bool:
        status, body = _get(f"{server}/api/v1/nodes/{LOCAL_NODE_NAME}", context, token)
        if status != 200 or not _condition_true(json.loads(body), "Ready"):
            return False
        return _get(f"{server}/api/v1/namespaces/default/serviceaccounts/default", context, token)[0] == 200

    _wait_until(process, COMPONENT_READY_TIMEOUT, "ready (its Node Ready, default/default ServiceAccount)", ready)


def _answers_ok(url: str, context: ssl.SSLContext) -> bool:
    return _get(url, context)[0] == 200


@contextlib.contextmanager
def running_cluster(
    workdir: Path,
    bin_dir: Path,
    crds: Path | None = CRDS,
    network: ClusterNetwork | None = None,
    local_node: bool = False,
) -> Iterator[KubeCluster]:
    """etcd + kube-apiserver with the CRDs applied, for the duration of the `with` block; with `network`, the API
    server serves on its node address and kube-controller-manager and kube-scheduler run too (see the module
    docstring). The network belongs to the caller, who creates it before and destroys it after. `local_node` (with a
    network) adds the local node (testing/localnode: kubelet, service proxy, cluster DNS), and the cluster is ready
    when the node is and the `default` namespace has its ServiceAccount (before that, pods are refused). `crds=None`
    applies no CRDs (a test that installs them itself, with the CRD chart).

    `workdir` receives certificates, the kubeconfigs and the process logs (kept for post-mortems); etcd's data dir
    inside it is removed on exit. Every process is stopped and reaped on exit, on success or failure alike.
    """
    if local_node and network is None:
        raise ValueError("a local node needs a pod network")
    documents = crd_documents(crds) if crds is not None else []
    workdir.mkdir(parents=True, exist_ok=True)
    # The in-cluster ways to the API server: the node address and the `kubernetes` Service's ClusterIP.
    extra_ips = [network.node_ip, network.kubernetes_service_ip] if network is not None else []
    pki = _make_pki(workdir / "pki", extra_ips)
    token = secrets.token_urlsafe(32)
    users = COMPONENT_USERS.values() if network is not None else ()
    component_tokens = {user: secrets.token_urlsafe(32) for user in users}
    token_file = workdir / "tokens.csv"
    # token,user,uid,"groups": system:masters is bound to cluster-admin by the API server's bootstrap RBAC policy,
    # which also binds the users system:kube-controller-manager and system:kube-scheduler to their own roles.
    lines = [f'{token},xds-server-test,xds-server-test,"system:masters"']
    lines += [f"{component_token},{user},{user}" for user, component_token in component_tokens.items()]
    token_file.write_text("".join(f"{line}\n" for line in lines))
    token_file.chmod(0o600)
    data_dir = workdir / "etcd-data"
    processes: list[_Process] = []
    api_client: k8s.ApiClient | None = None
    try:
        _, etcd_url = _start_etcd(bin_dir / "etcd", data_dir, workdir / "etcd.log", processes)
        apiserver, server = _start_apiserver(
            bin_dir / "kube-apiserver", etcd_url, pki, token_file, token, workdir, processes, network
        )

        kubeconfig = workdir / "kubeconfig"
        _write_kubeconfig(kubeconfig, server, pki["ca"], token)
        # Built from the kubeconfig, not by hand, so every test also proves the kubeconfig is usable as written.
        api_client = k8s_config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
        try:
            apply_crds(api_client, documents)
        except (ClusterStartError, k8s.ApiException) as err:
            raise ClusterStartError(
                f"{err}\nlast lines of {apiserver.process.log}:\n{log_tail(apiserver.process.log)}"
            ) from err
        if network is not None:
            # After the CRDs, so the garbage collector's and quota controller's first discovery already has them.
            _start_controllers(bin_dir, server, pki, component_tokens, network, workdir, processes)
            if local_node:
                _start_local_node(server, kubeconfig, pki, token, network, workdir, processes)

        yield KubeCluster(
            kubeconfig=kubeconfig,
            api_client=api_client,
            server=server,
            token=token,
            ca_file=pki["ca"],
            etcd_url=etcd_url,
            workdir=workdir,
            network=network,
            _apiserver=apiserver,
        )
    finally:
        if api_client is not None:
            api_client.close()  # type: ignore[no-untyped-call]  # the kubernetes client leaves these unannotated
        # Reverse start order: the scheduler and controller manager, then the API server, then etcd (stopping etcd
        # under the API server only produces a burst of reconnect errors in its log).
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
