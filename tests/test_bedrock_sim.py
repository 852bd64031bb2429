"""The Bedrock Runtime simulator (testing/providers/bedrock_sim.py) as a subprocess on its own loopback address:
botocore's own client signs for it and parses what it answers (JSON and the binary event stream), it refuses what
AWS refuses (signatures, credentials, times, bodies), and requests signed by our own signer
(xds_server/extproc/sigv4.py) pass it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import botocore.session  # type: ignore[import-untyped]
import pytest
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import ClientError, EventStreamError  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from urllib3.exceptions import ProtocolError

from testing.ports import loopback_address
from testing.providers.aws_checks import client_error, frames, refused
from testing.sims import SimProcess, start_bedrock_sim
from testing.web import Response, request
from xds_server.extproc.sigv4 import AwsCredentials, sign

REGION = "us-east-1"
CREDENTIALS = AwsCredentials("AKIASIMULATOR0000001", "sim/secret+key=with/odd+chars")
SESSION_TOKEN = "session//token+with=chars"
TEMPORARY = AwsCredentials("ASIASIMULATOR0000002", "temporary-secret", SESSION_TOKEN)
SONNET = "anthropic.claude-3-5-sonnet-20241022-v2:0"
PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20241022-v2:0"
HELLO: list[dict[str, Any]] = [{"role": "user", "content": [{"text": "hello there"}]}]
WEATHER = {
    "toolSpec": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "inputSchema": {
            "json": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "days", "unit"],
            }
        },
    }
}
WEATHER_INPUT = {"city": "x", "days": 1, "unit": "celsius"}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    host, _ = loopback_address()
    started = start_bedrock_sim(host, tmp_path_factory.mktemp("bedrock-sim") / "log", CREDENTIALS, REGION)
    yield started
    started.kill()


@pytest.fixture(scope="module")
def temporary_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    """A simulator for temporary credentials: requests must carry its session token."""
    host, _ = loopback_address()
    started = start_bedrock_sim(host, tmp_path_factory.mktemp("bedrock-sim-sts") / "log", TEMPORARY, REGION)
    yield started
    started.kill()


def client_for(sim: SimProcess, credentials: AwsCredentials = CREDENTIALS, region: str = REGION) -> Any:
    """botocore's own bedrock-runtime client, signing with `credentials` for `region`, without retries."""
    return botocore.session.get_session().create_client(
        "bedrock-runtime",
        region_name=region,
        endpoint_url=sim.url,
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_access_key,
        aws_session_token=credentials.session_token,
        config=Config(retries={"total_max_attempts": 1}, read_timeout=20, connect_timeout=5),
    )


@pytest.fixture
def client(sim: SimProcess, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("AWS_BEARER_TOKEN_BEDROCK", raising=False)  # it would make botocore send an API key instead
    return client_for(sim)


def signed_post(
    sim: SimProcess,
    model_id: str,
    body: Any,
    operation: str = "converse",
    credentials: AwsCredentials = CREDENTIALS,
    region: str = REGION,
    service: str = "bedrock",
    now: datetime | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    query: str = "",
) -> Response:
    """A request signed by our own signer, as the gateway sends it: the model id with `/` escaped and `:` literal."""
    data = raw if raw is not None else json.dumps(body).encode()
    path = f"/model/{quote(model_id, safe=':')}/{operation}"
    host = f"{sim.host}:{sim.port}"  # what http.client sends as Host
    signed = sign(credentials, region, service, "POST", host, path, query, data, now or datetime.now(UTC))
    target = f"{path}?{query}" if query else path
    return request(
        sim.url, "POST", target, data, {**dict(signed), "content-type": "application/json", **(headers or {})}
    )


# botocore's client parses every answer.


def test_converse_echoes_with_usage_and_a_request_id(client: Any) -> None:
    answer = client.converse(modelId=SONNET, messages=HELLO, inferenceConfig={"maxTokens": 50})
    assert answer["output"]["message"] == {"role": "assistant", "content": [{"text": "You said: hello there"}]}
    assert answer["stopReason"] == "end_turn"
    usage = answer["usage"]
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"] > 0
    assert answer["metrics"]["latencyMs"] > 0
    assert answer["ResponseMetadata"]["RequestId"]


def test_converse_stream_is_a_real_event_stream(client: Any) -> None:
    answer = client.converse_stream(modelId=SONNET, messages=[{"role": "user", "content": [{"text": "a b c d e"}]}])
    events = list(answer["stream"])
    names = [next(iter(event)) for event in events]
    assert names[0] == "messageStart" and names[-2:] == ["messageStop", "metadata"]
    assert "contentBlockStart" not in names  # Bedrock starts text blocks with their first delta
    assert names.count("contentBlockDelta") > 1 and names.count("contentBlockStop") == 1
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    assert text == "You said: a b c d e"
    assert events[-2]["messageStop"]["stopReason"] == "end_turn"
    assert events[-1]["metadata"]["usage"]["outputTokens"] == 7


def test_the_raw_stream_is_framed_with_bedrocks_headers(sim: SimProcess) -> None:
    response = signed_post(sim, SONNET, {"messages": HELLO}, "converse-stream")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.amazon.eventstream"
    assert response.headers["x-amzn-requestid"]
    messages = frames(response.content)
    for headers, payload in messages:
        assert headers[":message-type"] == "event" and headers[":content-type"] == "application/json"
        assert isinstance(payload.pop("p"), str)  # Bedrock's padding
    assert [headers[":event-type"] for headers, _ in messages] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert messages[1][1] == {"delta": {"text": "You said: "}, "contentBlockIndex": 0}


@pytest.mark.parametrize(
    ("tool_choice", "text"),
    [({"any": {}}, "hello"), ({"tool": {"name": "get_weather"}}, "hello"), (None, "please call get_weather now")],
)
def test_tool_use_when_forced_or_asked(client: Any, tool_choice: dict[str, Any] | None, text: str) -> None:
    tool_config: dict[str, Any] = {"tools": [WEATHER]}
    if tool_choice is not None:
        tool_config["toolChoice"] = tool_choice
    messages = [{"role": "user", "content": [{"text": text}]}]
    answer = client.converse(modelId=SONNET, messages=messages, toolConfig=tool_config)
    assert answer["stopReason"] == "tool_use"
    [block] = answer["output"]["message"]["content"]
    assert block["toolUse"]["name"] == "get_weather" and block["toolUse"]["input"] == WEATHER_INPUT
    streamed = list(client.converse_stream(modelId=SONNET, messages=messages, toolConfig=tool_config)["stream"])
    start = next(e["contentBlockStart"] for e in streamed if "contentBlockStart" in e)
    assert start["start"]["toolUse"] == {"toolUseId": block["toolUse"]["toolUseId"], "name": "get_weather"}
    arguments = "".join(
        e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in streamed if "contentBlockDelta" in e
    )
    assert json.loads(arguments) == WEATHER_INPUT
    assert streamed[-2]["messageStop"]["stopReason"] == "tool_use"


def test_a_tool_result_is_answered_with_its_contents(client: Any) -> None:
    messages = [
        {"role": "user", "content": [{"text": "call get_weather"}]},
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {}}}]},
        {
            "role": "user",
            "content": [{"toolResult": {"toolUseId": "t1", "content": [{"text": "sunny"}, {"json": {"deg": 21}}]}}],
        },
    ]
    answer = client.converse(modelId=SONNET, messages=messages, toolConfig={"tools": [WEATHER]})
    assert answer["output"]["message"]["content"] == [{"text": 'The tool returned: sunny {"deg": 21}'}]
    assert answer["stopReason"] == "end_turn"


def test_stop_sequences_and_max_tokens(client: Any) -> None:
    messages = [{"role": "user", "content": [{"text": "one two three four"}]}]
    stopped = client.converse(
        modelId=SONNET,
        messages=messages,
        inferenceConfig={"stopSequences": ["three"]},
        additionalModelResponseFieldPaths=["/stop_sequence"],
    )
    assert stopped["output"]["message"]["content"] == [{"text": "You said: one two "}]
    assert stopped["stopReason"] == "stop_sequence"
    assert stopped["additionalModelResponseFields"] == {"stop_sequence": "three"}
    cut = client.converse(modelId=SONNET, messages=messages, inferenceConfig={"maxTokens": 3})
    assert cut["output"]["message"]["content"] == [{"text": "You said: one"}]
    assert cut["stopReason"] == "max_tokens" and cut["usage"]["outputTokens"] == 3


def test_reasoning_and_cache_points(client: Any) -> None:
    answer = client.converse(
        modelId=SONNET,
        messages=HELLO,
        system=[{"text": "Use the cache, please."}, {"cachePoint": {"type": "default"}}],
        additionalModelRequestFields={"thinking": {"type": "enabled", "budget_tokens": 1024}},
    )
    reasoning, text = answer["output"]["message"]["content"]
    assert reasoning["reasoningContent"]["reasoningText"]["signature"]
    assert text == {"text": "You said: hello there"}
    assert answer["usage"]["cacheReadInputTokens"] == 4 and answer["usage"]["cacheWriteInputTokens"] == 0
    streamed = list(
        client.converse_stream(
            modelId=SONNET,
            messages=HELLO,
            additionalModelRequestFields={"thinking": {"type": "enabled", "budget_tokens": 1024}},
        )["stream"]
    )
    deltas = [e["contentBlockDelta"] for e in streamed if "contentBlockDelta" in e]
    thought = "".join(d["delta"]["reasoningContent"].get("text", "") for d in deltas if d["contentBlockIndex"] == 0)
    assert thought == reasoning["reasoningContent"]["reasoningText"]["text"]
    assert any("signature" in d["delta"].get("reasoningContent", {}) for d in deltas)


def test_images_travel_as_base64_blobs(client: Any) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
    content = [{"text": "what is this"}, {"image": {"format": "png", "source": {"bytes": png}}}]
    answer = client.converse(modelId=SONNET, messages=[{"role": "user", "content": content}])
    assert answer["output"]["message"]["content"] == [{"text": "You said: what is this"}]


# Temporary credentials: the session token must arrive, the one the simulator knows.


def test_temporary_credentials(temporary_sim: SimProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_BEARER_TOKEN_BEDROCK", raising=False)
    answer = client_for(temporary_sim, TEMPORARY).converse(modelId=SONNET, messages=HELLO)
    assert answer["stopReason"] == "end_turn"
    for credentials in (
        AwsCredentials(TEMPORARY.access_key_id, TEMPORARY.secret_access_key),
        AwsCredentials(TEMPORARY.access_key_id, TEMPORARY.secret_access_key, "another-token"),
    ):
        with pytest.raises(ClientError) as caught:
            client_for(temporary_sim, credentials).converse(modelId=SONNET, messages=HELLO)
        assert "security token" in client_error(caught, 403, "UnrecognizedClientException")


# Signatures, refused as AWS refuses them.


def test_a_wrong_secret_is_an_invalid_signature(sim: SimProcess) -> None:
    wrong = AwsCredentials(CREDENTIALS.access_key_id, "not-the-secret")
    with pytest.raises(ClientError) as caught:
        client_for(sim, wrong).converse(modelId=SONNET, messages=HELLO)
    assert "does not match the signature you provided" in client_error(caught, 403, "InvalidSignatureException")


def test_an_unknown_access_key_is_unrecognized(sim: SimProcess) -> None:
    with pytest.raises(ClientError) as caught:
        client_for(sim, AwsCredentials("AKIAUNKNOWN000000000", CREDENTIALS.secret_access_key)).converse(
            modelId=SONNET, messages=HELLO
        )
    client_error(caught, 403, "UnrecognizedClientException")


def test_a_credential_scoped_to_another_region_or_service_is_refused(sim: SimProcess) -> None:
    with pytest.raises(ClientError) as caught:
        client_for(sim, region="eu-west-1").converse(modelId=SONNET, messages=HELLO)
    assert "valid region" in client_error(caught, 403, "InvalidSignatureException")
    refused(
        signed_post(sim, SONNET, {"messages": HELLO}, service="bedrock-runtime"),
        403,
        "InvalidSignatureException",
        "scoped to correct service: 'bedrock'",
    )


@pytest.mark.parametrize(("minutes", "text"), [(-6, "Signature expired"), (6, "Signature not yet current")])
def test_a_time_more_than_five_minutes_off_is_refused(sim: SimProcess, minutes: int, text: str) -> None:
    now = datetime.now(UTC) + timedelta(minutes=minutes)
    refused(signed_post(sim, SONNET, {"messages": HELLO}, now=now), 403, "InvalidSignatureException", text)
    near = datetime.now(UTC) + timedelta(minutes=minutes * 3 / 4)
    assert signed_post(sim, SONNET, {"messages": HELLO}, now=near).status_code == 200


def test_a_missing_or_malformed_authorization(sim: SimProcess) -> None:
    body = json.dumps({"messages": HELLO}).encode()
    path = f"/model/{SONNET}/converse"
    refused(
        request(sim.url, "POST", path, body, {"content-type": "application/json"}),
        403,
        "MissingAuthenticationTokenException",
        "Missing Authentication Token",
    )
    refused(
        request(sim.url, "POST", path, body, {"authorization": "Bearer abc", "content-type": "application/json"}),
        403,
        "IncompleteSignatureException",
        "Unsupported authorization type",
    )
    truncated = {"authorization": "AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/bedrock/aws4_request"}
    refused(request(sim.url, "POST", path, body, truncated), 403, "IncompleteSignatureException", "SignedHeaders")


def test_any_mutation_after_signing_breaks_the_signature(sim: SimProcess) -> None:
    body = json.dumps({"messages": HELLO}).encode()
    path = f"/model/{SONNET}/converse"
    host = f"{sim.host}:{sim.port}"
    headers = dict(sign(CREDENTIALS, REGION, "bedrock", "POST", host, path, "", body, datetime.now(UTC)))
    changed = json.dumps({"messages": [{"role": "user", "content": [{"text": "changed"}]}]}).encode()
    refused(request(sim.url, "POST", path, changed, headers), 403, "InvalidSignatureException", "x-amz-content-sha256")
    unhashed = {name: value for name, value in headers.items() if name != "x-amz-content-sha256"}
    refused(request(sim.url, "POST", path, changed, unhashed), 403, "InvalidSignatureException", "does not match")
    other_path = path.replace("v2:0", "v1:0")
    refused(request(sim.url, "POST", other_path, body, headers), 403, "InvalidSignatureException", "does not match")
    moved = {**headers, "host": "bedrock-runtime.us-east-1.amazonaws.com"}
    refused(request(sim.url, "POST", path, body, moved), 403, "InvalidSignatureException", "does not match")
    # What Envoy adds or rewrites after signing is outside the signature.
    added = {**headers, "user-agent": "envoy", "x-request-id": "abc", "x-forwarded-proto": "https"}
    assert request(sim.url, "POST", path, body, added).status_code == 200


# Our signer, as the gateway uses it.


@pytest.mark.parametrize("model_id", [SONNET, PROFILE_ARN, "us.meta.llama3-2-1b-instruct-v1:0"])
def test_requests_signed_by_our_signer_are_accepted(sim: SimProcess, model_id: str) -> None:
    assert request(sim.url, "DELETE", "/debug/requests").status_code == 204
    answer = signed_post(sim, model_id, {"messages": HELLO, "inferenceConfig": {"maxTokens": 20}})
    assert answer.status_code == 200, answer.text
    assert answer.json()["output"]["message"]["content"] == [{"text": "You said: hello there"}]
    streamed = signed_post(sim, model_id, {"messages": HELLO}, "converse-stream")
    assert streamed.status_code == 200, streamed.text
    assert [payload.get("stopReason") for _, payload in frames(streamed.content)][-2] == "end_turn"
    listing = request(sim.url, "GET", "/debug/requests").json()
    assert [entry["modelId"] for entry in listing] == [model_id, model_id]
    assert [entry["operation"] for entry in listing] == ["Converse", "ConverseStream"]
    if "/" in model_id:
        assert "%2F" in listing[0]["path"]
    assert listing[0]["headers"]["authorization"].endswith("Signature=REDACTED")
    assert "SignedHeaders=host;x-amz-content-sha256;x-amz-date," in listing[0]["headers"]["authorization"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    model_id=st.one_of(
        st.from_regex(r"\A(anthropic|amazon|meta|mistral|us\.anthropic|eu\.meta)\.[a-z0-9-]{1,20}-v[1-9]:[0-9]\Z"),
        st.from_regex(
            r"\Aarn:aws:bedrock:us-east-1:[0-9]{12}:(inference-profile|application-inference-profile)/"
            r"(us|eu)\.[a-z0-9-]{1,20}\.[a-z0-9-]{1,20}:[0-9]\Z"
        ),
    ),
    query=st.lists(st.tuples(st.text(min_size=1, max_size=6), st.text(max_size=6)), max_size=3).map(
        lambda pairs: "&".join(f"{quote(name, safe='')}={quote(value, safe=':/')}" for name, value in pairs)
    ),
    text=st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=30).filter(
        str.strip
    ),
)
def test_our_signer_is_accepted_for_any_model_id_query_and_text(
    sim: SimProcess, model_id: str, query: str, text: str
) -> None:
    """Model ids and ARNs of every shape, queries with literal `:` and `/` (AWS decodes then encodes them), any text."""
    body = {"messages": [{"role": "user", "content": [{"text": text}]}]}
    answer = signed_post(sim, model_id, body, query=query)
    assert answer.status_code == 200, answer.text
    assert answer.json()["output"]["message"]["content"] == [{"text": "You said: " + " ".join(text.split())}]


def test_our_signer_with_a_session_token(temporary_sim: SimProcess) -> None:
    answer = signed_post(temporary_sim, PROFILE_ARN, {"messages": HELLO}, credentials=TEMPORARY)
    assert answer.status_code == 200, answer.text
    listing = request(temporary_sim.url, "GET", "/debug/requests").json()
    text = json.dumps(listing)
    assert TEMPORARY.secret_access_key not in text and SESSION_TOKEN not in text
    assert listing[-1]["headers"]["x-amz-security-token"] == "REDACTED"


# Bodies, against the service model and the rules it does not state.

TOOL_TURNS: list[dict[str, Any]] = [
    {"role": "user", "content": [{"text": "call get_weather"}]},
    {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {}}}]},
]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": HELLO, "temperature": 0.5}, "'temperature'"),
        ({"messages": HELLO, "inferenceConfig": {"top_k": 5}}, "'inferenceConfig.top_k'"),
        ({"messages": HELLO, "inferenceConfig": {"maxTokens": 0}}, "Value '0' at 'inferenceConfig.maxTokens'"),
        ({"messages": HELLO, "inferenceConfig": {"maxTokens": "10"}}, "'inferenceConfig.maxTokens'"),
        ({"messages": HELLO, "inferenceConfig": {"temperature": 1.5}}, "'inferenceConfig.temperature'"),
        ({"messages": [{"role": "robot", "content": [{"text": "x"}]}]}, "'messages.0.role'"),
        ({"messages": [{"role": "user"}]}, "'messages.0.content'"),
        (
            {"messages": [{"role": "user", "content": [{"text": "a", "cachePoint": {"type": "default"}}]}]},
            "'messages.0.content.0'",
        ),
        ({"messages": [{"role": "user", "content": [{"txt": "a"}]}]}, "'messages.0.content.0.txt'"),
        (
            {"messages": [{"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": "%%%"}}}]}]},
            "'messages.0.content.0.image.source.bytes'",
        ),
        (
            {"messages": [{"role": "user", "content": [{"image": {"format": "bmp", "source": {"bytes": "AAAA"}}}]}]},
            "'messages.0.content.0.image.format'",
        ),
        ({"messages": HELLO, "toolConfig": {"tools": []}}, "'toolConfig.tools'"),
        (
            {"messages": HELLO, "toolConfig": {"tools": [{"toolSpec": {"name": "a b", "inputSchema": {"json": {}}}}]}},
            "'toolConfig.tools.0.toolSpec.name'",
        ),
        ({"messages": HELLO, "system": [{"text": ""}]}, "'system.0.text'"),
        ({"messages": []}, "start with a user message"),
        ({"messages": [{"role": "assistant", "content": [{"text": "hi"}]}]}, "start with a user message"),
        ({"messages": [*HELLO, *HELLO]}, "messages.1.role: A conversation must alternate"),
        ({"messages": [{"role": "user", "content": []}]}, "at messages.0 is empty"),
        ({"messages": [{"role": "user", "content": [{"text": "  "}]}]}, "at messages.0.content.0 is blank"),
        (
            {
                "messages": [*TOOL_TURNS, {"role": "user", "content": [{"text": "ok"}]}],
                "toolConfig": {"tools": [WEATHER]},
            },
            "Expected toolResult blocks at messages.2.content for the following Ids: t1",
        ),
        (
            {
                "messages": [
                    *TOOL_TURNS,
                    {"role": "user", "content": [{"toolResult": {"toolUseId": "t9", "content": [{"text": "x"}]}}]},
                ],
                "toolConfig": {"tools": [WEATHER]},
            },
            "messages.2.content.0.toolResult.toolUseId: t9",
        ),
        (
            {"messages": [{"role": "user", "content": [{"toolUse": {"toolUseId": "t", "name": "n", "input": {}}}]}]},
            "messages.0.content.0.toolUse",
        ),
        ({"messages": HELLO, "toolConfig": {"tools": [WEATHER, WEATHER]}}, "toolConfig.tools: The tool names"),
        (
            {"messages": HELLO, "toolConfig": {"tools": [WEATHER], "toolChoice": {"tool": {"name": "other"}}}},
            "toolConfig.toolChoice.tool.name",
        ),
    ],
)
def test_validation_names_the_field(sim: SimProcess, body: dict[str, Any], field: str) -> None:
    refused(signed_post(sim, SONNET, body), 400, "ValidationException", field)


def test_a_body_that_is_not_json_and_a_model_id_that_is_too_long(sim: SimProcess) -> None:
    refused(signed_post(sim, SONNET, None, raw=b"{not json"), 400, "ValidationException", "not valid JSON")
    refused(signed_post(sim, "a" * 2049, {"messages": HELLO}), 400, "ValidationException", "'modelId'")


def test_leaked_gateway_headers_are_refused(sim: SimProcess) -> None:
    leaked = {"x-ai-eg-model": SONNET}
    refused(signed_post(sim, SONNET, {"messages": HELLO}, headers=leaked), 400, "ValidationException", "x-ai-eg-model")


# The error hooks.


def test_throttled(client: Any) -> None:
    with pytest.raises(ClientError) as caught:
        client.converse(modelId="throttled", messages=HELLO)
    client_error(caught, 429, "ThrottlingException")
    with pytest.raises(ClientError) as caught:
        client.converse_stream(modelId="throttled", messages=HELLO)
    client_error(caught, 429, "ThrottlingException")


def test_an_unknown_model_or_operation_is_not_found(client: Any, sim: SimProcess) -> None:
    for model_id in ("cohere.command-r-v1:0", "arn:aws:bedrock:us-east-1::foundation-model/cohere.command-r-v1:0"):
        with pytest.raises(ClientError) as caught:
            client.converse(modelId=model_id, messages=HELLO)
        client_error(caught, 404, "ResourceNotFoundException")
    answer = signed_post(sim, SONNET, {"messages": HELLO}, "count-tokens")
    refused(answer, 404, "UnknownOperationException", "count-tokens")


def test_stream_exception(client: Any) -> None:
    stream = client.converse_stream(modelId="stream-exception", messages=HELLO)["stream"]
    seen: list[str] = []
    with pytest.raises(EventStreamError) as caught:
        seen.extend(next(iter(event)) for event in stream)
    assert seen[0] == "messageStart" and "contentBlockDelta" in seen and "messageStop" not in seen
    assert caught.value.response["Error"]["Code"] == "modelStreamErrorException"
    # Not streamed, the same model answers as usual.
    assert client.converse(modelId="stream-exception", messages=HELLO)["stopReason"] == "end_turn"


def test_stream_exception_frame_on_the_wire(sim: SimProcess) -> None:
    messages = frames(signed_post(sim, "stream-exception", {"messages": HELLO}, "converse-stream").content)
    headers, payload = messages[-1]
    assert headers[":message-type"] == "exception"
    assert headers[":exception-type"] == "modelStreamErrorException"
    assert payload["originalStatusCode"] == 500 and payload["message"]


def test_stream_cut(client: Any) -> None:
    stream = client.converse_stream(modelId="stream-cut", messages=HELLO)["stream"]
    seen: list[str] = []
    with pytest.raises(ProtocolError, match="ended prematurely"):  # urllib3's, as botocore lets it through
        seen.extend(next(iter(event)) for event in stream)
    assert seen[0] == "messageStart" and "contentBlockStop" in seen and "messageStop" not in seen


def test_health_and_debug_listing(sim: SimProcess) -> None:
    assert request(sim.url, "GET", "/health").status_code == 200
    assert request(sim.url, "DELETE", "/debug/requests").status_code == 204
    signed_post(sim, "throttled", {"messages": HELLO})
    [entry] = request(sim.url, "GET", "/debug/requests").json()
    assert entry["status"] == 429 and entry["method"] == "POST" and entry["body"] == {"messages": HELLO}
    assert CREDENTIALS.secret_access_key not in json.dumps(entry)
