"""Hosted providers behind real Envoy and `xds-server serve`, against loopback simulators that check the providers'
own contracts (testing/providers): Azure OpenAI (deployment paths, api-version, api-key) and Anthropic (the Messages
API, translated both ways). The client is the official `openai` SDK, streaming and not; it never knows which
provider answered.
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml

from testing.gateway_run import gateway_running
from testing.manifests import ai_gateway_route, keyed_backend, secured_backend
from testing.processes import Up
from testing.providers.vertex_sim import new_service_account
from testing.sims import SimProcess, start_anthropic_sim, start_azure_sim, start_bedrock_sim, start_vertex_sim
from testing.web import eventually, http_get
from xds_server.extproc.sigv4 import AwsCredentials

AZURE_KEY = "azure-e2e-not-a-real-key-61c0"
ANTHROPIC_KEY = "sk-ant-e2e-not-a-real-key-93b1"
# The Anthropic simulator's error hooks are models of their own (testing/providers/anthropic_sim.py).
HOOKS = ("claude-overloaded", "claude-midstream-error", "claude-cut")
BEDROCK_MODEL = "anthropic.claude-3-5-sonnet-20241022-v2:0"  # a `:` the path keeps and the signature encodes
BEDROCK_CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"  # through InvokeModel (AWSAnthropic), not Converse
AWS = AwsCredentials("AKIDE2ENOTREAL", "e2e/not/a/real/secret+key", "e2e-session-token")
ENTRA = ("tenant-e2e", "app-e2e", "entra-e2e-not-a-real-secret")  # Entra ID tenant, application, client secret
MODELS = {
    "gpt-4o-mini": "azure",
    "gpt-4o-entra": "azure-entra",
    "claude-sonnet-4-5": "claude",
    **dict.fromkeys(HOOKS, "claude"),
    BEDROCK_MODEL: "bedrock",
    "throttled": "bedrock",
    "gemini-2.5-flash": "vertex",
    "claude-on-vertex": "vertex-claude",
    BEDROCK_CLAUDE: "bedrock-claude",
}
PROJECT, REGION = "e2e-project", "us-east5"


def gcp_backend(name: str, schema: str, host: str, port: int, key_file: str) -> str:
    """A Vertex AI AIServiceBackend whose requests carry Google tokens minted from a service account's key."""
    block = {"projectName": PROJECT, "region": REGION, "credentialsFile": {"secretRef": {"name": name}}}
    secret = {"service_account.json": key_file}
    return secured_backend(name, host, port, schema, None, "GCPCredentials", block, secret)


def entra_backend(name: str, host: str, port: int) -> str:
    """An AzureOpenAI AIServiceBackend whose requests carry Entra ID tokens the control plane mints."""
    tenant, client_id, secret = ENTRA
    block = {"clientID": client_id, "tenantID": tenant, "clientSecretRef": {"name": name}}
    return secured_backend(
        name, host, port, "AzureOpenAI", "2024-10-21", "AzureCredentials", block, {"client-secret": secret}
    )


def aws_credentials_file(credentials: AwsCredentials) -> str:
    token = f"aws_session_token = {credentials.session_token}\n" if credentials.session_token else ""
    return (
        f"[default]\naws_access_key_id = {credentials.access_key_id}\n"
        f"aws_secret_access_key = {credentials.secret_access_key}\n{token}"
    )


def aws_backend(
    name: str, host: str, port: int, credentials: AwsCredentials, region: str, schema: str = "AWSBedrock"
) -> str:
    """An AWS AIServiceBackend signed with an AWSCredentials policy whose Secret holds a credentials file."""
    block = {"region": region, "credentialsFile": {"secretRef": {"name": name}}}
    secret = {"credentials": aws_credentials_file(credentials)}
    return secured_backend(name, host, port, schema, None, "AWSCredentials", block, secret)


class Providers:
    """The two simulators on addresses of their own, and a Gateway routing models to them (the Anthropic error hooks
    are models too)."""

    def __init__(self, tmp_path: Path, stack: contextlib.ExitStack) -> None:
        octet = random.randint(1, 254)
        azure_host, claude_host = f"127.{octet}.33.1", f"127.{octet}.33.2"
        deployments = {"gpt-4o-mini": "gpt-4o", "gpt-4o-entra": "gpt-4o", "gpt-4o": "gpt-4o"}  # the last: the example
        self.azure = start_azure_sim(azure_host, tmp_path / "azure.log", AZURE_KEY, deployments, ENTRA)
        stack.callback(self.azure.kill)
        self.claude = start_anthropic_sim(claude_host, tmp_path / "anthropic.log", ANTHROPIC_KEY)
        stack.callback(self.claude.kill)
        bedrock_host = f"127.{octet}.33.3"
        self.bedrock = start_bedrock_sim(bedrock_host, tmp_path / "bedrock.log", AWS, "us-west-2")
        stack.callback(self.bedrock.kill)
        vertex_host = f"127.{octet}.33.4"
        account, public_key = new_service_account("http://set-below/token", PROJECT)
        log = tmp_path / "vertex.log"
        self.vertex = start_vertex_sim(vertex_host, log, PROJECT, REGION, public_key, account["client_email"])
        stack.callback(self.vertex.kill)
        key_file = json.dumps({**account, "token_uri": f"{self.vertex.url}/token"}, indent=1)
        self.vertex_key_file = key_file
        documents = [
            ai_gateway_route("providers", MODELS),
            keyed_backend("azure", azure_host, self.azure.port, AZURE_KEY, "AzureOpenAI", "2024-10-21", "AzureAPIKey"),
            keyed_backend("claude", claude_host, self.claude.port, ANTHROPIC_KEY, "Anthropic", None, "AnthropicAPIKey"),
            aws_backend("bedrock", bedrock_host, self.bedrock.port, AWS, "us-west-2"),
            entra_backend("azure-entra", azure_host, self.azure.port),
            gcp_backend("vertex", "GCPVertexAI", vertex_host, self.vertex.port, key_file),
            gcp_backend("vertex-claude", "GCPAnthropic", vertex_host, self.vertex.port, key_file),
            aws_backend("bedrock-claude", bedrock_host, self.bedrock.port, AWS, "us-west-2", "AWSAnthropic"),
        ]
        # Azure's SDKs read the Entra ID authority from AZURE_AUTHORITY_HOST; so does serve: here, the simulator's.
        authority = {"AZURE_AUTHORITY_HOST": self.azure.url}
        run = stack.enter_context(gateway_running(tmp_path, documents, env=authority))
        self.client = openai.OpenAI(base_url=f"{run.url}/v1", api_key="client-token", max_retries=0)
        # Anthropic's own SDK, for Anthropic's own API: its token is the gateway's business, never the provider's.
        self.anthropic = anthropic.Anthropic(base_url=run.url, api_key="client-token", max_retries=0)

    def requests(self, sim: SimProcess) -> list[dict[str, Any]]:
        status, body = http_get(f"{sim.url}/debug/requests")
        assert status == 200, body
        found: list[dict[str, Any]] = json.loads(body)
        return found


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Providers]:
    with contextlib.ExitStack() as stack:
        providers = Providers(tmp_path_factory.mktemp("providers"), stack)
        eventually(lambda: _answers(providers, "gpt-4o-mini"), "the Azure route answering")
        yield providers


def _answers(gw: Providers, model: str) -> bool:
    try:
        gw.client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    except openai.APIError:
        return False
    return True


def test_azure_openai_gets_its_deployment_path_api_version_and_key(gw: Providers) -> None:
    completion = gw.client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say this is a test"}]
    )
    assert completion.choices[0].message.content == "This is a test."
    assert completion.model == "gpt-4o"  # Azure answers with the deployment's model
    last = gw.requests(gw.azure)[-1]
    assert last["path"] == "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21"
    # The sim refuses the client's authorization and the gateway's own headers: the answer proves none came.
    assert "authorization" not in last["headers"] and last["headers"]["api-key"] == "<redacted>"


def test_azure_openai_streams(gw: Providers) -> None:
    stream = gw.client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Say this is a test"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == "This is a test."
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_anthropic_answers_an_openai_chat_completion(gw: Providers) -> None:
    completion = gw.client.chat.completions.create(
        model="claude-sonnet-4-5",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say this is a test"}],
        max_tokens=50,
    )
    assert completion.object == "chat.completion" and completion.model == "claude-sonnet-4-5"
    assert completion.choices[0].finish_reason == "stop"
    assert "Say this is a test" in (completion.choices[0].message.content or "")
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    last = gw.requests(gw.claude)[-1]
    assert last["path"] == "/v1/messages"
    assert last["body"]["system"] == [{"type": "text", "text": "Be brief."}]
    assert "authorization" not in last["headers"] and "anthropic-version" in last["headers"]


def test_anthropic_streams_as_openai_chunks(gw: Providers) -> None:
    stream = gw.client.chat.completions.create(
        model="claude-sonnet-4-5",
        messages=[{"role": "user", "content": "Say this is a test"}],
        max_tokens=50,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Say this is a test" in text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_anthropic_tool_calls_come_back_as_openai_tool_calls(gw: Providers) -> None:
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    first = gw.client.chat.completions.create(
        model="claude-sonnet-4-5",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=tools,
        tool_choice="required",
        max_tokens=100,
    )
    assert first.choices[0].finish_reason == "tool_calls"
    [call] = first.choices[0].message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert "city" in json.loads(call.function.arguments)
    # The tool's answer goes back; the provider sees a tool_result for that very call.
    follow_up = gw.client.chat.completions.create(
        model="claude-sonnet-4-5",
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "tool_calls": [call.model_dump()]},  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
        ],
        tools=tools,
        max_tokens=100,
    )
    assert follow_up.choices[0].finish_reason == "stop"
    assert "sunny" in (follow_up.choices[0].message.content or "")


def test_a_field_anthropic_cannot_honour_is_a_400_naming_it_and_never_sent(gw: Providers) -> None:
    sent = len(gw.requests(gw.claude))
    with pytest.raises(openai.BadRequestError) as raised:
        gw.client.chat.completions.create(
            model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}], n=2, max_tokens=10
        )
    assert raised.value.param == "n" and "n" in raised.value.message
    assert len(gw.requests(gw.claude)) == sent


def test_a_provider_error_is_an_openai_error_with_its_status(gw: Providers) -> None:
    with pytest.raises(openai.APIStatusError) as raised:
        gw.client.chat.completions.create(
            model="claude-overloaded", messages=[{"role": "user", "content": "hi"}], max_tokens=10
        )
    assert raised.value.status_code == 529
    body = raised.value.body
    assert isinstance(body, dict) and body["type"] == "server_error" and body["message"]


def _stream_text(gw: Providers, model: str, received: list[str]) -> None:
    stream = gw.client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say this is a test"}], max_tokens=50, stream=True
    )
    for chunk in stream:
        received.extend(c.delta.content or "" for c in chunk.choices)


def test_an_error_event_in_the_middle_of_a_stream_ends_it_with_an_error_the_sdk_raises(gw: Providers) -> None:
    """Anthropic's `error` event after the 200 (an overloaded model): the text so far, then an OpenAI error event."""
    received: list[str] = []
    with pytest.raises(openai.APIError) as raised:
        _stream_text(gw, "claude-midstream-error", received)
    assert "".join(received)  # the text that came before the error
    assert "overloaded" in str(raised.value.message).lower() or raised.value.code, raised.value


def test_a_stream_cut_short_is_never_taken_as_complete(gw: Providers) -> None:
    """The provider's connection drops before message_stop. Depending on when Envoy sees the reset, the client gets
    a JSON 502 (nothing sent yet), or the stream ends in an error event: the SDK raises either way, and never returns
    a stream that looks whole."""
    received: list[str] = []
    with pytest.raises(openai.APIError) as raised:
        _stream_text(gw, "claude-cut", received)
    if isinstance(raised.value, openai.APIStatusError):  # the cut came first: a JSON error, not Envoy's plain text
        assert isinstance(raised.value.body, dict) and raised.value.body["code"], raised.value.body


def test_anthropic_clients_speak_the_messages_api_to_an_anthropic_backend(gw: Providers) -> None:
    """The official anthropic SDK against the gateway's /v1/messages: passed on as it is, with the backend's key."""
    message = gw.anthropic.messages.create(
        model="claude-sonnet-4-5", max_tokens=50, messages=[{"role": "user", "content": "Say this is a test"}]
    )
    assert message.type == "message" and message.stop_reason == "end_turn"
    assert "Say this is a test" in "".join(b.text for b in message.content if b.type == "text")
    last = gw.requests(gw.claude)[-1]
    assert last["path"] == "/v1/messages" and last["headers"]["x-api-key"] != "client-token"
    assert "authorization" not in last["headers"]
    with gw.anthropic.messages.stream(
        model="claude-sonnet-4-5", max_tokens=50, messages=[{"role": "user", "content": "Say this is a test"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "Say this is a test" in text and final.usage.output_tokens > 0


def test_the_messages_api_to_a_backend_of_another_api_is_a_404(gw: Providers) -> None:
    with pytest.raises(anthropic.NotFoundError):
        gw.anthropic.messages.create(model="gpt-4o-mini", max_tokens=10, messages=[{"role": "user", "content": "x"}])


def test_bedrock_gets_converse_signed_with_sigv4_and_answers_as_openai(gw: Providers) -> None:
    """The simulator recomputes every signature with botocore's own signer: an answer proves the gateway signed the
    final path (the model id's `:` included), host and body."""
    completion = gw.client.chat.completions.create(
        model=BEDROCK_MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say this is a test"}],
        max_tokens=50,
    )
    assert completion.object == "chat.completion" and completion.model == BEDROCK_MODEL
    assert "Say this is a test" in (completion.choices[0].message.content or "")
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    last = gw.requests(gw.bedrock)[-1]
    assert last["operation"] == "Converse" and last["modelId"] == BEDROCK_MODEL
    assert "authorization" in last["headers"] and "x-amz-security-token" in last["headers"]
    stream = gw.client.chat.completions.create(
        model=BEDROCK_MODEL,
        messages=[{"role": "user", "content": "Say this is a test"}],
        max_tokens=50,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "Say this is a test" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert gw.requests(gw.bedrock)[-1]["operation"] == "ConverseStream"


def test_a_bedrock_error_keeps_its_status_in_an_openai_envelope(gw: Providers) -> None:
    with pytest.raises(openai.RateLimitError) as raised:
        gw.client.chat.completions.create(model="throttled", messages=[{"role": "user", "content": "hi"}])
    assert isinstance(raised.value.body, dict) and raised.value.body["message"]


def test_azure_openai_with_entra_id_gets_a_token_the_control_plane_minted(gw: Providers) -> None:
    """AzureCredentials: serve mints an Entra ID token with the client secret (the simulator's token endpoint checks
    tenant, client and secret), off the request path, and each request carries it as a bearer token."""
    completion = eventually(
        lambda: (
            _answers(gw, "gpt-4o-entra")
            and gw.client.chat.completions.create(
                model="gpt-4o-entra", messages=[{"role": "user", "content": "Say this is a test"}]
            )
        ),
        "a minted token accepted",
    )
    assert completion.choices[0].message.content == "This is a test."
    requests = gw.requests(gw.azure)
    assert any(r.get("grant") == "client_credentials" for r in requests)  # the token endpoint was asked
    last = requests[-1]
    assert last["path"].startswith("/openai/deployments/gpt-4o-entra/chat/completions")
    assert last["headers"]["authorization"] == "<redacted>" and "api-key" not in last["headers"]


@pytest.mark.parametrize(
    ("model", "sim", "operation"),
    [
        ("gemini-2.5-flash", "vertex", ":generateContent"),
        ("claude-on-vertex", "vertex", ":rawPredict"),
        (BEDROCK_CLAUDE, "bedrock", "/invoke"),
    ],
)
def test_gemini_and_claude_on_the_clouds_answer_openai_requests(
    gw: Providers, model: str, sim: str, operation: str
) -> None:
    """Vertex AI with a Google token the control plane minted from a service account's key (the simulator checks
    the signed assertion and the token), and Claude on Bedrock signed with SigV4: one OpenAI request each, whole and
    streamed."""
    simulator = gw.vertex if sim == "vertex" else gw.bedrock
    completion = eventually(
        lambda: (
            _answers(gw, model)
            and gw.client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Say this is a test"}], max_tokens=50
            )
        ),
        f"{model} answering",
    )
    assert completion.object == "chat.completion" and completion.model == model
    assert "Say this is a test" in (completion.choices[0].message.content or "")
    assert operation in gw.requests(simulator)[-1]["path"]
    stream = gw.client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say this is a test"}],
        max_tokens=50,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "Say this is a test" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "providers"


def _pointed_at_simulators(gw: Providers, directory: Path) -> list[Path]:
    """The provider examples as a user would fill them in, but with each Backend on its simulator's loopback address
    (plain HTTP) and each placeholder credential the simulator's own."""
    backends = {
        "azure-openai": gw.azure,
        "anthropic": gw.claude,
        "bedrock": gw.bedrock,
        "vertex": gw.vertex,
    }
    secrets = {
        "azure-openai": {"apiKey": AZURE_KEY},
        "anthropic": {"apiKey": ANTHROPIC_KEY},
        "bedrock": {"credentials": aws_credentials_file(AWS)},
        "vertex": {"service_account.json": gw.vertex_key_file},
    }
    written = []
    for example in ("00-gateway", "azure-openai", "anthropic", "aws-bedrock", "gcp-vertex-ai"):
        documents = list(yaml.safe_load_all((EXAMPLES / f"{example}.yaml").read_text()))
        for document in documents:
            name = document["metadata"]["name"]
            if document["kind"] == "Backend":
                sim = backends[name]
                document["spec"]["endpoints"] = [{"ip": {"address": sim.host, "port": sim.port}}]
            elif document["kind"] == "Secret":
                document["stringData"] = secrets[name]
            elif document["kind"] == "BackendSecurityPolicy" and document["spec"]["type"] == "AWSCredentials":
                document["spec"]["awsCredentials"]["region"] = "us-west-2"  # the simulator's region
            elif document["kind"] == "BackendSecurityPolicy" and document["spec"]["type"] == "GCPCredentials":
                document["spec"]["gcpCredentials"].update(projectName=PROJECT, region=REGION)
        path = directory / f"{example}.yaml"
        path.write_text(yaml.safe_dump_all(documents))
        written.append(path)
    return written


def test_up_serves_the_provider_examples(gw: Providers, tmp_path: Path) -> None:
    """`xds-server up` on examples/providers (filled in with the simulators' addresses and credentials): every
    provider answers OpenAI's API through the URL up prints, whole and streamed."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (tmp_path / "up").mkdir()
    up = Up(_pointed_at_simulators(gw, manifests), tmp_path / "up")
    try:
        up.ready()
        client = openai.OpenAI(base_url=f"{up.url}/v1", api_key="unused", max_retries=0)
        models = ["gpt-4o", "claude-sonnet-4-5", "amazon.nova-lite-v1:0", "anthropic.claude-3-5-haiku-20241022-v1:0"]
        models += ["gemini-2.5-flash", "claude-sonnet-4-5@20250929"]
        for model in models:
            completion = eventually(functools.partial(_answers_with, client, model), f"{model} answering through up")
            assert completion.choices[0].message.content, (model, completion)
            stream = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Say this is a test"}], max_tokens=50, stream=True
            )
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices), model
    finally:
        up.stop(signal.SIGTERM)


def _answers_with(client: openai.OpenAI, model: str) -> Any:
    try:
        return client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say this is a test"}], max_tokens=50
        )
    except openai.APIError:
        return None
