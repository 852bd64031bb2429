"""HTTPS listeners with real Envoy, `xds-server serve` and a testupstream: TLS terminated with Secrets' certificates.

A test CA made here signs every server certificate (SAN `localhost` and `ai.example`); clients connect to
`https://localhost:<port>` and verify against that CA alone. Gateway `gw` has two HTTPS listeners on ports of their
own: `https` presents Secret `gw-cert` (in `data`, base64), `second` presents Secret `second-cert` (in `stringData`);
each Secret is a manifest file of its own, so a test rewrites it as a user would. An AIGatewayRoute sends model `m` to
the testupstream on its own 127.x.y.z address.

Checked: the official `openai` SDK over the listener (and its refusal by a client that trusts only the system CAs),
HTTP/2 through ALPN, the private key absent from Envoy's config dump, a certificate rotated under a loop of new
connections with none failing (and a connection opened before it kept), and a Secret whose key does not match its
certificate refused on its own listener while the other keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from cryptography import x509

from testing.certificates import ServerCertificate, TestCertificateAuthority
from testing.envoy import Envoy
from testing.manifests import ai_gateway_route, ai_service_backend, gateway
from testing.ports import free_port, loopback_address
from testing.processes import Serve, synced
from testing.sims import SimProcess, start_testupstream
from testing.web import SECONDS, eventually

MODEL = "m"
SERVER_NAMES = ("localhost", "ai.example")
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


def tls_secret(name: str, issued: ServerCertificate, string_data: bool = False) -> str:
    """A `kubernetes.io/tls` Secret holding `issued`: base64 in `data`, or PEM text in `stringData`."""
    if string_data:

        def block(pem: bytes) -> str:
            return "\n".join("    " + line for line in pem.decode().strip().splitlines())

        values = f"stringData:\n  tls.crt: |\n{block(issued.certificate)}\n  tls.key: |\n{block(issued.key)}\n"
    else:
        crt, key = (base64.b64encode(pem).decode() for pem in (issued.certificate, issued.key))
        values = f"data:\n  tls.crt: {crt}\n  tls.key: {key}\n"
    return f"""apiVersion: v1
kind: Secret
metadata: {{name: {name}}}
type: kubernetes.io/tls
{values}"""


def key_fragments(key_pem: bytes) -> list[str]:
    """Texts that would give the key away: its PEM, its base64 as a Secret holds it, and each line of its body."""
    body = [line for line in key_pem.decode().splitlines() if line and not line.startswith("-----")]
    return [key_pem.decode(), base64.b64encode(key_pem).decode(), "".join(body), *body]


def string_values(value: Any) -> Iterator[str]:
    """Every string in a JSON document, keys and values."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from string_values(item)
    elif isinstance(value, list):
        for item in value:
            yield from string_values(item)


# --- clients ---


def serial_of(der: bytes | None) -> int:
    assert der is not None, "no peer certificate"
    return x509.load_der_x509_certificate(der).serial_number


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    serial: int  # of the certificate the server presented on this connection


def chat_over_new_connection(context: ssl.SSLContext, port: int, host: str = "localhost") -> Answer:
    """One chat completion over a connection of its own (TLS verified with `context`), closed after it."""
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=SECONDS)
    try:
        body = json.dumps(CHAT).encode()
        connection.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        response = connection.getresponse()
        content = response.read()
        assert connection.sock is not None
        return Answer(response.status, content, serial_of(connection.sock.getpeercert(binary_form=True)))
    finally:
        connection.close()


def presented_serial(context: ssl.SSLContext, port: int) -> int:
    """The serial of the certificate a TLS handshake with SNI `localhost` is answered with."""
    with (
        socket.create_connection(("localhost", port), timeout=SECONDS) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return serial_of(tls.getpeercert(binary_form=True))


def serves(context: ssl.SSLContext, port: int) -> bool:
    try:
        presented_serial(context, port)
        return True
    except OSError:  # refused, reset, or a handshake that fails
        return False


def h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream) + payload


def hpack_literal(index: int, value: str) -> bytes:
    """A header field "literal without indexing" whose name is entry `index` (< 15) of the static table, value
    not Huffman-coded (< 127 bytes)."""
    encoded = value.encode()
    return bytes([index, len(encoded)]) + encoded


def h2_get(tls: ssl.SSLSocket, authority: str, path: str) -> tuple[bytes, bytes]:
    """GET `path` over HTTP/2 on stream 1 of a fresh connection: (the first byte of the response header block, the
    response body). Just the frames this needs (the `h2` package is not installed)."""
    # :method GET (static 2), :scheme https (static 7), :path (name 4), :authority (name 1).
    block = b"\x82\x87" + hpack_literal(4, path) + hpack_literal(1, authority)
    tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(0x4, 0, 0) + h2_frame(0x1, 0x5, 1, block))
    reader = tls.makefile("rb")
    header_start, body = b"", b""
    while True:
        head = reader.read(9)
        assert len(head) == 9, f"connection closed after {header_start!r} {body!r}"
        length = int.from_bytes(head[:3], "big")
        kind, flags, stream = head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        payload = reader.read(length)
        if kind == 0x4 and not flags & 0x1:  # the server's SETTINGS: acknowledged
            tls.sendall(h2_frame(0x4, 0x1, 0))
        assert kind not in (0x3, 0x7), f"stream reset or connection closed by the server: {payload!r}"
        if stream == 1 and kind == 0x1:  # HEADERS
            header_start = header_start or payload[:1]
        if stream == 1 and kind == 0x0:  # DATA
            body += payload
        if stream == 1 and kind in (0x0, 0x1) and flags & 0x1:  # END_STREAM
            return header_start, body


# --- the environment ---


class HttpsGateway:
    """The testupstream, `serve` with the manifests, and an Envoy for Gateway `gw`, its two HTTPS listeners live."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.upstream: SimProcess | None = None
        self.serve: Serve | None = None
        self.envoy: Envoy | None = None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        self.ca = TestCertificateAuthority()
        self.ca_file = self.tmp_path / "ca.pem"
        self.ca_file.write_text(self.ca.pem)
        self.first = self.ca.issue(SERVER_NAMES)
        self.second = self.ca.issue(SERVER_NAMES)
        self.keys = [self.first.key, self.second.key]  # every private key written to a Secret

        upstream_host = loopback_address()[0]
        self.upstream = start_testupstream("https-e2e", upstream_host, self.tmp_path / "testupstream.log")
        self.port, self.second_port = free_port(), free_port()
        self.url = f"https://localhost:{self.port}"
        self.manifests = self.tmp_path / "manifests"
        self.manifests.mkdir()
        documents = [
            self.gateway(),
            ai_service_backend("upstream", upstream_host, self.upstream.port),
            ai_gateway_route("models", {MODEL: "upstream"}),
        ]
        self.write("gateway.yaml", "---".join(documents))
        self.write("gw-cert.yaml", tls_secret("gw-cert", self.first))
        self.write("second-cert.yaml", tls_secret("second-cert", self.second, string_data=True))

        self.xds_port, self.admin_port = free_port(), free_port()
        self.serve = Serve(self.manifests, self.xds_port, self.admin_port, self.tmp_path / "serve.log")
        asyncio.run(self.serve.ready())
        self.envoy = Envoy(self.tmp_path, "default/gw", self.xds_port)
        asyncio.run(self.envoy.wait_live())
        eventually(lambda: self.answers(self.port), "chat served over the HTTPS listener")
        eventually(lambda: self.answers(self.second_port), "chat served over the second HTTPS listener")

    def gateway(self) -> str:
        listeners = [
            f"{{name: https, protocol: HTTPS, port: {self.port}, tls: {{certificateRefs: [{{name: gw-cert}}]}}}}",
            f"{{name: second, protocol: HTTPS, port: {self.second_port}, "
            "tls: {mode: Terminate, certificateRefs: [{name: second-cert}]}}",
        ]
        return gateway([], listeners=listeners)

    def write(self, name: str, text: str) -> None:
        """Replaces a manifest file at once (a rename), so `serve` never reads half of it."""
        staged = self.tmp_path / f"{name}.staged"
        staged.write_text(text)
        os.replace(staged, self.manifests / name)

    def context(self, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
        """A client TLS context trusting the test CA alone (and checking the name, as by default)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if alpn:
            context.set_alpn_protocols(list(alpn))
        return context

    def chat(self, port: int | None = None) -> Answer:
        return chat_over_new_connection(self.context(), port or self.port)

    def answers(self, port: int) -> bool:
        """Whether a chat over a new connection to `port` succeeds (False while nothing listens there yet)."""
        try:
            return self.chat(port).status == 200
        except OSError:
            return False

    def status_listeners(self) -> dict[str, dict[str, dict[str, str]]]:
        """Gateway gw's listeners in the control plane's status: name -> condition type -> condition."""
        assert self.serve is not None
        document = asyncio.run(self.serve.document("/debug/status"))
        [gw] = [s for s in document["status"] if (s["kind"], s["name"]) == ("Gateway", "gw")]
        return {
            listener["name"]: {c["type"]: c for c in listener["conditions"]} for listener in gw.get("listeners", [])
        }

    def secret_version(self) -> tuple[str, dict[str, str]]:
        """(the version of gw-cert's SDS resource, the version of each listener) in Gateway gw's snapshot."""
        assert self.serve is not None
        snapshots = asyncio.run(self.serve.document("/debug/snapshots"))
        [snapshot] = [s for key, s in snapshots.items() if key.endswith("gw")]
        secrets: dict[str, str] = snapshot["Secret"]["resources"]
        listeners: dict[str, str] = snapshot["Listener"]["resources"]
        return secrets["secret/default/gw-cert"], listeners

    def close(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()
        if self.serve is not None and self.serve.process.poll() is None:
            self.serve.terminate()
        if self.upstream is not None:
            self.upstream.kill()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsGateway]:
    environment = HttpsGateway(tmp_path_factory.mktemp("https-listener"))
    try:
        yield environment
    finally:
        environment.close()


# --- the tests ---


def test_the_openai_sdk_completes_over_https_verified_against_the_test_ca(gw: HttpsGateway) -> None:
    with httpx2.Client(verify=gw.context()) as http_client:
        client = openai.OpenAI(
            base_url=gw.url + "/v1", api_key="unused", http_client=http_client, max_retries=0, timeout=SECONDS
        )
        completion = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert completion.model == MODEL and completion.choices[0].message.content

    # The system CAs do not know the test CA: the handshake fails on the certificate, no request is sent.
    with httpx2.Client() as http_client:
        untrusting = openai.OpenAI(
            base_url=gw.url + "/v1", api_key="unused", http_client=http_client, max_retries=0, timeout=SECONDS
        )
        with pytest.raises(openai.APIConnectionError) as refused:
            untrusting.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert "CERTIFICATE_VERIFY_FAILED" in repr(refused.value.__cause__), repr(refused.value.__cause__)

    # Trusting the CA is not enough for a name the certificate does not carry (an IP address: no SNI either).
    with pytest.raises(ssl.SSLCertVerificationError) as mismatch:
        chat_over_new_connection(gw.context(), gw.port, host="127.0.0.1")
    assert "IP address mismatch" in str(mismatch.value)


def test_http2_is_negotiated_by_alpn_and_served(gw: HttpsGateway) -> None:
    with (
        socket.create_connection(("localhost", gw.port), timeout=SECONDS) as raw,
        gw.context(alpn=("h2", "http/1.1")).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"
        header_start, body = h2_get(tls, f"localhost:{gw.port}", "/v1/models")
    assert header_start == b"\x88"  # HPACK static entry 8, `:status: 200`, as every HTTP/2 encoder writes it
    assert [m["id"] for m in json.loads(body)["data"]] == [MODEL]

    # A client that offers only HTTP/1.1 gets it.
    with (
        socket.create_connection(("localhost", gw.port), timeout=SECONDS) as raw,
        gw.context(alpn=("http/1.1",)).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.selected_alpn_protocol() == "http/1.1"


def test_the_private_key_is_nowhere_in_envoys_config_dump(gw: HttpsGateway) -> None:
    assert gw.envoy is not None
    status, text = asyncio.run(gw.envoy.get("/config_dump?include_eds"))
    assert status == 200, text
    dump = json.loads(text)
    sections = {config["@type"].rsplit(".", 1)[-1]: config for config in dump["configs"]}

    # The listener names its certificate over SDS (it does hold TLS settings), and holds no key.
    listeners = json.dumps(sections["ListenersConfigDump"])
    assert '"name": "secret/default/gw-cert"' in listeners and "tls_certificate_sds_secret_configs" in listeners
    assert "PRIVATE KEY" not in listeners

    # The SDS secret holds the certificate; Envoy shows its private key redacted.
    secrets: list[dict[str, Any]] = sections["SecretsConfigDump"]["dynamic_active_secrets"]
    [active] = [s for s in secrets if s["name"] == "secret/default/gw-cert"]
    certificate = active["secret"]["tls_certificate"]
    assert certificate["certificate_chain"]["inline_string"] == gw.first.certificate.decode()
    assert "PRIVATE KEY" not in json.dumps(certificate["private_key"])

    strings = "\n".join(string_values(dump))  # JSON escapes undone: a PEM's line breaks are real again
    for key in gw.keys:
        for fragment in key_fragments(key):
            assert fragment not in text and fragment not in strings


@dataclass
class RequestLoop:
    """Chat completions one after another, each over a new verified connection, in a thread of its own."""

    context: ssl.SSLContext
    port: int
    serials: list[int] = field(default_factory=list)  # of each request that succeeded
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                answer = chat_over_new_connection(self.context, self.port)
            except Exception as error:
                self.failures.append(repr(error))
                continue
            if answer.status == 200:
                self.serials.append(answer.serial)
            else:
                self.failures.append(f"{answer.status}: {answer.body[:200]!r}")

    def finish(self) -> None:
        self.stop.set()
        if self.thread is None:
            return
        self.thread.join(timeout=SECONDS)
        assert not self.thread.is_alive()


def test_a_rotated_certificate_is_served_to_new_connections_without_a_failed_request(gw: HttpsGateway) -> None:
    old, new = gw.first, gw.ca.issue(SERVER_NAMES)
    assert new.serial != old.serial
    secret_before, listeners_before = gw.secret_version()

    # A connection opened before the rotation, kept alive.
    kept = httpx2.Client(verify=gw.context(), limits=httpx2.Limits(max_connections=1, keepalive_expiry=120))
    loop = RequestLoop(gw.context(), gw.port)
    try:

        def kept_request() -> tuple[int, int]:
            response = kept.post(gw.url + "/v1/chat/completions", json=CHAT)
            ssl_object = response.extensions["network_stream"].get_extra_info("ssl_object")
            return response.status_code, serial_of(ssl_object.getpeercert(True))  # binary: DER

        assert kept_request() == (200, old.serial)
        loop.start()
        eventually(lambda: len(loop.serials) >= 3 or loop.failures, "requests before the rotation")

        gw.keys.append(new.key)
        gw.write("gw-cert.yaml", tls_secret("gw-cert", new))
        gw.first = new
        eventually(lambda: presented_serial(gw.context(), gw.port) == new.serial, "the new certificate presented")
        rotated = len(loop.serials)
        eventually(lambda: len(loop.serials) >= rotated + 3 or loop.failures, "requests after the rotation")
    finally:
        loop.finish()

    try:
        # The open connection was kept: it still answers, with the certificate of its handshake.
        assert kept_request() == (200, old.serial)
    finally:
        kept.close()

    assert loop.failures == []
    assert loop.serials[0] == old.serial and loop.serials[-1] == new.serial
    assert set(loop.serials) == {old.serial, new.serial}
    switch = loop.serials.index(new.serial)
    assert all(s == new.serial for s in loop.serials[switch:])  # never back to the old one

    # A new version of the same SDS resource; the listeners themselves did not change.
    secret_after, listeners_after = gw.secret_version()
    assert secret_after != secret_before
    assert listeners_after == listeners_before


def test_a_secret_whose_key_does_not_match_is_refused_and_the_other_listener_serves(gw: HttpsGateway) -> None:
    assert gw.serve is not None
    assert gw.status_listeners()["second"]["Programmed"]["status"] == "True"
    other_key = gw.ca.issue(SERVER_NAMES).key
    gw.keys.append(other_key)
    mismatched = ServerCertificate(gw.second.certificate, other_key)
    gw.write("second-cert.yaml", tls_secret("second-cert", mismatched, string_data=True))

    def refused() -> dict[str, dict[str, str]] | None:
        second = gw.status_listeners()["second"]
        return second if second["ResolvedRefs"]["status"] == "False" else None

    second = eventually(refused, "listener second refused in the status")
    resolved = second["ResolvedRefs"]
    assert resolved["reason"] == "InvalidCertificateRef"
    assert "default/second-cert" in resolved["message"]
    assert "tls.key" in resolved["message"]
    assert all(fragment not in resolved["message"] for fragment in key_fragments(other_key))
    assert (second["Programmed"]["status"], second["Programmed"]["reason"]) == ("False", "Invalid")
    assert second["Accepted"]["status"] == "True"

    https = gw.status_listeners()["https"]
    assert (https["Programmed"]["status"], https["ResolvedRefs"]["status"]) == ("True", "True")

    # Envoy has what was published: the second listener is no longer served, the first one serves on.
    asyncio.run(synced(gw.serve))
    eventually(lambda: not serves(gw.context(), gw.second_port), "the second listener no longer served")
    for _ in range(3):
        answer = gw.chat()
        assert answer.status == 200, answer.body
        assert answer.serial == gw.first.serial
