"""Reference mode behind real Envoy: a pool's routes call the Endpoint Picker its endpointPickerRef names.

`xds-server serve --resources` with pools annotated `xds-server.io/endpoint-picker: reference`, Envoy, and vLLM
simulators as the pools' pods, each on its own 127.x.y.z address. The Endpoint Picker is a **stand-in** written
here (`StandInPicker`), not the Inference Extension's EPP (that needs an API server): an ext_proc server speaking
the EPP's side of the protocol as the reference EPP does, over TLS with a self-signed certificate (the EPP's
default). It holds the request headers until the whole body has streamed in (FULL_DUPLEX_STREAMED), then sets
`x-gateway-destination-endpoint` (header and `envoy.lb` metadata) and streams the body back; it echoes the
response body chunk by chunk and copies the endpoint that served (`envoy.lb` metadata on the response headers) into
`x-conformance-test-served-endpoint`. It picks the endpoint the request names in `x-test-endpoint`, else the pool's
first. Its "pod" is a Pod manifest whose IP is the stand-in's own loopback address.

Pools:
- `ref`: pods ref-0 and ref-1, FailClose, EPP Service ref-epp -> the stand-in; and ref-late, running but not Ready
  in the control plane's view (the EPP watches pods itself and may see one Ready first).
- `orphan`: its EPP Service does not exist: 500 JSON.
- `open`: FailOpen, its EPP Service selects no ready pod: Envoy cannot reach a picker and balances the pool itself;
  open-late-1 and -2 run but are not Ready, so only a third of the pool is (below Envoy's default panic threshold).
A fourth simulator, `outsider`, is in no pool: a pick naming it must not reach it.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import random
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc

from testing.envoy import Envoy
from testing.manifests import gateway, pod, pool_route
from testing.ports import free_port, port_free_on
from testing.processes import Serve
from testing.sims import SimProcess, start_sim
from testing.web import Response, eventually, request

DESTINATION = "x-gateway-destination-endpoint"
SERVED = "x-gateway-destination-endpoint-served"
SERVED_ECHO = "x-conformance-test-served-endpoint"
CHOICE_HEADER = "x-test-endpoint"  # the stand-in's steering header (the conformance EPP has its own)


def self_signed_certificate() -> tuple[bytes, bytes]:
    """(key, certificate) PEM: what the EPP serves when it is not given a certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stand-in-epp")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


@dataclass
class Seen:
    """What the stand-in saw of one request."""

    headers: dict[str, str]
    body: bytes = b""
    picked: str = ""
    served: str = ""
    response_chunks: int = 0


def _headers(message: pb.HttpHeaders) -> dict[str, str]:
    return {h.key: h.raw_value.decode() or h.value for h in message.headers.headers}


def _set(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, raw_value=value.encode()))


class StandInPicker(external_processor_pb2_grpc.ExternalProcessorServicer):  # type: ignore[misc]  # untyped stub
    """A stand-in for the Inference Extension's EPP (see the module docstring); one stream per HTTP request."""

    def __init__(self, default_endpoint: str) -> None:
        self.default_endpoint = default_endpoint
        self.seen: list[Seen] = []

    def _pick(self, seen: Seen) -> pb.ProcessingResponse:
        seen.picked = seen.headers.get(CHOICE_HEADER, self.default_endpoint)
        reply = pb.ProcessingResponse(
            request_headers=pb.HeadersResponse(
                response=pb.CommonResponse(
                    clear_route_cache=True,
                    header_mutation=pb.HeaderMutation(set_headers=[_set(DESTINATION, seen.picked)]),
                )
            )
        )
        reply.dynamic_metadata.update({"envoy.lb": {DESTINATION: seen.picked}})
        return reply

    @staticmethod
    def _body(chunk: bytes, end_of_stream: bool, request: bool) -> pb.ProcessingResponse:
        mutation = pb.BodyMutation(streamed_response=pb.StreamedBodyResponse(body=chunk, end_of_stream=end_of_stream))
        answer = pb.BodyResponse(response=pb.CommonResponse(body_mutation=mutation))
        return pb.ProcessingResponse(request_body=answer) if request else pb.ProcessingResponse(response_body=answer)

    async def Process(
        self, requests: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ProcessingResponse]:
        seen = Seen({})
        async for message in requests:
            kind = message.WhichOneof("request")
            if kind == "request_headers":
                seen = Seen(_headers(message.request_headers))
                self.seen.append(seen)
                if message.request_headers.end_of_stream:  # no body: pick at once
                    yield self._pick(seen)
            elif kind == "request_body":  # the headers' answer waits for the whole body, then the body goes back
                seen.body += message.request_body.body
                if message.request_body.end_of_stream:
                    yield self._pick(seen)
                    yield self._body(seen.body, True, request=True)
            elif kind == "response_headers":
                lb = message.metadata_context.filter_metadata["envoy.lb"]
                seen.served = lb.fields[SERVED].string_value if SERVED in lb.fields else "fail: no served metadata"
                mutation = pb.HeaderMutation(set_headers=[_set(SERVED_ECHO, seen.served)])
                yield pb.ProcessingResponse(
                    response_headers=pb.HeadersResponse(response=pb.CommonResponse(header_mutation=mutation))
                )
            elif kind == "response_body":
                seen.response_chunks += 1
                body = message.response_body
                yield self._body(body.body, body.end_of_stream, request=False)
            elif kind == "response_trailers":
                yield pb.ProcessingResponse(response_trailers=pb.TrailersResponse())
            # request_trailers: nothing, as the EPP (the body it waited for has ended already)


@dataclass
class StandInServer:
    """The stand-in on its own event loop in a thread (the tests make blocking HTTP requests)."""

    host: str
    port: int
    picker: StandInPicker
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    server: grpc.aio.Server | None = None

    def start(self) -> None:
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=10)

    async def _start(self) -> None:
        self.server = grpc.aio.server()
        external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(self.picker, self.server)
        credentials = grpc.ssl_server_credentials([self_signed_certificate()])
        self.server.add_secure_port(f"{self.host}:{self.port}", credentials)
        await self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(grace=None), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def reference_pool(name: str, target_port: int, service: str, failure_mode: str = "FailClose") -> str:
    """InferencePool `name` over pods app=<name>, calling the Endpoint Picker Service `service` (port 9002)."""
    return f"""
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {{name: {name}, annotations: {{xds-server.io/endpoint-picker: reference}}}}
spec:
  targetPorts: [{{number: {target_port}}}]
  selector: {{matchLabels: {{app: {name}}}}}
  endpointPickerRef: {{name: {service}, port: {{number: 9002}}, failureMode: {failure_mode}}}
"""


def picker_service(name: str, target_port: int) -> str:
    """The EPP's Service: port 9002 -> the picker pods' `target_port`, gRPC over TLS."""
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec: {{selector: {{app: {name}}}, ports: [{{name: grpc, port: 9002, targetPort: {target_port}}}]}}
"""


class ReferenceGateway:
    def __init__(self, tmp_path: Path) -> None:
        octet = random.randint(1, 254)
        names = ("ref-0", "ref-1", "open-0", "outsider", "ref-late", "open-late-1", "open-late-2")
        self.hosts = [f"127.{octet}.92.{i}" for i in range(1, len(names) + 1)]
        self.port = port_free_on(self.hosts)
        self.sims: list[SimProcess] = []
        for name, host in zip(names, self.hosts, strict=True):
            args = ["--host", host, "--port", str(self.port), "--model", "llama", "--seed", "1"]
            log = tmp_path / f"{name}.log"
            self.sims.append(start_sim("vllm", args, host, self.port, log, env={"POD_NAME": name}))
        self.endpoints = {name: f"{host}:{self.port}" for name, host in zip(names[:2], self.hosts[:2], strict=True)}
        self.outsider = f"{self.hosts[3]}:{self.port}"
        self.late = f"{self.hosts[4]}:{self.port}"
        epp_host = f"127.{octet}.92.10"
        self.epp = StandInServer(epp_host, free_port(epp_host), StandInPicker(self.endpoints["ref-0"]))
        self.epp.start()
        self.listen_port = free_port()
        self.url = f"http://127.0.0.1:{self.listen_port}"
        manifests = tmp_path / "manifests"
        manifests.mkdir()
        documents = [
            gateway([self.listen_port]),
            reference_pool("ref", self.port, "ref-epp"),
            picker_service("ref-epp", self.epp.port),
            pod("ref-epp-0", epp_host, {"app": "ref-epp"}),
            pool_route("ref", "ref", "ref.example"),
            reference_pool("orphan", self.port, "orphan-epp"),
            pool_route("orphan", "orphan", "orphan.example"),
            reference_pool("open", self.port, "open-epp", failure_mode="FailOpen"),
            picker_service("open-epp", self.epp.port),  # selects no pod: no picker to reach
            pool_route("open", "open", "open.example"),
            pod("ref-0", self.hosts[0], {"app": "ref"}),
            pod("ref-1", self.hosts[1], {"app": "ref"}),
            pod("orphan-0", self.hosts[0], {"app": "orphan"}),
            pod("open-0", self.hosts[2], {"app": "open"}),
            pod("outsider", self.hosts[3], {"app": "elsewhere"}),
            pod("ref-late", self.hosts[4], {"app": "ref"}, ready=False),
            pod("open-late-1", self.hosts[5], {"app": "open"}, ready=False),
            pod("open-late-2", self.hosts[6], {"app": "open"}, ready=False),
        ]
        (manifests / "all.yaml").write_text("---".join(documents))
        self.xds_port, self.admin_port = free_port(), free_port()
        self.serve = Serve(manifests, self.xds_port, self.admin_port, tmp_path / "serve.log")
        asyncio.run(self.serve.ready())
        self.envoy = Envoy(tmp_path, "default/gw", self.xds_port)
        asyncio.run(self.envoy.wait_live())
        eventually(lambda: self.chat("ref").status_code == 200, "the ref pool answers through the stand-in EPP")

    def chat(self, pool: str, headers: dict[str, str] | None = None, **body: Any) -> Response:
        payload = {"model": "llama", "messages": [{"role": "user", "content": "Say this is a test"}], **body}
        payload.setdefault("max_tokens", 5)
        all_headers = {"host": f"{pool}.example", "content-type": "application/json", **(headers or {})}
        return request(self.url, "POST", "/v1/chat/completions", json.dumps(payload).encode(), all_headers)

    def close(self) -> None:
        self.envoy.stop()
        if self.serve.process.poll() is None:
            self.serve.terminate()
        self.epp.stop()
        for sim in self.sims:
            sim.kill()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReferenceGateway]:
    gateway_ = ReferenceGateway(tmp_path_factory.mktemp("picker-reference"))
    try:
        yield gateway_
    finally:
        gateway_.close()


def test_requests_go_to_the_endpoint_the_referenced_picker_chose(gw: ReferenceGateway) -> None:
    for name, endpoint in gw.endpoints.items():
        for _ in range(3):
            before = len(gw.epp.picker.seen)
            answer = gw.chat("ref", headers={CHOICE_HEADER: endpoint})
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-inference-pod"] == name
            assert answer.headers[SERVED_ECHO] == endpoint  # Envoy told the picker which endpoint served
            [seen] = gw.epp.picker.seen[before:]
            assert json.loads(seen.body)["model"] == "llama"  # the picker had the whole body before it chose
            assert seen.response_chunks >= 1  # and the response streamed through it
            assert answer.json()["choices"]


def test_a_streamed_answer_passes_through_the_picker_whole(gw: ReferenceGateway) -> None:
    answer = gw.chat("ref", headers={CHOICE_HEADER: gw.endpoints["ref-1"]}, stream=True, max_tokens=20)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-inference-pod"] == "ref-1"
    events = [line for line in answer.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert all(json.loads(line.removeprefix("data: "))["object"] == "chat.completion.chunk" for line in events[:-1])


def test_a_choice_outside_the_pool_is_not_honoured(gw: ReferenceGateway) -> None:
    """The pool cluster knows only the pool's endpoints (override_host): an address it does not have is never
    connected to. A pick Envoy does not hold falls back to the pool's Ready pods (the picker may be a moment ahead
    of the control plane), so a Ready pool pod answers."""
    answers = [gw.chat("ref", headers={CHOICE_HEADER: gw.outsider}) for _ in range(4)]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert {a.headers["x-inference-pod"] for a in answers} <= {"ref-0", "ref-1"}  # never the outsider, nor ref-late


def test_a_pick_of_a_pod_not_ready_yet_in_our_view_is_honoured(gw: ReferenceGateway) -> None:
    """The picker's view of the pool's pods may be ahead of Envoy's endpoints (it watches pods itself): its choice of
    a pool pod that is not Ready for the control plane yet is served, not refused with "no healthy upstream"."""
    answer = gw.chat("ref", headers={CHOICE_HEADER: gw.late})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-inference-pod"] == "ref-late"


def test_a_missing_picker_service_answers_500_json(gw: ReferenceGateway) -> None:
    answer = gw.chat("orphan")
    assert answer.status_code == 500
    error = answer.json()["error"]
    assert error["code"] == "endpoint_picker_missing"
    assert (
        error["message"]
        == "InferencePool default/orphan has no Endpoint Picker to call: Service default/orphan-epp not found"
    )


def test_a_fail_open_pool_whose_picker_cannot_be_reached_is_balanced_by_envoy(gw: ReferenceGateway) -> None:
    """Balancing reaches only the Ready pod, though it is a third of the pool (Envoy's default would panic and
    balance over all three)."""
    answers = [gw.chat("open") for _ in range(9)]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert {a.headers["x-inference-pod"] for a in answers} == {"open-0"}


def test_the_embedded_picker_does_not_serve_reference_pools(gw: ReferenceGateway) -> None:
    pools = asyncio.run(gw.serve.document("/debug/pools"))
    assert pools == []
