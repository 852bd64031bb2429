"""OpenAI chat completions <-> Anthropic Messages (xds_server.extproc.schemas.anthropic).

Golden cases: every directory of testdata/providers/anthropic/ is a case holding one or more pairs, input -> output:

    openai-request.json     -> anthropic-request.json  chat_request (the model sent: the request's own)
    anthropic-response.json -> openai-response.json    chat_response (the client's model: the case's request's)
    anthropic-stream.txt    -> openai-stream.txt       ChatStream, fed whole (include_usage: the case's request's)
    anthropic-error.txt     -> openai-error.json       error_response (the HTTP status on the first line, the body
                                                       after it)

`python -m pytest tests/test_schema_anthropic.py --update-golden` rewrites the outputs; review the diff. The inputs
were written from the documented shapes, and are checked here against the SDKs' own types, as are the outputs.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic.types
import openai
import orjson
import pydantic
import pytest
from anthropic.types import message_create_params
from anthropic.types.shared.error_response import ErrorResponse
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk, completion_create_params
from openai.types.shared import ErrorObject

from testing.schema_goldens import (
    ASK,
    FUNCTION,
    Goldens,
    Requests,
    any_split,
    check_rejected,
    check_stream_end,
    feed,
    openai_client,
    reasoning_of,
    rendered,
    sdk_stream_error,
    sdk_tool_calls,
)
from testing.strict_types import strict
from xds_server.extproc.schemas.anthropic import (
    ANTHROPIC_VERSION,
    DEFAULT_MAX_TOKENS,
    DROPPED_FIELDS,
    SAMPLING_FIELDS,
    ChatStream,
    RequestRejected,
    chat_request,
    chat_response,
    error_response,
)

CASES = Path(__file__).resolve().parent.parent / "testdata" / "providers" / "anthropic"
CLIENT_MODEL = "claude-sonnet-4-5"  # the model the client asked for, when the case has no request
CREATED = 1767225600
PAIRS = {
    "openai-request.json": "anthropic-request.json",
    "anthropic-response.json": "openai-response.json",
    "anthropic-stream.txt": "openai-stream.txt",
    "anthropic-error.txt": "openai-error.json",
}
# Inputs deliberately outside the SDK's types: what is newer than the SDK must still translate.
OFF_SPEC = {"finish-unknown", "error-unknown-type", "error-html", "error-empty"}


GOLDENS = Goldens(CASES, PAIRS)
case_names = GOLDENS.names
client_request = GOLDENS.client_request
include_usage = GOLDENS.include_usage


def stream_of(case: str) -> ChatStream:
    return ChatStream(client_request(case).get("model", CLIENT_MODEL), CREATED, include_usage(case))


def translate(case: str, name: str) -> str:
    raw = (CASES / case / name).read_bytes()
    if name == "openai-request.json":
        body = orjson.loads(raw)
        return rendered(chat_request(body, body["model"]))
    if name == "anthropic-response.json":
        return rendered(chat_response(orjson.loads(raw), client_request(case).get("model", CLIENT_MODEL), CREATED))
    if name == "anthropic-stream.txt":
        stream = stream_of(case)
        return (stream.feed(raw) + stream.finish()).decode()
    status, _, body = raw.partition(b"\n")
    return rendered(orjson.loads(error_response(int(status), body)))


@pytest.mark.parametrize("case", case_names())
def test_golden(case: str, update: bool) -> None:
    GOLDENS.check(case, translate, update)


# ---- the SDKs' types


def test_strict_validation_catches_extra_keys() -> None:
    """testing/strict_types.py's validation: also once the SDK's models have been built, as any SDK call parsing an
    answer builds them, and in the SDK's models themselves."""
    good: Any = {
        "model": "m",
        "max_tokens": 1,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
    }
    bad = copy.deepcopy(good)
    bad["messages"][0]["content"][0]["cache"] = True
    message: Any = orjson.loads((CASES / "response-text-tool-thinking" / "anthropic-response.json").read_bytes())
    messages = [copy.deepcopy(message) for _ in range(3)]
    messages[0]["cache"] = True
    messages[1]["content"][2]["cache"] = True
    messages[2]["usage"]["cache"] = True
    for built in (False, True):
        if built:
            for model in (anthropic.types.TextBlock, anthropic.types.Usage, anthropic.types.Message):
                model.model_rebuild()
        request = strict.__wrapped__(message_create_params.MessageCreateParamsNonStreaming)
        request.validate_python(good)
        with pytest.raises(pydantic.ValidationError):
            request.validate_python(bad)
        response = strict.__wrapped__(anthropic.types.Message)
        response.validate_python(message)
        for extra in messages:
            with pytest.raises(pydantic.ValidationError):
                response.validate_python(extra)


@pytest.mark.parametrize("case", case_names("openai-request.json"))
def test_requests_fit_the_sdk_types(case: str) -> None:
    body = client_request(case)
    openai_type = completion_create_params.CompletionCreateParamsStreaming
    if not body.get("stream"):
        openai_type = completion_create_params.CompletionCreateParamsNonStreaming  # type: ignore[assignment]
    strict(openai_type).validate_python(body)  # the input is a real OpenAI request

    request = chat_request(body, body["model"])
    # The SDK no longer declares the sampling fields (see SAMPLING_FIELDS); everything else must fit its type.
    sampling = {name: request.pop(name) for name in SAMPLING_FIELDS if name in request}
    assert all(isinstance(v, int | float) and 0 <= v <= 1 for v in sampling.values())
    anthropic_type = message_create_params.MessageCreateParamsStreaming
    if not request.get("stream"):
        anthropic_type = message_create_params.MessageCreateParamsNonStreaming  # type: ignore[assignment]
    strict(anthropic_type).validate_python(request)


def stream_events(case: str) -> Iterator[Any]:
    for block in (CASES / case / "anthropic-stream.txt").read_text().split("\n\n"):
        data = [line[6:] for line in block.splitlines() if line.startswith("data: ")]
        if data:
            yield json.loads("\n".join(data))


@pytest.mark.parametrize("case", sorted(set(case_names()) - OFF_SPEC))
def test_provider_inputs_fit_the_sdk_types(case: str) -> None:
    directory = CASES / case
    if (directory / "anthropic-response.json").exists():
        strict(anthropic.types.Message).validate_json((directory / "anthropic-response.json").read_bytes())
    if (directory / "anthropic-stream.txt").exists():
        for event in stream_events(case):
            if event["type"] == "ping":
                assert event == {"type": "ping"}
            else:
                strict(
                    ErrorResponse if event["type"] == "error" else anthropic.types.RawMessageStreamEvent
                ).validate_python(event)
    if (directory / "anthropic-error.txt").exists():
        strict(ErrorResponse).validate_json((directory / "anthropic-error.txt").read_bytes().partition(b"\n")[2])


def openai_events(case: str) -> list[bytes]:
    return [event for event in translate(case, "anthropic-stream.txt").encode().split(b"\n\n") if event]


@pytest.mark.parametrize("case", case_names())
def test_outputs_fit_the_openai_types(case: str) -> None:
    directory = CASES / case
    if (directory / "anthropic-response.json").exists():
        ChatCompletion.model_validate_json(translate(case, "anthropic-response.json"))
    if (directory / "anthropic-error.txt").exists():
        envelope = json.loads(translate(case, "anthropic-error.txt"))
        assert set(envelope) == {"error"} and set(envelope["error"]) == {"message", "type", "param", "code"}
        ErrorObject.model_validate(envelope["error"])
    if (directory / "anthropic-stream.txt").exists():
        for event in openai_events(case):
            if event.startswith(b"data: {"):
                document = json.loads(event[6:])
                if "error" in document:
                    assert set(document["error"]) == {"message", "type", "param", "code"}
                    ErrorObject.model_validate(document["error"])
                else:
                    ChatCompletionChunk.model_validate(document)


@pytest.mark.parametrize("case", case_names("anthropic-stream.txt"))
def test_stream_shape(case: str) -> None:
    """What every OpenAI client may rely on, whatever the upstream sent."""
    events = openai_events(case)
    chunks = [json.loads(e[6:]) for e in events if e.startswith(b"data: {")]
    errors = [c for c in chunks if "error" in c]
    chunks = [c for c in chunks if "error" not in c]
    message_id = next(stream_events(case))["message"]["id"]
    usage_asked = include_usage(case)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    seen_calls: set[int] = set()
    for chunk in chunks:
        assert (chunk["id"], chunk["object"], chunk["created"]) == (message_id, "chat.completion.chunk", CREATED)
        assert chunk["model"] == client_request(case).get("model", CLIENT_MODEL)
        assert ("usage" in chunk) == usage_asked
        if chunk["choices"]:
            assert chunk["choices"][0]["index"] == 0
            assert not usage_asked or chunk["usage"] is None
            for call in chunk["choices"][0]["delta"].get("tool_calls", []):
                first = call["index"] not in seen_calls
                seen_calls.add(call["index"])
                assert ("id" in call) == ("type" in call) == ("name" in call["function"]) == first
                assert not first or call["function"]["arguments"] == ""
    check_stream_end(events, chunks, errors)
    if not errors:
        finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
        assert len(finish) == 1 and finish[0]["choices"][0]["delta"] == {}
        assert not usage_asked or (chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0)
    assert seen_calls == set(range(len(seen_calls)))


def test_mid_stream_error_ends_without_done_and_truncation_says_so() -> None:
    assert openai_events("stream-error")[-1].startswith(b'data: {"error":')
    assert b"[DONE]" not in translate("stream-error", "anthropic-stream.txt").encode()
    truncated = openai_events("stream-truncated")
    assert truncated[-2].startswith(b'data: {"error":') and b'"incomplete_stream"' in truncated[-2]
    assert truncated[-1] == b"data: [DONE]"


# ---- streams fed in pieces


STREAMS = case_names("anthropic-stream.txt")


def fed(case: str, pieces: list[bytes]) -> bytes:
    return feed(stream_of(case), pieces)


@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(STREAMS), crlf=st.booleans(), data=st.data())
def test_any_split_gives_the_same_bytes(case: str, crlf: bool, data: st.DataObject) -> None:
    raw = (CASES / case / "anthropic-stream.txt").read_bytes()
    if crlf:  # CRLF line ends, which a split may cut between \r and \n
        raw = raw.replace(b"\n", b"\r\n")
    assert fed(case, any_split(data, raw)) == translate(case, "anthropic-stream.txt").encode()


@pytest.mark.parametrize("case", STREAMS)
def test_byte_by_byte(case: str) -> None:
    raw = (CASES / case / "anthropic-stream.txt").read_bytes()
    assert fed(case, [raw[i : i + 1] for i in range(len(raw))]) == fed(case, [raw])


def test_nothing_after_the_end() -> None:
    stream = stream_of("stream-text")
    raw = (CASES / "stream-text" / "anthropic-stream.txt").read_bytes()
    assert stream.feed(raw).endswith(b"data: [DONE]\n\n")
    assert stream.feed(raw) == b"" and stream.finish() == b"" and stream.finish() == b""


# ---- the openai SDK reading what the gateway answers


def test_sdk_assembles_streamed_tool_calls() -> None:
    body = translate("stream-tool-calls", "anthropic-stream.txt").encode()
    text, finish, calls = sdk_tool_calls(body, CLIENT_MODEL)
    assert text == "Checking both." and finish == "tool_calls"
    assert [json.loads(calls[i]["arguments"]) for i in (0, 1)] == [
        {"city": "Paris", "unit": "c"},
        {"city": "Oslo", "unit": "c"},
    ]
    assert [calls[i]["id"] for i in (0, 1)] == ["toolu_01T1x1fJ34qAmk2tNTrN7Up6", "toolu_01U2y2gK45rBnl3uOUsO8Vq7"]


@pytest.mark.parametrize("case", ["stream-error", "stream-truncated"])
def test_sdk_raises_on_a_failed_stream(case: str) -> None:
    message = sdk_stream_error(translate(case, "anthropic-stream.txt").encode(), CLIENT_MODEL).message
    assert message in ("Overloaded", "the upstream stream ended before the answer was complete")


def test_sdk_reads_usage_and_reasoning() -> None:
    client = openai_client(200, translate("stream-include-usage", "anthropic-stream.txt").encode(), "text/event-stream")
    chunks = list(client.chat.completions.create(model=CLIENT_MODEL, messages=ASK, stream=True))
    reasoning = reasoning_of(chunks)
    assert reasoning == "A prime has exactly two divisors. 1 has one."
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.prompt_tokens_details.cached_tokens) == (
        2544,
        311,
        2048,
    )

    client = openai_client(
        200, translate("response-text-tool-thinking", "anthropic-response.json").encode(), "application/json"
    )
    completion = client.chat.completions.create(model=CLIENT_MODEL, messages=ASK)
    assert completion.choices[0].message.content == "I'll check the forecast for Paris. Café first, then Oslo ☕."


def test_sdk_reads_error_envelopes() -> None:
    client = openai_client(529, translate("error-overloaded", "anthropic-error.txt").encode(), "application/json")
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model=CLIENT_MODEL, messages=ASK)
    assert (raised.value.status_code, raised.value.code, raised.value.type) == (529, "overloaded", "server_error")
    assert raised.value.body == {"message": "Overloaded", "type": "server_error", "param": None, "code": "overloaded"}
    client = openai_client(404, translate("error-model-not-found", "anthropic-error.txt").encode(), "application/json")
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model=CLIENT_MODEL, messages=ASK)
    assert not_found.value.code == "model_not_found"


# ---- requests Anthropic cannot honour


REQUESTS = Requests("claude-sonnet-4-5", "toolu_1")
body_with, calls_f, part, image = REQUESTS.body_with, REQUESTS.calls_f, REQUESTS.part, REQUESTS.image


REJECTED: list[tuple[str, dict[str, Any], str, str]] = [
    *REQUESTS.rejected_by_all(),
    ("n", body_with(n=2), "n", "unsupported_parameter"),
    ("logprobs", body_with(logprobs=True), "logprobs", "unsupported_parameter"),
    ("top_logprobs", body_with(top_logprobs=3), "top_logprobs", "unsupported_parameter"),
    ("presence_penalty", body_with(presence_penalty=0.5), "presence_penalty", "unsupported_parameter"),
    ("frequency_penalty", body_with(frequency_penalty=-1), "frequency_penalty", "unsupported_parameter"),
    ("seed", body_with(seed=7), "seed", "unsupported_parameter"),
    ("temperature>1", body_with(temperature=1.5), "temperature", "unsupported_value"),
    ("json_object", body_with(response_format={"type": "json_object"}), "response_format.type", "unsupported_value"),
    ("effort minimal", body_with(reasoning_effort="minimal"), "reasoning_effort", "unsupported_value"),
    ("effort none", body_with(reasoning_effort="none"), "reasoning_effort", "unsupported_value"),
    (
        "input_audio",
        part(
            [{"type": "text", "text": "x"}, {"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}]
        ),
        "messages[0].content[1].type",
        "unsupported_value",
    ),
    (
        "file",
        part([{"type": "file", "file": {"file_id": "file-1"}}]),
        "messages[0].content[0].type",
        "unsupported_value",
    ),
    (
        "system image",
        part([{"type": "image_url", "image_url": {"url": "https://x/y.png"}}], "system"),
        "messages[0].content[0].type",
        "invalid_value",
    ),
    ("svg", image("data:image/svg+xml;base64,PHN2Zz4="), "messages[0].content[0].image_url.url", "unsupported_value"),
    ("not base64", image("data:image/png,%89PNG"), "messages[0].content[0].image_url.url", "invalid_value"),
    ("ftp", image("ftp://example.org/a.png"), "messages[0].content[0].image_url.url", "unsupported_value"),
    (
        "custom tool_choice",
        body_with(tools=[FUNCTION], tool_choice={"type": "custom", "custom": {"name": "g"}}),
        "tool_choice",
        "unsupported_value",
    ),
    (
        "parallel_tool_calls",
        body_with(tools=[FUNCTION], parallel_tool_calls="no"),
        "parallel_tool_calls",
        "invalid_value",
    ),
]


@pytest.mark.parametrize(("body", "param", "code"), [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED])
def test_rejected(body: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(RequestRejected) as raised:
        chat_request(body, "claude-sonnet-4-5")
    check_rejected(raised.value, param, code)


def test_unknown_fields_are_all_named() -> None:
    with pytest.raises(RequestRejected) as raised:
        chat_request(body_with(top_k=5, thinking={"type": "enabled"}), "m")
    assert raised.value.message == "thinking, top_k: unknown parameters"


def test_rejection_never_quotes_request_content() -> None:
    with pytest.raises(RequestRejected) as raised:
        chat_request(calls_f('{"secret": "hunter2"'), "m")
    assert "hunter2" not in raised.value.message


# ---- the rest of the request mapping


@pytest.mark.parametrize("field", sorted(completion_create_params.CompletionCreateParamsStreaming.__annotations__))
def test_every_openai_field_is_decided(field: str) -> None:
    """Each field of OpenAI's request type is mapped, dropped on purpose or rejected; `null` always passes."""
    if field not in ("model", "messages"):
        chat_request(body_with(**{field: None}), "m")


def test_dropped_fields_are_openai_fields() -> None:
    assert set(DROPPED_FIELDS) <= set(completion_create_params.CompletionCreateParamsBase.__annotations__)


def test_defaults_and_constants() -> None:
    assert (ANTHROPIC_VERSION, DEFAULT_MAX_TOKENS) == ("2023-06-01", 4096)
    assert chat_request(body_with(), "claude-x")["max_tokens"] == DEFAULT_MAX_TOKENS
    assert chat_request(body_with(), "claude-x", default_max_tokens=1000)["max_tokens"] == 1000
    assert chat_request(body_with(max_tokens=10, max_completion_tokens=20), "claude-x")["max_tokens"] == 20
    assert chat_request(body_with(), "claude-x")["model"] == "claude-x"  # the caller's, not the body's


def test_parallel_tool_calls_only_with_tools() -> None:
    assert "tool_choice" not in chat_request(body_with(parallel_tool_calls=False), "m")
    assert chat_request(body_with(tools=[FUNCTION], parallel_tool_calls=True), "m").get("tool_choice") is None
    none = chat_request(body_with(tools=[FUNCTION], tool_choice="none", parallel_tool_calls=False), "m")
    assert none["tool_choice"] == {"type": "none"}
    named = body_with(
        tools=[FUNCTION], tool_choice={"type": "function", "function": {"name": "f"}}, parallel_tool_calls=False
    )
    assert chat_request(named, "m")["tool_choice"] == {"type": "tool", "name": "f", "disable_parallel_tool_use": True}


@pytest.mark.parametrize("case", case_names("openai-request.json"))
def test_the_request_is_not_changed(case: str) -> None:
    body = client_request(case)
    before = copy.deepcopy(body)
    chat_request(body, "m")
    assert body == before


# ---- errors


def envelope_of(status: int, body: bytes) -> dict[str, Any]:
    return dict(orjson.loads(error_response(status, body))["error"])


def test_non_json_error_keeps_a_bounded_prefix() -> None:
    for text in ("x" * 10_000, "é" * 300 + "tail", "<html>" + "☕" * 1000):
        message = envelope_of(502, text.encode())["message"]
        assert len(message) <= 256 and text.startswith(message.removesuffix("..."))
    assert envelope_of(503, b"\xff\xfe not utf-8")["message"].endswith("not utf-8")


@pytest.mark.parametrize(
    ("status", "body", "kind", "code"),
    [
        (
            400,
            b'{"type":"error","error":{"type":"invalid_request_error","message":"m"}}',
            "invalid_request_error",
            "invalid_request_error",
        ),
        (
            403,
            b'{"type":"error","error":{"type":"permission_error","message":"m"}}',
            "permission_error",
            "permission_denied",
        ),
        (
            404,
            b'{"type":"error","error":{"type":"not_found_error","message":"file not found"}}',
            "invalid_request_error",
            "not_found",
        ),
        (
            413,
            b'{"type":"error","error":{"type":"request_too_large","message":"m"}}',
            "invalid_request_error",
            "request_too_large",
        ),
        (500, b'{"type":"error","error":{"type":"api_error","message":"m"}}', "server_error", "internal_error"),
        (504, b'{"type":"error","error":{"type":"timeout_error","message":"m"}}', "server_error", "timeout"),
        (429, b"Too Many Requests", "rate_limit_error", "rate_limit_exceeded"),
        (401, b'{"error": "a string"}', "authentication_error", "invalid_api_key"),
        (418, b"[]", "invalid_request_error", "invalid_request_error"),
        (599, b"", "server_error", "internal_error"),
    ],
)
def test_error_table(status: int, body: bytes, kind: str, code: str) -> None:
    error = envelope_of(status, body)
    assert (error["type"], error["code"], error["param"]) == (kind, code, None)
