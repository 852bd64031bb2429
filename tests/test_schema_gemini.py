"""OpenAI chat completions <-> Gemini on Vertex AI (xds_server.extproc.schemas.gemini).

Golden cases: every directory of testdata/providers/gemini/ is a case holding one or more pairs, input -> output:

    openai-request.json  -> gemini-request.json   model_path and chat_request: {"path", "body"}
    gemini-response.json -> openai-response.json  chat_response (the client's model: the case's request's)
    gemini-stream.txt    -> openai-stream.txt     ChatStream, fed whole (include_usage: the case's request's)
    gemini-error.txt     -> openai-error.json     error_response (the HTTP status on the first line, the body after)

`python -m pytest tests/test_schema_gemini.py --update-golden` rewrites the outputs; review the diff. The inputs were
written from the documented shapes, and are checked here against google-genai's own types (`google.genai.types`, with
unknown keys, snake_case keys and unknown enum values refused), as the translated requests are; the outputs are
checked against the openai SDK's types.
"""

from __future__ import annotations

import base64
import copy
import enum
import functools
import itertools
import json
import typing
import urllib.parse
import warnings
from pathlib import Path
from typing import Any, Literal, NotRequired

import openai
import orjson
import pydantic
import pytest
from google.genai import _common, models
from google.genai import types as genai
from google.genai._api_client import BaseApiClient
from google.rpc import code_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk, completion_create_params
from pydantic.alias_generators import to_camel
from pydantic_core import SchemaValidator
from typing_extensions import TypedDict

from testing.schema_goldens import (
    ASK,
    ASKED_F,
    FUNCTION,
    Goldens,
    Requests,
    any_split,
    check_error_object,
    check_rejected,
    feed,
    openai_client,
    reasoning_of,
    rendered,
    sdk_stream_error,
    sdk_tool_calls,
)
from testing.strict_types import strict_schema
from xds_server.extproc.schemas import bedrock, common
from xds_server.extproc.schemas.gemini import (
    _ERRORS,
    _FINISH_REASONS,
    _STATUS_OF_HTTP,
    DROPPED_FIELDS,
    SKIP_SIGNATURE,
    ChatStream,
    RequestRejected,
    chat_request,
    chat_response,
    error_response,
    model_path,
)

CASES = Path(__file__).resolve().parent.parent / "testdata" / "providers" / "gemini"
CLIENT_MODEL = "gemini-2.5-flash"  # the model the client asked for, when the case has no request
CREATED = 1767225600
PAIRS = {
    "openai-request.json": "gemini-request.json",
    "gemini-response.json": "openai-response.json",
    "gemini-stream.txt": "openai-stream.txt",
    "gemini-error.txt": "openai-error.json",
}
# Inputs deliberately outside Google's types: what is newer than the SDK, or not Google's own, must still translate.
OFF_SPEC = {"finish-unknown", "error-unknown-status", "error-html", "error-empty"}


GOLDENS = Goldens(CASES, PAIRS)
case_names = GOLDENS.names
client_request = GOLDENS.client_request
include_usage = GOLDENS.include_usage


def stream_of(case: str) -> ChatStream:
    return ChatStream(client_request(case).get("model", CLIENT_MODEL), CREATED, include_usage(case))


def error_input(case: str) -> tuple[int, bytes]:
    status, _, body = (CASES / case / "gemini-error.txt").read_bytes().partition(b"\n")
    return int(status), body


def translate(case: str, name: str) -> str:
    raw = (CASES / case / name).read_bytes()
    if name == "openai-request.json":
        body = orjson.loads(raw)
        return rendered({"path": model_path(body["model"], bool(body.get("stream"))), "body": chat_request(body)})
    if name == "gemini-response.json":
        return rendered(chat_response(orjson.loads(raw), client_request(case).get("model", CLIENT_MODEL), CREATED))
    if name == "gemini-stream.txt":
        stream = stream_of(case)
        return (stream.feed(raw) + stream.finish()).decode()
    return rendered(orjson.loads(error_response(*error_input(case))))


@pytest.mark.parametrize("case", case_names())
def test_golden(case: str, update: bool) -> None:
    GOLDENS.check(case, translate, update)


# ---- google-genai's types, strictly


class GenerateContentRequest(pydantic.BaseModel):
    """Vertex's REST GenerateContentRequest, made of the SDK's own types (the SDK has no type for the body: it builds
    it from a GenerateContentConfig). Only the members the translation may send."""

    model_config = pydantic.ConfigDict(alias_generator=to_camel, extra="forbid")

    contents: list[genai.Content]
    system_instruction: genai.Content | None = None
    tools: list[genai.Tool] | None = None
    tool_config: genai.ToolConfig | None = None
    generation_config: genai.GenerationConfig | None = None


class GoogleStatus(TypedDict):
    code: int
    message: str
    status: Literal[
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
    ]  # google.rpc.Code but OK
    details: NotRequired[list[dict[str, Any]]]


class GoogleError(TypedDict):
    """Google's error envelope (google.rpc.Status as JSON, in `error`)."""

    error: GoogleStatus


class StrictValidator:
    """A SchemaValidator for which an unknown enum value is an error: the SDK's enums take any value with a warning."""

    def __init__(self, validator: SchemaValidator) -> None:
        self._validator = validator

    def validate_json(self, data: bytes | str) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return self._validator.validate_json(data)

    def validate_python(self, data: Any) -> Any:
        return self.validate_json(orjson.dumps(data))  # JSON, as the API reads it: bytes are base64


@functools.cache
def strict(tp: Any) -> StrictValidator:
    """`tp` made strict by testing/strict_types.py, read as the REST API's JSON. A model is validated by its fields
    alone, which also drops the SDK models' `populate_by_name`: only the camelCase names (the REST API's) are taken."""
    config: Any = {"val_json_bytes": "base64", "validate_by_name": False, "validate_by_alias": True}
    return StrictValidator(SchemaValidator(strict_schema(tp), config))


def test_strict_validation_catches_mistakes() -> None:
    good: dict[str, Any] = {
        "contents": [
            {"role": "user", "parts": [{"text": "x"}, {"inlineData": {"mimeType": "image/png", "data": "AA=="}}]}
        ],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
        "generationConfig": {"maxOutputTokens": 3},
    }
    strict(GenerateContentRequest).validate_python(good)
    mistakes = [copy.deepcopy(good) for _ in range(5)]
    mistakes[0]["contents"][0]["parts"][1] = {"inline_data": {"mimeType": "image/png", "data": "AA=="}}  # snake_case
    mistakes[1]["contents"][0]["parts"][1]["inlineData"]["data"] = "%%"  # not base64
    mistakes[2]["toolConfig"]["functionCallingConfig"]["mode"] = "SOMETIMES"  # not in the enum
    mistakes[3]["generationConfig"]["maxTokens"] = 3  # unknown
    mistakes[4]["system_instruction"] = {"parts": [{"text": "x"}]}
    for mistake in mistakes:
        with pytest.raises((pydantic.ValidationError, UserWarning)):
            strict(GenerateContentRequest).validate_python(mistake)
    response: Any = orjson.loads((CASES / "plain-chat" / "gemini-response.json").read_bytes())
    strict(genai.GenerateContentResponse).validate_python(response)
    response["candidates"][0]["content"]["parts"][0]["cache"] = True
    with pytest.raises(pydantic.ValidationError):
        strict(genai.GenerateContentResponse).validate_python(response)


def same(ours: Any, theirs: Any) -> bool:
    """Equal, where bytes (which pydantic writes back as URL-safe base64) are compared decoded."""
    if isinstance(theirs, bytes):
        return isinstance(ours, str) and base64.urlsafe_b64decode(ours.replace("+", "-").replace("/", "_")) == theirs
    if isinstance(theirs, dict):
        return isinstance(ours, dict) and ours.keys() == theirs.keys() and all(same(ours[k], theirs[k]) for k in ours)
    if isinstance(theirs, list):
        return isinstance(ours, list) and len(ours) == len(theirs) and all(map(same, ours, theirs))
    if isinstance(theirs, enum.Enum):
        return bool(ours == theirs.value)
    return bool(ours == theirs) and type(ours) is type(theirs)


@functools.cache
def vertex_client() -> BaseApiClient:
    return BaseApiClient(vertexai=True, project="my-project", location="us-central1")


def through_the_sdk(body: dict[str, Any]) -> dict[str, Any]:
    """The request as google-genai, in Vertex mode, would build it from the same contents and config: the SDK's own
    conversion refuses the members the Gemini Developer API has and Vertex has not."""
    request = GenerateContentRequest.model_validate(body)
    generation = request.generation_config.model_dump(exclude_none=True) if request.generation_config else {}
    config = genai.GenerateContentConfig(
        system_instruction=request.system_instruction,
        tools=request.tools,
        tool_config=request.tool_config,
        **generation,
    )
    parameters = genai._GenerateContentParameters(model="gemini-2.5-flash", contents=request.contents, config=config)
    converted = models._GenerateContentParameters_to_vertex(vertex_client(), parameters, None, parameters)
    # The SDK's path for the model is ours (it puts /v1/projects/{project}/locations/{region}/ before it).
    assert converted.pop("_url")["model"] + ":generateContent" == model_path("gemini-2.5-flash", False)
    return dict(_common.convert_to_dict(converted))


def openai_request_type(body: dict[str, Any]) -> Any:
    if body.get("stream"):
        return completion_create_params.CompletionCreateParamsStreaming
    return completion_create_params.CompletionCreateParamsNonStreaming


def without_extra_content(body: dict[str, Any]) -> dict[str, Any]:
    """The request without Google's extension to OpenAI's tool calls (extra_content.google.thought_signature)."""
    body = copy.deepcopy(body)
    for message in body["messages"]:
        for call in message.get("tool_calls") or []:
            call.pop("extra_content", None)
    return body


@pytest.mark.parametrize("case", case_names("openai-request.json"))
def test_requests_fit_the_sdk_types(case: str) -> None:
    body = client_request(case)
    strict(openai_request_type(body)).validate_python(without_extra_content(body))  # a real OpenAI request
    path = model_path(body["model"], bool(body.get("stream")))
    prefix, _, method = path.rpartition(":")
    assert prefix.startswith("publishers/google/models/")
    assert urllib.parse.unquote(prefix.removeprefix("publishers/google/models/")) == body["model"]
    assert method == ("streamGenerateContent?alt=sse" if body.get("stream") else "generateContent")

    request = chat_request(body)
    strict(GenerateContentRequest).validate_python(request)
    # Nothing lost or renamed on the way: the SDK's types give back the same JSON.
    dumped = GenerateContentRequest.model_validate(request).model_dump(by_alias=True, exclude_none=True)
    assert same(request, dumped)
    converted = through_the_sdk(request)
    assert set(converted) == set(request) | {"generationConfig"}
    assert set(converted["generationConfig"]) == set(request.get("generationConfig", {}))


def stream_events(case: str) -> list[Any]:
    raw = (CASES / case / "gemini-stream.txt").read_text()
    return [json.loads(block.removeprefix("data: ")) for block in raw.split("\n\n") if block]


@pytest.mark.parametrize("case", sorted(set(case_names()) - OFF_SPEC))
def test_provider_inputs_fit_the_sdk_types(case: str) -> None:
    directory = CASES / case
    if (directory / "gemini-response.json").exists():
        strict(genai.GenerateContentResponse).validate_json((directory / "gemini-response.json").read_bytes())
    if (directory / "gemini-stream.txt").exists():
        for event in stream_events(case):
            strict(GoogleError if "error" in event else genai.GenerateContentResponse).validate_python(event)
    if (directory / "gemini-error.txt").exists():
        status, body = error_input(case)
        document = json.loads(body)
        if isinstance(document, list):
            assert len(document) == 1
            document = document[0]
        strict(GoogleError).validate_python(document)
        assert document["error"]["code"] == status


def test_every_finish_reason_and_status_is_decided() -> None:
    """What the SDK and google.rpc may send is in the tables, so that an SDK update shows what is new."""
    assert set(_FINISH_REASONS) == {reason.value for reason in genai.FinishReason}
    assert set(_ERRORS) == set(code_pb2.Code.keys()) - {"OK"}
    assert set(typing.get_args(typing.get_type_hints(GoogleStatus)["status"])) == set(_ERRORS)
    covered = {
        orjson.loads((CASES / c / "gemini-response.json").read_bytes())["candidates"][0]["finishReason"]
        for c in case_names("gemini-response.json")
        if c.startswith("finish-")
    }
    assert {"MAX_TOKENS", "SAFETY", "RECITATION", "MALFORMED_FUNCTION_CALL", "LANGUAGE", "STOP"} <= covered


# ---- the OpenAI side


def openai_events(case: str) -> list[bytes]:
    return [event for event in translate(case, "gemini-stream.txt").encode().split(b"\n\n") if event]


@pytest.mark.parametrize("case", case_names())
def test_outputs_fit_the_openai_types(case: str) -> None:
    directory = CASES / case
    if (directory / "gemini-response.json").exists():
        completion = ChatCompletion.model_validate_json(translate(case, "gemini-response.json"))
        assert [choice.index for choice in completion.choices] == list(range(len(completion.choices)))
    if (directory / "gemini-error.txt").exists():
        envelope = json.loads(translate(case, "gemini-error.txt"))
        assert set(envelope) == {"error"}
        check_error_object(envelope["error"])
    if (directory / "gemini-stream.txt").exists():
        for event in openai_events(case):
            assert event == b"data: [DONE]" or event.startswith(b"data: {")
            if event.startswith(b"data: {"):
                document = json.loads(event[6:])
                if "error" in document:
                    check_error_object(document["error"])
                else:
                    ChatCompletionChunk.model_validate(document)


@pytest.mark.parametrize("case", case_names("gemini-stream.txt"))
def test_stream_shape(case: str) -> None:
    """What every OpenAI client may rely on, whatever the upstream sent."""
    events = openai_events(case)
    chunks = [json.loads(e[6:]) for e in events if e.startswith(b"data: {")]
    errors_ = [c for c in chunks if "error" in c]
    chunks = [c for c in chunks if "error" not in c]
    usage_asked = include_usage(case)
    response_id = stream_events(case)[0].get("responseId")
    started: set[int] = set()
    finished: set[int] = set()
    seen_calls: dict[int, set[int]] = {}
    for chunk in chunks:
        assert (chunk["id"], chunk["object"], chunk["created"]) == (response_id, "chat.completion.chunk", CREATED)
        assert chunk["model"] == client_request(case).get("model", CLIENT_MODEL)
        assert ("usage" in chunk) == usage_asked
        if not chunk["choices"]:
            continue
        assert not usage_asked or chunk["usage"] is None
        (choice,) = chunk["choices"]
        index = choice["index"]
        assert index not in finished, "nothing follows a choice's finish chunk"
        if index not in started:
            assert choice["delta"] == {"role": "assistant", "content": ""} and choice["finish_reason"] is None
            started.add(index)
        if choice["finish_reason"]:
            assert choice["delta"] == {}
            finished.add(index)
        for call in choice["delta"].get("tool_calls", []):
            # Gemini sends a call whole: each comes in one delta, with its id, name and arguments.
            assert call["index"] not in seen_calls.setdefault(index, set())
            seen_calls[index].add(call["index"])
            assert call["id"] == f"call_{response_id}_{index}_{call['index']}" and call["type"] == "function"
            assert isinstance(json.loads(call["function"]["arguments"]), dict) and call["function"]["name"]
    assert all(calls == set(range(len(calls))) for calls in seen_calls.values())
    if errors_:  # an error ends the answer: nothing follows but a truncation's [DONE]
        assert len(errors_) == 1 and started - finished
        after = events[[e.startswith(b'data: {"error"') for e in events].index(True) + 1 :]
        assert after in ([], [b"data: [DONE]"])
    else:
        assert events[-1] == b"data: [DONE]" and started == finished and started == set(range(len(started)))
        assert not usage_asked or (chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0)


def test_how_streams_end() -> None:
    failed = openai_events("stream-error")
    assert failed[-1].startswith(b'data: {"error":') and b"[DONE]" not in b"".join(failed)
    assert json.loads(failed[-1][6:])["error"]["code"] == "service_unavailable"
    truncated = openai_events("stream-truncated")
    assert truncated[-2].startswith(b'data: {"error":') and b'"incomplete_stream"' in truncated[-2]
    assert truncated[-1] == b"data: [DONE]"
    # The finish chunk as the finishReason comes; the usage chunk (the last usageMetadata) and [DONE] at the end.
    finish, usage = (json.loads(e[6:]) for e in openai_events("stream-include-usage")[-3:-1])
    assert (finish["choices"][0]["finish_reason"], usage["choices"], usage["usage"]["total_tokens"]) == (
        "stop",
        [],
        2855,
    )
    blocked = [json.loads(e[6:]) for e in openai_events("stream-blocked")[:-1]]
    assert [c["choices"][0]["finish_reason"] for c in blocked] == [None, "content_filter"]
    assert json.loads(openai_events("stream-max-tokens")[-2][6:])["choices"][0]["finish_reason"] == "length"


def test_a_stream_without_events_or_after_its_end() -> None:
    stream = ChatStream("m", CREATED, True)
    assert stream.feed(b"") == b"" and stream.feed(b": a comment\n\ndata: not json\n\n") == b""
    out = stream.finish()
    assert out.endswith(b"data: [DONE]\n\n") and b'"incomplete_stream"' in out
    assert stream.feed(b"data: {}\n\n") == b"" and stream.finish() == b""
    stream = stream_of("stream-error")
    assert stream.feed((CASES / "stream-error" / "gemini-stream.txt").read_bytes()).startswith(b"data: ")
    assert stream.feed((CASES / "stream-text" / "gemini-stream.txt").read_bytes()) == b"" and stream.finish() == b""


def test_multiple_candidates_stream_side_by_side() -> None:
    chunks = [json.loads(e[6:]) for e in openai_events("stream-candidates")[:-1]]
    texts: dict[int, str] = {}
    tokens: dict[int, list[str]] = {}
    finishes = []
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + (choice["delta"].get("content") or "")
            for token in (choice["logprobs"] or {}).get("content", []):
                tokens.setdefault(choice["index"], []).append(token["token"])
            if choice["finish_reason"]:
                finishes.append(choice["index"])
    assert texts == {0: "Deep blue", 1: "Red"} and tokens == {0: ["Deep", " blue"], 1: ["Red"]}
    assert finishes == [1, 0]  # each choice ends when its candidate does


# ---- streams fed in pieces

STREAMS = case_names("gemini-stream.txt")


def fed(case: str, pieces: list[bytes]) -> bytes:
    return feed(stream_of(case), pieces)


@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(STREAMS), crlf=st.booleans(), data=st.data())
def test_any_split_gives_the_same_bytes(case: str, crlf: bool, data: st.DataObject) -> None:
    raw = (CASES / case / "gemini-stream.txt").read_bytes()
    if crlf:  # CRLF line ends, as Vertex writes them, which a split may cut between \r and \n
        raw = raw.replace(b"\n", b"\r\n")
    assert fed(case, any_split(data, raw)) == translate(case, "gemini-stream.txt").encode()


@pytest.mark.parametrize("case", STREAMS)
def test_byte_by_byte(case: str) -> None:
    raw = (CASES / case / "gemini-stream.txt").read_bytes()
    assert fed(case, [raw[i : i + 1] for i in range(len(raw))]) == fed(case, [raw])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
PART_FIELDS = ["text", "thought", "functionCall", "thoughtSignature", "inlineData"]
CANDIDATE_FIELDS = ["content", "finishReason", "index", "logprobsResult", "safetyRatings"]
RESPONSE_FIELDS = ["candidates", "usageMetadata", "promptFeedback", "responseId", "error"]


@st.composite
def messy_responses(draw: st.DrawFn) -> Any:
    """GenerateContentResponses of roughly the right shape with anything in any field."""
    part = st.dictionaries(st.sampled_from(PART_FIELDS), json_values, max_size=3)
    candidate = st.dictionaries(
        st.sampled_from(CANDIDATE_FIELDS),
        json_values | st.fixed_dictionaries({"parts": st.lists(part, max_size=3)}) | st.sampled_from(["STOP", 1]),
        max_size=4,
    )
    fields = st.dictionaries(
        st.sampled_from(RESPONSE_FIELDS), json_values | st.lists(candidate, max_size=3), max_size=3
    )
    return draw(json_values | fields)


@settings(max_examples=300, deadline=None)
@given(events=st.lists(messy_responses(), max_size=6), usage=st.booleans())
def test_any_events_give_a_well_formed_stream(events: list[Any], usage: bool) -> None:
    """Events of any shape: a stream that ends once, never a crash."""
    stream = ChatStream("m", CREATED, usage)
    out = stream.feed(b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)) + stream.finish()
    endings = [e for e in out.split(b"\n\n") if e.startswith(b'data: {"error"') or e == b"data: [DONE]"]
    failed = [e for e in endings if e != b"data: [DONE]"]
    assert endings and endings in ([b"data: [DONE]"], failed, [*failed, b"data: [DONE]"]) and len(failed) <= 1
    assert out.endswith(endings[-1] + b"\n\n")
    for document in (json.loads(e[6:]) for e in out.split(b"\n\n") if e.startswith(b"data: {")):
        if "error" not in document:
            ChatCompletionChunk.model_validate(document)


@settings(max_examples=300, deadline=None)
@given(response=messy_responses())
def test_any_response_gives_a_completion(response: Any) -> None:
    if isinstance(response, dict):
        ChatCompletion.model_validate(chat_response(response, "m", CREATED))


# ---- the openai SDK reading what the gateway answers


def test_sdk_assembles_streamed_tool_calls() -> None:
    body = translate("stream-tool-calls", "gemini-stream.txt").encode()
    text, finish, calls = sdk_tool_calls(body, CLIENT_MODEL)
    assert text == "Checking both." and finish == "tool_calls"
    assert [json.loads(calls[i]["arguments"]) for i in (0, 1)] == [
        {"city": "Paris", "unit": "c"},
        {"city": "Oslo", "unit": "c"},
    ]
    assert [calls[i]["id"] for i in (0, 1)] == ["call_sTrEaM0000000000000001_0_0", "call_sTrEaM0000000000000001_0_1"]
    signature = stream_events("stream-tool-calls")[1]["candidates"][0]["content"]["parts"][0]["thoughtSignature"]
    assert [calls[i]["extra"] for i in (0, 1)] == [{"extra_content": {"google": {"thought_signature": signature}}}, {}]


def test_sdk_reads_several_choices_and_logprobs() -> None:
    body = translate("candidates-logprobs", "gemini-response.json").encode()
    completion = openai_client(200, body, "application/json").chat.completions.create(model="m", messages=ASK, n=2)
    assert [(c.index, c.message.content, c.finish_reason) for c in completion.choices] == [
        (0, "Yes", "stop"),
        (1, "Não", "stop"),
    ]
    logprobs = completion.choices[1].logprobs
    assert logprobs is not None and logprobs.content is not None
    (token,) = logprobs.content
    assert (token.token, token.logprob, bytes(token.bytes or []).decode()) == ("Não", -2.9, "Não")
    assert [(t.token, t.logprob) for t in token.top_logprobs] == [("Yes", -0.05), ("Não", -2.9)]

    client = openai_client(200, translate("stream-candidates", "gemini-stream.txt").encode(), "text/event-stream")
    texts: dict[int, str] = {}
    for chunk in client.chat.completions.create(model="m", messages=ASK, n=2, stream=True):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert texts == {0: "Deep blue", 1: "Red"}


@pytest.mark.parametrize("case", ["stream-error", "stream-truncated"])
def test_sdk_raises_on_a_failed_stream(case: str) -> None:
    message = sdk_stream_error(translate(case, "gemini-stream.txt").encode(), CLIENT_MODEL).message
    assert message.startswith(("The model is overloaded", "the upstream stream ended"))


def test_sdk_reads_usage_and_reasoning() -> None:
    body = translate("stream-include-usage", "gemini-stream.txt").encode()
    chunks = list(
        openai_client(200, body, "text/event-stream").chat.completions.create(model="m", messages=ASK, stream=True)
    )
    reasoning = reasoning_of(chunks)
    assert reasoning == "**Defining primes**\nA prime has exactly two divisors. 1 has one."
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens_details and usage.completion_tokens_details
    assert (
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.prompt_tokens_details.cached_tokens,
        usage.completion_tokens_details.reasoning_tokens,
    ) == (2544, 311, 2048, 302)

    body = translate("finish-tool-calls", "gemini-response.json").encode()
    completion = openai_client(200, body, "application/json").chat.completions.create(model="m", messages=ASK)
    message = completion.choices[0].message
    assert message.content == "Checking both."
    assert (message.model_extra or {})["reasoning_content"] == "**Planning**\nTwo cities: two calls."
    assert [c.id for c in message.tool_calls or []] == [f"call_tOoLcAlLs00000000001_0_{k}" for k in range(3)]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert (completion.usage and completion.usage.completion_tokens) == 125

    body = translate("usage-thoughts-cache", "gemini-response.json").encode()
    completion = openai_client(200, body, "application/json").chat.completions.create(model="m", messages=ASK)
    assert completion.service_tier == "flex"


def test_thought_signatures_go_round_trip() -> None:
    """The client sends the assistant message back as the SDK gave it: the signature reaches Gemini again."""
    body = translate("finish-tool-calls", "gemini-response.json").encode()
    completion = openai_client(200, body, "application/json").chat.completions.create(model="m", messages=ASK)
    message = completion.choices[0].message.model_dump(exclude_none=True)
    results = [{"role": "tool", "tool_call_id": call["id"], "content": "ok"} for call in message["tool_calls"]]
    request = chat_request({"model": "m", "messages": [*ASK, message, *results]})
    strict(GenerateContentRequest).validate_python(request)
    model_turn, results_turn = request["contents"][1:]
    response = orjson.loads((CASES / "finish-tool-calls" / "gemini-response.json").read_bytes())
    signature = response["candidates"][0]["content"]["parts"][2]["thoughtSignature"]
    # The reasoning_content the message carries is not sent back: Gemini takes no thoughts as input.
    assert model_turn["parts"] == [
        {"text": "Checking both."},
        {
            "functionCall": {"name": "get_weather", "args": {"city": "Paris", "unit": "c"}},
            "thoughtSignature": signature,
        },
        {"functionCall": {"name": "get_weather", "args": {"city": "Oslo", "unit": "c"}}},
        {"functionCall": {"name": "get_time", "args": {}}},
    ]
    assert [p["functionResponse"]["name"] for p in results_turn["parts"]] == ["get_weather", "get_weather", "get_time"]


@pytest.mark.parametrize(
    ("case", "exception", "code"),
    [
        ("error-invalid-argument", openai.BadRequestError, "invalid_request_error"),
        ("error-unauthenticated", openai.AuthenticationError, "invalid_api_key"),
        ("error-permission-denied", openai.PermissionDeniedError, "permission_denied"),
        ("error-model-not-found", openai.NotFoundError, "model_not_found"),
        ("error-resource-exhausted", openai.RateLimitError, "rate_limit_exceeded"),
        ("error-array", openai.RateLimitError, "rate_limit_exceeded"),
        ("error-unavailable", openai.InternalServerError, "service_unavailable"),
        ("error-html", openai.NotFoundError, "not_found"),
    ],
)
def test_sdk_reads_error_envelopes(case: str, exception: type[openai.APIStatusError], code: str) -> None:
    status, _ = error_input(case)
    client = openai_client(status, translate(case, "gemini-error.txt").encode(), "application/json")
    with pytest.raises(exception) as raised:
        client.chat.completions.create(model=CLIENT_MODEL, messages=ASK)
    assert (raised.value.status_code, raised.value.code) == (status, code)


# ---- requests Gemini cannot honour


REQUESTS = Requests(CLIENT_MODEL, "call_1")
body_with, calls_f, part, image = REQUESTS.body_with, REQUESTS.calls_f, REQUESTS.part, REQUESTS.image


IMAGE_URL = "messages[0].content[0].image_url.url"
TOOL_HISTORY = [ASKED_F, calls_f("{}")["messages"][1], {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]
SIGNATURE = "messages[1].tool_calls[0].extra_content"
REJECTED: list[tuple[str, dict[str, Any], str, str]] = [
    *REQUESTS.rejected_by_all(),
    ("n zero", body_with(n=0), "n", "invalid_value"),
    ("n type", body_with(n=True), "n", "invalid_value"),
    ("seed type", body_with(seed=1.5), "seed", "invalid_value"),
    ("seed 64-bit", body_with(seed=2**31), "seed", "unsupported_value"),
    ("presence_penalty", body_with(presence_penalty=2.5), "presence_penalty", "invalid_value"),
    ("frequency_penalty", body_with(frequency_penalty="high"), "frequency_penalty", "invalid_value"),
    ("logprobs type", body_with(logprobs="yes"), "logprobs", "invalid_value"),
    ("top_logprobs alone", body_with(top_logprobs=3), "top_logprobs", "invalid_value"),
    ("top_logprobs > 20", body_with(logprobs=True, top_logprobs=21), "top_logprobs", "invalid_value"),
    ("temperature>2", body_with(temperature=2.5), "temperature", "invalid_value"),
    ("top_p>1", body_with(top_p=1.5), "top_p", "invalid_value"),
    ("empty stop", body_with(stop=["a", ""]), "stop[1]", "invalid_value"),
    ("unknown format", body_with(response_format={"type": "xml"}), "response_format.type", "invalid_value"),
    ("effort xhigh", body_with(reasoning_effort="xhigh"), "reasoning_effort", "unsupported_value"),
    ("effort max", body_with(reasoning_effort="max"), "reasoning_effort", "unsupported_value"),
    ("effort unknown", body_with(reasoning_effort="extreme"), "reasoning_effort", "invalid_value"),
    ("messages type", body_with(messages={"role": "user"}), "messages", "invalid_value"),
    ("empty turns only", body_with(messages=[{"role": "user", "content": ""}]), "messages", "invalid_value"),
    (
        "system image",
        part([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}], "system"),
        "messages[0].content[0].type",
        "invalid_value",
    ),
    (
        "assistant audio part",
        part([{"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}], "assistant"),
        "messages[0].content[0].type",
        "invalid_value",
    ),
    (
        "audio format",
        part([{"type": "input_audio", "input_audio": {"data": "AA==", "format": "flac"}}]),
        "messages[0].content[0].input_audio.format",
        "invalid_value",
    ),
    (
        "audio without data",
        part([{"type": "input_audio", "input_audio": {"data": "", "format": "mp3"}}]),
        "messages[0].content[0].input_audio.data",
        "invalid_value",
    ),
    (
        "file id",
        part([{"type": "file", "file": {"file_id": "file-1"}}]),
        "messages[0].content[0].file.file_data",
        "unsupported_value",
    ),
    (
        "file not a data URI",
        part([{"type": "file", "file": {"file_data": "JVBERi0="}}]),
        "messages[0].content[0].file.file_data",
        "invalid_value",
    ),
    (
        "file type",
        part([{"type": "file", "file": {"file_data": "data:application/zip;base64,UEsDBA=="}}]),
        "messages[0].content[0].file.file_data",
        "unsupported_value",
    ),
    ("gs image", image("gs://bucket/cat.png"), IMAGE_URL, "unsupported_value"),
    ("ftp image", image("ftp://example.org/cat.png"), IMAGE_URL, "unsupported_value"),
    ("unknown extension", image("https://example.org/cat"), IMAGE_URL, "unsupported_value"),
    ("gif", image("https://example.org/cat.gif"), IMAGE_URL, "unsupported_value"),
    ("svg", image("data:image/svg+xml;base64,PHN2Zz4="), IMAGE_URL, "unsupported_value"),
    ("not base64", image("data:image/png,%89PNG"), IMAGE_URL, "invalid_value"),
    ("no data", image("data:image/png;base64,"), IMAGE_URL, "invalid_value"),
    (
        "image_url type",
        part([{"type": "image_url", "image_url": "x"}]),
        "messages[0].content[0].image_url",
        "invalid_value",
    ),
    (
        "signature type",
        calls_f("{}", extra_content={"google": {"thought_signature": 7}}),
        f"{SIGNATURE}.google.thought_signature",
        "invalid_value",
    ),
    ("extra_content type", calls_f("{}", extra_content=[]), SIGNATURE, "invalid_value"),
    (
        "unknown tool_call_id",
        body_with(messages=[*TOOL_HISTORY, {"role": "tool", "tool_call_id": "call_2", "content": "1"}]),
        "messages[3].tool_call_id",
        "invalid_value",
    ),
    (
        "tool result before its call",
        body_with(messages=[ASKED_F, TOOL_HISTORY[2], TOOL_HISTORY[1]]),
        "messages[1].tool_call_id",
        "invalid_value",
    ),
    (
        "tool image",
        body_with(messages=[*TOOL_HISTORY[:2], {**TOOL_HISTORY[2], "content": [{"type": "image_url"}]}]),
        "messages[2].content[0].type",
        "invalid_value",
    ),
    (
        "tool parameters",
        body_with(tools=[{"type": "function", "function": {"name": "f", "parameters": "{}"}}]),
        "tools[0].function.parameters",
        "invalid_value",
    ),
    (
        "named without tools",
        body_with(tool_choice={"type": "function", "function": {"name": "f"}}),
        "tool_choice",
        "invalid_value",
    ),
    (
        "named unknown tool",
        body_with(tools=[FUNCTION], tool_choice={"type": "function", "function": {"name": "g"}}),
        "tool_choice.function.name",
        "invalid_value",
    ),
    ("unknown tool_choice", body_with(tools=[FUNCTION], tool_choice="sometimes"), "tool_choice", "unsupported_value"),
    (
        "allowed mode",
        body_with(tools=[FUNCTION], tool_choice={"type": "allowed_tools", "allowed_tools": {"mode": "none"}}),
        "tool_choice.allowed_tools.mode",
        "invalid_value",
    ),
    (
        "no parallel calls",
        body_with(tools=[FUNCTION], parallel_tool_calls=False),
        "parallel_tool_calls",
        "unsupported_value",
    ),
    ("parallel type", body_with(tools=[FUNCTION], parallel_tool_calls="no"), "parallel_tool_calls", "invalid_value"),
]


@pytest.mark.parametrize(("body", "param", "code"), [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED])
def test_rejected(body: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(RequestRejected) as raised:
        chat_request(body)
    check_rejected(raised.value, param, code)
    assert "Anthropic" not in raised.value.message and "Converse" not in raised.value.message


def test_one_rejection_for_every_schema() -> None:
    """The caller catches one class, whichever provider's schema raised it."""
    assert RequestRejected is common.RequestRejected is bedrock.RequestRejected
    with pytest.raises(RequestRejected) as raised:
        chat_request(body_with(logit_bias={"1": 1}))
    assert raised.value.message == "logit_bias: Gemini has no token biasing"


MESSAGE_KEYS = ["role", "content", "tool_calls", "tool_call_id", "refusal", "name", "audio", "function_call"]
PART_KEYS = ["type", "text", "image_url", "input_audio", "file", "refusal", "prompt_cache_breakpoint"]


@st.composite
def messy_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Requests of roughly the right shape with anything in any field: what a careless client may send."""
    part = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "input_audio", "refusal", "file"])})
    parts = st.lists(
        st.tuples(part, st.dictionaries(st.sampled_from(PART_KEYS), json_values, max_size=3)).map(
            lambda pair: {**pair[0], **pair[1]}
        ),
        max_size=3,
    )
    message = st.tuples(
        st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user", "assistant", "tool"])}),
        st.dictionaries(st.sampled_from(MESSAGE_KEYS), json_values | parts, max_size=4),
    ).map(lambda pair: {**pair[0], **pair[1]})
    body = body_with(messages=draw(st.lists(message, min_size=1, max_size=4)))
    fields = sorted(completion_create_params.CompletionCreateParamsStreaming.__annotations__)
    body.update(draw(st.dictionaries(st.sampled_from(fields), json_values, max_size=3)))
    return body


@settings(max_examples=500, deadline=None)
@given(body=messy_requests())
def test_any_request_is_translated_or_rejected(body: dict[str, Any]) -> None:
    try:
        request = chat_request(body)
    except RequestRejected as rejected:
        assert rejected.param and rejected.message.startswith(rejected.param)
    else:
        assert request["contents"] and all(turn["parts"] for turn in request["contents"])
        roles = [turn["role"] for turn in request["contents"]]
        assert all(a != b for a, b in itertools.pairwise(roles))


def test_unknown_fields_are_all_named() -> None:
    with pytest.raises(RequestRejected) as raised:
        chat_request(body_with(top_k=5, thinking={"type": "enabled"}))
    assert raised.value.message == "thinking, top_k: unknown parameters"


def test_rejection_never_quotes_request_content() -> None:
    with pytest.raises(RequestRejected) as raised:
        chat_request(calls_f('{"secret": "hunter2"'))
    assert "hunter2" not in raised.value.message
    for url in ("https://example.org/hunter2", "gs://hunter2/cat.png"):
        with pytest.raises(RequestRejected) as raised:
            chat_request(image(url))
        assert "hunter2" not in raised.value.message


# ---- the rest of the request mapping


@pytest.mark.parametrize("field", sorted(completion_create_params.CompletionCreateParamsStreaming.__annotations__))
def test_every_openai_field_is_decided(field: str) -> None:
    """Each field of OpenAI's request type is mapped, dropped on purpose or rejected; `null` always passes."""
    if field not in ("model", "messages"):
        assert chat_request(body_with(**{field: None})) == chat_request(body_with())


def test_dropped_fields_are_openai_fields() -> None:
    assert set(DROPPED_FIELDS) <= set(completion_create_params.CompletionCreateParamsBase.__annotations__)


@pytest.mark.parametrize(
    ("model", "stream", "path"),
    [
        ("gemini-2.5-flash", False, "publishers/google/models/gemini-2.5-flash:generateContent"),
        ("gemini-2.0-flash-001", True, "publishers/google/models/gemini-2.0-flash-001:streamGenerateContent?alt=sse"),
        ("google/gemini-x:predict", False, "publishers/google/models/google%2Fgemini-x%3Apredict:generateContent"),
        ("my model?#%@", True, "publishers/google/models/my%20model%3F%23%25%40:streamGenerateContent?alt=sse"),
    ],
)
def test_model_path(model: str, stream: bool, path: str) -> None:
    assert model_path(model, stream) == path


def test_model_path_needs_a_model() -> None:
    with pytest.raises(RequestRejected) as raised:
        model_path("", False)
    assert raised.value.param == "model"


def test_sampling_defaults_and_limits() -> None:
    config = chat_request(body_with(max_tokens=10, temperature=2, top_p=0, stop="END", seed=-(2**31)))
    assert config["generationConfig"] == {
        "temperature": 2,
        "topP": 0,
        "maxOutputTokens": 10,
        "stopSequences": ["END"],
        "seed": -(2**31),
    }
    # Defaults are not sent: no penalty, one candidate, no log probabilities, any stop, the model's own limit.
    plain = chat_request(body_with())
    assert plain == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    assert chat_request(body_with(n=1, presence_penalty=0, frequency_penalty=0.0, logprobs=False, stop=[])) == plain
    assert chat_request(body_with(logprobs=True, top_logprobs=0))["generationConfig"] == {"responseLogprobs": True}
    assert chat_request(body_with(stream=True, stream_options={"include_usage": True})) == plain


def test_gcs_uris_when_allowed() -> None:
    request = chat_request(image("gs://my-bucket/scans/page.PDF"), gcs_uris=True)
    assert request["contents"][0]["parts"] == [
        {"fileData": {"mimeType": "application/pdf", "fileUri": "gs://my-bucket/scans/page.PDF"}}
    ]
    with pytest.raises(RequestRejected):
        chat_request(image("gs://my-bucket/scans/page"), gcs_uris=True)


def test_tool_results_merge_with_the_user_turn() -> None:
    body = body_with(messages=[*TOOL_HISTORY, {"role": "user", "content": "and?"}], tools=[FUNCTION])
    contents = chat_request(body)["contents"]
    assert [turn["role"] for turn in contents] == ["user", "model", "user"]
    assert contents[1]["parts"] == [{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": SKIP_SIGNATURE}]
    assert contents[2]["parts"] == [
        {"functionResponse": {"name": "f", "response": {"output": "ok"}}},
        {"text": "and?"},
    ]


def test_tool_choice_none_auto_and_parallel_calls() -> None:
    assert chat_request(body_with(tools=[FUNCTION], tool_choice="none", parallel_tool_calls=False))["toolConfig"] == {
        "functionCallingConfig": {"mode": "NONE"}
    }
    assert "tools" not in chat_request(body_with(tool_choice="auto", parallel_tool_calls=False))
    assert chat_request(body_with(tools=[FUNCTION], tool_choice="auto"))["toolConfig"] == {
        "functionCallingConfig": {"mode": "AUTO"}
    }
    allowed = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [FUNCTION]}}
    assert chat_request(body_with(tools=[FUNCTION], tool_choice=allowed))["toolConfig"] == {
        "functionCallingConfig": {"mode": "AUTO"}
    }
    assert "toolConfig" not in chat_request(body_with(tools=[FUNCTION], parallel_tool_calls=True))


@pytest.mark.parametrize(
    ("effort", "thinking"),
    [
        ("none", {"thinkingBudget": 0}),
        ("minimal", {"thinkingBudget": 512, "includeThoughts": True}),
        ("low", {"thinkingBudget": 1024, "includeThoughts": True}),
        ("medium", {"thinkingBudget": 8192, "includeThoughts": True}),
        ("high", {"thinkingBudget": 24576, "includeThoughts": True}),
    ],
)
def test_reasoning_effort(effort: str, thinking: dict[str, Any]) -> None:
    assert chat_request(body_with(reasoning_effort=effort))["generationConfig"] == {"thinkingConfig": thinking}


@pytest.mark.parametrize("case", case_names("openai-request.json"))
def test_the_request_is_not_changed(case: str) -> None:
    body = client_request(case)
    before = copy.deepcopy(body)
    chat_request(body)
    assert body == before


# ---- answers


def test_a_call_without_a_response_id() -> None:
    response = {"candidates": [{"content": {"parts": [{"functionCall": {"name": "f"}}]}, "finishReason": "STOP"}]}
    completion = chat_response(response, "m", CREATED)
    assert completion["id"] == "" and completion["choices"][0]["message"]["tool_calls"] == [
        {"id": "call_0_0", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]
    assert completion["usage"] == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_finish_reasons() -> None:
    def finish(reason: Any, call: bool = False) -> str:
        parts = [{"functionCall": {"name": "f", "args": {}}}] if call else [{"text": "x"}]
        response = {"candidates": [{"content": {"parts": parts}, "finishReason": reason}]}
        return str(chat_response(response, "m", CREATED)["choices"][0]["finish_reason"])

    assert [finish(r) for r in ("STOP", "MAX_TOKENS", "SPII", "MODEL_ARMOR", "OTHER", None, 3)] == [
        "stop",
        "length",
        "content_filter",
        "content_filter",
        "stop",
        "stop",
        "stop",
    ]
    assert [finish(r, call=True) for r in ("STOP", "MAX_TOKENS", "SAFETY")] == [
        "tool_calls",
        "length",
        "content_filter",
    ]


# ---- errors


def envelope_of(status: int, body: bytes) -> dict[str, Any]:
    return dict(orjson.loads(error_response(status, body))["error"])


def test_non_json_error_keeps_a_bounded_prefix() -> None:
    for text in ("x" * 10_000, "é" * 300 + "tail", "<html>" + "☕" * 1000):
        message = envelope_of(502, text.encode())["message"]
        assert len(message) <= 256 and text.startswith(message.removesuffix("..."))
    assert envelope_of(503, b"\xff\xfe not utf-8")["message"].endswith("not utf-8")
    assert envelope_of(500, b'{"error": {"message": ""}}')["message"] == '{"error": {"message": ""}}'
    assert envelope_of(500, b"[1, 2]")["message"] == "[1, 2]"


# google.rpc.Code -> its HTTP status (google/rpc/code.proto)
HTTP_OF_CODE = {
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
}


def test_every_status_keeps_the_meaning_of_its_http_status() -> None:
    assert set(HTTP_OF_CODE) == set(_ERRORS) and set(_STATUS_OF_HTTP.values()) <= set(_ERRORS)
    for name, status in HTTP_OF_CODE.items():
        body = orjson.dumps({"error": {"code": status, "message": "m", "status": name}})
        by_name = envelope_of(status, body)
        by_status = envelope_of(status, b"{}")
        assert by_name["type"] == by_status["type"], name
        assert by_name["message"] == "m" and by_name["param"] is None


@pytest.mark.parametrize(
    ("status", "name", "kind", "code"),
    [
        (400, "INVALID_ARGUMENT", "invalid_request_error", "invalid_request_error"),
        (400, "FAILED_PRECONDITION", "invalid_request_error", "failed_precondition"),
        (401, "UNAUTHENTICATED", "authentication_error", "invalid_api_key"),
        (403, "PERMISSION_DENIED", "permission_error", "permission_denied"),
        (404, "NOT_FOUND", "invalid_request_error", "not_found"),
        (429, "RESOURCE_EXHAUSTED", "rate_limit_error", "rate_limit_exceeded"),
        (499, "CANCELLED", "server_error", "cancelled"),
        (500, "INTERNAL", "server_error", "internal_error"),
        (503, "UNAVAILABLE", "server_error", "service_unavailable"),
        (504, "DEADLINE_EXCEEDED", "server_error", "timeout"),
        (418, None, "invalid_request_error", "invalid_request_error"),
        (599, None, "server_error", "internal_error"),
        (429, "NEW_STATUS", "rate_limit_error", "rate_limit_exceeded"),
    ],
)
def test_error_table(status: int, name: str | None, kind: str, code: str) -> None:
    error = envelope_of(status, orjson.dumps({"error": {"code": status, "message": "m", "status": name}}))
    assert (error["message"], error["type"], error["code"], error["param"]) == ("m", kind, code, None)
