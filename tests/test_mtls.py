"""ADS and ext_proc under mutual TLS, as `serve --kubernetes` runs them, over real gRPC on loopback: a client needs a
certificate of the control plane's CA, and gets only what belongs to the Gateway it names. The forged call (one
ext_proc stream asking for a rule's upstream settings, whose reply carries the backend's API key) is refused without
a certificate and with another Gateway's; ADS serves a Gateway's snapshot only to a certificate naming it, and the
picker picks for a pool only for a Gateway whose routes use it. A renewed server certificate is presented from the
next connection on, without a restart."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc

from testing.manifests import ai_gateway_route, gateway, inference_pool, keyed_backend, pod, pool_route
from testing.mtls import ask_snapshot, ask_upstream_settings, header_values, presented_certificate, secure_channel
from testing.ports import free_port
from translators.ir import ControlPlaneTls, TranslateOptions
from translators.loader import load_texts
from translators.xds.names import DESTINATION_HEADER, PICKER_POOL_METADATA
from xds_server import metrics
from xds_server.kube.certificates import (
    Authority,
    KeyPair,
    first_authority,
    issue_client,
    issue_server,
    service_names,
)
from xds_server.listen import Address
from xds_server.serve import ControlPlaneService
from xds_server.tls import ServerCertificate

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)
NAMES = service_names("xds-server", "system")
SERVER_NAME = NAMES[-1]
API_KEY = "sk-mtls-not-a-real-key-93b1"
RULE, BACKEND = "aigatewayroute/default/llm/rule/0", "aiservicebackend/default/keyed"


def files(pair: KeyPair, authority: Authority) -> dict[str, bytes]:
    return {"tls.crt": pair.certificate_pem, "tls.key": pair.key_pem, "ca.crt": authority.trust_pem}


@dataclass
class Servers:
    authority: Authority
    service: ControlPlaneService
    xds: str
    extproc: str

    def client(self, gateway: str) -> dict[str, bytes]:
        return files(issue_client(self.authority, gateway, NOW, DAY), self.authority)

    def channel(self, address: str, client: dict[str, bytes] | None) -> grpc.aio.Channel:
        return secure_channel(address, client, self.authority.trust_pem, SERVER_NAME)


@pytest.fixture(scope="module")
def authority() -> Authority:
    return first_authority(NOW, datetime.timedelta(days=3650))


@pytest.fixture
async def servers(authority: Authority) -> AsyncIterator[Servers]:
    xds_port, extproc_port = free_port(), free_port()
    options = TranslateOptions(extproc_port=extproc_port, control_plane_tls=ControlPlaneTls("/certs", SERVER_NAME))
    service = ControlPlaneService(options, Address("127.0.0.1", xds_port), ("127.0.0.1", free_port()))
    server = issue_server(authority, NAMES, NOW, DAY)
    service.server_certificate = ServerCertificate(server.certificate_pem, server.key_pem, authority.trust_pem)
    # Gateway gw's routes send model `keyed` to a backend whose key is API_KEY, and host llm.example to the
    # InferencePool `llama` (picked by the embedded picker); Gateway gw2 has no route.
    manifests = "---".join(
        [
            gateway([8080]),
            gateway([8081], "gw2"),
            keyed_backend("keyed", "127.0.0.9", 9999, API_KEY),
            # A model name override keeps the rule's settings (the key with them) with the upstream-settings service.
            ai_gateway_route("llm", {"keyed": "keyed"}).replace(
                "{name: keyed}", "{name: keyed, modelNameOverride: v2}"
            ),
            inference_pool("llama", 8000),
            pod("llama-0", "127.0.62.1", {"app": "llama"}),
            pool_route("pool", "llama", "llm.example"),
        ]
    )
    await service.publish(load_texts([("mtls.yaml", manifests)]))
    await service.start()
    try:
        yield Servers(authority, service, f"127.0.0.1:{xds_port}", f"127.0.0.1:{extproc_port}")
    finally:
        await service.stop()


def refused(server: str, reason: str) -> float:
    count: float = metrics.REFUSED_STREAMS.labels(server, reason)._value.get()
    return count


async def test_the_forged_upstream_settings_call_gets_the_key_only_with_its_own_gateways_certificate(
    servers: Servers,
) -> None:
    # The Gateway's own Envoy: the reply sets the credential (what the attack is after).
    async with servers.channel(servers.extproc, servers.client("default/gw")) as channel:
        own = await ask_upstream_settings(channel, RULE, BACKEND)
    assert header_values(own)["authorization"] == f"Bearer {API_KEY}".encode()

    # Without a certificate: the TLS handshake fails, nothing is read.
    async with servers.channel(servers.extproc, None) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as no_certificate:
            await ask_upstream_settings(channel, RULE, BACKEND)
    assert no_certificate.value.code() is grpc.StatusCode.UNAVAILABLE

    # Another Gateway's certificate (a real Envoy's, of the same CA): 403, and the key is nowhere in the reply.
    before = refused("upstream_settings", "other_gateway")
    async with servers.channel(servers.extproc, servers.client("default/gw2")) as channel:
        other = await ask_upstream_settings(channel, RULE, BACKEND)
    [reply] = other
    assert reply.immediate_response.status.code == 403
    assert API_KEY.encode() not in b"".join(r.SerializeToString() for r in other)
    assert refused("upstream_settings", "other_gateway") == before + 1

    # A certificate of another CA (someone else's "xds-server") is refused by the handshake.
    stranger = first_authority(NOW, DAY)
    forged = files(issue_client(stranger, "default/gw", NOW, DAY), stranger)
    async with servers.channel(servers.extproc, forged) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as wrong_ca:
            await ask_upstream_settings(channel, RULE, BACKEND)
    assert wrong_ca.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_ads_serves_a_gateways_snapshot_only_to_a_certificate_naming_it(servers: Servers) -> None:
    async with servers.channel(servers.xds, servers.client("default/gw")) as channel:
        own = await ask_snapshot(channel, "default/gw")
    assert own.resources  # the ext_proc cluster and the backend's

    before = refused("ads", "other_gateway")
    async with servers.channel(servers.xds, servers.client("default/gw2")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as other:
            await ask_snapshot(channel, "default/gw")
    assert other.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "names Gateway default/gw2, not default/gw" in (other.value.details() or "")
    assert refused("ads", "other_gateway") == before + 1
    assert not [s for s in servers.service.control_plane.clients.streams() if s.key == "default/gw"]

    async with servers.channel(servers.xds, None) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await ask_snapshot(channel, "default/gw")
    assert anonymous.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_the_extproc_cluster_envoy_is_given_presents_its_certificate_to_the_service_name(
    servers: Servers,
) -> None:
    async with servers.channel(servers.xds, servers.client("default/gw")) as channel:
        snapshot = await ask_snapshot(channel, "default/gw")
    clusters = {c.name: c for c in (cluster_pb2.Cluster.FromString(r.value) for r in snapshot.resources)}
    extproc = clusters["xds-server/extproc"]
    context = tls_pb2.UpstreamTlsContext()
    extproc.transport_socket.typed_config.Unpack(context)
    assert context.sni == SERVER_NAME
    [certificate] = context.common_tls_context.tls_certificate_sds_secret_configs
    assert certificate.sds_config.path_config_source.path == "/certs/sds-certificate.json"
    assert certificate.sds_config.path_config_source.watched_directory.path == "/certs"


async def test_a_renewed_server_certificate_is_presented_from_the_next_connection_without_a_restart(
    servers: Servers, tmp_path: Path
) -> None:
    client = servers.client("default/gw")
    first = await asyncio.to_thread(presented_certificate, servers.extproc, client, SERVER_NAME, tmp_path)
    certificate = servers.service.server_certificate
    assert certificate is not None
    renewed = issue_server(servers.authority, NAMES, NOW, 2 * DAY)
    assert certificate.update(renewed.certificate_pem, renewed.key_pem, servers.authority.trust_pem)
    # An open channel keeps working across the swap.
    async with servers.channel(servers.extproc, client) as channel:
        answer = await ask_upstream_settings(channel, RULE, BACKEND)
        assert header_values(answer)["authorization"] == f"Bearer {API_KEY}".encode()
        for address in (servers.extproc, servers.xds):
            now = await asyncio.to_thread(presented_certificate, address, client, SERVER_NAME, tmp_path)
            assert now.serial_number == renewed.certificate.serial_number != first.serial_number
        answer = await ask_upstream_settings(channel, RULE, BACKEND)
        assert header_values(answer)["authorization"] == f"Bearer {API_KEY}".encode()


async def pick(channel: grpc.aio.Channel, pool: str) -> ext_proc_pb2.ProcessingResponse:
    """One picker stream for `pool`, a request without a body: the reply carries the pick at once."""
    headers = ext_proc_pb2.HttpHeaders(
        headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=":path", raw_value=b"/v1/chat/completions")]),
        end_of_stream=True,
    )
    stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)
    call = stub.Process(metadata=((PICKER_POOL_METADATA, pool),), timeout=5)
    await call.write(ext_proc_pb2.ProcessingRequest(request_headers=headers))
    reply: ext_proc_pb2.ProcessingResponse = await call.read()
    await call.done_writing()
    return reply


async def test_the_picker_picks_for_a_pool_only_for_a_gateway_whose_routes_use_it(servers: Servers) -> None:
    async with servers.channel(servers.extproc, servers.client("default/gw")) as channel:
        own = await pick(channel, "default/llama")
    mutation = own.request_headers.response.header_mutation.set_headers
    assert {h.header.key: h.header.raw_value for h in mutation}[DESTINATION_HEADER] == b"127.0.62.1:8000"

    before = refused("picker", "other_gateway")
    async with servers.channel(servers.extproc, servers.client("default/gw2")) as channel:
        other = await pick(channel, "default/llama")
    assert other.immediate_response.status.code == 503  # as for a pool it does not know: nothing about the pool
    assert b"127.0.62.1" not in other.SerializeToString()
    assert refused("picker", "other_gateway") == before + 1
