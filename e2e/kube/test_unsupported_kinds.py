"""`serve --kubernetes` and objects of kinds it does not implement, against a real API server: a GRPCRoute on our
Gateway gets a `parents` entry of ours saying Accepted False/Unsupported, one on another controller's Gateway gets
none; a SecurityPolicy (its CRD a stand-in written for this test, securitypolicy-crd.yaml) targeting our Gateway gets
an `ancestors` entry beside another controller's, which stays when ours goes (the policy retargeted)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient

from e2e.kube.test_controller import OURS, STATUS_TIMEOUT, apply, controller, documents
from testing.kube_cluster import KubeCluster, apply_crds
from testing.manifests import gateway
from testing.ports import free_port
from testing.processes import stop_process
from testing.web import eventually_async

CRD = Path(__file__).resolve().parent / "securitypolicy-crd.yaml"
EG = ("gateway.envoyproxy.io", "v1alpha1", "securitypolicies")
GRPC = ("gateway.networking.k8s.io", "v1", "grpcroutes")
THEIRS = "example.com/other-controller"
FOREIGN_ANCESTOR = {
    "ancestorRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "foreign"},
    "controllerName": THEIRS,
    "conditions": [
        {
            "type": "Accepted",
            "status": "True",
            "reason": "Accepted",
            "message": "enforced by the other controller",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
            "observedGeneration": 1,
        }
    ],
}

eventually = functools.partial(eventually_async, seconds=STATUS_TIMEOUT)


@pytest.fixture
def security_policy_crd(api_client: k8s.ApiClient) -> Iterator[None]:
    """The stand-in CRD, installed before the controller starts (an absent kind is only looked for again after
    30 s), and removed afterwards so the session's other tests see the cluster as they expect."""
    [crd] = yaml.safe_load_all(CRD.read_text())
    apply_crds(api_client, [crd])
    try:
        yield
    finally:
        k8s.ApiextensionsV1Api(api_client).delete_custom_resource_definition(crd["metadata"]["name"])


def foreign_gateway() -> str:
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: e2e-other}}
spec: {{controllerName: {THEIRS}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: foreign}}
spec: {{gatewayClassName: e2e-other, listeners: [{{name: http, port: {free_port()}, protocol: HTTP}}]}}
"""


def grpc_route(name: str, parent: str) -> str:
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: {parent}}}]
  rules: [{{backendRefs: [{{name: grpc-backend, port: 9000}}]}}]
"""


def security_policy(name: str, gateway_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.envoyproxy.io/v1alpha1",
        "kind": "SecurityPolicy",
        "metadata": {"name": name},
        "spec": {
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway_name}],
            "jwt": {"providers": [{"name": "example", "remoteJWKS": {"uri": "https://example.com/jwks"}}]},
        },
    }


def ours(entries: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return [e for e in entries or [] if e.get("controllerName") == OURS]


async def test_routes_and_policies_of_unsupported_kinds_on_our_gateway_are_told_so_in_their_status(
    kube_cluster: KubeCluster, security_policy_crd: None, tmp_path: Path, namespace: str, dynamic_client: DynamicClient
) -> None:
    objects = k8s.CustomObjectsApi(kube_cluster.api_client)

    def get(api: tuple[str, str, str], name: str) -> dict[str, Any]:
        return cast(dict[str, Any], objects.get_namespaced_custom_object(api[0], api[1], namespace, api[2], name))

    apply(dynamic_client, documents(gateway([free_port()]) + "---" + foreign_gateway()), namespace)
    apply(dynamic_client, documents(grpc_route("mine", "gw") + "---" + grpc_route("theirs", "foreign")), namespace)
    for name, target in (("jwt", "gw"), ("their-jwt", "foreign")):
        objects.create_namespaced_custom_object(*EG[:2], namespace, EG[2], security_policy(name, target))
    # The other controller has already written its entry on `jwt` (as if it also targeted its Gateway).
    written = get(EG, "jwt")
    objects.replace_namespaced_custom_object_status(
        *EG[:2], namespace, EG[2], "jwt", {**written, "status": {"ancestors": [FOREIGN_ANCESTOR]}}
    )

    serve = controller(kube_cluster, tmp_path, namespace, provision=False)
    try:
        await serve.ready()
        [parent] = await eventually(lambda: ours((get(GRPC, "mine").get("status") or {}).get("parents")), "parents")
        assert parent["parentRef"] == {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "namespace": namespace,
            "name": "gw",
        }
        [accepted] = parent["conditions"]
        assert (accepted["type"], accepted["status"], accepted["reason"]) == ("Accepted", "False", "Unsupported")
        assert "GRPCRoute" in accepted["message"] and accepted["observedGeneration"] == 1

        [ancestor] = await eventually(lambda: ours((get(EG, "jwt").get("status") or {}).get("ancestors")), "ancestors")
        assert ancestor["ancestorRef"]["name"] == "gw" and ancestor["ancestorRef"]["namespace"] == namespace
        [accepted] = ancestor["conditions"]
        assert (accepted["status"], accepted["reason"]) == ("False", "Unsupported")
        assert "authentication and authorization" in accepted["message"]
        policy = get(EG, "jwt")
        assert policy["status"]["ancestors"][0] == FOREIGN_ANCESTOR  # the other controller's entry is kept
        assert "jwt" in policy["spec"]  # the stored copy is trimmed; a status write never touches the spec

        # Objects that only name another controller's Gateway: nothing of ours, ever. (Checked after ours were
        # written: the controller had every object by then.)
        assert ours((get(GRPC, "theirs").get("status") or {}).get("parents")) == []
        assert ours((get(EG, "their-jwt").get("status") or {}).get("ancestors")) == []

        # Retargeted to the other controller's Gateway: our entry goes, theirs stays.
        objects.patch_namespaced_custom_object(
            *EG[:2],
            namespace,
            EG[2],
            "jwt",
            {"spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "foreign"}]}},
        )
        await eventually(lambda: not ours((get(EG, "jwt").get("status") or {}).get("ancestors")), "our entry removed")
        assert get(EG, "jwt")["status"]["ancestors"] == [FOREIGN_ANCESTOR]
    finally:
        stop_process(serve.process)
