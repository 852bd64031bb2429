"""Claude through InvokeModel in the Bedrock Runtime simulator (testing/providers/bedrock_sim.py), as a subprocess:
botocore's own client signs for `invoke_model` and `invoke_model_with_response_stream` and parses what the simulator
answers; it refuses what Bedrock refuses (Bedrock's body rules, then Anthropic's contract); and what the gateway's
translation (xds_server/extproc/schemas/claude_clouds.py) sends, signed by our own signer, passes and translates
back."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import botocore.session  # type: ignore[import-untyped]
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import ClientError, EventStreamError  # type: ignore[import-untyped]
from pydantic import TypeAdapter
from urllib3.exceptions import ProtocolError

from testing.ports import loopback_address
from testing.providers.aws_checks import client_error, frames, refused
from testing.sims import SimProcess, start_bedrock_sim
from testing.web import Response, request
from xds_server.extproc.schemas import anthropic
from xds_server.extproc.schemas.claude_clouds import (
    BEDROCK_ANTHROPIC_VERSION,
    BedrockClaudeStream,
    bedrock_invoke_path,
    bedrock_request,
)
from xds_server.extproc.sigv4 import AwsCredentials, sign

REGION = "us-east-1"
CREDENTIALS = AwsCredentials("AKIASIMULATOR0000003", "claude/secret+key=with/odd+chars")
SONNET = "anthropic.claude-3-5-sonnet-20241022-v2:0"
PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-4-5-20250929-v1:0"
HELLO = [{"role": "user", "content": "hello there"}]
BODY: dict[str, Any] = {"anthropic_version": BEDROCK_ANTHROPIC_VERSION, "max_tokens": 50, "messages": HELLO}
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
}
EVENTS: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
CREATED = 1767225600


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    host, _ = loopback_address()
    started = start_bedrock_sim(host, tmp_path_factory.mktemp("bedrock-sim-claude") / "log", CREDENTIALS, REGION)
    yield started
    started.kill()


@pytest.fixture
def client(sim: SimProcess, monkeypatch: pytest.MonkeyPatch) -> Any:
    """botocore's own bedrock-runtime client, without retries."""
    monkeypatch.delenv("AWS_BEARER_TOKEN_BEDROCK", raising=False)  # it would make botocore send an API key instead
    return botocore.session.get_session().create_client(
        "bedrock-runtime",
        region_name=REGION,
        endpoint_url=sim.url,
        aws_access_key_id=CREDENTIALS.access_key_id,
        aws_secret_access_key=CREDENTIALS.secret_access_key,
        config=Config(retries={"total_max_attempts": 1}, read_timeout=20, connect_timeout=5),
    )


def signed_invoke(
    sim: SimProcess,
    model_id: str,
    body: Any,
    stream: bool = False,
    credentials: AwsCredentials = CREDENTIALS,
    raw: bytes | None = None,
) -> Response:
    """An InvokeModel request as the gateway sends it: the path bedrock_invoke_path makes, signed by our signer."""
    data = raw if raw is not None else json.dumps(body).encode()
    path = bedrock_invoke_path(model_id, stream)
    signed = sign(credentials, REGION, "bedrock", "POST", f"{sim.host}:{sim.port}", path, "", data, datetime.now(UTC))
    return request(sim.url, "POST", path, data, {**dict(signed), "content-type": "application/json"})


def invoke(client: Any, model_id: str, body: Any) -> Any:
    answer = client.invoke_model(modelId=model_id, body=json.dumps(body), contentType="application/json")
    return answer, json.loads(answer["body"].read())


def streamed_events(client: Any, model_id: str, body: Any) -> list[Any]:
    answer = client.invoke_model_with_response_stream(modelId=model_id, body=json.dumps(body))
    return [json.loads(event["chunk"]["bytes"]) for event in answer["body"]]


# botocore's client parses every answer.


def test_invoke_model_answers_an_anthropic_message(client: Any) -> None:
    answer, message = invoke(client, SONNET, BODY)
    assert answer["contentType"] == "application/json"
    Message.model_validate(message)
    assert message["content"] == [{"type": "text", "text": "You said: hello there"}]
    assert (message["model"], message["stop_reason"], message["role"]) == (
        "claude-3-5-sonnet-20241022",
        "end_turn",
        "assistant",
    )
    assert message["id"].startswith("msg_bdrk_")
    headers = answer["ResponseMetadata"]["HTTPHeaders"]
    assert int(headers["x-amzn-bedrock-output-token-count"]) == message["usage"]["output_tokens"] > 0
    assert int(headers["x-amzn-bedrock-input-token-count"]) == message["usage"]["input_tokens"] > 0
    assert answer["ResponseMetadata"]["RequestId"]


def test_invoke_model_with_response_stream_is_anthropics_stream_in_chunks(client: Any) -> None:
    events = streamed_events(client, SONNET, {**BODY, "messages": [{"role": "user", "content": "a b c d e"}]})
    kinds = [event["type"] for event in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert "ping" not in kinds and kinds.count("content_block_delta") > 1
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == "You said: a b c d e"
    metrics = events[-1].pop("amazon-bedrock-invocationMetrics")
    assert metrics["outputTokenCount"] == events[-2]["usage"]["output_tokens"] == 7
    assert set(metrics) == {"inputTokenCount", "outputTokenCount", "invocationLatency", "firstByteLatency"}
    for event in events:
        EVENTS.validate_python(event)
    assert events[0]["message"]["id"].startswith("msg_bdrk_")


def test_the_raw_stream_is_framed_as_bedrock_frames_it(sim: SimProcess) -> None:
    response = signed_invoke(sim, SONNET, BODY, stream=True)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.amazon.eventstream"
    assert response.headers["x-amzn-bedrock-content-type"] == "application/json"
    for headers, payload in frames(response.content):
        assert headers == {":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"}
        assert set(payload) == {"bytes", "p"} and payload["p"]  # Bedrock's padding
        json.loads(base64.b64decode(payload["bytes"], validate=True))


def test_tool_use_when_forced_or_asked(client: Any) -> None:
    for choice, text in (({"type": "any"}, "hello"), (None, "please call get_weather")):
        body = {**BODY, "messages": [{"role": "user", "content": text}], "tools": [WEATHER]}
        if choice is not None:
            body["tool_choice"] = choice
        _, message = invoke(client, SONNET, body)
        [block] = message["content"]
        assert (block["type"], block["name"], block["input"]) == ("tool_use", "get_weather", {"city": "x", "days": 1})
        assert message["stop_reason"] == "tool_use"


def test_anthropic_beta_is_taken(client: Any) -> None:
    _, message = invoke(client, SONNET, {**BODY, "anthropic_beta": ["context-1m-2025-08-07"]})
    assert message["stop_reason"] == "end_turn"


# What the gateway sends: claude_clouds' translation, our signer; and its translation back.


@pytest.mark.parametrize("model_id", [SONNET, PROFILE_ARN])
def test_the_gateways_requests_pass_and_translate_back(sim: SimProcess, model_id: str) -> None:
    assert request(sim.url, "DELETE", "/debug/requests").status_code == 204
    openai_body: dict[str, Any] = {
        "model": model_id,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}],
        "max_completion_tokens": 100,
        "user": "user-6f1d2c",
    }
    response = signed_invoke(sim, model_id, bedrock_request(openai_body, None))
    assert response.status_code == 200, response.text
    completion = anthropic.chat_response(response.json(), model_id, CREATED)
    assert completion["choices"][0]["message"]["content"] == "You said: hello there"
    assert completion["choices"][0]["finish_reason"] == "stop" and completion["usage"]["total_tokens"] > 0

    streaming = {**openai_body, "stream": True, "stream_options": {"include_usage": True}}
    response = signed_invoke(sim, model_id, bedrock_request(streaming, None), stream=True)
    assert response.status_code == 200, response.text
    stream = BedrockClaudeStream(model_id, CREATED, True)
    events = (stream.feed(response.content) + stream.finish()).split(b"\n\n")
    chunks = [json.loads(event[6:]) for event in events if event.startswith(b"data: {")]
    assert events[-2:] == [b"data: [DONE]", b""]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "You said: hello there"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["usage"]["completion_tokens"] == 4

    listing = request(sim.url, "GET", "/debug/requests").json()
    assert [(entry["modelId"], entry["operation"], entry["status"]) for entry in listing] == [
        (model_id, "InvokeModel", 200),
        (model_id, "InvokeModelWithResponseStream", 200),
    ]
    assert ("%2F" in listing[0]["path"]) == ("/" in model_id)
    assert listing[0]["headers"]["authorization"].endswith("Signature=REDACTED")


def test_the_gateways_tool_calls_translate_back(sim: SimProcess) -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]}}
    openai_body = {"model": SONNET, "messages": HELLO, "tools": [tool], "tool_choice": "required", "stream": True}
    response = signed_invoke(sim, SONNET, bedrock_request(openai_body, None), stream=True)
    assert response.status_code == 200, response.text
    stream = BedrockClaudeStream(SONNET, CREATED, False)
    chunks = [
        json.loads(event[6:])
        for event in (stream.feed(response.content) + stream.finish()).split(b"\n\n")
        if event.startswith(b"data: {")
    ]
    calls = [call for c in chunks for call in c["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads("".join(call["function"]["arguments"] for call in calls)) == {"city": "x", "days": 1}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


# What Bedrock refuses.


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({k: v for k, v in BODY.items() if k != "anthropic_version"}, "required key [anthropic_version] not found"),
        ({**BODY, "anthropic_version": "2023-06-01"}, "#/anthropic_version"),
        ({**BODY, "model": "claude-3-5-sonnet-20241022"}, "extraneous key [model] is not permitted"),
        ({**BODY, "stream": True}, "extraneous key [stream] is not permitted"),
        ({**BODY, "stream": False}, "extraneous key [stream] is not permitted"),
        ({**BODY, "anthropic_beta": "context-1m-2025-08-07"}, "#/anthropic_beta"),
        ([BODY], "expected type: JSONObject"),
        # Anthropic's contract, its messages as the API words them.
        ({**BODY, "max_tokens": 0}, "max_tokens: Value must be greater than or equal to 1"),
        ({**BODY, "messages": [{"role": "assistant", "content": "hi"}]}, 'first message must use the "user" role'),
        ({**BODY, "temperature": "hot"}, "temperature"),
        (
            {**BODY, "messages": [{"role": "user", "content": [{"type": "text", "text": "x", "cache": 1}]}]},
            "messages.0.content.0.text.cache: Extra inputs are not permitted",
        ),
        ({**BODY, "top_k": -1}, "top_k: Value must be greater than or equal to 0"),
    ],
)
def test_bodies_bedrock_refuses(sim: SimProcess, body: Any, text: str) -> None:
    refused(signed_invoke(sim, SONNET, body), 400, "ValidationException", text)
    refused(signed_invoke(sim, SONNET, body, stream=True), 400, "ValidationException", text)


def test_a_body_that_is_not_json(sim: SimProcess) -> None:
    refused(signed_invoke(sim, SONNET, None, raw=b"{not json"), 400, "ValidationException", "Malformed input request")


def test_a_model_that_is_not_claude_cannot_read_the_body(client: Any, sim: SimProcess) -> None:
    for model_id in ("amazon.titan-text-express-v1", "meta.llama3-8b-instruct-v1:0"):
        with pytest.raises(ClientError) as caught:
            invoke(client, model_id, BODY)
        assert "Malformed input request" in client_error(caught, 400, "ValidationException")
    too_long = "anthropic." + "x" * 2048
    refused(signed_invoke(sim, too_long, BODY), 400, "ValidationException", "modelId")


def test_the_signature_is_checked_as_for_converse(sim: SimProcess) -> None:
    wrong = AwsCredentials(CREDENTIALS.access_key_id, "not-the-secret")
    refused(signed_invoke(sim, SONNET, BODY, credentials=wrong), 403, "InvalidSignatureException", "does not match")
    unknown = AwsCredentials("AKIAUNKNOWN000000000", CREDENTIALS.secret_access_key)
    refused(signed_invoke(sim, SONNET, BODY, credentials=unknown), 403, "UnrecognizedClientException", "invalid")
    path = bedrock_invoke_path(SONNET, False)
    response = request(sim.url, "POST", path, json.dumps(BODY).encode(), {"content-type": "application/json"})
    refused(response, 403, "MissingAuthenticationTokenException", "Missing Authentication Token")


# The failures the model id chooses.


def test_throttled(client: Any) -> None:
    with pytest.raises(ClientError) as caught:
        invoke(client, "anthropic.throttled", BODY)
    client_error(caught, 429, "ThrottlingException")
    with pytest.raises(ClientError) as caught:
        client.invoke_model_with_response_stream(modelId="us.anthropic.throttled", body=json.dumps(BODY))
    client_error(caught, 429, "ThrottlingException")


def test_stream_exception(client: Any) -> None:
    answer = client.invoke_model_with_response_stream(modelId="anthropic.stream-exception", body=json.dumps(BODY))
    seen: list[str] = []
    with pytest.raises(EventStreamError) as caught:
        seen.extend(json.loads(event["chunk"]["bytes"])["type"] for event in answer["body"])
    assert seen[0] == "message_start" and "content_block_delta" in seen and "message_stop" not in seen
    assert caught.value.response["Error"]["Code"] == "modelStreamErrorException"
    # Not streamed, the same model answers as usual.
    assert invoke(client, "anthropic.stream-exception", BODY)[1]["stop_reason"] == "end_turn"


def test_stream_exception_translates_to_an_error_event(sim: SimProcess) -> None:
    response = signed_invoke(sim, "anthropic.stream-exception", BODY, stream=True)
    stream = BedrockClaudeStream(SONNET, CREATED, False)
    out = stream.feed(response.content) + stream.finish()
    last = json.loads(out.rstrip(b"\n").rsplit(b"\n\n", 1)[-1][6:])
    assert last["error"]["code"] == "model_error" and b"[DONE]" not in out


def test_stream_cut(client: Any) -> None:
    answer = client.invoke_model_with_response_stream(modelId="anthropic.stream-cut", body=json.dumps(BODY))
    seen: list[str] = []
    with pytest.raises(ProtocolError, match="ended prematurely"):  # urllib3's, as botocore lets it through
        seen.extend(json.loads(event["chunk"]["bytes"])["type"] for event in answer["body"])
    assert seen[0] == "message_start" and "content_block_stop" in seen and "message_delta" not in seen
