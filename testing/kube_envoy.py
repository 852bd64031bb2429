"""A provisioned Gateway's Envoy run on this machine, as its pod would run it (there is no kubelet in the tests):
the bootstrap from the Gateway's ConfigMap, the client certificate from its `-tls` Secret written the way the kubelet
mounts a Secret into the directory the controller was told (`Serve.tls_dir`, `--envoy-tls-dir`), the bootstrap's ADS
address turned to the local controller (what a port-forward does), the admin and readiness listener on free
loopback ports. Every test that runs an Envoy against `serve --kubernetes` goes through here."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s

from testing.envoy import Envoy
from testing.mtls import write_like_kubelet
from testing.ports import free_port
from testing.processes import Serve, serve_port
from testing.web import eventually_async, http_get, wait_for
from xds_server.kube.infra import BOOTSTRAP_FILE, infra_name, tls_secret_name

SECONDS = 60.0  # for the leader to provision, on a loaded machine


def local_bootstrap(text: str, xds_port: int, delta: bool = False, node_id: str = "pod") -> tuple[str, int, int]:
    """The provisioned bootstrap as a port-forward would serve it: ADS on the local controller, the admin and the
    readiness listener on free loopback ports. Returns it with the admin and readiness ports. The ADS cluster's TLS
    (SNI and the name checked in the server's certificate: the Service's) stays as provisioned. `delta`: incremental
    ADS instead of the provisioned state of the world (the benchmarks measure both). The node id is `node_id`, as a
    pod's `--service-node $(ENVOY_POD_NAME)` makes it."""
    document = yaml.safe_load(text)
    document["node"]["id"] = node_id
    if delta:
        document["dynamic_resources"]["ads_config"]["api_type"] = "DELTA_GRPC"
    admin_port, readiness_port = free_port(), free_port()
    document["admin"]["address"]["socket_address"]["port_value"] = admin_port
    for cluster in document["static_resources"]["clusters"]:
        address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        if cluster["name"] == "xds-server/ads":  # STRICT_DNS stays: an IP resolves to itself
            address["socket_address"] = {"address": "127.0.0.1", "port_value": xds_port}
        else:
            address["socket_address"]["port_value"] = admin_port
    [listener] = document["static_resources"]["listeners"]
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": readiness_port}
    return yaml.safe_dump(document), admin_port, readiness_port


def read_config_map(api: k8s.ApiClient, namespace: str, name: str) -> dict[str, str] | None:
    try:
        found: Any = k8s.CoreV1Api(api).read_namespaced_config_map(name, namespace)
    except k8s.ApiException as error:
        if error.status == 404:
            return None
        raise
    data: dict[str, str] = found.data or {}
    return data


def read_secret(api: k8s.ApiClient, namespace: str, name: str) -> dict[str, bytes] | None:
    """A Secret's files, decoded; None when it does not exist."""
    try:
        found: Any = k8s.CoreV1Api(api).read_namespaced_secret(name, namespace)
    except k8s.ApiException as error:
        if error.status == 404:
            return None
        raise
    return {key: base64.b64decode(value) for key, value in (found.data or {}).items()}


async def provisioned_certificate(api: k8s.ApiClient, controller_namespace: str, gateway: str) -> dict[str, bytes]:
    """The files of a Gateway's certificate Secret, once the leader has provisioned it."""
    namespace, name = gateway.split("/", 1)
    secret_name = tls_secret_name(namespace, name)
    found: dict[str, bytes] = await eventually_async(
        lambda: read_secret(api, controller_namespace, secret_name), f"Secret {secret_name}", SECONDS
    )
    return found


class KubeEnvoy(Envoy):
    """The Envoy of a provisioned Gateway; `readiness` is its probe listener (`/ready`, `/drain`)."""

    def __init__(
        self,
        tmp_path: Path,
        serve: Serve,
        gateway: str,
        bootstrap_text: str,
        certificate: dict[str, bytes],
        node_id: str = "pod",
        delta: bool = False,
    ) -> None:
        assert serve.tls_dir is not None, "a cluster-mode Serve tells its Envoys where their certificate is"
        self.tls_dir = serve.tls_dir
        write_like_kubelet(self.tls_dir, certificate)
        xds_port = int(serve_port(serve, "--xds-address"))
        text, admin_port, readiness_port = local_bootstrap(bootstrap_text, xds_port, delta, node_id)
        super().__init__(tmp_path, gateway, xds_port, node_id, printed_bootstrap=(text, admin_port))
        self.readiness = f"http://127.0.0.1:{readiness_port}"

    def renew(self, certificate: dict[str, bytes]) -> None:
        """What the kubelet does when the Secret changes: the new files in, at once."""
        write_like_kubelet(self.tls_dir, certificate)

    async def serial(self) -> str:
        """The serial number (hex) of the client certificate Envoy holds now (its admin /certs)."""
        _, text = await self.get("/certs")
        serials: set[str] = {
            str(chain["serial_number"]).lstrip("0")
            for entry in json.loads(text)["certificates"]
            for chain in entry.get("cert_chain") or []
        }
        assert len(serials) == 1, serials
        return serials.pop()

    async def wait_ready(self) -> None:
        """LIVE through the readiness listener, as the kubelet's probe sees it."""
        answer = await wait_for(f"{self.readiness}/ready", (200, "LIVE\n"))
        assert answer == (200, "LIVE\n"), f"Envoy not ready: {answer}; log: {self.log_tail()}"

    def ready_now(self) -> tuple[int, str]:
        return http_get(f"{self.readiness}/ready")


async def start_provisioned_envoy(
    tmp_path: Path,
    serve: Serve,
    api: k8s.ApiClient,
    controller_namespace: str,
    gateway: str,
    certificate_of: str | None = None,
    node_id: str = "pod",
    delta: bool = False,
) -> KubeEnvoy:
    """The Envoy a pod of `gateway` would run, from its provisioned ConfigMap and Secret (`certificate_of`: another
    Gateway's Secret instead, as a stolen or misrouted certificate would be)."""
    namespace, name = gateway.split("/", 1)
    object_name = infra_name(namespace, name)
    config = await eventually_async(
        lambda: read_config_map(api, controller_namespace, object_name), f"ConfigMap {object_name}", SECONDS
    )
    certificate = await provisioned_certificate(api, controller_namespace, certificate_of or gateway)
    return KubeEnvoy(tmp_path, serve, gateway, config[BOOTSTRAP_FILE], certificate, node_id, delta)
