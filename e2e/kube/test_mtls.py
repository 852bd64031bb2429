"""Mutual TLS between the Envoys and `serve --kubernetes`, against a real API server (DESIGN.md decision 15).

Two Gateways of ours in the test's namespace: `gw`, whose AIGatewayRoute sends model `keyed` to a backend with an
API key, and `gw2`. The controller keeps its CA and server certificate in Secrets and provisions each Gateway a
client certificate Secret; the Envoy a pod of `gw` would run (testing/kube_envoy.py) connects over mutual TLS, goes
LIVE and gets the key put on its requests. The attack of issue 15, one ext_proc call with
`x-ai-eg-upstream-settings` naming the real rule and backend, is refused without a certificate (the TLS handshake
fails) and with `gw2`'s certificate (no key); ADS refuses `gw`'s snapshot to `gw2`'s certificate, and to no
certificate; an Envoy bootstrapped for `gw` with `gw2`'s certificate, or with none, never goes LIVE. Finally a
renewed client certificate, written the way the kubelet updates a mounted Secret, is taken by the running Envoy
without a failed request, and is what it connects with after the old one expired and the controller restarted.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient

from e2e.kube.test_controller import apply, documents, eventually
from testing.envoy import Envoy
from testing.kube_cluster import KubeCluster
from testing.kube_envoy import provisioned_certificate, read_secret, start_provisioned_envoy
from testing.manifests import ai_gateway_route, gateway, keyed_backend
from testing.mtls import (
    ask_snapshot,
    ask_upstream_settings,
    header_values,
    presented_certificate,
    secure_channel,
)
from testing.ports import free_port, loopback_address
from testing.processes import Serve, serve_port, stop_process
from testing.sims import SimProcess, b64, start_testupstream
from testing.web import Response, http_get, request
from xds_server.kube.infra import tls_secret_name

API_KEY = "sk-cluster-mtls-not-a-real-key-71c4"
LIFETIME_SECONDS = 30  # the rotation test's client certificates: renewed when 10 s are left


@dataclass
class Cluster:
    kube: KubeCluster
    namespace: str
    upstream: SimProcess
    listen_port: int
    tmp_path: Path

    @property
    def gateway(self) -> str:
        return f"{self.namespace}/gw"

    @property
    def other(self) -> str:
        return f"{self.namespace}/gw2"

    @property
    def server_name(self) -> str:
        return f"xds-server.{self.namespace}.svc.cluster.local"

    @property
    def rule(self) -> tuple[str, str]:
        """The (rule, backend) whose upstream settings carry API_KEY: what the forged call names."""
        return f"aigatewayroute/{self.namespace}/llm/rule/0", f"aiservicebackend/{self.namespace}/keyed"

    def controller(self, name: str = "serve", extra: tuple[str, ...] = (), xds_port: int | None = None) -> Serve:
        flags = ["--controller-namespace", self.namespace, "--lease-namespace", self.namespace]
        flags += ["--log-format", "console", *extra]
        log = self.tmp_path / f"{name}.log"
        return Serve(self.kube.kubeconfig, xds_port or free_port(), free_port(), log, extra=flags)

    async def certificate(self, gateway: str) -> dict[str, bytes]:
        return await provisioned_certificate(self.kube.api_client, self.namespace, gateway)

    def chat(self) -> Response:
        """A request the route sends to the keyed backend: the upstream checks that it carries the key."""
        body = json.dumps({"model": "keyed", "messages": [{"role": "user", "content": "hi"}]}).encode()
        headers = {"content-type": "application/json", "x-expected-headers": b64(f"authorization:Bearer {API_KEY}")}
        return request(f"http://127.0.0.1:{self.listen_port}", "POST", "/v1/chat/completions", body, headers)


@pytest.fixture
async def cluster(
    kube_cluster: KubeCluster, dynamic_client: DynamicClient, namespace: str, tmp_path: Path
) -> AsyncIterator[Cluster]:
    host = loopback_address()[0]
    upstream = start_testupstream("keyed", host, tmp_path / "upstream.log")
    listen_port = free_port()
    manifests = "---".join(
        [
            gateway([listen_port]),
            gateway([free_port()], "gw2"),
            keyed_backend("keyed", host, upstream.port, API_KEY),
            ai_gateway_route("llm", {"keyed": "keyed"}),
        ]
    )
    apply(dynamic_client, documents(manifests), namespace)
    try:
        yield Cluster(kube_cluster, namespace, upstream, listen_port, tmp_path)
    finally:
        upstream.kill()


def channel(serve: Serve, server: str, files: dict[str, bytes] | None, ca: bytes, name: str) -> grpc.aio.Channel:
    return secure_channel(f"127.0.0.1:{serve_port(serve, server)}", files, ca, name)


async def never_live(envoy: Envoy, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (await envoy.get("/ready")) == (200, "LIVE\n"):
            return False
        await asyncio.sleep(0.2)
    return True


async def test_only_a_gateways_own_certificate_gets_its_configuration_and_its_backends_key(
    cluster: Cluster, tmp_path: Path
) -> None:
    serve = cluster.controller()
    try:
        assert "leader" in await serve.ready(seconds=60)
        envoy = await start_provisioned_envoy(
            tmp_path, serve, cluster.kube.api_client, cluster.namespace, cluster.gateway
        )
        try:
            await envoy.wait_ready()
            answer = await eventually(lambda: (r := cluster.chat()).status_code == 200 and r, "the keyed route")
            assert answer.status_code == 200, answer.text
        finally:
            envoy.stop()

        own, other = await cluster.certificate(cluster.gateway), await cluster.certificate(cluster.other)
        ca, name = own["ca.crt"], cluster.server_name
        rule, backend = cluster.rule

        # The forged call. With the Gateway's own certificate it gets the key: the rule and backend are the real ones.
        async with channel(serve, "--extproc-address", own, ca, name) as extproc:
            answered = await ask_upstream_settings(extproc, rule, backend)
        assert header_values(answered)["authorization"] == f"Bearer {API_KEY}".encode()
        # Without a certificate the TLS handshake fails.
        async with channel(serve, "--extproc-address", None, ca, name) as extproc:
            with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                await ask_upstream_settings(extproc, rule, backend)
        assert anonymous.value.code() is grpc.StatusCode.UNAVAILABLE
        # With another Gateway's certificate (a real one of the same CA): refused, no key.
        async with channel(serve, "--extproc-address", other, ca, name) as extproc:
            refused = await ask_upstream_settings(extproc, rule, backend)
        assert [r.immediate_response.status.code for r in refused] == [403]
        assert API_KEY.encode() not in b"".join(r.SerializeToString() for r in refused)

        # ADS: the Gateway's snapshot only to its own certificate.
        async with channel(serve, "--xds-address", own, ca, name) as ads:
            assert (await ask_snapshot(ads, cluster.gateway)).resources
        async with channel(serve, "--xds-address", other, ca, name) as ads:
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await ask_snapshot(ads, cluster.gateway)
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
        async with channel(serve, "--xds-address", None, ca, name) as ads:
            with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                await ask_snapshot(ads, cluster.gateway)
        assert anonymous.value.code() is grpc.StatusCode.UNAVAILABLE

        # Real Envoys: gw's bootstrap with gw2's certificate, and one with no TLS at all, never get a configuration.
        stolen = await start_provisioned_envoy(
            tmp_path, serve, cluster.kube.api_client, cluster.namespace, cluster.gateway, cluster.other, "stolen"
        )
        try:
            assert await never_live(stolen), stolen.log_tail()
        finally:
            stolen.stop()
        plain = Envoy(tmp_path, cluster.gateway, int(serve_port(serve, "--xds-address")), "plain")
        try:
            assert await never_live(plain), plain.log_tail()
        finally:
            plain.stop()
        refusals = 'xds_server_refused_streams_total{reason="other_gateway",server="ads"}'
        assert await serve.metric(refusals) >= 2  # the forged ADS call and the Envoy with gw2's certificate
        assert await serve.metric('xds_server_refused_streams_total{reason="other_gateway",server="upstream_settings"}')
        clients = await serve.document("/debug/clients")
        assert {c["gateway"] for c in clients} <= {cluster.gateway}
        for path in ("/debug/status", "/debug/snapshots", "/debug/clients", "/metrics"):
            status, text = await asyncio.to_thread(http_get, serve.admin + path)
            assert status == 200 and API_KEY not in text and "PRIVATE KEY" not in text, path
    finally:
        stop_process(serve.process)
    log = serve.log.read_text()
    assert API_KEY not in log and "PRIVATE KEY" not in log


def serial(files: dict[str, bytes]) -> str:
    return format(x509.load_pem_x509_certificate(files["tls.crt"]).serial_number, "x")


class Traffic:
    """Requests through the Envoy back to back on a thread, each answer kept."""

    def __init__(self, ask: Callable[[], Response]) -> None:
        self.answers: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ask,), daemon=True)
        self._thread.start()

    def _run(self, ask: Callable[[], Response]) -> None:
        while not self._stop.is_set():
            try:
                answer = ask()
                self.answers.append((answer.status_code, answer.text[:200]))
            except OSError as error:
                self.answers.append((0, str(error)))
            time.sleep(0.05)

    def stop(self) -> list[tuple[int, str]]:
        self._stop.set()
        self._thread.join()
        return self.answers


async def test_a_renewed_client_certificate_is_taken_by_the_running_envoy_without_a_failed_request(
    cluster: Cluster, tmp_path: Path
) -> None:
    api = cluster.kube.api_client
    secret_name = tls_secret_name(cluster.namespace, "gw")
    lifetime = ("--client-certificate-lifetime", str(LIFETIME_SECONDS))
    serve = cluster.controller("first", lifetime)
    xds_port = int(serve_port(serve, "--xds-address"))
    try:
        await serve.ready(seconds=60)
        envoy = await start_provisioned_envoy(tmp_path, serve, api, cluster.namespace, cluster.gateway)
    except BaseException:
        stop_process(serve.process)
        raise
    second: Serve | None = None
    try:
        await envoy.wait_ready()
        await eventually(lambda: cluster.chat().status_code == 200, "the keyed route")
        first = await cluster.certificate(cluster.gateway)
        assert await envoy.serial() == serial(first)
        traffic = Traffic(cluster.chat)

        # The leader renews the certificate when a third of its lifetime is left; the kubelet would swap the files.
        def renewed() -> dict[str, bytes] | None:
            found = read_secret(api, cluster.namespace, secret_name)
            return found if found is not None and found["tls.crt"] != first["tls.crt"] else None

        fresh: dict[str, Any] = await eventually(renewed, "a renewed certificate", seconds=LIFETIME_SECONDS + 30)
        assert fresh["ca.crt"] == first["ca.crt"] and fresh["tls.key"] != first["tls.key"]
        envoy.renew(fresh)
        for _ in range(100):
            if await envoy.serial() == serial(fresh):
                break
            await asyncio.sleep(0.1)
        assert await envoy.serial() == serial(fresh), "Envoy holds the renewed certificate"

        # Past the first certificate's expiry, on connections made before the renewal: nothing failed.
        expiry = x509.load_pem_x509_certificate(first["tls.crt"]).not_valid_after_utc.timestamp()
        await asyncio.sleep(max(0.0, expiry - time.time()) + 1)
        answers = traffic.stop()
        assert answers and all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:5]

        # New connections to a restarted controller: the renewed certificate is the one presented and accepted.
        stop_process(serve.process)
        second = cluster.controller("second", (*lifetime, "--envoy-tls-dir", str(serve.tls_dir)), xds_port)
        await second.ready(seconds=60)

        def reconnected() -> list[dict[str, Any]]:
            status, text = http_get(f"{second.admin}/debug/clients")
            clients: list[dict[str, Any]] = json.loads(text) if status == 200 else []
            return clients if clients and all(t["state"] == "SYNCED" for t in clients[0]["types"].values()) else []

        [client] = await eventually(reconnected, "the Envoy back, in sync (ADS retries with a backoff)")
        assert (client["gateway"], client["node"]) == (cluster.gateway, "pod")
        answer = await eventually(lambda: (r := cluster.chat()).status_code == 200 and r, "served after the restart")
        assert answer.status_code == 200
    finally:
        envoy.stop()
        stop_process(serve.process)
        if second is not None:
            stop_process(second.process)


@pytest.fixture
def core(kube_cluster: KubeCluster) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(kube_cluster.api_client)


async def test_the_ca_and_server_certificate_are_made_once_and_shared_by_replicas(
    cluster: Cluster, core: k8s.CoreV1Api
) -> None:
    first, second = cluster.controller("one"), cluster.controller("two")
    try:
        await first.ready(seconds=60)
        await second.ready(seconds=60)
        ca = core.read_namespaced_secret("xds-server-ca", cluster.namespace)
        server = core.read_namespaced_secret("xds-server-server-tls", cluster.namespace)
        assert ca.type == "xds-server.io/ca" and server.type == "kubernetes.io/tls"
        assert ca.metadata is not None and ca.metadata.labels is not None and server.data is not None
        assert ca.metadata.labels["app.kubernetes.io/component"] == "control-plane-tls"
        assert "app.kubernetes.io/managed-by" not in ca.metadata.labels  # no provisioning pass deletes it
        stored = x509.load_pem_x509_certificate(base64.b64decode(server.data["tls.crt"]))
        assert stored.subject.rfc4514_string() == f"CN={cluster.server_name}"
        # Both replicas present that one certificate (whichever created the Secrets, the other read them).
        files = await cluster.certificate(cluster.gateway)
        for serve in (first, second):
            for flag in ("--xds-address", "--extproc-address"):
                address = f"127.0.0.1:{serve_port(serve, flag)}"
                scratch = cluster.tmp_path / "scratch"
                found = await asyncio.to_thread(presented_certificate, address, files, cluster.server_name, scratch)
                assert found == stored
        certificates = await first.metric('xds_server_certificates_issued_total{kind="ca"}')
        certificates += await second.metric('xds_server_certificates_issued_total{kind="ca"}')
        assert certificates == 1
    finally:
        stop_process(first.process)
        stop_process(second.process)
