"""Claude on Vertex AI and on Bedrock's InvokeModel (xds_server.extproc.schemas.claude_clouds).

Golden cases: every directory of testdata/providers/claude-clouds/ is a case holding one or more inputs, each with its
outputs:

    openai-request.json  -> vertex-request.json   vertex_path and vertex_request: {"path", "body"}
                         -> bedrock-request.json  bedrock_invoke_path and bedrock_request: {"path", "body"}
    bedrock-stream.jsonl -> openai-stream.txt     BedrockClaudeStream, fed whole (include_usage: the case's request's)
    vertex-error.txt     -> openai-error.json     vertex_error_response (the HTTP status on the first line, the body
                                                  after it)

A Bedrock stream is written as its messages, one JSON line each: {"chunk": <Anthropic event>, "p": <padding>?} is a
`chunk` event carrying the event in base64 `bytes`, as Bedrock sends it; {"headers": {...}, "payload": {...}} any other
message; {"cut": n} drops the last n bytes so far, {"flip": n} corrupts the byte n from the end. Besides, every stream
of testdata/providers/anthropic/ is wrapped into chunk events and must give exactly that case's OpenAI stream: the
translation is anthropic.ChatStream's.

`python -m pytest tests/test_schema_claude_clouds.py --update-golden` rewrites the outputs; review the diff. The
translated requests are checked against the Anthropic SDK's request types made strict (no `model`, the cloud's
`anthropic_version`), and against the contract the simulators enforce; the inputs against the SDK's event types and
botocore's service model.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session  # type: ignore[import-untyped]
import openai
import orjson
import pydantic
import pytest
from anthropic.types import RawMessageStreamEvent, message_create_params
from anthropic.types.shared.error_response import ErrorResponse
from botocore.eventstream import EventStreamBuffer  # type: ignore[import-untyped]
from botocore.parsers import EventStreamJSONParser  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionChunk, completion_create_params
from pydantic_core import SchemaValidator

from testing.providers import anthropic_contract
from testing.schema_goldens import (
    ASK,
    Goldens,
    any_split,
    check_error_object,
    check_stream_end,
    feed,
    include_usage,
    openai_client,
    reasoning_of,
    rendered,
    sdk_stream_error,
)
from testing.strict_types import strict, strict_schema
from xds_server.extproc.schemas import anthropic, bedrock
from xds_server.extproc.schemas.claude_clouds import (
    BEDROCK_ANTHROPIC_VERSION,
    VERTEX_ANTHROPIC_VERSION,
    BedrockClaudeStream,
    RequestRejected,
    bedrock_invoke_path,
    bedrock_request,
    vertex_error_response,
    vertex_path,
    vertex_request,
)
from xds_server.extproc.schemas.eventstream import encode

CASES = Path(__file__).resolve().parent.parent / "testdata" / "providers" / "claude-clouds"
ANTHROPIC_CASES = CASES.parent / "anthropic"
CLIENT_MODEL = (
    "anthropic.claude-sonnet-4-5-20250929-v1:0"  # the model the client asked for, when the case has no request
)
# The Anthropic cases' client model (when the case has no request) and `created`: the values their goldens in
# testdata/providers/anthropic/ were written with (by test_schema_anthropic), which the wrapped streams must give.
ANTHROPIC_CLIENT_MODEL = "claude-sonnet-4-5"
CREATED = 1767225600
OUTPUTS = {
    "openai-request.json": ("vertex-request.json", "bedrock-request.json"),
    "bedrock-stream.jsonl": ("openai-stream.txt",),
    "vertex-error.txt": ("openai-error.json",),
}
# Inputs deliberately outside the documented shapes: what is newer, or not the provider's own, must still translate.
OFF_SPEC = {"vertex-error-html", "vertex-error-unknown-status"}
CHUNK = {":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"}
SERVICE = botocore.session.get_session().get_service_model("bedrock-runtime")
RESPONSE_STREAM = SERVICE.operation_model("InvokeModelWithResponseStream").output_shape.members["body"]


GOLDENS = Goldens(CASES, OUTPUTS)
ANTHROPIC_GOLDENS = Goldens(ANTHROPIC_CASES, {})
case_names = GOLDENS.names
client_request = GOLDENS.client_request


# ---- Bedrock streams: written as lines here, or wrapped from the Anthropic cases


def chunk_frame(event: Any, padding: str | None = None) -> bytes:
    payload = {"bytes": base64.b64encode(orjson.dumps(event)).decode()}
    if padding is not None:
        payload["p"] = padding  # Bedrock's padding against a length side channel
    return encode(CHUNK, orjson.dumps(payload))


def stream_lines(case: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (CASES / case / "bedrock-stream.jsonl").read_text().splitlines()]


def stream_bytes(case: str) -> bytes:
    out = bytearray()
    for item in stream_lines(case):
        if "cut" in item:
            del out[-item["cut"] :]
        elif "flip" in item:
            out[-item["flip"]] ^= 0x01
        elif "chunk" in item:
            out += chunk_frame(item["chunk"], item.get("p"))
        else:
            out += encode(item["headers"], orjson.dumps(item["payload"]))
    return bytes(out)


def anthropic_events(case: str) -> Iterator[Any]:
    """The events of an Anthropic case's stream, in order (all complete ones, as Bedrock would wrap them)."""
    for block in (ANTHROPIC_CASES / case / "anthropic-stream.txt").read_text().split("\n\n"):
        data = [line[6:] for line in block.splitlines() if line.startswith("data: ")]
        if data:
            yield json.loads("\n".join(data))


def wrapped(case: str) -> bytes:
    return b"".join(chunk_frame(event) for event in anthropic_events(case))


# (where, case): every stream input, ours and the Anthropic cases wrapped.
STREAMS = [("clouds", c) for c in case_names("bedrock-stream.jsonl")] + [
    ("anthropic", c) for c in ANTHROPIC_GOLDENS.names("anthropic-stream.txt")
]


def stream_input(where: str, case: str) -> tuple[bytes, BedrockClaudeStream]:
    if where == "clouds":
        request = client_request(case)
        raw = stream_bytes(case)
    else:
        request = {"model": ANTHROPIC_CLIENT_MODEL, **ANTHROPIC_GOLDENS.client_request(case)}
        raw = wrapped(case)
    return raw, BedrockClaudeStream(request.get("model", CLIENT_MODEL), CREATED, include_usage(request))


def fed(where: str, case: str, pieces: list[bytes] | None = None) -> bytes:
    raw, stream = stream_input(where, case)
    return feed(stream, [raw] if pieces is None else pieces)


# ---- golden cases


def translate(case: str, name: str) -> dict[str, str]:
    raw = (CASES / case / name).read_bytes()
    if name == "openai-request.json":
        body = orjson.loads(raw)
        stream = bool(body.get("stream"))
        vertex = {"path": vertex_path(body["model"], stream), "body": vertex_request(body, None)}
        invoke = {"path": bedrock_invoke_path(body["model"], stream), "body": bedrock_request(body, None)}
        return {"vertex-request.json": rendered(vertex), "bedrock-request.json": rendered(invoke)}
    if name == "bedrock-stream.jsonl":
        return {"openai-stream.txt": fed("clouds", case).decode()}
    status, _, body = raw.partition(b"\n")
    return {"openai-error.json": rendered(orjson.loads(vertex_error_response(int(status), body)))}


@pytest.mark.parametrize("case", case_names())
def test_golden(case: str, update: bool) -> None:
    GOLDENS.check(case, translate, update)


@pytest.mark.parametrize("case", ANTHROPIC_GOLDENS.names("anthropic-stream.txt"))
def test_bedrock_gives_the_anthropic_cases_own_streams(case: str) -> None:
    """Wrapped in Bedrock's chunk events, each Anthropic stream gives exactly what it gives from api.anthropic.com
    (whose goldens are in testdata/providers/anthropic/)."""
    assert fed("anthropic", case).decode() == (ANTHROPIC_CASES / case / "openai-stream.txt").read_text()


# ---- requests, against the SDK's types made strict for each cloud


@functools.cache
def cloud_validator(streaming: bool, version: str) -> SchemaValidator:
    """The SDK's request type as each cloud takes it: strict as testing/strict_types.py makes it, without `model` (so
    that sending one fails), with `anthropic_version` required, and for Bedrock without `stream`."""
    tp = message_create_params.MessageCreateParamsStreaming
    if not streaming:
        tp = message_create_params.MessageCreateParamsNonStreaming  # type: ignore[assignment]
    schema = strict_schema(tp)
    top = schema["schema"] if schema["type"] == "definitions" else schema
    assert top["type"] == "typed-dict" and top["extra_behavior"] == "forbid"
    fields = top["fields"]
    del fields["model"]
    if version == BEDROCK_ANTHROPIC_VERSION:
        del fields["stream"]
    version_schema = {"type": "literal", "expected": [version]}
    fields["anthropic_version"] = {"type": "typed-dict-field", "schema": version_schema, "required": True}
    return SchemaValidator(schema)


def test_the_cloud_validators_catch_mistakes() -> None:
    good: Any = {
        "anthropic_version": VERTEX_ANTHROPIC_VERSION,
        "max_tokens": 1,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
    }
    cloud_validator(False, VERTEX_ANTHROPIC_VERSION).validate_python(good)
    cloud_validator(True, VERTEX_ANTHROPIC_VERSION).validate_python({**good, "stream": True})
    bedrock_body = {**good, "anthropic_version": BEDROCK_ANTHROPIC_VERSION}
    cloud_validator(False, BEDROCK_ANTHROPIC_VERSION).validate_python(bedrock_body)
    mistakes = [
        (False, VERTEX_ANTHROPIC_VERSION, {**good, "model": "claude-x"}),
        (False, VERTEX_ANTHROPIC_VERSION, {key: value for key, value in good.items() if key != "anthropic_version"}),
        (False, VERTEX_ANTHROPIC_VERSION, {**good, "anthropic_version": BEDROCK_ANTHROPIC_VERSION}),
        (True, VERTEX_ANTHROPIC_VERSION, good),  # streamRawPredict without stream: true
        (False, BEDROCK_ANTHROPIC_VERSION, {**bedrock_body, "stream": False}),
        (False, BEDROCK_ANTHROPIC_VERSION, {**bedrock_body, "messages": [{"role": "user", "content": [{"x": 1}]}]}),
    ]
    for streaming, version, body in mistakes:
        with pytest.raises(pydantic.ValidationError):
            cloud_validator(streaming, version).validate_python(body)


# Every request input: ours, and the Anthropic cases'.
REQUESTS = [(CASES, c) for c in case_names("openai-request.json")] + [
    (ANTHROPIC_CASES, c) for c in ANTHROPIC_GOLDENS.names("openai-request.json")
]


def has_url_media(body: dict[str, Any]) -> bool:
    return any(
        part.get("type") == "image_url" and not part["image_url"]["url"].startswith("data:")
        for message in body["messages"]
        if isinstance(message.get("content"), list)
        for part in message["content"]
    )


@pytest.mark.parametrize(("cases", "case"), REQUESTS, ids=[f"{c.name}/{n}" for c, n in REQUESTS])
def test_requests_fit_the_sdk_types(cases: Path, case: str) -> None:
    body = Goldens(cases, {}).client_request(case)
    openai_type = completion_create_params.CompletionCreateParamsStreaming
    if not body.get("stream"):
        openai_type = completion_create_params.CompletionCreateParamsNonStreaming  # type: ignore[assignment]
    strict(openai_type).validate_python(body)  # the input is a real OpenAI request
    if has_url_media(body):  # neither cloud fetches URLs
        for translate_request in (vertex_request, bedrock_request):
            with pytest.raises(RequestRejected) as raised:
                translate_request(body, None)
            assert raised.value.code == "unsupported_value" and str(raised.value.param).endswith(".image_url.url")
        return
    streaming = bool(body.get("stream"))
    first_party = anthropic.chat_request(body, "claude-x")
    del first_party["model"]
    vertex = vertex_request(body, None)
    invoke = bedrock_request(body, None)
    # anthropic's mapping, without the model, with the version; Bedrock without stream.
    assert vertex == {"anthropic_version": VERTEX_ANTHROPIC_VERSION, **first_party}
    first_party.pop("stream", None)
    assert invoke == {"anthropic_version": BEDROCK_ANTHROPIC_VERSION, **first_party}
    assert vertex.get("stream", False) is streaming
    for request, version, cloud_streaming in (
        (vertex, VERTEX_ANTHROPIC_VERSION, streaming),
        (invoke, BEDROCK_ANTHROPIC_VERSION, False),
    ):
        request = dict(request)
        sampling = {name: request.pop(name) for name in anthropic.SAMPLING_FIELDS if name in request}
        assert all(isinstance(v, int | float) and 0 <= v <= 1 for v in sampling.values())
        cloud_validator(cloud_streaming, version).validate_python(request)
    # What the simulators hold the gateway to (anthropic_contract, with the model the path names).
    contract_body = {key: value for key, value in invoke.items() if key != "anthropic_version"}
    anthropic_contract.parse_body(orjson.dumps({**contract_body, "model": "claude-x"}))


@pytest.mark.parametrize(("cases", "case"), REQUESTS, ids=[f"{c.name}/{n}" for c, n in REQUESTS])
def test_the_request_is_not_changed(cases: Path, case: str) -> None:
    body = Goldens(cases, {}).client_request(case)
    before = copy.deepcopy(body)
    for translate_request in (vertex_request, bedrock_request):
        with contextlib.suppress(RequestRejected):
            translate_request(body, None)
        assert body == before


def body_with(**fields: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5@20250929", "messages": [{"role": "user", "content": "hi"}], **fields}


def test_versions_and_defaults() -> None:
    assert (VERTEX_ANTHROPIC_VERSION, BEDROCK_ANTHROPIC_VERSION) == ("vertex-2023-10-16", "bedrock-2023-05-31")
    for version in (None, ""):  # an empty version is no version: the default, not "" (which the clouds refuse)
        assert vertex_request(body_with(), version)["anthropic_version"] == VERTEX_ANTHROPIC_VERSION
        assert bedrock_request(body_with(), version)["anthropic_version"] == BEDROCK_ANTHROPIC_VERSION
    assert vertex_request(body_with(), "vertex-2099-01-01")["anthropic_version"] == "vertex-2099-01-01"
    assert bedrock_request(body_with(), "bedrock-2099-01-01")["anthropic_version"] == "bedrock-2099-01-01"
    assert vertex_request(body_with(), None)["max_tokens"] == anthropic.DEFAULT_MAX_TOKENS
    assert bedrock_request(body_with(), None, default_max_tokens=1000)["max_tokens"] == 1000
    assert vertex_request(body_with(stream=True), None)["stream"] is True
    assert "stream" not in vertex_request(body_with(stream=False), None)
    assert "stream" not in bedrock_request(body_with(stream=True), None)
    assert next(iter(bedrock_request(body_with(), None))) == "anthropic_version"


@pytest.mark.parametrize("translate_request", [vertex_request, bedrock_request])
def test_rejections_are_anthropics(translate_request: Any) -> None:
    """What anthropic.chat_request refuses, the clouds refuse the same way; and URLs, which only the first-party API
    fetches."""
    for body, param, code in [
        (body_with(n=2), "n", "unsupported_parameter"),
        (body_with(stream="yes"), "stream", "invalid_value"),
        (body_with(temperature=1.5), "temperature", "unsupported_value"),
        ({"model": "m"}, "messages", "missing_required_parameter"),
    ]:
        with pytest.raises(RequestRejected) as raised:
            translate_request(body, None)
        assert (raised.value.param, raised.value.code) == (param, code)
    for url in ("https://upload.example.org/cat.png", "http://docs.example.org/report.pdf"):
        parts = [{"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": {"url": url}}]
        with pytest.raises(RequestRejected) as raised:
            translate_request(body_with(messages=[{"role": "user", "content": parts}]), None)
        rejected = raised.value
        assert (rejected.status, rejected.param, rejected.code) == (
            400,
            "messages[0].content[1].image_url.url",
            "unsupported_value",
        )
        assert "data URI" in rejected.message and url not in rejected.message


# ---- paths


@pytest.mark.parametrize(
    ("model", "stream", "path"),
    [
        ("claude-sonnet-4-5@20250929", False, "publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict"),
        ("claude-3-7-sonnet@20250219", True, "publishers/anthropic/models/claude-3-7-sonnet@20250219:streamRawPredict"),
        ("claude-opus-4-1", False, "publishers/anthropic/models/claude-opus-4-1:rawPredict"),
        ("a/b:c d?#%", True, "publishers/anthropic/models/a%2Fb%3Ac%20d%3F%23%25:streamRawPredict"),
    ],
)
def test_vertex_path(model: str, stream: bool, path: str) -> None:
    assert vertex_path(model, stream) == path


@pytest.mark.parametrize(
    ("model", "stream", "path"),
    [
        ("anthropic.claude-3-5-sonnet-20241022-v2:0", False, "/model/anthropic.claude-3-5-sonnet-20241022-v2:0/invoke"),
        (
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            True,
            "/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke-with-response-stream",
        ),
        (
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3",
            False,
            "/model/arn:aws:bedrock:us-east-1:123456789012:application-inference-profile%2Fa1b2c3/invoke",
        ),
        ("my model?#%", True, "/model/my%20model%3F%23%25/invoke-with-response-stream"),
    ],
)
def test_bedrock_invoke_path(model: str, stream: bool, path: str) -> None:
    assert bedrock_invoke_path(model, stream) == path
    # The same segment as Converse's, so one model id names one resource whatever the API.
    assert path.split("/")[2] == bedrock.converse_path(model, stream).split("/")[2]


def test_bedrock_paths_match_the_service_model() -> None:
    for operation, stream in (("InvokeModel", False), ("InvokeModelWithResponseStream", True)):
        template = SERVICE.operation_model(operation).http["requestUri"]
        assert bedrock_invoke_path("m.x", stream) == template.replace("{modelId}", "m.x")


@pytest.mark.parametrize("model", ["", ".", ".."])
def test_paths_need_a_model(model: str) -> None:
    for path in (vertex_path, bedrock_invoke_path):
        with pytest.raises(RequestRejected) as raised:
            path(model, False)
        assert raised.value.param == "model"


# ---- inputs, against the SDK's and botocore's types


def botocore_events(raw: bytes) -> list[Any]:
    """What botocore's own InvokeModelWithResponseStream parser reads in the frames: {"chunk": {"bytes": ...}} or,
    for an exception, its error."""
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    parser = EventStreamJSONParser()
    return [parser.parse(message.to_response_dict(), RESPONSE_STREAM) for message in buffer]


@pytest.mark.parametrize("case", sorted(set(case_names()) - OFF_SPEC))
def test_provider_inputs_fit_the_types(case: str) -> None:
    directory = CASES / case
    if (directory / "bedrock-stream.jsonl").exists():
        items = [item for item in stream_lines(case) if "chunk" in item or "headers" in item]
        for item in items:
            if "chunk" in item:
                event = dict(item["chunk"])
                metrics = event.pop("amazon-bedrock-invocationMetrics", None)  # Bedrock's, in message_stop
                assert metrics is None or set(metrics) == {
                    "inputTokenCount",
                    "outputTokenCount",
                    "invocationLatency",
                    "firstByteLatency",
                }
                strict(RawMessageStreamEvent).validate_python(event)
            else:
                headers = item["headers"]
                assert set(headers) == {":message-type", ":exception-type", ":content-type"}
                shape = RESPONSE_STREAM.members[headers[":exception-type"]]
                assert shape.metadata.get("exception") and set(item["payload"]) <= set(shape.members)
        # botocore reads the frames as Bedrock's: each chunk's bytes are the event written.
        clean = b"".join(
            chunk_frame(i["chunk"], i.get("p")) if "chunk" in i else encode(i["headers"], orjson.dumps(i["payload"]))
            for i in items
        )
        for item, parsed in zip(items, botocore_events(clean), strict=True):
            if "chunk" in item:
                assert json.loads(parsed["chunk"]["bytes"]) == item["chunk"]
            else:
                assert parsed["Error"]["Code"] == item["headers"][":exception-type"]
    if (directory / "vertex-error.txt").exists():
        body = json.loads((directory / "vertex-error.txt").read_bytes().partition(b"\n")[2])
        if isinstance(body, dict) and body.get("type") == "error":
            strict(ErrorResponse).validate_python(body)
        else:  # Google's: google.rpc.Status as JSON, bare or in a one-item array
            [status] = body if isinstance(body, list) else [body]
            assert set(status) == {"error"} and {"code", "message", "status"} <= set(status["error"])
            assert set(status["error"]) <= {"code", "message", "status", "details"}


@pytest.mark.parametrize("case", ANTHROPIC_GOLDENS.names("anthropic-stream.txt"))
def test_botocore_reads_the_wrapped_anthropic_streams(case: str) -> None:
    parsed = botocore_events(wrapped(case))
    assert [json.loads(event["chunk"]["bytes"]) for event in parsed] == list(anthropic_events(case))


# ---- the OpenAI side


def openai_events(where: str, case: str) -> list[bytes]:
    return [event for event in fed(where, case).split(b"\n\n") if event]


@pytest.mark.parametrize(("where", "case"), STREAMS, ids=[f"{w}/{c}" for w, c in STREAMS])
def test_streams_are_well_formed(where: str, case: str) -> None:
    events = openai_events(where, case)
    documents = []
    for event in events:
        assert event == b"data: [DONE]" or event == b": ping" or event.startswith(b"data: {")
        if event.startswith(b"data: {"):
            documents.append(json.loads(event[6:]))
    errors = [d for d in documents if "error" in d]
    chunks = [d for d in documents if "error" not in d]
    for error in errors:
        check_error_object(error["error"])
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    check_stream_end(events, chunks, errors)


def test_how_bedrock_streams_end() -> None:
    for case, code in (
        ("bedrock-stream-exception", "model_error"),
        ("bedrock-stream-throttling", "rate_limit_exceeded"),
    ):
        events = openai_events("clouds", case)
        assert b"[DONE]" not in b"".join(events)
        error = json.loads(events[-1][6:])["error"]
        assert error["code"] == code and error["message"] in (
            "The model had an error while streaming.",
            "Too many tokens, please wait before trying again.",
        )
    # The text before the exception went out; the chunk after it did not.
    texts = [
        json.loads(e[6:])["choices"][0]["delta"].get("content")
        for e in openai_events("clouds", "bedrock-stream-exception")[:-1]
    ]
    assert texts == ["", "Once upon a"]
    corrupt = openai_events("clouds", "bedrock-stream-corrupt")
    assert b'"invalid_stream"' in corrupt[-1] and b"CRC mismatch" in corrupt[-1] and b"[DONE]" not in b"".join(corrupt)
    cut = openai_events("clouds", "bedrock-stream-cut")
    assert b'"incomplete_stream"' in cut[-2] and cut[-1] == b"data: [DONE]"
    # Bedrock's invocation metrics and padding change nothing: the usage is Anthropic's own.
    finish, usage = (json.loads(e[6:]) for e in openai_events("clouds", "bedrock-stream-metrics")[-3:-1])
    assert finish["choices"][0]["finish_reason"] == "stop" and finish["id"] == "msg_bdrk_01Tq2bM8Pr1meXf7"
    assert (usage["usage"]["prompt_tokens"], usage["usage"]["completion_tokens"]) == (14, 27)


def test_nothing_after_the_end() -> None:
    """After message_stop (or an error), nothing more goes out: not an exception frame, not another answer."""
    raw, stream = stream_input("anthropic", "stream-text")
    assert stream.feed(raw).endswith(b"data: [DONE]\n\n")
    throttled = encode(
        {":exception-type": "throttlingException", ":content-type": "application/json", ":message-type": "exception"},
        b'{"message":"late"}',
    )
    assert stream.feed(throttled) == b"" and stream.feed(raw) == b"" and stream.finish() == b"" == stream.finish()
    raw, stream = stream_input("clouds", "bedrock-stream-exception")
    assert stream.feed(raw).startswith(b"data: ") and stream.feed(wrapped("stream-text")) == b""
    assert stream.finish() == b""


def test_what_is_skipped_and_errors_without_a_message() -> None:
    """Event and message types added later, chunks without an event to read: skipped, and the answer goes on."""
    events = list(anthropic_events("stream-text"))
    raw = b"".join(
        [
            chunk_frame(events[0]),
            encode({**CHUNK, ":event-type": "somethingNew"}, b"{}"),
            encode({**CHUNK, ":message-type": "sideband"}, b"{}"),
            encode(CHUNK, b"not json"),
            encode(CHUNK, b'{"bytes": "%%% not base64"}'),
            encode(CHUNK, orjson.dumps({"bytes": base64.b64encode(b"[1, 2]").decode()})),
            encode(CHUNK, orjson.dumps({"bytes": base64.b64encode(b"{not json").decode()})),
            *(chunk_frame(event) for event in events[1:]),
        ]
    )
    stream = BedrockClaudeStream("m", CREATED, False)
    assert stream.feed(raw) == BedrockClaudeStream("m", CREATED, False).feed(wrapped("stream-text"))
    error = {":message-type": "error", ":error-code": "InternalFailure", ":error-message": "We broke."}
    assert json.loads(BedrockClaudeStream("m", CREATED, False).feed(encode(error, b""))[6:])["error"] == {
        "message": "We broke.",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    exception = {":message-type": "exception", ":exception-type": "validationException"}
    error_object = json.loads(BedrockClaudeStream("m", CREATED, False).feed(encode(exception, b"<html>"))[6:])["error"]
    assert (error_object["type"], error_object["code"], error_object["message"]) == (
        "invalid_request_error",
        "invalid_request_error",
        "the upstream reported an error mid-stream",
    )


def test_every_stream_exception_is_mapped() -> None:
    """Each exception InvokeModelWithResponseStream may send keeps its meaning (the type its HTTP status has)."""
    for name, member in RESPONSE_STREAM.members.items():
        if not member.metadata.get("exception"):
            continue
        headers = {":message-type": "exception", ":exception-type": name, ":content-type": "application/json"}
        error = json.loads(BedrockClaudeStream("m", CREATED, False).feed(encode(headers, b'{"message":"m"}'))[6:])
        status = member.metadata["error"]["httpStatusCode"]
        by_status = json.loads(bedrock.error_response(status, None, b'{"message":"m"}'))["error"]
        assert error["error"]["type"] == by_status["type"], name


# ---- streams fed in pieces


@settings(max_examples=300, deadline=None)
@given(stream=st.sampled_from(STREAMS), data=st.data())
def test_any_split_gives_the_same_bytes(stream: tuple[str, str], data: st.DataObject) -> None:
    where, case = stream
    raw, _ = stream_input(where, case)
    assert fed(where, case, any_split(data, raw)) == fed(where, case)


@pytest.mark.parametrize(("where", "case"), STREAMS, ids=[f"{w}/{c}" for w, c in STREAMS])
def test_byte_by_byte(where: str, case: str) -> None:
    raw, _ = stream_input(where, case)
    assert fed(where, case, [raw[i : i + 1] for i in range(len(raw))]) == fed(where, case)


# ---- errors


def envelope_of(status: int, body: bytes) -> dict[str, Any]:
    return dict(orjson.loads(vertex_error_response(status, body))["error"])


@pytest.mark.parametrize(
    ("status", "body", "kind", "code"),
    [
        (400, {"error": {"code": 400, "message": "m", "status": "INVALID_ARGUMENT"}}, "invalid_request_error", None),
        (400, {"error": {"code": 400, "message": "m", "status": "FAILED_PRECONDITION"}}, None, "failed_precondition"),
        (401, {"error": {"code": 401, "message": "m", "status": "UNAUTHENTICATED"}}, "authentication_error", None),
        (403, {"error": {"code": 403, "message": "m", "status": "PERMISSION_DENIED"}}, "permission_error", None),
        (404, {"error": {"code": 404, "message": "Publisher Model x", "status": "NOT_FOUND"}}, None, "model_not_found"),
        (404, {"error": {"code": 404, "message": "Endpoint x", "status": "NOT_FOUND"}}, None, "not_found"),
        (429, [{"error": {"code": 429, "message": "m", "status": "RESOURCE_EXHAUSTED"}}], "rate_limit_error", None),
        (499, {"error": {"code": 499, "message": "m", "status": "CANCELLED"}}, "server_error", "cancelled"),
        (500, {"error": {"code": 500, "message": "m", "status": "INTERNAL"}}, "server_error", "internal_error"),
        (503, {"error": {"code": 503, "message": "m", "status": "UNAVAILABLE"}}, None, "service_unavailable"),
        (504, {"error": {"code": 504, "message": "m", "status": "DEADLINE_EXCEEDED"}}, "server_error", "timeout"),
        (429, {"error": {"code": 429, "message": "m", "status": "NEW_STATUS"}}, "rate_limit_error", None),
        (418, {"error": {"code": 418, "message": "m", "status": "NEW_STATUS"}}, "invalid_request_error", None),
        (529, {"type": "error", "error": {"type": "overloaded_error", "message": "m"}}, "server_error", "overloaded"),
        (400, {"type": "error", "error": {"type": "invalid_request_error", "message": "m"}}, None, None),
        (429, {"error": {"type": "rate_limit_error", "message": "m"}}, "rate_limit_error", "rate_limit_exceeded"),
    ],
)
def test_error_table(status: int, body: Any, kind: str | None, code: str | None) -> None:
    """Google's and Anthropic's envelopes; `None`: the same as the other column's, or as Anthropic's would give."""
    error = envelope_of(status, orjson.dumps(body))
    check_error_object(error)
    assert error["message"] == "m" or error["message"].startswith(("Publisher", "Endpoint"))
    assert kind is None or error["type"] == kind
    assert code is None or error["code"] == code
    if isinstance(body, dict) and body.get("type") == "error":
        assert error == json.loads(anthropic.error_response(status, orjson.dumps(body)))["error"]


def test_errors_that_are_neither_envelope_keep_a_bounded_prefix() -> None:
    for text in ("x" * 10_000, "<html>" + "☕" * 1000):
        message = envelope_of(502, text.encode())["message"]
        assert len(message) <= 256 and text.startswith(message.removesuffix("..."))
    assert envelope_of(503, b"")["message"] == "the upstream answered HTTP 503 with an empty body"
    # Google-like without a message, or a list of several: not Google's envelope, so its text.
    assert envelope_of(500, b'{"error": {"status": "INTERNAL"}}')["message"] == '{"error": {"status": "INTERNAL"}}'
    assert envelope_of(400, b"[1, 2]")["message"] == "[1, 2]"
    # Google's front end answers a path it does not serve (a region the host does not match) with an HTML 404 that
    # quotes the path, model and all: not found, but not a wrong model name.
    html = (CASES / "vertex-error-html" / "vertex-error.txt").read_bytes().partition(b"\n")[2]
    assert b"models/" in html and envelope_of(404, html)["code"] == "not_found"


# ---- the openai SDK reading what the gateway answers


def test_sdk_reads_the_bedrock_stream() -> None:
    client = openai_client(200, fed("clouds", "bedrock-stream-metrics"), "text/event-stream")
    chunks = list(client.chat.completions.create(model=CLIENT_MODEL, messages=ASK, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = reasoning_of(chunks)
    assert (text, reasoning) == ("No: 1 has one divisor, itself ☕.", "A prime has exactly two divisors.")
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (14, 27)


@pytest.mark.parametrize("case", ["bedrock-stream-exception", "bedrock-stream-cut", "bedrock-stream-corrupt"])
def test_sdk_raises_on_a_failed_stream(case: str) -> None:
    message = sdk_stream_error(fed("clouds", case), CLIENT_MODEL).message
    assert message.startswith(("The model had an error", "the upstream"))


@pytest.mark.parametrize(
    ("case", "exception", "code"),
    [
        ("vertex-error-quota", openai.RateLimitError, "rate_limit_exceeded"),
        ("vertex-error-model-not-found", openai.NotFoundError, "model_not_found"),
        ("vertex-error-permission", openai.PermissionDeniedError, "permission_denied"),
        ("vertex-error-unauthenticated", openai.AuthenticationError, "invalid_api_key"),
        ("vertex-error-overloaded", openai.InternalServerError, "overloaded"),
    ],
)
def test_sdk_reads_error_envelopes(case: str, exception: type[openai.APIStatusError], code: str) -> None:
    status = int((CASES / case / "vertex-error.txt").read_bytes().partition(b"\n")[0])
    body = translate(case, "vertex-error.txt")["openai-error.json"].encode()
    with pytest.raises(exception) as raised:
        openai_client(status, body, "application/json").chat.completions.create(model=CLIENT_MODEL, messages=ASK)
    assert (raised.value.status_code, raised.value.code) == (status, code)
