"""Provisioning per Gateway against a real API server: each Gateway of ours gets its ServiceAccount, certificate
Secret, bootstrap ConfigMap, Deployment and Service in the controller namespace, its addresses and Programmed from
them; EnvoyProxy edits reach the Deployment; objects no Gateway wants go, also those of a Gateway deleted while the
controller was down; a deleted Deployment comes back.

There is no kubelet and no controller-manager: as Envoy Gateway's own envtest does, the test writes what they would
(the Deployment's `availableReplicas`, the Service's `loadBalancer.ingress`) through the status subresource, and
runs the Envoy a pod would, from the provisioned bootstrap and certificate Secret (testing/kube_envoy.py), its ADS
address turned to the local controller (what a port-forward does)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

from e2e.kube.test_controller import TUTORIAL_DIR, apply, condition, delete, documents, eventually, read
from testing.kube_cluster import KubeCluster
from testing.kube_envoy import start_provisioned_envoy
from testing.ports import free_port
from testing.processes import Serve, serve_port, stop_process
from testing.web import http_get
from xds_server.kube.infra import DEFAULT_IMAGE, infra_name

GATEWAYS = "gateway.networking.k8s.io/v1"
KINDS = {"ServiceAccount": "v1", "Secret": "v1", "ConfigMap": "v1", "Service": "v1", "Deployment": "apps/v1"}
TUTORIAL_GATEWAY = ("default", "inference-pool-with-aigwroute")
SEED_ENVOY_PROXY = """
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyProxy
metadata: {name: nodeport-config, namespace: envoy-gateway-system}
spec:
  provider:
    type: Kubernetes
    kubernetes:
      envoyService: {type: NodePort}
      envoyDeployment: {container: {image: "docker.io/envoyproxy/envoy:distroless-dev"}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: inference-pool-with-aigwroute}
spec:
  controllerName: gateway.envoyproxy.io/gatewayclass-controller
  parametersRef:
    {group: gateway.envoyproxy.io, kind: EnvoyProxy, name: nodeport-config, namespace: envoy-gateway-system}
"""


def controller(kube_cluster: KubeCluster, tmp_path: Path, namespace: str, name: str = "serve") -> Serve:
    """`serve --kubernetes` provisioning into `namespace` (its Lease there too), with the cluster-mode defaults:
    port offset 10000, listeners on 0.0.0.0."""
    extra = ["--controller-namespace", namespace, "--log-format", "console"]
    return Serve(kube_cluster.kubeconfig, free_port(), free_port(), tmp_path / f"{name}.log", extra=extra)


def found(dynamic: DynamicClient, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    try:
        return read(dynamic, KINDS[kind], kind, name, namespace)
    except NotFoundError:
        return None


def gateway_status(dynamic: DynamicClient, namespace: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = read(dynamic, GATEWAYS, "Gateway", name, namespace).get("status") or {}
    return status


def programmed_reason(dynamic: DynamicClient, namespace: str, name: str, reason: str) -> Callable[[], Any]:
    def probe() -> Any:
        status = gateway_status(dynamic, namespace, name)
        programmed = condition(status.get("conditions"), "Programmed") or {}
        return status if programmed.get("reason") == reason else None

    return probe


def available(kube_cluster: KubeCluster, name: str, namespace: str, replicas: int) -> None:
    """What the Deployment controller writes once the kubelet reports the pods ready."""
    status = {"replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas}
    status["availableReplicas"] = replicas
    apps = k8s.AppsV1Api(kube_cluster.api_client)
    apps.patch_namespaced_deployment_status(name, namespace, {"status": status})


async def test_the_tutorial_gateway_gets_its_envoy_and_is_programmed_once_a_replica_is_up_and_holds_its_config(
    kube_cluster: KubeCluster, dynamic_client: DynamicClient, tmp_path: Path, namespace: str
) -> None:
    dynamic = dynamic_client
    core = k8s.CoreV1Api(kube_cluster.api_client)
    try:  # the seed's EnvoyProxy (NodePort, an image of its own) lives where installing Envoy Gateway puts it
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name="envoy-gateway-system")))
    except k8s.ApiException as error:
        assert error.status == 409
    apply(dynamic, [doc for path in sorted(TUTORIAL_DIR.glob("*.yaml")) for doc in documents(path.read_text())])
    # The seed's EnvoyProxy and the class naming it: already there when the verbatim seed was applied, missing from
    # the project's trimmed copy of the tutorial (used where the seed is not beside the repository, as in CI).
    apply(dynamic, documents(SEED_ENVOY_PROXY))
    name = infra_name(*TUTORIAL_GATEWAY)
    serve = controller(kube_cluster, tmp_path, namespace)
    try:
        assert "leader" in await serve.ready()
        deployment = await eventually(lambda: found(dynamic, "Deployment", name, namespace), "the Envoy Deployment")
        labels = {
            "app.kubernetes.io/name": "envoy",
            "app.kubernetes.io/component": "proxy",
            "app.kubernetes.io/managed-by": "xds-server",
            "gateway.envoyproxy.io/owning-gateway-name": TUTORIAL_GATEWAY[1],
            "gateway.envoyproxy.io/owning-gateway-namespace": TUTORIAL_GATEWAY[0],
        }
        assert deployment["metadata"]["labels"] == labels
        assert deployment["spec"]["selector"]["matchLabels"] == labels
        assert deployment["spec"]["replicas"] == 1
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == "docker.io/envoyproxy/envoy:distroless-dev"  # the seed EnvoyProxy's
        assert {"name": "http-80", "containerPort": 10080, "protocol": "TCP"} in container["ports"]
        account = await eventually(lambda: found(dynamic, "ServiceAccount", name, namespace), "its ServiceAccount")
        assert account["automountServiceAccountToken"] is False
        service = await eventually(lambda: found(dynamic, "Service", name, namespace), "its Service")
        assert service["spec"]["type"] == "NodePort"
        [port] = service["spec"]["ports"]
        assert (port["port"], port["targetPort"]) == (80, 10080)
        assert service["spec"]["selector"] == labels
        config = await eventually(lambda: found(dynamic, "ConfigMap", name, namespace), "its bootstrap ConfigMap")
        bootstrap = yaml.safe_load(config["data"]["bootstrap.yaml"])
        assert bootstrap["node"]["cluster"] == "/".join(TUTORIAL_GATEWAY)
        xds_port = int(serve_port(serve, "--xds-address"))
        ads = bootstrap["static_resources"]["clusters"][0]
        assert ads["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
            "socket_address": {"address": f"xds-server.{namespace}.svc.cluster.local", "port_value": xds_port}
        }

        # The fixture has no Nodes: a NodePort Gateway gets its ClusterIP, and no replica is available yet.
        status = await eventually(
            programmed_reason(dynamic, *TUTORIAL_GATEWAY, "NoResources"), "Programmed False/NoResources"
        )
        assert status["addresses"] == [{"type": "IPAddress", "value": service["spec"]["clusterIP"]}]
        programmed = condition(status["conditions"], "Programmed") or {}
        assert programmed["status"] == "False"
        assert "0/1 Envoy replicas available" in programmed["message"]

        # Its client certificate, in a Secret the pods mount where the bootstrap's TLS reads it.
        secret = await eventually(lambda: found(dynamic, "Secret", f"{name}-tls", namespace), "its certificate Secret")
        assert secret["type"] == "kubernetes.io/tls"
        assert {"tls.crt", "tls.key", "ca.crt", "sds-certificate.json", "sds-validation.json"} <= set(secret["data"])
        pod = deployment["spec"]["template"]["spec"]
        assert {"name": "tls", "secret": {"secretName": f"{name}-tls", "defaultMode": 0o440}} in pod["volumes"]
        assert {"name": "tls", "mountPath": str(serve.tls_dir), "readOnly": True} in container["volumeMounts"]
        tls = ads["transport_socket"]["typed_config"]
        assert tls["sni"] == f"xds-server.{namespace}.svc.cluster.local"

        # The pod a kubelet would run: its Envoy, from the provisioned bootstrap and certificate, connects over mutual
        # TLS and becomes ready through the probe's listener once it has its configuration, and the Deployment
        # controller reports the replica.
        envoy = await start_provisioned_envoy(
            tmp_path, serve, kube_cluster.api_client, namespace, "/".join(TUTORIAL_GATEWAY)
        )
        try:
            ready = f"{envoy.readiness}/ready"
            assert await eventually(lambda: http_get(ready) == (200, "LIVE\n"), "the readiness probe answers LIVE")
            available(kube_cluster, name, namespace, 1)
            status = await eventually(programmed_reason(dynamic, *TUTORIAL_GATEWAY, "Programmed"), "Programmed")
            programmed = condition(status["conditions"], "Programmed") or {}
            assert programmed["status"] == "True"
            assert "1/1 Envoy replicas available" in programmed["message"]
            assert status["addresses"] == [{"type": "IPAddress", "value": service["spec"]["clusterIP"]}]

            # The preStop hook: the health check fails (the probe turns unready), the answer comes after the wait.
            drained = await asyncio.to_thread(http_get, f"{envoy.readiness}/drain", 30.0)
            assert drained == (200, "draining\n")
            assert await asyncio.to_thread(http_get, ready) == (503, "DRAINING\n")
        finally:
            envoy.stop()
    finally:
        stop_process(serve.process)


def envoy_proxy(namespace: str, deployment: dict[str, Any] | None = None) -> dict[str, Any]:
    kubernetes: dict[str, Any] = {"envoyService": {"type": "LoadBalancer"}}
    if deployment is not None:
        kubernetes["envoyDeployment"] = deployment
    return {
        "apiVersion": "gateway.envoyproxy.io/v1alpha1",
        "kind": "EnvoyProxy",
        "metadata": {"name": "proxy", "namespace": namespace},
        "spec": {"provider": {"type": "Kubernetes", "kubernetes": kubernetes}},
    }


def gateway_class(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": GATEWAYS,
        "kind": "GatewayClass",
        "metadata": {"name": f"prov-{namespace}"},
        "spec": {
            "controllerName": "gateway.envoyproxy.io/gatewayclass-controller",
            "parametersRef": {
                "group": "gateway.envoyproxy.io",
                "kind": "EnvoyProxy",
                "name": "proxy",
                "namespace": namespace,
            },
        },
    }


def gateway(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": GATEWAYS,
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "gatewayClassName": f"prov-{namespace}",
            "listeners": [{"name": "http", "protocol": "HTTP", "port": 8080}],
        },
    }


def objects_of(dynamic: DynamicClient, name: str, namespace: str) -> dict[str, Any]:
    """Every object of a Gateway's Envoys (its certificate's Secret is `<name>-tls`)."""
    return {kind: found(dynamic, kind, f"{name}-tls" if kind == "Secret" else name, namespace) for kind in KINDS}


async def test_edits_roll_the_deployment_and_objects_follow_their_gateway_also_across_a_restart(
    kube_cluster: KubeCluster, dynamic_client: DynamicClient, tmp_path: Path, namespace: str
) -> None:
    dynamic = dynamic_client
    apply(dynamic, [envoy_proxy(namespace), gateway_class(namespace), gateway(namespace, "gw")])
    name, other = infra_name(namespace, "gw"), infra_name(namespace, "gw2")
    serve = controller(kube_cluster, tmp_path, namespace)
    try:
        await serve.ready()
        deployment = await eventually(lambda: found(dynamic, "Deployment", name, namespace), "the Envoy Deployment")
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert (deployment["spec"]["replicas"], container["image"]) == (1, DEFAULT_IMAGE)
        assert {"name": "http-8080", "containerPort": 8080, "protocol": "TCP"} in container["ports"]

        # A LoadBalancer without an ingress address: no address; once the load balancer reports one, the Gateway
        # has it, and still waits for a replica, then for an Envoy holding its configuration.
        await eventually(programmed_reason(dynamic, namespace, "gw", "AddressNotAssigned"), "AddressNotAssigned")
        # No address is also what a Gateway whose Service is not made yet has: the load balancer needs the Service.
        await eventually(lambda: found(dynamic, "Service", name, namespace), "the Envoy Service")
        ingress = {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}}
        k8s.CoreV1Api(kube_cluster.api_client).patch_namespaced_service_status(name, namespace, ingress)
        status = await eventually(programmed_reason(dynamic, namespace, "gw", "NoResources"), "NoResources")
        assert status["addresses"] == [{"type": "IPAddress", "value": "192.0.2.10"}]
        available(kube_cluster, name, namespace, 1)
        await eventually(programmed_reason(dynamic, namespace, "gw", "Pending"), "Pending: no Envoy holds it yet")

        # An EnvoyProxy edit reaches the Deployment.
        apply(dynamic, [envoy_proxy(namespace, {"replicas": 2, "container": {"image": "example.com/envoy:v2"}})])

        def edited() -> Any:
            current = found(dynamic, "Deployment", name, namespace) or {}
            spec = current.get("spec") or {}
            images = [c["image"] for c in spec.get("template", {}).get("spec", {}).get("containers", [])]
            return current if (spec.get("replicas"), images) == (2, ["example.com/envoy:v2"]) else None

        await eventually(edited, "replicas 2 and the new image")

        # The Gateway's infrastructure labels and annotations reach its objects and its pods.
        labelled = gateway(namespace, "gw")
        labelled["spec"]["infrastructure"] = {"labels": {"team": "search"}, "annotations": {"example.com/a": "b"}}
        apply(dynamic, [labelled])

        def carried(kind: str) -> Callable[[], Any]:
            def probe() -> Any:
                meta = (found(dynamic, kind, name, namespace) or {}).get("metadata") or {}
                wanted = (meta.get("labels") or {}).get("team") == "search"
                return meta if wanted and (meta.get("annotations") or {}).get("example.com/a") == "b" else None

            return probe

        for kind in ("ServiceAccount", "ConfigMap", "Service", "Deployment"):
            await eventually(carried(kind), f"the {kind} labelled and annotated")
        template = (found(dynamic, "Deployment", name, namespace) or {})["spec"]["template"]["metadata"]
        assert template["labels"]["team"] == "search" and template["annotations"]["example.com/a"] == "b"

        # A deleted Deployment comes back.
        uid = deployment["metadata"]["uid"]
        delete(dynamic, "apps/v1", "Deployment", name, namespace)

        def recreated() -> Any:
            current = found(dynamic, "Deployment", name, namespace)
            return current if current is not None and current["metadata"]["uid"] != uid else None

        await eventually(recreated, "the Deployment recreated")

        # A deleted Gateway's objects go.
        delete(dynamic, GATEWAYS, "Gateway", "gw", namespace)
        await eventually(lambda: not any(objects_of(dynamic, name, namespace).values()), "its objects deleted")

        # Another Gateway, deleted while the controller is down: its objects go when it is back.
        apply(dynamic, [gateway(namespace, "gw2")])
        await eventually(lambda: all(objects_of(dynamic, other, namespace).values()), "gw2's objects")
    finally:
        assert serve.terminate() == 0
    delete(dynamic, GATEWAYS, "Gateway", "gw2", namespace)
    serve = controller(kube_cluster, tmp_path, namespace, "again")
    try:
        await serve.ready()
        await eventually(lambda: not any(objects_of(dynamic, other, namespace).values()), "gw2's objects deleted")
        deletes = 'xds_server_provisioned_objects_total{action="delete",kind="Deployment",result="ok"}'
        assert await serve.metric(deletes) >= 1
    finally:
        stop_process(serve.process)
