"""With a pod network, the test cluster is a whole control plane for a local node: kube-apiserver on the network's
node address, kube-controller-manager and kube-scheduler. What a node (and the pods on it) will rely on works the way
it does in a cluster: namespaces get their ServiceAccount and CA, Deployments become Pods with the API-access volume,
garbage collection follows owner references, the scheduler binds Pods to a Ready Node, Services get EndpointSlices,
and the `kubernetes` Service and the node address both lead to the API server.

No kubelet runs: where one would act (registering the Node, renewing its Lease, reporting a Pod's IP and readiness)
the tests write what it would write.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import ipaddress
import json
import socket
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import pytest
from kubernetes import client as k8s

from e2e.kube.conftest import _ensure_binaries
from testing.kube_cluster import KubeCluster, binary_dir, running_cluster
from testing.kube_objects import fresh_namespace
from testing.localnode.network import ClusterNetwork, create_network
from testing.web import eventually

# Bounds a hang on a loaded 2-core machine; nothing asserts on how fast anything happens.
WAIT_SECONDS = 90.0
# A kubelet renews its Lease every 10 s; the node lifecycle controller marks a Node unreachable after 50 s without.
HEARTBEAT_SECONDS = 5.0
SERVICE_ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
# Matches no Node, so these Pods stay unscheduled (no nodeName) whatever Nodes other tests create.
NOWHERE = {"kubernetes.io/hostname": "no-such-node"}


# Polls a probe until it holds (testing.web.eventually), with this file's patience.
wait_for = functools.partial(eventually, seconds=WAIT_SECONDS)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


T = TypeVar("T")


def _present(value: T | None) -> T:
    """`value`, a field the client's models declare optional but the API server always fills in; for where an
    `assert ... is not None` statement cannot go (lambdas, comprehensions)."""
    assert value is not None
    return value


class _Stored(Protocol):
    """An object as the API server answers it."""

    @property
    def metadata(self) -> k8s.V1ObjectMeta | None: ...


def _name(obj: _Stored) -> str:
    return _present(_present(obj.metadata).name)


def _uid(obj: _Stored) -> str:
    return _present(_present(obj.metadata).uid)


# --- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def control_plane(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    """Its own cluster (not the session's loopback one), on a fresh pod network that outlives it by a moment."""
    _ensure_binaries(pytestconfig)
    network = create_network()
    try:
        with running_cluster(tmp_path_factory.mktemp("control-plane"), binary_dir(), network=network) as cluster:
            yield cluster
    finally:
        network.destroy()


@pytest.fixture(scope="module")
def network(control_plane: KubeCluster) -> ClusterNetwork:
    assert control_plane.network is not None
    return control_plane.network


@pytest.fixture
def core(control_plane: KubeCluster) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(control_plane.api_client)


@pytest.fixture
def apps(control_plane: KubeCluster) -> k8s.AppsV1Api:
    return k8s.AppsV1Api(control_plane.api_client)


@pytest.fixture
def namespace(core: k8s.CoreV1Api) -> str:
    """A fresh namespace on this module's cluster (the conftest's fixture of that name is on the session's)."""
    return fresh_namespace(core)


@contextlib.contextmanager
def _heartbeat(leases: k8s.CoordinationV1Api, node: str) -> Iterator[None]:
    """The node's Lease in kube-node-lease, renewed from a thread as a kubelet renews it."""
    spec = {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": _now()}
    body = {"metadata": {"name": node}, "spec": spec}
    # The client validates a dict argument into this very model; validating it here types the call.
    leases.create_namespaced_lease("kube-node-lease", k8s.V1Lease.model_validate(body))
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(Exception):  # a missed beat is what the grace period is for
                leases.patch_namespaced_lease(node, "kube-node-lease", {"spec": {"renewTime": _now()}})

    thread = threading.Thread(target=renew, name=f"lease-{node}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@pytest.fixture(scope="module")
def node(control_plane: KubeCluster, network: ClusterNetwork) -> Iterator[k8s.V1Node]:
    """A Node as a kubelet registers it (Ready, with allocatable resources, at the node address), its Lease renewed
    while this module's tests run. The answer is the Node as the API server stored it at creation."""
    name = f"node-{uuid.uuid4().hex[:8]}"
    resources = {"cpu": "4", "memory": "8Gi", "pods": "110"}
    body = {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "addresses": [{"type": "InternalIP", "address": network.node_ip}, {"type": "Hostname", "address": name}],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "lastHeartbeatTime": _now(),
                    "lastTransitionTime": _now(),
                }
            ],
        },
    }
    core = k8s.CoreV1Api(control_plane.api_client)
    created = core.create_node(k8s.V1Node.model_validate(body))
    try:
        with _heartbeat(k8s.CoordinationV1Api(control_plane.api_client), name):
            yield created
    finally:
        core.delete_node(name)


# --- helpers ------------------------------------------------------------------------------------------------------


def _deployment(name: str, replicas: int, node_selector: dict[str, str]) -> k8s.V1Deployment:
    labels = {"app": name}
    body = {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": node_selector,
                    "containers": [
                        {"name": "app", "image": "registry.invalid/app:1", "ports": [{"containerPort": 8080}]}
                    ],
                },
            },
        },
    }
    return k8s.V1Deployment.model_validate(body)


def _owned_by(items: list[Any], owner_uid: str) -> list[Any]:
    return [item for item in items if any(ref.uid == owner_uid for ref in item.metadata.owner_references or [])]


def _replica_set_of(apps: k8s.AppsV1Api, namespace: str, deployment: k8s.V1Deployment) -> k8s.V1ReplicaSet:
    def owned() -> list[k8s.V1ReplicaSet]:
        return _owned_by(apps.list_namespaced_replica_set(namespace).items, _uid(deployment))

    found: list[k8s.V1ReplicaSet] = wait_for(owned, f"a ReplicaSet of Deployment {_name(deployment)}")
    assert len(found) == 1
    return found[0]


def _pods_of(core: k8s.CoreV1Api, namespace: str, owner_uid: str, count: int) -> list[k8s.V1Pod]:
    def owned() -> list[k8s.V1Pod]:
        pods = _owned_by(core.list_namespaced_pod(namespace).items, owner_uid)
        return pods if len(pods) == count else []

    found: list[k8s.V1Pod] = wait_for(owned, f"{count} Pods owned by {owner_uid}")
    return found


def _bound_pods(core: k8s.CoreV1Api, namespace: str, replica_set: k8s.V1ReplicaSet, node: str) -> list[k8s.V1Pod]:
    """The ReplicaSet's Pods (as many as it wants), once the scheduler has bound every one of them to `node`."""

    def bound() -> list[k8s.V1Pod]:
        pods = _owned_by(core.list_namespaced_pod(namespace).items, _uid(replica_set))
        return pods if len(pods) == replica_set.spec.replicas and all(p.spec.node_name == node for p in pods) else []

    found: list[k8s.V1Pod] = wait_for(bound, f"the Pods of {_name(replica_set)} bound to {node}")
    return found


def _mark_running(core: k8s.CoreV1Api, pod: k8s.V1Pod, ip: str, host_ip: str, ready: bool) -> None:
    """What a kubelet writes once the pod's sandbox has its address and its containers run (ready or not)."""
    state = "True" if ready else "False"
    now = _now()
    status = {
        "phase": "Running",
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [
            {"type": kind, "status": value, "lastTransitionTime": now}
            for kind, value in [
                ("PodScheduled", "True"),
                ("Initialized", "True"),
                ("ContainersReady", state),
                ("Ready", state),
            ]
        ],
    }
    assert pod.metadata is not None and pod.metadata.name is not None and pod.metadata.namespace is not None
    core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": status})


def _root_ca(core: k8s.CoreV1Api, namespace: str) -> str:
    """The ca.crt of the namespace's kube-root-ca.crt ConfigMap, once the root-ca-certificate-publisher wrote it."""

    def published() -> str | None:
        for config_map in core.list_namespaced_config_map(namespace).items:
            if _name(config_map) == "kube-root-ca.crt":
                assert config_map.data is not None
                assert list(config_map.data) == ["ca.crt"]
                return str(config_map.data["ca.crt"])
        return None

    found: str = wait_for(published, "the kube-root-ca.crt ConfigMap")
    return found


def _gone(read: Callable[[], Any]) -> bool:
    try:
        read()
    except k8s.ApiException as err:
        if err.status == 404:
            return True
        raise
    return False


# --- tests --------------------------------------------------------------------------------------------------------


def test_new_namespace_gets_default_service_account_and_root_ca(
    control_plane: KubeCluster, core: k8s.CoreV1Api, namespace: str
) -> None:
    # The serviceaccount controller creates the account, the root-ca-certificate-publisher the ConfigMap.
    wait_for(
        lambda: any(_name(sa) == "default" for sa in core.list_namespaced_service_account(namespace).items),
        "the default ServiceAccount",
    )
    assert _root_ca(core, namespace) == control_plane.ca_file.read_text()


@pytest.mark.parametrize("propagation", ["Foreground", "Background"])
def test_deployment_makes_pods_and_deleting_it_collects_them(
    apps: k8s.AppsV1Api, core: k8s.CoreV1Api, namespace: str, propagation: str
) -> None:
    # Pods are admitted only once their ServiceAccount exists (the ServiceAccount admission plugin looks it up to
    # mount its token); waiting for it first spares the ReplicaSet controller a retry with back-off.
    wait_for(lambda: core.list_namespaced_service_account(namespace).items, "the default ServiceAccount")
    deployment = apps.create_namespaced_deployment(namespace, _deployment("web", 2, NOWHERE))
    replica_set = _replica_set_of(apps, namespace, deployment)
    assert replica_set.metadata is not None and replica_set.metadata.owner_references is not None
    owner = replica_set.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.controller) == ("Deployment", "web", True)
    pods = _pods_of(core, namespace, _uid(replica_set), 2)

    for pod in pods:
        assert pod.spec is not None and pod.spec.volumes is not None
        assert pod.spec.service_account_name == "default"
        # The ServiceAccount admission plugin's projected volume: a bound token, the cluster CA, the namespace.
        [volume] = [v for v in pod.spec.volumes if v.name.startswith("kube-api-access-")]
        assert volume.projected is not None and volume.projected.sources is not None
        sources = volume.projected.sources
        token = next(s.service_account_token for s in sources if s.service_account_token)
        assert token.path == "token"
        assert [s.config_map.name for s in sources if s.config_map] == ["kube-root-ca.crt"]
        downward = next(s.downward_api for s in sources if s.downward_api)
        assert downward.items is not None
        assert [(i.path, _present(i.field_ref).field_path) for i in downward.items] == [
            ("namespace", "metadata.namespace")
        ]
        assert pod.spec.containers[0].volume_mounts is not None
        [mount] = [m for m in pod.spec.containers[0].volume_mounts if m.name == volume.name]
        assert (mount.mount_path, mount.read_only) == (SERVICE_ACCOUNT_MOUNT, True)

    # The scheduler looked at them and found no Node to match: they stay unbound, with the reason recorded.
    def unschedulable() -> bool:
        pods = core.list_namespaced_pod(namespace).items
        for pod in pods:
            assert pod.status is not None and pod.spec is not None
            conditions = {c.type: c for c in pod.status.conditions or []}
            scheduled = conditions.get("PodScheduled")
            if pod.spec.node_name or scheduled is None or scheduled.reason != "Unschedulable":
                return False
        return len(pods) == 2

    wait_for(unschedulable, "both Pods marked Unschedulable")

    apps.delete_namespaced_deployment("web", namespace, propagation_policy=propagation)
    # Unbound Pods have no kubelet to wait for: the API server deletes them at once, without a grace period, so
    # the garbage collector removes the whole chain.
    wait_for(lambda: _gone(lambda: apps.read_namespaced_deployment("web", namespace)), "the Deployment deleted")
    wait_for(
        lambda: _gone(lambda: apps.read_namespaced_replica_set(_name(replica_set), namespace)),
        "the ReplicaSet collected",
    )
    wait_for(lambda: not core.list_namespaced_pod(namespace).items, "the Pods collected")


def test_scheduler_binds_pods_to_a_ready_node(
    apps: k8s.AppsV1Api, core: k8s.CoreV1Api, namespace: str, node: k8s.V1Node, network: ClusterNetwork
) -> None:
    name = _name(node)
    # The API server's TaintNodesByCondition admission marks every new Node not-ready; the node lifecycle
    # controller lifts the taint once it sees the Ready condition (and the Lease), and only then may Pods land.
    assert node.spec is not None
    assert [(t.key, t.effect) for t in node.spec.taints or []] == [("node.kubernetes.io/not-ready", "NoSchedule")]
    wait_for(lambda: not _present(core.read_node(name).spec).taints, "the not-ready taint lifted")

    wait_for(lambda: core.list_namespaced_service_account(namespace).items, "the default ServiceAccount")
    deployment = apps.create_namespaced_deployment(namespace, _deployment("web", 2, {"kubernetes.io/hostname": name}))
    replica_set = _replica_set_of(apps, namespace, deployment)
    for pod in _bound_pods(core, namespace, replica_set, name):
        assert pod.status is not None and pod.status.conditions is not None
        conditions = {c.type: c.status for c in pod.status.conditions}
        assert conditions["PodScheduled"] == "True"
        # Nothing but a kubelet moves a Pod past Pending.
        assert pod.status.phase == "Pending"
    stored = core.read_node(name)
    assert stored.status is not None and stored.status.addresses is not None
    assert [(a.type, a.address) for a in stored.status.addresses if a.type == "InternalIP"] == [
        ("InternalIP", network.node_ip)
    ]

    # Unlike unbound Pods, bound ones are deleted gracefully: the garbage collector removes the ReplicaSet, but its
    # Pods stay, marked for deletion, until their node's kubelet confirms with a zero grace period.
    apps.delete_namespaced_deployment("web", namespace, propagation_policy="Background")
    wait_for(
        lambda: _gone(lambda: apps.read_namespaced_replica_set(_name(replica_set), namespace)),
        "the ReplicaSet collected",
    )
    terminating = wait_for(
        lambda: (
            all(_present(p.metadata).deletion_timestamp for p in core.list_namespaced_pod(namespace).items)
            and core.list_namespaced_pod(namespace).items
        ),
        "both Pods marked for deletion",
    )
    assert len(terminating) == 2
    for pod in terminating:
        core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
    wait_for(lambda: not core.list_namespaced_pod(namespace).items, "the Pods deleted")


def test_service_gets_endpoint_slice_of_its_pods(
    apps: k8s.AppsV1Api,
    core: k8s.CoreV1Api,
    control_plane: KubeCluster,
    namespace: str,
    node: k8s.V1Node,
    network: ClusterNetwork,
) -> None:
    name = _name(node)
    wait_for(lambda: core.list_namespaced_service_account(namespace).items, "the default ServiceAccount")
    deployment = apps.create_namespaced_deployment(namespace, _deployment("web", 2, {"kubernetes.io/hostname": name}))
    service = {
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }
    created = core.create_namespaced_service(namespace, k8s.V1Service.model_validate(service))
    assert created.spec is not None and created.spec.cluster_ip is not None
    assert ipaddress.ip_address(created.spec.cluster_ip) in ipaddress.ip_network(network.service_cidr)

    replica_set = _replica_set_of(apps, namespace, deployment)
    ready_pod, unready_pod = sorted(_bound_pods(core, namespace, replica_set, name), key=_name)
    # Real addresses on the pod network, as a kubelet's sandbox would get them.
    ips = {_name(pod): network.add_pod(_uid(pod)).ip for pod in (ready_pod, unready_pod)}
    try:
        _mark_running(core, ready_pod, ips[_name(ready_pod)], network.node_ip, ready=True)
        _mark_running(core, unready_pod, ips[_name(unready_pod)], network.node_ip, ready=False)

        # Both are listed (a not-ready Pod is an endpoint with ready: false, not left out), each with its Pod, its
        # Node and the Service's target port.
        expected = {
            (ips[_name(ready_pod)], True, _name(ready_pod), name),
            (ips[_name(unready_pod)], False, _name(unready_pod), name),
        }

        def endpoints() -> Any:
            slices = k8s.DiscoveryV1Api(control_plane.api_client).list_namespaced_endpoint_slice(
                namespace, label_selector="kubernetes.io/service-name=web"
            )
            found = {
                (address, _present(e.conditions).ready, _present(e.target_ref).name, e.node_name)
                for s in slices.items
                for e in s.endpoints or []
                for address in e.addresses
            }
            return slices.items if found == expected else None

        [endpoint_slice] = wait_for(endpoints, f"the EndpointSlice of Service web listing {sorted(expected)}")
        assert endpoint_slice.address_type == "IPv4"
        assert [(p.name, p.port, p.protocol) for p in endpoint_slice.ports] == [("http", 8080, "TCP")]
    finally:
        for pod in (ready_pod, unready_pod):
            network.remove_pod(_uid(pod))


def test_kubernetes_service_leads_to_the_api_server(
    control_plane: KubeCluster, core: k8s.CoreV1Api, network: ClusterNetwork
) -> None:
    server = urlsplit(control_plane.server)
    assert (server.scheme, server.hostname) == ("https", network.node_ip)
    service = core.read_namespaced_service("kubernetes", "default")
    assert service.spec is not None
    assert service.spec.cluster_ip == network.kubernetes_service_ip
    # Written by the API server's endpoint reconciler: its advertised address and port.
    endpoint_slice = k8s.DiscoveryV1Api(control_plane.api_client).read_namespaced_endpoint_slice(
        "kubernetes", "default"
    )
    assert endpoint_slice.endpoints is not None and endpoint_slice.ports is not None
    assert [e.addresses for e in endpoint_slice.endpoints] == [[network.node_ip]]
    assert [(p.name, p.port, p.protocol) for p in endpoint_slice.ports] == [("https", server.port, "TCP")]

    # A client that dialled the Service IP (the service proxy forwards it to node_ip) verifies the certificate
    # against that IP; one that dialled the node address, against that. Any other name fails.
    context = ssl.create_default_context(cafile=str(control_plane.ca_file))
    for name in (network.kubernetes_service_ip, network.node_ip):
        with (
            socket.create_connection((network.node_ip, server.port), timeout=10) as sock,
            context.wrap_socket(sock, server_hostname=name) as tls,
        ):
            assert tls.version()
    with (
        socket.create_connection((network.node_ip, server.port), timeout=10) as sock,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(sock, server_hostname="10.255.255.254")


# Runs inside a pod's network namespace: what an in-cluster client does with the mounted token and CA.
_IN_POD_CLIENT = """
import json, ssl, sys, urllib.request
given = json.load(sys.stdin)
request = urllib.request.Request(
    given["server"] + "/apis/authentication.k8s.io/v1/selfsubjectreviews",
    data=json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).encode(),
    headers={"Authorization": "Bearer " + given["token"], "Content-Type": "application/json"},
)
context = ssl.create_default_context(cadata=given["ca"])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
with opener.open(request, timeout=20) as answer:
    print(answer.read().decode())
"""


def test_pod_network_reaches_the_api_server_as_its_service_account(
    control_plane: KubeCluster, core: k8s.CoreV1Api, namespace: str, network: ClusterNetwork
) -> None:
    wait_for(lambda: core.list_namespaced_service_account(namespace).items, "the default ServiceAccount")
    ca = _root_ca(core, namespace)
    # The token a kubelet would project into the pod (it asks the API server the same way).
    body = k8s.AuthenticationV1TokenRequest.model_validate({"spec": {"expirationSeconds": 600}})
    request = core.create_namespaced_service_account_token("default", namespace, body)
    assert request.status is not None
    pod = network.add_pod(f"probe-{namespace}")
    try:
        given = json.dumps({"server": control_plane.server, "token": request.status.token, "ca": ca})
        done = subprocess.run(
            ["ip", "netns", "exec", pod.netns, sys.executable, "-c", _IN_POD_CLIENT],
            input=given,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        network.remove_pod(f"probe-{namespace}")
    assert done.returncode == 0, done.stderr
    review = json.loads(done.stdout)
    assert review["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:default"
