"""`xds-server serve --kubernetes` against a real API server: statuses written back, edits reaching a real Envoy,
invalid and foreign objects, ReferenceGrants, and two replicas sharing one Lease."""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient

from testing.cases import SEED, TUTORIAL
from testing.envoy import Envoy
from testing.kube_cluster import KubeCluster
from testing.kube_envoy import start_provisioned_envoy
from testing.manifests import backend_route, gateway
from testing.ports import free_port
from testing.processes import Serve, serve_port, stop_process, xds_server_status
from testing.web import eventually_async, http_get, upstream

OURS = "gateway.envoyproxy.io/gatewayclass-controller"
# The verbatim tutorial when it is beside the repository, else the project's own copy of it.
TUTORIAL_DIR = SEED if SEED.is_dir() else TUTORIAL
TUTORIAL_GATEWAY = "default/inference-pool-with-aigwroute"
STATUS_TIMEOUT = 60.0  # generous for a loaded 2-core machine; nothing here measures speed


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict) and doc.get("kind")]


def apply(dynamic: DynamicClient, docs: list[dict[str, Any]], namespace: str | None = None) -> None:
    """Server-side apply, as `kubectl apply --server-side` does; `namespace` overrides the documents'."""
    for doc in docs:
        resource = dynamic.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        target = None
        if resource.namespaced:
            target = namespace or doc["metadata"].get("namespace", "default")
            doc = {**doc, "metadata": {**doc["metadata"], "namespace": target}}
        dynamic.server_side_apply(  # type: ignore[no-untyped-call]  # the kubernetes client is unannotated
            resource, body=doc, namespace=target, field_manager="e2e", force_conflicts=True
        )


def delete(dynamic: DynamicClient, api_version: str, kind: str, name: str, namespace: str | None) -> None:
    dynamic.resources.get(api_version=api_version, kind=kind).delete(name=name, namespace=namespace)


def read(dynamic: DynamicClient, api_version: str, kind: str, name: str, namespace: str | None) -> dict[str, Any]:
    resource = dynamic.resources.get(api_version=api_version, kind=kind)
    found: dict[str, Any] = resource.get(name=name, namespace=namespace).to_dict()
    return found


def condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def our_parents(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in (obj.get("status") or {}).get("parents") or [] if p.get("controllerName") == OURS]


# Polls a blocking probe in a thread until it holds (testing.web.eventually_async), with this file's patience.
eventually = functools.partial(eventually_async, seconds=STATUS_TIMEOUT)


def controller(
    kube_cluster: KubeCluster, tmp_path: Path, lease_namespace: str, name: str = "serve", provision: bool = True
) -> Serve:
    extra = ["--lease-namespace", lease_namespace, "--controller-namespace", lease_namespace]
    extra += ["--privileged-port-offset", "10000", "--log-format", "console"]
    if not provision:  # the test runs the Envoy itself (e2e/kube/test_provisioning.py tests provisioning)
        extra.append("--no-provision")
    return Serve(kube_cluster.kubeconfig, free_port(), free_port(), tmp_path / f"{name}.log", extra=extra)


@pytest.fixture
def dynamic(dynamic_client: DynamicClient) -> DynamicClient:
    """The conftest's `dynamic_client`, under the short name this module's tests use."""
    return dynamic_client


@pytest.fixture
def upstreams() -> Iterator[dict[str, int]]:
    a, b = upstream("127.0.6.1", "from-a"), upstream("127.0.6.2", "from-b")
    ports = {"127.0.6.1": next(a), "127.0.6.2": next(b)}
    yield ports
    for server in (a, b):
        next(server, None)


@pytest.fixture
async def serving(kube_cluster: KubeCluster, tmp_path: Path, namespace: str) -> AsyncIterator[Serve]:
    serve = controller(kube_cluster, tmp_path, namespace)
    try:
        await serve.ready()
        yield serve
    finally:
        stop_process(serve.process)


@pytest.fixture
async def web_route(
    kube_cluster: KubeCluster,
    dynamic: DynamicClient,
    serving: Serve,
    tmp_path: Path,
    namespace: str,
    upstreams: dict[str, int],
) -> AsyncIterator[str]:
    """A Gateway in the test's namespace, an HTTPRoute `web` to upstream a, and a real Envoy answering it (the one its
    pod would run, with its provisioned certificate): its URL."""
    listen_port = free_port()
    apply(dynamic, documents(gateway([listen_port])), namespace)
    apply(dynamic, documents(backend_route("web", "127.0.6.1", upstreams["127.0.6.1"])), namespace)
    envoy = await start_provisioned_envoy(tmp_path, serving, kube_cluster.api_client, namespace, f"{namespace}/gw")
    url = f"http://127.0.0.1:{listen_port}"
    try:
        await envoy.wait_live()
        assert await eventually(lambda: http_get(f"{url}/") == (200, "from-a"), "route served")
        yield url
    finally:
        envoy.stop()


async def test_the_tutorial_gets_its_statuses_and_an_envoy_goes_live_with_its_model_routes(
    kube_cluster: KubeCluster, dynamic: DynamicClient, tmp_path: Path, namespace: str
) -> None:
    core = k8s.CoreV1Api(kube_cluster.api_client)
    try:  # the seed's EnvoyProxy lives where installing Envoy Gateway puts it
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name="envoy-gateway-system")))
    except k8s.ApiException as error:
        assert error.status == 409
    apply(dynamic, [doc for path in sorted(TUTORIAL_DIR.glob("*.yaml")) for doc in documents(path.read_text())])
    serve = controller(kube_cluster, tmp_path, namespace, provision=False)  # Programmed from its own Envoy alone
    try:
        assert "leader" in await serve.ready()

        def gateway_class() -> Any:
            found = read(dynamic, "gateway.networking.k8s.io/v1", "GatewayClass", "inference-pool-with-aigwroute", None)
            accepted = condition(found.get("status", {}).get("conditions"), "Accepted")
            return accepted if accepted and accepted["status"] == "True" else None

        accepted = await eventually(gateway_class, "GatewayClass Accepted")
        assert accepted["observedGeneration"] >= 1

        def gateway() -> Any:
            found = read(dynamic, "gateway.networking.k8s.io/v1", "Gateway", "inference-pool-with-aigwroute", "default")
            status = found.get("status") or {}
            ok = (condition(status.get("conditions"), "Accepted") or {}).get("status") == "True"
            return status if ok and status.get("listeners") else None

        status = await eventually(gateway, "Gateway Accepted with listeners")
        [listener] = status["listeners"]
        assert listener["attachedRoutes"] == 1
        assert {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"} in listener["supportedKinds"]

        def route() -> Any:
            found = read(
                dynamic, "aigateway.envoyproxy.io/v1beta1", "AIGatewayRoute", "inference-pool-with-aigwroute", "default"
            )
            accepted = condition(found.get("status", {}).get("conditions"), "Accepted")
            return accepted if accepted and accepted["status"] == "True" else None

        await eventually(route, "AIGatewayRoute Accepted")

        for pool in ("vllm-llama3-8b-instruct", "mistral"):

            def parent(pool: str = pool) -> Any:
                found = read(dynamic, "inference.networking.k8s.io/v1", "InferencePool", pool, "default")
                parents = (found.get("status") or {}).get("parents") or []
                return [
                    p
                    for p in parents
                    if p["parentRef"].get("name") == "inference-pool-with-aigwroute"
                    and p["parentRef"].get("namespace") == "default"
                    and (condition(p["conditions"], "Accepted") or {}).get("status") == "True"
                ]

            await eventually(parent, f"InferencePool {pool} has an Accepted parent")

        # Without provisioning the user runs the Envoy: a certificate from the controller's CA where the controller
        # tells Envoys to find it (--envoy-tls-dir: the ext_proc cluster reads it there too), then a bootstrap
        # presenting it (mutual TLS is required all the same).
        assert serve.tls_dir is not None
        certificates = serve.tls_dir
        command = [sys.executable, "-m", "xds_server.cli", "certificate", "--gateway", TUTORIAL_GATEWAY]
        command += ["--output", str(certificates), "--kubeconfig", str(kube_cluster.kubeconfig)]
        command += ["--controller-namespace", namespace]
        issued = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        server_name = f"xds-server.{namespace}.svc.cluster.local"
        tls = ["--tls-dir", str(certificates), "--tls-server-name", server_name]
        assert " ".join(tls) in issued
        assert oct(certificates.stat().st_mode & 0o777) == "0o700"
        assert oct((certificates / "tls.key").stat().st_mode & 0o777) == "0o600"
        xds_port = serve_port(serve, "--xds-address")
        admin_port = free_port()
        command = [sys.executable, "-m", "xds_server.cli", "bootstrap", "--gateway", TUTORIAL_GATEWAY, *tls]
        command += ["--xds-address", f"127.0.0.1:{xds_port}", "--admin-address", f"127.0.0.1:{admin_port}"]
        printed = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        envoy = Envoy(tmp_path, TUTORIAL_GATEWAY, int(xds_port), printed_bootstrap=(printed, admin_port))
        try:
            await envoy.wait_live()
            dump = json.dumps(await envoy.config_dump())
            for model in ("meta-llama/Llama-3.1-8B-Instruct", "mistral:latest", "some-cool-self-hosted-model"):
                assert json.dumps(model) in dump, model

            def programmed() -> Any:
                found = read(
                    dynamic, "gateway.networking.k8s.io/v1", "Gateway", "inference-pool-with-aigwroute", "default"
                )
                done = condition(found.get("status", {}).get("conditions"), "Programmed")
                return done if done and done["status"] == "True" else None

            await eventually(programmed, "Gateway Programmed once its Envoy holds the configuration")
            assert "leader:" in await asyncio.to_thread(xds_server_status, serve, tls)
        finally:
            envoy.stop()
    finally:
        stop_process(serve.process)


async def test_edits_reach_envoy_and_an_invalid_object_is_reported_while_the_rest_serves(
    dynamic: DynamicClient, web_route: str, namespace: str, upstreams: dict[str, int]
) -> None:
    url = f"{web_route}/"
    apply(dynamic, documents(backend_route("web", "127.0.6.2", upstreams["127.0.6.2"])), namespace)
    assert await eventually(lambda: http_get(url) == (200, "from-b"), "edited backend served")

    # An AIGatewayRoute the API server stores but the translator refuses (a body mutation value must be JSON
    # text; the CRD takes any string): its status says why, with the field, and the rest keeps serving.
    invalid = {
        "apiVersion": "aigateway.envoyproxy.io/v1beta1",
        "kind": "AIGatewayRoute",
        "metadata": {"name": "broken"},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "rules": [{"backendRefs": [{"name": "b", "bodyMutation": {"set": [{"path": "t", "value": "warm"}]}}]}],
        },
    }
    apply(dynamic, [invalid], namespace)

    def rejected() -> Any:
        found = read(dynamic, "aigateway.envoyproxy.io/v1beta1", "AIGatewayRoute", "broken", namespace)
        return condition(found.get("status", {}).get("conditions"), "NotAccepted")

    refused = await eventually(rejected, "the invalid route says NotAccepted")
    assert refused["status"] == "False"
    assert "spec.rules[0].backendRefs[0].bodyMutation.set[0].value" in refused["message"]
    assert await asyncio.to_thread(http_get, url) == (200, "from-b")

    delete(dynamic, "gateway.networking.k8s.io/v1", "HTTPRoute", "web", namespace)
    assert await eventually(lambda: http_get(url)[0] == 404, "deleted route gone")


async def test_a_foreign_gateway_class_is_ignored(
    dynamic: DynamicClient, serving: Serve, namespace: str, upstreams: dict[str, int]
) -> None:
    foreign_class = f"other-{namespace}"
    apply(
        dynamic,
        [
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "GatewayClass",
                "metadata": {"name": foreign_class},
                "spec": {"controllerName": "example.com/another-controller"},
            },
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "Gateway",
                "metadata": {"name": "foreign"},
                "spec": {
                    "gatewayClassName": foreign_class,
                    "listeners": [{"name": "l", "protocol": "HTTP", "port": 80}],
                },
            },
        ],
        namespace,
    )
    apply(dynamic, documents(gateway([free_port()])), namespace)
    route = documents(backend_route("both", "127.0.6.1", upstreams["127.0.6.1"]))
    route[1]["spec"]["parentRefs"] = [{"name": "gw"}, {"name": "foreign"}]
    apply(dynamic, route, namespace)

    def attached() -> Any:
        return our_parents(read(dynamic, "gateway.networking.k8s.io/v1", "HTTPRoute", "both", namespace))

    [parent] = await eventually(attached, "the route's parent entry for our Gateway")
    assert parent["parentRef"]["name"] == "gw"
    foreign = read(dynamic, "gateway.networking.k8s.io/v1", "Gateway", "foreign", namespace)
    assert not [c for c in foreign.get("status", {}).get("conditions", []) if c.get("reason") != "Pending"]
    foreign_class_status = read(dynamic, "gateway.networking.k8s.io/v1", "GatewayClass", foreign_class, None)
    assert not [c for c in foreign_class_status.get("status", {}).get("conditions", []) if c.get("reason") != "Pending"]


async def test_a_reference_grant_permits_a_cross_namespace_backend_and_its_removal_revokes_it(
    kube_cluster: KubeCluster, dynamic: DynamicClient, serving: Serve, namespace: str
) -> None:
    other = f"{namespace}-b"
    k8s.CoreV1Api(kube_cluster.api_client).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=other)))
    apply(
        dynamic,
        [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "models"},
                "spec": {"selector": {"app": "models"}, "ports": [{"port": 8000}]},
            }
        ],
        other,
    )
    apply(dynamic, documents(gateway([free_port()])), namespace)
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "across"},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "rules": [{"backendRefs": [{"name": "models", "namespace": other, "port": 8000}]}],
        },
    }
    apply(dynamic, [route], namespace)

    def resolved(want: str) -> Callable[[], Any]:
        def probe() -> Any:
            found = read(dynamic, "gateway.networking.k8s.io/v1", "HTTPRoute", "across", namespace)
            parents = our_parents(found)
            refs = condition(parents[0]["conditions"], "ResolvedRefs") if parents else None
            return refs if refs and refs["status"] == want else None

        return probe

    refused = await eventually(resolved("False"), "RefNotPermitted without a grant")
    assert refused["reason"] == "RefNotPermitted"
    grant = {
        "apiVersion": "gateway.networking.k8s.io/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": {"name": "routes-to-models"},
        "spec": {
            "from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": namespace}],
            "to": [{"group": "", "kind": "Service"}],
        },
    }
    apply(dynamic, [grant], other)
    await eventually(resolved("True"), "ResolvedRefs once granted")
    delete(dynamic, "gateway.networking.k8s.io/v1beta1", "ReferenceGrant", "routes-to-models", other)
    refused = await eventually(resolved("False"), "RefNotPermitted once the grant is gone")
    assert refused["reason"] == "RefNotPermitted"


async def test_two_replicas_share_one_lease_and_the_second_takes_over_when_the_leader_dies(
    kube_cluster: KubeCluster, dynamic: DynamicClient, tmp_path: Path, namespace: str
) -> None:
    apply(dynamic, documents(gateway([free_port()])), namespace)
    first = controller(kube_cluster, tmp_path, namespace, "first")
    second = controller(kube_cluster, tmp_path, namespace, "second")
    try:
        roles = {await first.ready(), await second.ready()}

        def leaders() -> Any:
            texts = [http_get(f"{s.admin}/readyz")[1] for s in (first, second)]
            return [t for t in texts if t.startswith("ready, leader")]

        assert len(await eventually(leaders, "one replica leads")) == 1, roles
        leader, follower = (
            (first, second) if http_get(f"{first.admin}/readyz")[1].startswith("ready, leader") else (second, first)
        )
        leader.process.kill()  # no release: the Lease must expire
        leader.process.wait()
        await eventually(
            lambda: http_get(f"{follower.admin}/readyz")[1].startswith("ready, leader"),
            "the follower takes over",
        )
        # Status keeps being written: a route created after the takeover gets its parent entry.
        apply(
            dynamic,
            [
                {
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "HTTPRoute",
                    "metadata": {"name": "after"},
                    "spec": {"parentRefs": [{"name": "gw"}], "rules": [{}]},
                }
            ],
            namespace,
        )
        await eventually(
            lambda: our_parents(read(dynamic, "gateway.networking.k8s.io/v1", "HTTPRoute", "after", namespace)),
            "status written by the new leader",
        )
    finally:
        for serve in (first, second):
            stop_process(serve.process)


async def test_envoy_keeps_serving_through_an_api_server_restart_and_the_controller_catches_up(
    kube_cluster: KubeCluster,
    dynamic: DynamicClient,
    serving: Serve,
    web_route: str,
    namespace: str,
    upstreams: dict[str, int],
) -> None:
    answers: list[tuple[int, str]] = []
    restarted = threading.Event()

    def ask_envoy() -> None:  # while the API server is away, the controller's watches fail; Envoy is untouched
        while not restarted.is_set():
            answers.append(http_get(f"{web_route}/"))
            time.sleep(0.1)

    asker = threading.Thread(target=ask_envoy)
    asker.start()
    try:
        # On this thread, not a worker: the new API server dies with the thread that starts it (PR_SET_PDEATHSIG).
        kube_cluster.restart_apiserver(3.0)
    finally:
        restarted.set()
        asker.join()
    assert answers and set(answers) == {(200, "from-a")}
    assert "ready" in (await asyncio.to_thread(http_get, f"{serving.admin}/readyz"))[1]
    # The controller relisted: a change made after the restart reaches Envoy and gets its status.
    apply(dynamic, documents(backend_route("after", "127.0.6.2", upstreams["127.0.6.2"], path="/after")), namespace)
    assert await eventually(lambda: http_get(f"{web_route}/after") == (200, "from-b"), "route created after restart")
    await eventually(
        lambda: our_parents(read(dynamic, "gateway.networking.k8s.io/v1", "HTTPRoute", "after", namespace)),
        "status written after the restart",
    )
    # HTTPRoute's: kinds whose CRD is not installed (Envoy Gateway's policies) count their looks as well.
    assert await serving.metric('xds_server_kube_watch_restarts_total{kind="HTTPRoute"') > 0


async def test_an_unreachable_api_server_leaves_it_alive_and_not_ready_and_sigterm_still_stops_it(
    tmp_path: Path,
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{free_port()}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "ns"}}],
                "current-context": "x",
            }
        )
    )
    serve = Serve(kubeconfig, free_port(), free_port(), tmp_path / "serve.log", extra=["--no-leader-election"])
    try:
        assert await eventually(lambda: http_get(f"{serve.admin}/healthz")[0] == 200, "alive", seconds=15)
        status, text = await asyncio.to_thread(http_get, f"{serve.admin}/readyz")
        assert (status, text) == (503, "not ready: resources not loaded yet\n")
        assert serve.terminate() == 0
    finally:
        stop_process(serve.process)
