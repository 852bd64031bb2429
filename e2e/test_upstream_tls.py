"""TLS to upstreams with real Envoy and `xds-server serve`: Backend.spec.tls, BackendTLSPolicy, and API keys that
never travel in plain HTTP over the network.

A test CA made here signs the upstream's certificate (SAN `upstream.internal` and `localhost`); a second CA signs
nothing Envoy meets. The upstreams are small HTTP(S) servers in this process that record the SNI of each TLS handshake
and the path, Host and Authorization of each request that reaches their HTTP handler:

- `tls`: HTTPS on a loopback 127.x.y.z address. Backend `good` trusts the test CA (a ConfigMap) and sends SNI
  `upstream.internal`; Backend `wrong-ca` trusts the other CA; Backend `missing-ca` names a ConfigMap that does not
  exist;
- `named`: HTTPS on 127.0.0.1 (and ::1), reached as Backend `by-policy` (fqdn `localhost`), whose BackendTLSPolicy
  trusts the test CA with hostname `localhost`: Host is rewritten to the hostname, and SNI is the policy's hostname;
- `plain`: plain HTTP on another loopback address, weighed against `good` in one rule (one cluster: a transport
  socket per endpoint);
- `remote`: plain HTTP on this machine's own non-loopback address (when it has one), behind AIServiceBackends with an
  API key: refused without the policy's plain-text annotation, sent with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from testing.certificates import ServerCertificate, TestCertificateAuthority
from testing.envoy import Envoy
from testing.manifests import ai_gateway_route, gateway
from testing.ports import free_port, loopback_address
from testing.processes import Serve
from testing.web import Response, eventually, http_get, request

SNI = "upstream.internal"
API_KEY = "sk-e2e-upstream-tls-4b1d"
PLAINTEXT_ANNOTATION = "xds-server.io/allow-plaintext-credentials"


# --- the upstreams ---


@dataclass(frozen=True)
class Seen:
    """A request as the upstream's HTTP handler saw it."""

    path: str
    host: str
    authorization: str | None


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class RecordingUpstream:
    """An HTTP server in a thread of this process (HTTPS with `certificate`), answering every request with a small
    chat completion, and recording each handshake's SNI (`server_names`) and each request (`seen`). With `also_ipv6`
    it listens on ::1 too, at the same port, when it can: a name like `localhost` may resolve to either."""

    def __init__(
        self, host: str, port: int, certificate: ServerCertificate | None, directory: Path, also_ipv6: bool = False
    ) -> None:
        self.host, self.port = host, port
        self.server_names: list[str | None] = []
        self.seen: list[Seen] = []
        recorded = self.seen

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Envoy's connection pool expects

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                recorded.append(Seen(self.path, self.headers.get("host", ""), self.headers.get("authorization")))
                body = json.dumps(
                    {
                        "id": "chatcmpl-upstream-tls",
                        "object": "chat.completion",
                        "model": "m",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = _answer
            do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.servers = [ThreadingHTTPServer((host, port), Handler)]
        if also_ipv6:
            # No IPv6 loopback here, or the port taken there: IPv4 it is.
            with contextlib.suppress(OSError):
                self.servers.append(_Server6(("::1", port), Handler))
        context: ssl.SSLContext | None = None
        if certificate is not None:
            chain, key = certificate.write(directory, f"upstream-{host}-{port}")
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(chain, key)
            context.set_alpn_protocols(["http/1.1"])
            context.sni_callback = lambda _sock, name, _context: self.server_names.append(name)
        for server in self.servers:
            if context is not None:
                # The handshake runs in accept(): one that fails (an unverified certificate) never reaches the handler.
                server.socket = context.wrap_socket(server.socket, server_side=True)
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        return [seen.path for seen in self.seen]

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback (the source address of its default route), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))  # TEST-NET-2: nothing is sent, the kernel only picks a route
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


# --- manifests ---


def config_map(name: str, pem: str) -> str:
    block = "\n".join("    " + line for line in pem.strip().splitlines())
    return f"\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata:\n  ca.crt: |\n{block}\n"


def tls_backend(name: str, address: str, port: int, ca_config_map: str) -> str:
    return f"""
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {{name: {name}}}
spec:
  endpoints: [{{ip: {{address: "{address}", port: {port}}}}}]
  tls:
    caCertificateRefs: [{{kind: ConfigMap, name: {ca_config_map}}}]
    sni: {SNI}
"""


def keyed(name: str, backend: str, annotated: bool = False) -> str:
    """An AIServiceBackend in front of Backend `backend`, with an API key (Secret `api-key`)."""
    annotations = f'\n  annotations: {{{PLAINTEXT_ANNOTATION}: "true"}}' if annotated else ""
    return f"""
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIServiceBackend
metadata: {{name: {name}}}
spec: {{schema: {{name: OpenAI}}, backendRef: {{group: gateway.envoyproxy.io, kind: Backend, name: {backend}}}}}
---
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: BackendSecurityPolicy
metadata:
  name: {name}{annotations}
spec:
  type: APIKey
  apiKey: {{secretRef: {{name: api-key}}}}
  targetRefs: [{{group: aigateway.envoyproxy.io, kind: AIServiceBackend, name: {name}}}]
"""


class Environment:
    def __init__(self, tmp_path: Path) -> None:
        self.upstreams: list[RecordingUpstream] = []
        self.serve: Serve | None = None
        self.envoy: Envoy | None = None
        try:
            self._start(tmp_path)
        except BaseException:
            self.close()
            raise

    def _start(self, tmp_path: Path) -> None:
        ca, other_ca = TestCertificateAuthority("upstream-tls e2e CA"), TestCertificateAuthority("unrelated CA")
        certificate = ca.issue((SNI, "localhost"))
        host, port = loopback_address()
        self.tls = self._upstream(RecordingUpstream(host, port, certificate, tmp_path))
        named = RecordingUpstream("127.0.0.1", free_port(), certificate, tmp_path, also_ipv6=True)
        self.named = self._upstream(named)
        remote_host = non_loopback_address()
        plain_host, plain_port = loopback_address()
        self.plain = self._upstream(RecordingUpstream(plain_host, plain_port, None, tmp_path))
        self.remote = None
        if remote_host is not None:
            self.remote = self._upstream(RecordingUpstream(remote_host, free_port(remote_host), None, tmp_path))

        self.listen_port = free_port()
        self.url = f"http://127.0.0.1:{self.listen_port}"
        documents = [
            gateway([self.listen_port]),
            config_map("upstream-ca", ca.pem),
            config_map("other-ca", other_ca.pem),
            tls_backend("good", host, port, "upstream-ca"),
            tls_backend("wrong-ca", host, port, "other-ca"),
            tls_backend("missing-ca", host, port, "not-there"),
            f"""
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {{name: by-policy}}
spec: {{endpoints: [{{fqdn: {{hostname: localhost, port: {self.named.port}}}}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: by-policy}}
spec:
  targetRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: by-policy}}]
  validation:
    caCertificateRefs: [{{group: "", kind: ConfigMap, name: upstream-ca}}]
    hostname: localhost
""",
            f"""
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {{name: plain}}
spec: {{endpoints: [{{ip: {{address: "{plain_host}", port: {plain_port}}}}}]}}
""",
            self._http_route(("good", "wrong-ca", "missing-ca", "by-policy")),
            keyed("tls-keyed", "good"),
            '\napiVersion: v1\nkind: Secret\nmetadata: {name: api-key}\nstringData: {apiKey: "' + API_KEY + '"}\n',
        ]
        models = {"tls-keyed": "tls-keyed"}
        if self.remote is not None:
            documents.append(
                f"""
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {{name: remote}}
spec: {{endpoints: [{{ip: {{address: "{self.remote.host}", port: {self.remote.port}}}}}]}}
"""
            )
            documents += [keyed("remote-keyed", "remote"), keyed("remote-allowed", "remote", annotated=True)]
            models |= {"remote-keyed": "remote-keyed", "remote-allowed": "remote-allowed"}
        documents.append(ai_gateway_route("keys", models))
        manifests = tmp_path / "manifests"
        manifests.mkdir()
        (manifests / "gateway.yaml").write_text("---".join(documents))

        xds_port, self.admin_port = free_port(), free_port()
        self.serve = Serve(manifests, xds_port, self.admin_port, tmp_path / "serve.log")
        asyncio.run(self.serve.ready())
        self.envoy = Envoy(tmp_path, "default/gw", xds_port)
        asyncio.run(self.envoy.wait_live())
        eventually(lambda: self.get("/good").status_code == 200, "the TLS backend served")

    def _upstream(self, upstream: RecordingUpstream) -> RecordingUpstream:
        self.upstreams.append(upstream)
        return upstream

    @staticmethod
    def _http_route(backends: tuple[str, ...]) -> str:
        rules = "".join(
            f"""
  - matches: [{{path: {{type: PathPrefix, value: /{name}}}}}]
    backendRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: {name}}}]"""
            for name in backends
        )
        # One rule, two backends reached differently: one Envoy cluster, a transport socket per endpoint.
        rules += """
  - matches: [{path: {type: PathPrefix, value: /mixed}}]
    backendRefs:
    - {group: gateway.envoyproxy.io, kind: Backend, name: good, weight: 1}
    - {group: gateway.envoyproxy.io, kind: Backend, name: plain, weight: 1}"""
        return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: tls}}
spec:
  parentRefs: [{{name: gw}}]
  rules:{rules}
"""

    def get(self, path: str) -> Response:
        return request(self.url, "GET", path)

    def chat(self, model: str) -> Response:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
        return request(self.url, "POST", "/v1/chat/completions", body, {"authorization": "Bearer client-supplied"})

    async def envoy_stat(self, name: str) -> int:
        assert self.envoy is not None
        return await self.envoy.stat(name)

    def debug_status(self) -> str:
        status, text = http_get(f"http://127.0.0.1:{self.admin_port}/debug/status")
        assert status == 200, text
        return text

    def close(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()
        if self.serve is not None:
            self.serve.terminate()
        for upstream in self.upstreams:
            upstream.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environment]:
    environment = Environment(tmp_path_factory.mktemp("upstream-tls"))
    try:
        yield environment
    finally:
        environment.close()


def test_a_backend_trusting_its_ca_is_reached_over_tls_with_its_sni(env: Environment) -> None:
    answer = env.get("/good/path")
    assert answer.status_code == 200, answer.text
    assert "/good/path" in env.tls.paths()  # it reached the handler, so the handshake succeeded
    assert SNI in env.tls.server_names
    assert None not in env.tls.server_names  # every handshake named the server


def test_a_certificate_the_trusted_ca_did_not_sign_gets_no_request(env: Environment) -> None:
    answer = env.get("/wrong-ca")
    assert answer.status_code == 503, answer.text
    assert "/wrong-ca" not in env.tls.paths()
    # A verification failure, not a refused or reset connection: Envoy says so per cluster.
    assert asyncio.run(env.envoy_stat("cluster.backend/default/wrong-ca.ssl.fail_verify_error")) >= 1


def test_a_missing_ca_is_a_json_500_and_nothing_in_plain_text(env: Environment) -> None:
    answer = env.get("/missing-ca")
    assert answer.status_code == 500, answer.text
    assert answer.json()["error"]["code"] == "backend_unavailable"
    assert "/missing-ca" not in env.tls.paths()
    assert "ConfigMap default/not-there: not found" in env.debug_status()


def test_a_policy_sets_the_sni_and_the_host_is_the_backend_hostname(env: Environment) -> None:
    answer = env.get("/by-policy")
    assert answer.status_code == 200, answer.text
    assert env.named.server_names and set(env.named.server_names) == {"localhost"}
    [seen] = [s for s in env.named.seen if s.path == "/by-policy"]
    assert seen.host == "localhost"  # auto_host_rewrite to the fqdn, not the client's 127.0.0.1:<port>


def test_a_rule_weighing_a_tls_backend_against_a_plain_one_reaches_each_its_own_way(env: Environment) -> None:
    answers = [env.get(f"/mixed/{i}").status_code for i in range(20)]
    assert answers == [200] * 20  # a TLS endpoint spoken to in plain text (or the other way round) fails
    over_tls = [p for p in env.tls.paths() if p.startswith("/mixed/")]
    in_plain = [p for p in env.plain.paths() if p.startswith("/mixed/")]
    assert over_tls and in_plain and len(over_tls) + len(in_plain) == 20


def test_an_api_key_goes_to_a_tls_backend(env: Environment) -> None:
    answer = env.chat("tls-keyed")
    assert answer.status_code == 200, answer.text
    assert any(s.authorization == f"Bearer {API_KEY}" for s in env.tls.seen)


def test_an_api_key_is_not_sent_in_plain_http_to_a_non_loopback_address(env: Environment) -> None:
    if env.remote is None:
        pytest.skip("this machine has no non-loopback IPv4 address (the golden case upstream-tls covers the refusal)")
    answer = env.chat("remote-keyed")
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "backend_credentials_unavailable"
    assert not any(s.authorization == f"Bearer {API_KEY}" for s in env.remote.seen)
    assert "PlaintextUpstream" in env.debug_status()


def test_the_policy_annotation_allows_an_api_key_in_plain_http(env: Environment) -> None:
    if env.remote is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    before = len(env.remote.seen)
    answer = env.chat("remote-allowed")
    assert answer.status_code == 200, answer.text
    assert [s.authorization for s in env.remote.seen[before:]] == [f"Bearer {API_KEY}"]
