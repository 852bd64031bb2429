"""The Helm charts in charts/: lint and render them with a real helm, install them into the real API server, and run
the controller with exactly the Deployment's arguments under the chart's ServiceAccount (a TokenRequest token; the
API server authorizes with RBAC), so that every permission the controller uses is proven granted: the tutorial gets
all its statuses and the controller's log has no 403. Both for a cluster-wide and a namespaced install."""

from __future__ import annotations

import asyncio
import base64
import copy
import functools
import re
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient

from testing.cases import SEED, TUTORIAL
from testing.helm import Helm
from testing.kube_cluster import CRDS, KubeCluster, crd_documents
from testing.kube_objects import apply, documents
from testing.ports import free_port
from testing.processes import Serve, stop_process
from testing.web import eventually_async, http_get

ROOT = Path(__file__).resolve().parents[2]
CONTROLLER_CHART = ROOT / "charts" / "xds-server"
CRDS_CHART = ROOT / "charts" / "xds-server-crds"
OURS = "gateway.envoyproxy.io/gatewayclass-controller"
# The verbatim tutorial when it is beside the repository, else the project's own copy of it.
TUTORIAL_DIR = SEED if SEED.is_dir() else TUTORIAL
STATUS_TIMEOUT = 90.0  # generous for a loaded 2-core machine; nothing here measures speed
FORBIDDEN = re.compile(r"\b403\b|forbidden", re.IGNORECASE)
# The Deployment's flags that bind a port: the test moves them to free loopback ports (Serve adds its own, and an
# --extproc-address on loopback, as the pod's 0.0.0.0:1063 would collide with other runs).
ADDRESS_FLAGS = ("--xds-address=", "--admin-address=", "--extproc-address=")
PROVISIONED_BY = "app.kubernetes.io/managed-by=xds-server"

# The values the charts must lint and render with; the names are for test ids.
CONTROLLER_VALUES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["a", "b"]},
    "replicas-3": {"replicas": 3},
    "everything-on": {
        "replicas": 2,
        "serviceMonitor": {"enabled": True},
        "networkPolicy": {"enabled": True, "adminFrom": [{"namespaceSelector": {"matchLabels": {"team": "obs"}}}]},
        "extraArgs": ["--resolve-cluster-local"],
    },
}
CRD_GROUPS = {
    "gatewayAPI": {"gateway.networking.k8s.io", "gateway.networking.x-k8s.io"},
    "aiGateway": {"aigateway.envoyproxy.io"},
    "inferenceExtension": {"inference.networking.k8s.io", "inference.networking.x-k8s.io"},
    "envoyGateway": {"gateway.envoyproxy.io"},
}


# --- helm ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def helm(helm_binary: Path, tmp_path: Path) -> Helm:
    return Helm(helm_binary, tmp_path / "helm")


def find(docs: list[dict[str, Any]], kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (namespace is None or d["metadata"].get("namespace") == namespace)]


def container_args(docs: list[dict[str, Any]]) -> list[str]:
    [deployment] = find(docs, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return [str(arg) for arg in container["args"]]


def granted(rules: list[dict[str, Any]], group: str, resource: str) -> set[str]:
    return {
        verb for rule in rules if group in rule["apiGroups"] and resource in rule["resources"] for verb in rule["verbs"]
    }


# --- lint and render ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONTROLLER_VALUES))
def test_the_controller_chart_lints_clean(helm: Helm, name: str) -> None:
    out = helm.run("lint", "--strict", str(CONTROLLER_CHART), values=CONTROLLER_VALUES[name])
    assert "0 chart(s) failed" in out and "[WARNING]" not in out and "[ERROR]" not in out, out


def test_the_crd_chart_lints_clean(helm: Helm) -> None:
    out = helm.run("lint", "--strict", "--with-subcharts", str(CRDS_CHART))
    assert "0 chart(s) failed" in out and "[WARNING]" not in out and "[ERROR]" not in out, out


def test_defaults_render_a_cluster_wide_least_privilege_controller(helm: Helm) -> None:
    docs = helm.template(CONTROLLER_CHART)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service", "Deployment"]
    )
    args = container_args(docs)
    assert args[:2] == ["serve", "--kubernetes"]
    assert "--listener-address=0.0.0.0" in args and "--xds-address=0.0.0.0:18000" in args
    assert "--admin-address=0.0.0.0:19000" in args and "--lease-namespace=xs" in args
    assert "--controller-namespace=xs" in args and "--control-plane-service=rel-xds-server" in args
    # Provisioned Envoys copy the AI filter module from the controller's own image.
    [container] = find(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert f"--module-image={container['image']}" in args and container["image"] == "xds-server:0.1.0"
    # ext_proc: on 0.0.0.0:1063, and the provisioned Envoys are told the Service's name, as for ADS.
    assert not any(a.startswith("--extproc-address") for a in args)
    assert not {"--no-leader-election", "--no-provision"} & set(args)
    assert not any(a.startswith("--namespace=") for a in args)

    [cluster_role] = find(docs, "ClusterRole")
    rules = cluster_role["rules"]
    assert granted(rules, "", "pods") == {"get", "list", "watch"}
    assert granted(rules, "", "nodes") == {"list"}
    for group, resource in [
        ("gateway.networking.k8s.io", "gatewayclasses"),
        ("gateway.networking.k8s.io", "gateways"),
        ("gateway.networking.k8s.io", "httproutes"),
        ("aigateway.envoyproxy.io", "aigatewayroutes"),
        ("aigateway.envoyproxy.io", "aiservicebackends"),
        ("aigateway.envoyproxy.io", "backendsecuritypolicies"),
        ("inference.networking.k8s.io", "inferencepools"),
        # Kinds it does not implement, whose status says so.
        ("gateway.networking.k8s.io", "grpcroutes"),
        ("gateway.networking.x-k8s.io", "xlistenersets"),
        ("gateway.envoyproxy.io", "securitypolicies"),
        ("gateway.envoyproxy.io", "envoypatchpolicies"),
        ("aigateway.envoyproxy.io", "mcproutes"),
        ("aigateway.envoyproxy.io", "quotapolicies"),
    ]:
        assert granted(rules, group, resource) == {"get", "list", "watch"}, resource
        assert granted(rules, group, f"{resource}/status") == {"update"}, resource
    # Nothing cluster-wide writes anything but status.
    writes = {"create", "update", "patch", "delete", "deletecollection", "*"}
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in rules if not r["resources"][0].endswith("/status"))
    assert all(set(r["verbs"]) & writes == {"update"} for r in rules if r["resources"][0].endswith("/status"))

    [pod] = [d["spec"]["template"]["spec"] for d in find(docs, "Deployment")]
    [container] = pod["containers"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] == 65532 and security["readOnlyRootFilesystem"]
    assert security["capabilities"]["drop"] == ["ALL"] and security["seccompProfile"]["type"] == "RuntimeDefault"
    assert not security["allowPrivilegeEscalation"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    [service] = find(docs, "Service")
    assert {p["port"] for p in service["spec"]["ports"]} == {18000, 1063, 19000}


def test_watch_namespaces_render_a_role_per_namespace_and_a_small_cluster_role(helm: Helm) -> None:
    docs = helm.template(CONTROLLER_CHART, {"watchNamespaces": ["a", "b"]})
    for namespace in ("a", "b"):
        [role] = find(docs, "Role", namespace)
        [binding] = find(docs, "RoleBinding", namespace)
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-xds-server", "namespace": "xs"}]
        assert granted(role["rules"], "inference.networking.k8s.io", "inferencepools/status") == {"update"}
    [cluster_role] = find(docs, "ClusterRole")
    resources = {resource for rule in cluster_role["rules"] for resource in rule["resources"]}
    assert resources == {"gatewayclasses", "gatewayclasses/status", "namespaces", "nodes"}
    args = container_args(docs)
    assert [a for a in args if a.startswith("--namespace=")] == ["--namespace=a", "--namespace=b"]


def test_replicas_render_leader_election_and_a_disruption_budget(helm: Helm) -> None:
    docs = helm.template(CONTROLLER_CHART, {"replicas": 3, "leaderElection": {"enabled": False}})
    [deployment] = find(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert "--no-leader-election" not in container_args(docs)  # more than one replica: always elected
    [budget] = find(docs, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    single = helm.template(CONTROLLER_CHART, {"leaderElection": {"enabled": False}})
    assert "--no-leader-election" in container_args(single) and not find(single, "PodDisruptionBudget")


def test_without_provisioning_the_controller_may_write_only_its_lease_and_certificates(helm: Helm) -> None:
    docs = helm.template(CONTROLLER_CHART, {"provisioning": {"enabled": False}})
    assert "--no-provision" in container_args(docs)
    [role] = find(docs, "Role")
    assert {resource for rule in role["rules"] for resource in rule["resources"]} == {"leases", "secrets"}
    named = [rule for rule in role["rules"] if rule["resources"] == ["secrets"] and rule.get("resourceNames")]
    assert named == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["rel-xds-server-ca", "rel-xds-server-server-tls"],
            "verbs": ["get", "update"],
        }
    ]


def test_the_network_policy_admits_only_envoys_to_grpc_and_the_selector_to_admin(helm: Helm) -> None:
    docs = helm.template(CONTROLLER_CHART, CONTROLLER_VALUES["everything-on"])
    [policy] = find(docs, "NetworkPolicy")
    grpc, admin = policy["spec"]["ingress"]
    assert {p["port"] for p in grpc["ports"]} == {"xds", "extproc"}
    labels = grpc["from"][0]["podSelector"]["matchLabels"]
    assert labels == {"app.kubernetes.io/name": "envoy", "app.kubernetes.io/managed-by": "xds-server"}
    assert admin == {
        "from": [{"namespaceSelector": {"matchLabels": {"team": "obs"}}}],
        "ports": [{"port": "admin", "protocol": "TCP"}],
    }
    [monitor] = find(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "http-admin"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def by_name(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs}


@pytest.fixture(scope="module")
def fixture_crds() -> list[dict[str, Any]]:
    """The CRDs the cluster fixture applies, as it reads them."""
    return crd_documents(CRDS)


def test_the_crd_chart_renders_exactly_the_crds_the_cluster_fixture_applies(
    helm: Helm, fixture_crds: list[dict[str, Any]]
) -> None:
    assert by_name(helm.template(CRDS_CHART)) == by_name(fixture_crds)


@pytest.mark.parametrize("group", sorted(CRD_GROUPS))
def test_each_crd_group_can_be_turned_off(helm: Helm, fixture_crds: list[dict[str, Any]], group: str) -> None:
    rendered = helm.template(CRDS_CHART, {group: {"enabled": False}})
    groups = {d["spec"]["group"] for d in rendered}
    assert groups == {d["spec"]["group"] for d in fixture_crds} - CRD_GROUPS[group]


# --- installed into the API server --------------------------------------------------------------------------------


def tutorial(namespace: str, parameters_namespace: str, class_name: str) -> list[dict[str, Any]]:
    """The tutorial in `namespace`, its GatewayClass renamed (GatewayClasses are cluster-wide, and other tests apply
    the tutorial too) and its EnvoyProxy in `parameters_namespace`: nothing a previous test wrote a status on."""
    docs = []
    for doc in (d for path in sorted(TUTORIAL_DIR.glob("*.yaml")) for d in documents(path.read_text())):
        doc = copy.deepcopy(doc)
        metadata, spec = doc["metadata"], doc.get("spec") or {}
        if doc["kind"] == "GatewayClass":
            metadata["name"] = class_name
            if spec.get("parametersRef"):
                spec["parametersRef"]["namespace"] = parameters_namespace
        elif doc["kind"] == "Gateway":
            spec["gatewayClassName"] = class_name
        metadata["namespace"] = parameters_namespace if doc["kind"] == "EnvoyProxy" else namespace
        docs.append(doc)
    return docs


def condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def accepted(conditions: list[dict[str, Any]] | None) -> bool:
    return (condition(conditions, "Accepted") or {}).get("status") == "True"


def status_checks(docs: list[dict[str, Any]]) -> list[tuple[str, Callable[[dict[str, Any]], bool], dict[str, Any]]]:
    """For every tutorial object whose status the controller writes: what an accepted status looks like."""
    [gateway] = [d for d in docs if d["kind"] == "Gateway"]
    gateway_ref = (gateway["metadata"]["namespace"], gateway["metadata"]["name"])

    def own_conditions(obj: dict[str, Any]) -> bool:
        return accepted((obj.get("status") or {}).get("conditions"))

    def route_parents(obj: dict[str, Any]) -> bool:
        parents = (obj.get("status") or {}).get("parents") or []
        return any(p.get("controllerName") == OURS and accepted(p.get("conditions")) for p in parents)

    def pool_parents(obj: dict[str, Any]) -> bool:
        parents = (obj.get("status") or {}).get("parents") or []
        return any(
            (p["parentRef"].get("namespace"), p["parentRef"].get("name")) == gateway_ref
            and accepted(p.get("conditions"))
            for p in parents
        )

    checks = {
        "GatewayClass": own_conditions,
        "Gateway": own_conditions,
        "AIGatewayRoute": own_conditions,
        "AIServiceBackend": own_conditions,
        "BackendSecurityPolicy": own_conditions,
        "HTTPRoute": route_parents,
        "InferencePool": pool_parents,
    }
    return [(d["kind"], checks[d["kind"]], d) for d in docs if d["kind"] in checks]


# Polls a blocking probe in a thread until it holds (testing.web.eventually_async), with this file's patience.
eventually = functools.partial(eventually_async, seconds=STATUS_TIMEOUT)


def service_account_kubeconfig(cluster: KubeCluster, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount, with a token from the TokenRequest API (what the
    kubelet mounts into the controller's pod)."""
    request = k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    answer = k8s.CoreV1Api(cluster.api_client).create_namespaced_service_account_token(account, namespace, request)
    assert answer.status is not None
    ca = base64.b64encode(cluster.ca_file.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": cluster.server, "certificate-authority-data": ca}}],
        "users": [{"name": account, "user": {"token": answer.status.token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "test", "user": account, "namespace": namespace}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def create_namespace(api_client: k8s.ApiClient, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    k8s.CoreV1Api(api_client).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    return name


def can(api_client: k8s.ApiClient, user: str, verb: str, resource: str, namespace: str = "", group: str = "") -> bool:
    """What the API server's RBAC authorizer answers for `user` (kubectl auth can-i --as)."""
    resource, _, subresource = resource.partition("/")
    attributes = k8s.V1ResourceAttributes(
        verb=verb, resource=resource, subresource=subresource or None, namespace=namespace or None, group=group
    )
    review = k8s.V1SubjectAccessReview(spec=k8s.V1SubjectAccessReviewSpec(user=user, resource_attributes=attributes))
    answer = k8s.AuthorizationV1Api(api_client).create_subject_access_review(review)
    assert answer.status is not None
    return bool(answer.status.allowed)


@pytest.fixture
def cluster_helm(helm_binary: Path, tmp_path: Path, kube_cluster: KubeCluster) -> Helm:
    return Helm(helm_binary, tmp_path / "helm", kube_cluster.kubeconfig)


def test_the_crd_chart_installs_and_upgrades_over_the_crds_in_place(
    cluster_helm: Helm, kube_cluster: KubeCluster, namespace: str
) -> None:
    """CRDs as templates: installed (taking over the fixture's identical CRDs) and upgraded by Helm; the release,
    3.8 MB of CRDs, fits in Helm's release Secret."""
    release = ["xds-server-crds", str(CRDS_CHART), "--namespace", namespace, "--take-ownership"]
    cluster_helm.run("install", *release)
    cluster_helm.run("upgrade", *release)
    assert "deployed" in cluster_helm.run("status", "xds-server-crds", "--namespace", namespace)
    api = k8s.ApiextensionsV1Api(kube_cluster.api_client)
    for doc in crd_documents(CRDS):
        crd = api.read_custom_resource_definition(doc["metadata"]["name"])
        assert crd.metadata is not None and crd.metadata.labels is not None
        assert crd.status is not None and crd.status.conditions is not None
        assert crd.metadata.labels.get("app.kubernetes.io/managed-by") == "Helm"
        assert any(c.type == "Established" and c.status == "True" for c in crd.status.conditions)


class _Listing(Protocol):
    """What the client's list_* methods answer (V1SecretList, V1DeploymentList...)."""

    @property
    def items(self) -> Sequence[object]: ...


async def install_and_run(
    cluster: KubeCluster,
    helm: Helm,
    dynamic: DynamicClient,
    tmp_path: Path,
    release_namespace: str,
    values: dict[str, Any],
    tutorial_namespace: str,
    parameters_namespace: str,
) -> str:
    """helm install the controller chart, run the controller with the Deployment's arguments as its ServiceAccount,
    apply the tutorial and wait for every status. Returns the controller's log."""
    helm.run("install", "xds-server", str(CONTROLLER_CHART), "--namespace", release_namespace, values=values)
    apps = k8s.AppsV1Api(cluster.api_client)
    deployment = apps.read_namespaced_deployment("xds-server", release_namespace)
    assert deployment.spec.template.spec is not None
    [container] = deployment.spec.template.spec.containers
    assert container.args is not None
    args = [a for a in container.args if a not in ("serve", "--kubernetes") and not a.startswith(ADDRESS_FLAGS)]
    account = deployment.spec.template.spec.service_account_name
    assert account is not None
    kubeconfig = service_account_kubeconfig(cluster, release_namespace, account, tmp_path / "sa-kubeconfig")

    class_name = f"tutorial-{uuid.uuid4().hex[:8]}"
    docs = tutorial(tutorial_namespace, parameters_namespace, class_name)
    apply(dynamic, docs)
    log = tmp_path / "controller.log"
    serve = Serve(kubeconfig, free_port(), free_port(), log, extra=args)
    try:
        assert "leader" in await serve.ready(seconds=60)
        for kind, check, doc in status_checks(docs):
            resource = dynamic.resources.get(api_version=doc["apiVersion"], kind=kind)
            name, target = doc["metadata"]["name"], doc["metadata"]["namespace"] if resource.namespaced else None

            def probe(
                resource: Any = resource, name: str = name, target: str | None = target, check: Any = check
            ) -> Any:
                found = resource.get(name=name, namespace=target).to_dict()
                return check(found)

            try:
                await eventually(probe, f"{kind} {target}/{name} accepted by the controller")
            except AssertionError as missing:
                denied = [line for line in log.read_text().splitlines() if FORBIDDEN.search(line)]
                raise AssertionError(f"{missing}\ndenied in the controller's log: {denied}") from None
        [gateway] = [d for d in docs if d["kind"] == "Gateway"]
        selector = f"{PROVISIONED_BY},gateway.envoyproxy.io/owning-gateway-namespace={gateway['metadata']['namespace']}"
        core = k8s.CoreV1Api(cluster.api_client)
        listers: dict[str, Callable[..., _Listing]] = {
            "ServiceAccount": core.list_namespaced_service_account,
            "Secret": core.list_namespaced_secret,
            "ConfigMap": core.list_namespaced_config_map,
            "Service": core.list_namespaced_service,
            "Deployment": apps.list_namespaced_deployment,
        }

        def provisioned() -> bool:
            """Every object of the Gateway's Envoys, created by the leader in its own namespace."""
            return all(lister(release_namespace, label_selector=selector).items for lister in listers.values())

        await eventually(provisioned, f"the Gateway's {', '.join(listers)} provisioned in {release_namespace}")
        # The CA and the servers' certificate, made with the chart's RBAC.
        for secret in ("xds-server-ca", "xds-server-server-tls"):
            assert core.read_namespaced_secret(secret, release_namespace).data
        # Writes that failed for any reason are counted too, not only logged.
        _, metrics = await asyncio.to_thread(http_get, f"{serve.admin}/metrics")
        failed = [
            line
            for line in metrics.splitlines()
            if line.startswith(("xds_server_status_writes_total{", "xds_server_provisioned_objects_total{"))
            and 'result="error"' in line
            and float(line.rsplit(" ", 1)[1]) > 0
        ]
        assert not failed, failed
    finally:
        stop_process(serve.process)
    return log.read_text()


async def test_a_cluster_wide_install_grants_every_permission_the_controller_uses(
    kube_cluster: KubeCluster, cluster_helm: Helm, dynamic_client: DynamicClient, tmp_path: Path
) -> None:
    release = create_namespace(kube_cluster.api_client, "xs")
    tutorial_namespace = create_namespace(kube_cluster.api_client, "tut")
    values = {"networkPolicy": {"enabled": True}}  # also proves the API server accepts the policy as rendered
    log = await install_and_run(
        kube_cluster, cluster_helm, dynamic_client, tmp_path, release, values, tutorial_namespace, tutorial_namespace
    )
    assert not FORBIDDEN.findall(log), [line for line in log.splitlines() if FORBIDDEN.search(line)]

    user = f"system:serviceaccount:{release}:xds-server"
    api = kube_cluster.api_client
    assert can(api, user, "list", "secrets")  # cluster-wide reads
    assert can(api, user, "update", "gateways/status", tutorial_namespace, "gateway.networking.k8s.io")
    assert not can(api, user, "update", "gateways", tutorial_namespace, "gateway.networking.k8s.io")
    assert not can(api, user, "create", "deployments", tutorial_namespace, "apps")  # writes only in its namespace
    assert can(api, user, "create", "deployments", release, "apps")
    assert not can(api, user, "create", "events", release)


async def test_a_namespaced_install_grants_every_permission_the_controller_uses_and_no_more(
    kube_cluster: KubeCluster, cluster_helm: Helm, dynamic_client: DynamicClient, tmp_path: Path
) -> None:
    release = create_namespace(kube_cluster.api_client, "xs")
    tutorial_namespace = create_namespace(kube_cluster.api_client, "tut")
    parameters_namespace = create_namespace(kube_cluster.api_client, "params")
    values = {"watchNamespaces": [tutorial_namespace, parameters_namespace]}
    log = await install_and_run(
        kube_cluster, cluster_helm, dynamic_client, tmp_path, release, values, tutorial_namespace, parameters_namespace
    )
    assert not FORBIDDEN.findall(log), [line for line in log.splitlines() if FORBIDDEN.search(line)]

    user = f"system:serviceaccount:{release}:xds-server"
    api = kube_cluster.api_client
    assert can(api, user, "list", "pods", tutorial_namespace)
    assert can(api, user, "update", "inferencepools/status", tutorial_namespace, "inference.networking.k8s.io")
    assert not can(api, user, "list", "secrets")  # not cluster-wide
    assert not can(api, user, "list", "secrets", "default")  # not in a namespace it does not watch
    assert not can(api, user, "list", "pods", release)  # its own namespace: only what it provisions
    assert can(api, user, "list", "gatewayclasses", "", "gateway.networking.k8s.io")
