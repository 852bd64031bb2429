"""`xds-server sim NAME` (the testupstream and the vLLM simulator) as processes on loopback addresses of their own."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from testing.ports import free_port
from testing.web import http_get
from xds_server.extproc.sigv4 import AwsCredentials


@dataclass(frozen=True)
class SimProcess:
    """`xds-server sim NAME` as a process, listening on its own loopback address."""

    host: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_sim(
    name: str, args: Sequence[str], host: str, port: int, log: Path, env: dict[str, str] | None = None
) -> SimProcess:
    """Starts `xds-server sim NAME ARGS...` (the args place it on host:port) and waits until /health answers 200."""
    command = [sys.executable, "-m", "xds_server.cli", "sim", name, *args]
    return _started(command, host, port, log, f"sim {name}", env)


def _started(
    command: Sequence[str], host: str, port: int, log: Path, what: str, env: dict[str, str] | None = None
) -> SimProcess:
    """`command` as a process (run from the checkout: `testing` is not installed), once /health answers 200."""
    repository = Path(__file__).resolve().parent.parent
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=repository
        )
    sim = SimProcess(host, port, process, log)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        if http_get(f"{sim.url}/health", timeout=1)[0] == 200:
            return sim
        time.sleep(0.05)
    sim.kill()
    raise AssertionError(f"{what} did not become healthy:\n{log.read_text()}")


def start_testupstream(upstream_id: str, host: str, log: Path) -> SimProcess:
    """A testupstream answering at once (no gaps between SSE events) on its own address."""
    port = free_port(host)
    args = ["--host", host, "--port", str(port), "--id", upstream_id, "--sse-gap-ms", "0"]
    return start_sim("testupstream", args, host, port, log)


def b64(text: str | bytes) -> str:
    """Base64 for the testupstream's x-expected-* and x-response-* headers."""
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def start_anthropic_sim(host: str, log: Path, api_key: str, gap_seconds: float = 0.0) -> SimProcess:
    """The Anthropic Messages API simulator (`python -m testing.providers.anthropic_sim`), accepting only `api_key`,
    on a free port of `host`; `gap_seconds` between the writes of a streamed answer."""
    port = free_port(host)
    command = [sys.executable, "-m", "testing.providers.anthropic_sim", "--host", host, "--port", str(port)]
    command += ["--api-key", api_key, "--gap-ms", str(round(gap_seconds * 1000))]
    return _started(command, host, port, log, "the Anthropic simulator")


def start_azure_sim(
    host: str, log: Path, api_key: str, deployments: dict[str, str], client: tuple[str, str, str] | None = None
) -> SimProcess:
    """The Azure OpenAI simulator (`python -m testing.providers.azure_sim`) with `deployments` (name -> model),
    accepting `api_key`, or the Entra ID tokens its token endpoint issues to `client` (tenant, id, secret), on a free
    port of `host`."""
    port = free_port(host)
    command = [sys.executable, "-m", "testing.providers.azure_sim", "--host", host, "--port", str(port)]
    command += ["--api-key", api_key, *(f"--deployment={name}={model}" for name, model in deployments.items())]
    if client is not None:
        command += ["--client", ":".join(client)]
    return _started(command, host, port, log, "the Azure OpenAI simulator")


def start_bedrock_sim(host: str, log: Path, credentials: AwsCredentials, region: str) -> SimProcess:
    """The Bedrock Runtime simulator (`python -m testing.providers.bedrock_sim`), accepting only requests signed
    (SigV4) with `credentials` for `region`, on a free port of `host`."""
    port = free_port(host)
    command = [sys.executable, "-m", "testing.providers.bedrock_sim", "--host", host, "--port", str(port)]
    command += ["--access-key-id", credentials.access_key_id, "--secret-access-key", credentials.secret_access_key]
    if credentials.session_token is not None:
        command += ["--session-token", credentials.session_token]
    return _started([*command, "--region", region], host, port, log, "the Bedrock simulator")


def start_vertex_sim(
    host: str,
    log: Path,
    project: str,
    region: str,
    service_account_public_key_pem: str,
    client_email: str,
    *,
    token_lifetime: int | None = None,
) -> SimProcess:
    """The Vertex AI simulator with Google's token endpoint (`python -m testing.providers.vertex_sim`), serving
    `project` in `region` and granting tokens (valid `token_lifetime` seconds, 3599 by default) to the service account
    `client_email` whose key's public half is `service_account_public_key_pem` (see `new_service_account`; the key's
    `token_uri` is `{url}/token`), on a free port of `host`."""
    port = free_port(host)
    key_file = log.with_name(f"{log.name}.public-key.pem")
    key_file.write_text(service_account_public_key_pem)
    command = [sys.executable, "-m", "testing.providers.vertex_sim", "--host", host, "--port", str(port)]
    command += ["--project", project, "--region", region, "--client-email", client_email]
    command += ["--public-key-file", str(key_file)]
    if token_lifetime is not None:
        command += ["--token-lifetime", str(token_lifetime)]
    return _started(command, host, port, log, "the Vertex AI simulator")
