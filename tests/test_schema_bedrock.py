"""OpenAI chat completions <-> Bedrock Converse (xds_server.extproc.schemas.bedrock), and the AWS event-stream framing
it streams in (xds_server.extproc.schemas.eventstream).

Golden cases: every directory of testdata/providers/bedrock/ is a case holding one or more pairs, input -> output:

    openai-request.json   -> bedrock-request.json  converse_path and chat_request: {"path", "body"}
    bedrock-response.json -> openai-response.json  chat_response (the client's model: the case's request's)
    bedrock-stream.jsonl  -> openai-stream.txt     ChatStream, fed whole (include_usage: the case's request's)
    bedrock-error.txt     -> openai-error.json     error_response

A stream is written as its messages, one JSON line each, {"headers": {...}, "payload": {...}}, encoded here into the
binary framing; a line {"cut": n} drops the last n bytes so far, {"flip": n} corrupts the byte n from the end. An
error is the HTTP status, the x-amzn-errortype header if any, a blank line, the body.

`python -m pytest tests/test_schema_bedrock.py --update-golden` rewrites the outputs; review the diff. The inputs were
written from botocore's service model (bedrock-runtime 2023-09-30) and AWS's documented shapes, and are checked here
against that model, as the translated requests are; the outputs are checked against the openai SDK's types.
"""

from __future__ import annotations

import base64
import copy
import json
import struct
import urllib.parse
from binascii import crc32
from pathlib import Path
from typing import Any

import botocore.eventstream  # type: ignore[import-untyped]
import botocore.session  # type: ignore[import-untyped]
import openai
import orjson
import pytest
from botocore.validate import ParamValidator  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk, completion_create_params

from testing.schema_goldens import (
    ASK,
    ASKED_F,
    FUNCTION,
    Goldens,
    Requests,
    any_split,
    check_error_object,
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
from xds_server.extproc.schemas import anthropic, common
from xds_server.extproc.schemas.bedrock import (
    DROPPED_FIELDS,
    ChatStream,
    RequestRejected,
    chat_request,
    chat_response,
    converse_path,
    error_response,
)
from xds_server.extproc.schemas.eventstream import (
    MAX_HEADERS,
    MAX_PAYLOAD,
    Decoder,
    EventStreamError,
    HeaderValue,
    encode,
)

CASES = Path(__file__).resolve().parent.parent / "testdata" / "providers" / "bedrock"
CLIENT_MODEL = "amazon.nova-pro-v1:0"  # the model the client asked for, when the case has no request
CREATED = 1767225600
REQUEST_ID = "5f8d2c41-7a0b-4e6f-9c3d-1b2a3e4f5a6b"  # the x-amzn-requestid header
PAIRS = {
    "openai-request.json": "bedrock-request.json",
    "bedrock-response.json": "openai-response.json",
    "bedrock-stream.jsonl": "openai-stream.txt",
    "bedrock-error.txt": "openai-error.json",
}
# Inputs deliberately outside the service model: what is newer than it, or not Bedrock's own, must still translate.
OFF_SPEC = {
    "finish-unknown",
    "error-unknown-type",
    "error-unrecognized-client",  # AWS's authentication layer, before Bedrock: not in Bedrock's model
    "error-type-in-body",
    "error-html",
    "error-empty",
}
SERVICE = botocore.session.get_session().get_service_model("bedrock-runtime")
STREAM_OUTPUT = SERVICE.operation_model("ConverseStream").output_shape.members["stream"]


GOLDENS = Goldens(CASES, PAIRS)
case_names = GOLDENS.names
client_request = GOLDENS.client_request
include_usage = GOLDENS.include_usage


def stream_of(case: str) -> ChatStream:
    return ChatStream(client_request(case).get("model", CLIENT_MODEL), CREATED, include_usage(case), REQUEST_ID)


def frames(case: str) -> list[tuple[dict[str, Any], Any]]:
    """A stream case's messages, as written (a corrupted one too)."""
    lines = (CASES / case / "bedrock-stream.jsonl").read_text().splitlines()
    return [(item["headers"], item["payload"]) for item in map(json.loads, lines) if "headers" in item]


def stream_bytes(case: str) -> bytes:
    out = bytearray()
    for line in (CASES / case / "bedrock-stream.jsonl").read_text().splitlines():
        item = json.loads(line)
        if "cut" in item:
            del out[-item["cut"] :]
        elif "flip" in item:
            out[-item["flip"]] ^= 0x01
        else:
            out += encode(item["headers"], orjson.dumps(item["payload"]))
    return bytes(out)


def error_input(case: str) -> tuple[int, str | None, bytes]:
    head, _, body = (CASES / case / "bedrock-error.txt").read_bytes().partition(b"\n\n")
    status, *lines = head.decode().split("\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return int(status), headers.get("x-amzn-errortype"), body


def translate(case: str, name: str) -> str:
    if name == "openai-request.json":
        body = client_request(case)
        return rendered({"path": converse_path(body["model"], bool(body.get("stream"))), "body": chat_request(body)})
    if name == "bedrock-response.json":
        converse = orjson.loads((CASES / case / name).read_bytes())
        model = client_request(case).get("model", CLIENT_MODEL)
        return rendered(chat_response(converse, model, CREATED, REQUEST_ID))
    if name == "bedrock-stream.jsonl":
        stream = stream_of(case)
        return (stream.feed(stream_bytes(case)) + stream.finish()).decode()
    return rendered(orjson.loads(error_response(*error_input(case))))


@pytest.mark.parametrize("case", case_names())
def test_golden(case: str, update: bool) -> None:
    GOLDENS.check(case, translate, update)


# ---- botocore's service model


def to_botocore(value: Any, shape: Any, where: str = "") -> Any:
    """A Converse JSON document -> the parameters botocore takes for it (blobs as bytes, from the base64 the JSON
    carries), checking on the way what ParamValidator leaves out: enum values and maximums."""
    if shape.type_name == "structure" and not shape.metadata.get("document") and isinstance(value, dict):
        return {
            k: to_botocore(v, shape.members[k], f"{where}.{k}") if k in shape.members else v for k, v in value.items()
        }
    if shape.type_name == "list" and isinstance(value, list):
        return [to_botocore(v, shape.member, f"{where}[{i}]") for i, v in enumerate(value)]
    if shape.type_name == "map" and isinstance(value, dict):
        return {k: to_botocore(v, shape.value, f"{where}.{k}") for k, v in value.items()}
    if shape.type_name == "blob":
        assert isinstance(value, str), f"{where}: a blob is base64 text in JSON"
        return base64.b64decode(value, validate=True)
    if shape.type_name == "string" and shape.enum:
        assert value in shape.enum, f"{where}: {value!r} is not one of {shape.enum}"
    if shape.type_name in ("integer", "long", "float", "double") and "max" in shape.metadata:
        assert value <= shape.metadata["max"], f"{where}: {value} is over {shape.metadata['max']}"
    if shape.type_name in ("string", "list") and "max" in shape.metadata:
        assert len(value) <= shape.metadata["max"], f"{where}: longer than {shape.metadata['max']}"
    return value


def check_shape(document: Any, shape: Any) -> None:
    report = ParamValidator().validate(to_botocore(document, shape), shape)
    assert not report.has_errors(), report.generate_report()


def test_the_shape_check_catches_mistakes() -> None:
    converse = SERVICE.operation_model("Converse").input_shape
    good: dict[str, Any] = {"modelId": "m", "messages": [{"role": "user", "content": [{"text": "x"}]}]}
    check_shape(good, converse)
    mistakes: list[Any] = [
        {**good, "model": "m"},
        {**good, "messages": [{"role": "bot", "content": [{"text": "x"}]}]},
        {**good, "messages": [{"role": "user", "content": [{"text": "x", "cachePoint": {"type": "default"}}]}]},
        {**good, "messages": [{"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": "%%"}}}]}]},
        {**good, "inferenceConfig": {"temperature": 1.5}},
        {**good, "system": [{"text": ""}]},
    ]
    for mistake in mistakes:
        with pytest.raises((AssertionError, ValueError)):  # binascii.Error is a ValueError
            check_shape(mistake, converse)


def openai_request_type(body: dict[str, Any]) -> Any:
    if body.get("stream"):
        return completion_create_params.CompletionCreateParamsStreaming
    return completion_create_params.CompletionCreateParamsNonStreaming


@pytest.mark.parametrize("case", case_names("openai-request.json"))
def test_requests_fit_the_service_model(case: str) -> None:
    body = client_request(case)
    strict(openai_request_type(body)).validate_python(body)  # the input is a real OpenAI request
    operation = SERVICE.operation_model("ConverseStream" if body.get("stream") else "Converse")
    path = converse_path(body["model"], bool(body.get("stream")))
    prefix, _, suffix = operation.http["requestUri"].partition("{modelId}")
    assert path.startswith(prefix) and path.endswith(suffix)
    segment = path[len(prefix) : -len(suffix)]
    assert "/" not in segment and urllib.parse.unquote(segment) == body["model"]
    check_shape({"modelId": body["model"], **chat_request(body)}, operation.input_shape)


@pytest.mark.parametrize("case", sorted(set(case_names()) - OFF_SPEC))
def test_provider_inputs_fit_the_service_model(case: str) -> None:
    directory = CASES / case
    if (directory / "bedrock-response.json").exists():
        converse = orjson.loads((directory / "bedrock-response.json").read_bytes())
        check_shape(converse, SERVICE.operation_model("Converse").output_shape)
    if (directory / "bedrock-stream.jsonl").exists():
        for headers, payload in frames(case):
            assert headers[":content-type"] == "application/json"
            if headers[":message-type"] == "event":
                assert set(headers) == {":message-type", ":event-type", ":content-type"}
                padding = payload.pop("p")  # Bedrock pads every event against a length side channel
                assert isinstance(padding, str) and padding
                check_shape(payload, STREAM_OUTPUT.members[headers[":event-type"]])
            else:
                assert headers[":message-type"] == "exception"
                assert set(headers) == {":message-type", ":exception-type", ":content-type"}
                shape = STREAM_OUTPUT.members[headers[":exception-type"]]
                assert shape.metadata.get("exception")
                check_shape(payload, shape)
    if (directory / "bedrock-error.txt").exists():
        status, error_type, body = error_input(case)
        assert error_type is not None
        shape = SERVICE.shape_for(error_type.partition(":")[0])
        assert shape.metadata["error"]["httpStatusCode"] == status
        check_shape(orjson.loads(body), shape)


def test_the_translation_knows_every_stop_reason_and_exception() -> None:
    """What the service model may send is covered by the cases, so a model update shows what is new."""
    responses = [
        orjson.loads((CASES / c / "bedrock-response.json").read_bytes())
        for c in case_names()
        if (CASES / c / "bedrock-response.json").exists()
    ]
    assert set(SERVICE.shape_for("StopReason").enum) <= {response["stopReason"] for response in responses}
    assert set(STREAM_OUTPUT.members) == {
        "messageStart",
        "contentBlockStart",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
        "internalServerException",
        "modelStreamErrorException",
        "validationException",
        "throttlingException",
        "serviceUnavailableException",
    }


# ---- the OpenAI side


def openai_events(case: str) -> list[bytes]:
    return [event for event in translate(case, "bedrock-stream.jsonl").encode().split(b"\n\n") if event]


@pytest.mark.parametrize("case", case_names())
def test_outputs_fit_the_openai_types(case: str) -> None:
    directory = CASES / case
    if (directory / "bedrock-response.json").exists():
        ChatCompletion.model_validate_json(translate(case, "bedrock-response.json"))
    if (directory / "bedrock-error.txt").exists():
        envelope = json.loads(translate(case, "bedrock-error.txt"))
        assert set(envelope) == {"error"}
        check_error_object(envelope["error"])
    if (directory / "bedrock-stream.jsonl").exists():
        for event in openai_events(case):
            assert event == b"data: [DONE]" or event.startswith(b"data: {")
            if event.startswith(b"data: {"):
                document = json.loads(event[6:])
                if "error" in document:
                    check_error_object(document["error"])
                else:
                    ChatCompletionChunk.model_validate(document)


@pytest.mark.parametrize("case", case_names("bedrock-stream.jsonl"))
def test_stream_shape(case: str) -> None:
    """What every OpenAI client may rely on, whatever the upstream sent."""
    events = openai_events(case)
    chunks = [json.loads(e[6:]) for e in events if e.startswith(b"data: {")]
    errors_ = [c for c in chunks if "error" in c]
    chunks = [c for c in chunks if "error" not in c]
    usage_asked = include_usage(case)
    assert not chunks or chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    seen_calls: set[int] = set()
    for chunk in chunks:
        assert (chunk["id"], chunk["object"], chunk["created"]) == (REQUEST_ID, "chat.completion.chunk", CREATED)
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
    check_stream_end(events, chunks, errors_)
    if not errors_:
        finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
        assert len(finish) == 1 and finish[0]["choices"][0]["delta"] == {}
        if usage_asked and case != "stream-without-metadata":
            assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert seen_calls == set(range(len(seen_calls)))


def test_how_streams_end() -> None:
    for case, code in (("stream-exception", "model_error"), ("stream-throttling", "rate_limit_exceeded")):
        assert openai_events(case)[-1].startswith(b'data: {"error":') and b"[DONE]" not in b"".join(openai_events(case))
        assert json.loads(openai_events(case)[-1][6:])["error"]["code"] == code
    corrupt = openai_events("stream-corrupt")
    assert b'"invalid_stream"' in corrupt[-1] and b"message CRC mismatch" in corrupt[-1]
    assert [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in corrupt[:-1]] == ["", "Fine so far"]
    truncated = openai_events("stream-truncated")
    assert truncated[-2].startswith(b'data: {"error":') and b'"incomplete_stream"' in truncated[-2]
    assert truncated[-1] == b"data: [DONE]"
    # messageStop without metadata: a complete answer, its usage unknown, so no usage chunk rather than zeros.
    unmetered = [json.loads(e[6:]) for e in openai_events("stream-without-metadata")[:-1]]
    assert unmetered[-1]["choices"][0]["finish_reason"] == "length" and unmetered[-1]["usage"] is None
    # The finish chunk, then the usage chunk, then [DONE], though Bedrock tells the usage after messageStop.
    finish, usage = (json.loads(e[6:]) for e in openai_events("stream-include-usage")[-3:-1])
    assert (finish["choices"][0]["finish_reason"], usage["choices"], usage["usage"]["total_tokens"]) == (
        "stop",
        [],
        2855,
    )


# ---- streams fed in pieces

STREAMS = case_names("bedrock-stream.jsonl")


def fed(case: str, pieces: list[bytes]) -> bytes:
    return feed(stream_of(case), pieces)


@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(STREAMS), data=st.data())
def test_any_split_gives_the_same_bytes(case: str, data: st.DataObject) -> None:
    raw = stream_bytes(case)
    assert fed(case, any_split(data, raw)) == translate(case, "bedrock-stream.jsonl").encode()


@pytest.mark.parametrize("case", STREAMS)
def test_byte_by_byte(case: str) -> None:
    raw = stream_bytes(case)
    assert fed(case, [raw[i : i + 1] for i in range(len(raw))]) == fed(case, [raw])


def test_nothing_after_the_end() -> None:
    stream = stream_of("stream-text")
    raw = stream_bytes("stream-text")
    assert stream.feed(raw).endswith(b"data: [DONE]\n\n")
    assert stream.feed(raw) == b"" and stream.finish() == b"" and stream.finish() == b""
    stream = stream_of("stream-exception")
    assert stream.feed(stream_bytes("stream-exception")).startswith(b"data: ")
    assert stream.feed(stream_bytes("stream-text")) == b"" and stream.finish() == b""


def test_events_in_either_order_and_unknown_ones() -> None:
    """metadata before messageStop (not what Bedrock does, but nothing says it never will), an event type and a
    message type added later, and a payload that is not JSON: the answer still ends once, with its usage."""
    usage = {"inputTokens": 3, "outputTokens": 2, "totalTokens": 5}
    raw = b"".join(
        [
            encode({":message-type": "event", ":event-type": "messageStart"}, b'{"role":"assistant"}'),
            encode({":message-type": "event", ":event-type": "contentBlockDelta"}, b"not json"),
            encode({":message-type": "event", ":event-type": "somethingNew"}, b"{}"),
            encode({":message-type": "sideband", ":event-type": "messageStop"}, b"{}"),
            encode({":message-type": "event", ":event-type": "metadata"}, orjson.dumps({"usage": usage})),
            encode({":message-type": "event", ":event-type": "messageStop"}, b'{"stopReason":"end_turn"}'),
        ]
    )
    stream = ChatStream("m", CREATED, True, REQUEST_ID)
    events = [json.loads(e[6:]) for e in stream.feed(raw).split(b"\n\n") if e.startswith(b"data: {")]
    assert [e["choices"][0]["finish_reason"] if e["choices"] else e["usage"]["total_tokens"] for e in events] == [
        None,
        "stop",
        5,
    ]
    assert stream.finish() == b""


def test_event_stream_errors_and_exceptions_without_a_message() -> None:
    stream = ChatStream("m", CREATED, False, REQUEST_ID)
    error = {":message-type": "error", ":error-code": "InternalFailure", ":error-message": "We broke."}
    assert json.loads(stream.feed(encode(error, b""))[6:])["error"] == {
        "message": "We broke.",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    stream = ChatStream("m", CREATED, False, REQUEST_ID)
    exception = {":message-type": "exception", ":exception-type": "validationException"}
    error_object = json.loads(stream.feed(encode(exception, b"<html>"))[6:])["error"]
    assert (error_object["code"], error_object["message"]) == (
        "invalid_request_error",
        "the upstream reported an error mid-stream",
    )


# ---- the event-stream framing, against botocore's own decoder


def ours(raw: bytes, pieces: int = 1) -> tuple[list[tuple[dict[str, HeaderValue], bytes]], bool]:
    """The messages, and whether the decoder refused the rest."""
    decoder = Decoder()
    messages = []
    size = max(1, -(-len(raw) // pieces))
    try:
        for at in range(0, len(raw) or 1, size):
            for message in decoder.feed(raw[at : at + size]):
                messages.append((message.headers, message.payload))
    except EventStreamError:
        return messages, True
    return messages, False


def botocores(raw: bytes) -> tuple[list[tuple[dict[str, HeaderValue], bytes]], bool]:
    buffer = botocore.eventstream.EventStreamBuffer()
    buffer.add_data(raw)
    messages = []
    try:
        for message in buffer:
            messages.append((message.headers, message.payload))
    except botocore.eventstream.ParserError:
        return messages, True
    return messages, False


@pytest.mark.parametrize("case", STREAMS)
def test_decoder_agrees_with_botocore_on_the_cases(case: str) -> None:
    raw = stream_bytes(case)
    assert ours(raw) == ours(raw, pieces=7) == botocores(raw)
    refused = ours(raw)[1]
    assert refused == (case == "stream-corrupt")


def raw_header(name: bytes, kind: int, value: bytes) -> bytes:
    return bytes((len(name),)) + name + bytes((kind,)) + value


def raw_frame(headers: bytes, payload: bytes) -> bytes:
    prelude = struct.pack(">II", 16 + len(headers) + len(payload), len(headers))
    message = prelude + struct.pack(">I", crc32(prelude)) + headers + payload
    return message + struct.pack(">I", crc32(message))


@st.composite
def any_header(draw: st.DrawFn) -> bytes:
    """One header of any of the ten value types, written by hand (encode writes only some of them)."""
    name = draw(st.text(min_size=1, max_size=20)).encode()
    kind = draw(st.integers(0, 9))
    if kind in (0, 1):
        value = b""
    elif kind in (2, 3, 4, 5, 8):
        bits = {2: 8, 3: 16, 4: 32, 5: 64, 8: 64}[kind]
        number = draw(st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1))
        value = number.to_bytes(bits // 8, "big", signed=True)
    elif kind == 9:
        value = draw(st.binary(min_size=16, max_size=16))
    else:
        raw = draw(st.text(max_size=40)).encode() if kind == 7 else draw(st.binary(max_size=40))
        value = struct.pack(">H", len(raw)) + raw
    return raw_header(name, kind, value)


@settings(max_examples=300, deadline=None)
@given(
    messages=st.lists(st.tuples(st.lists(any_header(), max_size=6), st.binary(max_size=64)), min_size=1, max_size=4),
    pieces=st.integers(1, 40),
)
def test_decoder_agrees_with_botocore(messages: list[tuple[list[bytes], bytes]], pieces: int) -> None:
    raw = b"".join(raw_frame(b"".join(headers), payload) for headers, payload in messages)
    expected = botocores(raw)  # botocore refuses a duplicate header name, as the decoder does
    assert ours(raw, pieces) == expected
    assert expected[1] or len(expected[0]) == len(messages)


header_values = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.binary(max_size=40),
    st.text(max_size=40),
)


@settings(max_examples=200, deadline=None)
@given(
    headers=st.dictionaries(st.text(min_size=1, max_size=20), header_values, max_size=6),
    payload=st.binary(max_size=200),
    flip=st.integers(0),
    mask=st.integers(1, 255),
)
def test_encode_and_any_corruption(headers: dict[str, HeaderValue], payload: bytes, flip: int, mask: int) -> None:
    raw = encode(headers, payload)
    assert botocores(raw) == ours(raw) == ([(headers, payload)], False)
    corrupt = bytearray(raw)
    corrupt[flip % len(raw)] ^= mask  # CRC32 catches any error in up to 32 consecutive bits
    assert ours(bytes(corrupt))[1] and botocores(bytes(corrupt))[1]


def test_decoder_limits_and_state() -> None:
    frame = encode({":message-type": "event"}, b"{}")
    decoder = Decoder()
    assert list(decoder.feed(frame[:20])) == [] and decoder.pending == 20
    assert [m.payload for m in decoder.feed(frame[20:] + frame[:3])] == [b"{}"] and decoder.pending == 3

    def prelude(total: int, headers: int) -> bytes:
        lengths = struct.pack(">II", total, headers)
        return lengths + struct.pack(">I", crc32(lengths))

    refused = {
        "payload length": prelude(16 + MAX_PAYLOAD + 1, 0),  # refused at once, not waited for
        "headers length": prelude(16 + MAX_HEADERS + 1, MAX_HEADERS + 1),
        "total length": prelude(20, 8),
        "prelude CRC": frame[:8] + b"\0\0\0\0",
        "unknown header value type": raw_frame(raw_header(b"x", 10, b""), b""),
        "runs past": raw_frame(raw_header(b"x", 7, b"\x00\x09abc"), b""),
        "not UTF-8": raw_frame(raw_header(b"\xff", 0, b""), b""),
        "duplicate header": raw_frame(raw_header(b"x", 0, b"") * 2, b""),
    }
    for why, raw in refused.items():
        decoder = Decoder()
        with pytest.raises(EventStreamError, match=why):
            list(decoder.feed(frame + raw))
        with pytest.raises(EventStreamError, match=why):  # the framing is lost: every later read says so
            list(decoder.feed(frame))
    decoder = Decoder()
    messages = decoder.feed(frame + frame[:-1] + bytes((frame[-1] ^ 1,)))
    assert next(messages).payload == b"{}"  # the good message before a bad one comes out first
    with pytest.raises(EventStreamError, match="message CRC mismatch"):
        next(messages)


# ---- the openai SDK reading what the gateway answers


def test_sdk_assembles_streamed_tool_calls() -> None:
    body = translate("stream-tool-calls", "bedrock-stream.jsonl").encode()
    text, finish, calls = sdk_tool_calls(body, CLIENT_MODEL)
    assert text == "Checking both." and finish == "tool_calls"
    assert [json.loads(calls[i]["arguments"]) for i in (0, 1)] == [
        {"city": "Paris", "unit": "c"},
        {"city": "Oslo", "unit": "c"},
    ]
    assert [calls[i]["id"] for i in (0, 1)] == ["tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "tooluse_Q2xvdWR5V2l0aENoYW5jZQ"]


@pytest.mark.parametrize("case", ["stream-exception", "stream-truncated", "stream-corrupt"])
def test_sdk_raises_on_a_failed_stream(case: str) -> None:
    message = sdk_stream_error(translate(case, "bedrock-stream.jsonl").encode(), CLIENT_MODEL).message
    assert message.startswith(("The model stream", "the upstream"))


def test_sdk_reads_usage_and_reasoning() -> None:
    body = translate("stream-include-usage", "bedrock-stream.jsonl").encode()
    client = openai_client(200, body, "text/event-stream")
    chunks = list(client.chat.completions.create(model="m", messages=ASK, stream=True))
    reasoning = reasoning_of(chunks)
    assert reasoning == "A prime has exactly two divisors. 1 has one."
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.prompt_tokens_details.cached_tokens) == (
        2544,
        311,
        2048,
    )

    body = translate("response-text-tool-reasoning", "bedrock-response.json").encode()
    completion = openai_client(200, body, "application/json").chat.completions.create(model="m", messages=ASK)
    message = completion.choices[0].message
    assert message.content == "I'll check the weather in Paris and Oslo ☕."  # every text block, not the first
    assert (message.model_extra or {})["reasoning_content"] == "Two cities, so two calls. Celsius, as asked."
    assert [c.id for c in message.tool_calls or []] == [
        "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q",
        "tooluse_Q2xvdWR5V2l0aENoYW5jZQ",
    ]
    assert (completion.id, completion.service_tier, completion.choices[0].finish_reason) == (
        REQUEST_ID,
        "priority",
        "tool_calls",
    )


@pytest.mark.parametrize(
    ("case", "exception", "code"),
    [
        ("error-throttling", openai.RateLimitError, "rate_limit_exceeded"),
        ("error-model-not-found", openai.NotFoundError, "model_not_found"),
        ("error-access-denied", openai.PermissionDeniedError, "permission_denied"),
        ("error-validation", openai.BadRequestError, "invalid_request_error"),
        ("error-service-unavailable", openai.InternalServerError, "service_unavailable"),
    ],
)
def test_sdk_reads_error_envelopes(case: str, exception: type[openai.APIStatusError], code: str) -> None:
    status, _, _ = error_input(case)
    client = openai_client(status, translate(case, "bedrock-error.txt").encode(), "application/json")
    with pytest.raises(exception) as raised:
        client.chat.completions.create(model=CLIENT_MODEL, messages=ASK)
    assert (raised.value.status_code, raised.value.code) == (status, code)


# ---- requests Converse cannot honour


REQUESTS = Requests(CLIENT_MODEL, "tooluse_1")
body_with, calls_f, part, image = REQUESTS.body_with, REQUESTS.calls_f, REQUESTS.part, REQUESTS.image


IMAGE_URL = "messages[0].content[0].image_url.url"
TOOL_HISTORY = [ASKED_F, calls_f("{}")["messages"][1], {"role": "tool", "tool_call_id": "tooluse_1", "content": "ok"}]
REJECTED: list[tuple[str, dict[str, Any], str, str]] = [
    *REQUESTS.rejected_by_all(),
    ("n", body_with(n=2), "n", "unsupported_parameter"),
    ("logprobs", body_with(logprobs=True), "logprobs", "unsupported_parameter"),
    ("top_logprobs", body_with(top_logprobs=3), "top_logprobs", "unsupported_parameter"),
    ("presence_penalty", body_with(presence_penalty=0.5), "presence_penalty", "unsupported_parameter"),
    ("frequency_penalty", body_with(frequency_penalty=-1), "frequency_penalty", "unsupported_parameter"),
    ("seed", body_with(seed=7), "seed", "unsupported_parameter"),
    ("temperature>1", body_with(temperature=1.5), "temperature", "unsupported_value"),
    ("top_p>1", body_with(top_p=1.5), "top_p", "invalid_value"),
    ("empty stop", body_with(stop=["a", ""]), "stop[1]", "invalid_value"),
    ("service_tier", body_with(service_tier="gold"), "service_tier", "invalid_value"),
    ("service_tier type", body_with(service_tier=["flex"]), "service_tier", "invalid_value"),
    ("json_object", body_with(response_format={"type": "json_object"}), "response_format.type", "unsupported_value"),
    ("unknown format", body_with(response_format={"type": "xml"}), "response_format.type", "invalid_value"),
    ("effort minimal", body_with(reasoning_effort="minimal"), "reasoning_effort", "unsupported_value"),
    ("effort none", body_with(reasoning_effort="none"), "reasoning_effort", "unsupported_value"),
    ("effort unknown", body_with(reasoning_effort="extreme"), "reasoning_effort", "invalid_value"),
    ("empty turns only", body_with(messages=[{"role": "user", "content": ""}]), "messages", "invalid_value"),
    (
        "file",
        part([{"type": "file", "file": {"file_id": "file-1"}}]),
        "messages[0].content[0].type",
        "unsupported_value",
    ),
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
    ("https image", image("https://example.org/cat.png"), IMAGE_URL, "unsupported_value"),
    ("s3 image", image("s3://bucket/cat.png"), IMAGE_URL, "unsupported_value"),
    ("svg", image("data:image/svg+xml;base64,PHN2Zz4="), IMAGE_URL, "unsupported_value"),
    ("pdf", image("data:application/pdf;base64,JVBERi0="), IMAGE_URL, "unsupported_value"),
    ("not base64", image("data:image/png,%89PNG"), IMAGE_URL, "invalid_value"),
    ("no data", image("data:image/png;base64,"), IMAGE_URL, "invalid_value"),
    (
        "image_url type",
        part([{"type": "image_url", "image_url": "x"}]),
        "messages[0].content[0].image_url",
        "invalid_value",
    ),
    (
        "named without tools",
        body_with(tool_choice={"type": "function", "function": {"name": "f"}}),
        "tool_choice",
        "invalid_value",
    ),
    ("unknown tool_choice", body_with(tools=[FUNCTION], tool_choice="sometimes"), "tool_choice", "unsupported_value"),
    (
        "none with tool history",
        body_with(messages=TOOL_HISTORY, tools=[FUNCTION], tool_choice="none"),
        "tool_choice",
        "unsupported_value",
    ),
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
    assert "Anthropic" not in raised.value.message


def test_one_rejection_for_every_schema() -> None:
    """The caller catches one class, whichever provider's schema raised it."""
    assert RequestRejected is common.RequestRejected is anthropic.RequestRejected
    with pytest.raises(RequestRejected) as raised:
        chat_request(body_with(n=3))
    assert raised.value.message == "n: Converse returns one choice; n must be 1"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
MESSAGE_KEYS = ["role", "content", "tool_calls", "tool_call_id", "refusal", "name", "audio", "function_call"]
PART_KEYS = ["type", "text", "image_url", "input_audio", "refusal", "prompt_cache_breakpoint"]


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
        assert request["messages"] and all(turn["content"] for turn in request["messages"])


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from([*STREAM_OUTPUT.members, "other"]),
            st.sampled_from(["event", "exception", "error"]),
            json_values,
        ),
        max_size=8,
    ),
    usage=st.booleans(),
)
def test_any_events_give_a_well_formed_stream(events: list[tuple[str, str, Any]], usage: bool) -> None:
    """Payloads of any shape under any event type: a stream that ends once, never a crash."""
    stream = ChatStream("m", CREATED, usage, REQUEST_ID)
    raw = b"".join(
        encode({":message-type": kind, ":event-type": name, ":exception-type": name}, orjson.dumps(payload))
        for name, kind, payload in events
    )
    out = stream.feed(raw) + stream.finish()
    endings = [e for e in out.split(b"\n\n") if e.startswith(b'data: {"error"') or e == b"data: [DONE]"]
    failed = [e for e in endings if e != b"data: [DONE]"]
    assert endings and endings in ([b"data: [DONE]"], failed, [*failed, b"data: [DONE]"]) and len(failed) <= 1
    assert out.endswith(endings[-1] + b"\n\n")


def test_unknown_fields_are_all_named() -> None:
    with pytest.raises(RequestRejected) as raised:
        chat_request(body_with(top_k=5, thinking={"type": "enabled"}))
    assert raised.value.message == "thinking, top_k: unknown parameters"


def test_rejection_never_quotes_request_content() -> None:
    with pytest.raises(RequestRejected) as raised:
        chat_request(calls_f('{"secret": "hunter2"'))
    assert "hunter2" not in raised.value.message
    with pytest.raises(RequestRejected) as raised:
        chat_request(image("https://example.org/hunter2.png"))
    assert "hunter2" not in raised.value.message


# ---- the rest of the request mapping


@pytest.mark.parametrize("field", sorted(completion_create_params.CompletionCreateParamsStreaming.__annotations__))
def test_every_openai_field_is_decided(field: str) -> None:
    """Each field of OpenAI's request type is mapped, dropped on purpose or rejected; `null` always passes."""
    if field not in ("model", "messages"):
        chat_request(body_with(**{field: None}))


def test_dropped_fields_are_openai_fields() -> None:
    assert set(DROPPED_FIELDS) <= set(completion_create_params.CompletionCreateParamsBase.__annotations__)


@pytest.mark.parametrize(
    ("model", "stream", "path"),
    [
        ("amazon.nova-pro-v1:0", False, "/model/amazon.nova-pro-v1:0/converse"),
        (
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            True,
            "/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/converse-stream",
        ),
        (
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-2-1b-instruct-v1:0",
            False,
            "/model/arn:aws:bedrock:us-east-1:123456789012:inference-profile%2Fus.meta.llama3-2-1b-instruct-v1:0/converse",
        ),
        ("my model?#%", True, "/model/my%20model%3F%23%25/converse-stream"),
    ],
)
def test_converse_path(model: str, stream: bool, path: str) -> None:
    assert converse_path(model, stream) == path


def test_converse_path_needs_a_model() -> None:
    with pytest.raises(RequestRejected) as raised:
        converse_path("", False)
    assert raised.value.param == "model"


def test_sampling_and_limits() -> None:
    config = chat_request(body_with(max_tokens=10, max_completion_tokens=20, temperature=1, top_p=0, stop="END"))
    assert config["inferenceConfig"] == {"maxTokens": 20, "temperature": 1, "topP": 0, "stopSequences": ["END"]}
    assert "inferenceConfig" not in chat_request(body_with(stop=[]))  # no maxTokens: the model's own limit
    assert set(chat_request(body_with(stream=True, service_tier="auto"))) == {"messages"}


def test_tool_choice_none_and_parallel_calls() -> None:
    # Without tool history, none leaves the tools out (and with them any parallel_tool_calls question).
    assert "toolConfig" not in chat_request(body_with(tools=[FUNCTION], tool_choice="none", parallel_tool_calls=False))
    assert "toolConfig" not in chat_request(body_with(tool_choice="auto", parallel_tool_calls=False))
    with_history = chat_request(body_with(messages=TOOL_HISTORY, tools=[FUNCTION], parallel_tool_calls=True))
    assert with_history["toolConfig"] == {
        "tools": [chat_request(body_with(tools=[FUNCTION]))["toolConfig"]["tools"][0]]
    }
    allowed = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [FUNCTION]}}
    assert "toolChoice" not in chat_request(body_with(tools=[FUNCTION], tool_choice=allowed))["toolConfig"]


def test_tool_results_merge_and_keep_their_cache_points() -> None:
    breakpoint_ = {"mode": "explicit"}
    body = body_with(
        messages=[
            *TOOL_HISTORY,
            {
                "role": "tool",
                "tool_call_id": "tooluse_2",
                "content": [{"type": "text", "text": "x", "prompt_cache_breakpoint": breakpoint_}],
            },
            {"role": "user", "content": "and?"},
        ],
        tools=[FUNCTION],
    )
    turns = chat_request(body)["messages"]
    assert [turn["role"] for turn in turns] == ["user", "assistant", "user"]
    assert turns[2]["content"] == [
        {"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "ok"}]}},
        {"toolResult": {"toolUseId": "tooluse_2", "content": [{"text": "x"}]}},
        {"cachePoint": {"type": "default"}},
        {"text": "and?"},
    ]


@pytest.mark.parametrize("case", case_names("openai-request.json"))
def test_the_request_is_not_changed(case: str) -> None:
    body = client_request(case)
    before = copy.deepcopy(body)
    chat_request(body)
    assert body == before


# ---- errors


def envelope_of(status: int, error_type: str | None, body: bytes) -> dict[str, Any]:
    return dict(orjson.loads(error_response(status, error_type, body))["error"])


def test_non_json_error_keeps_a_bounded_prefix() -> None:
    for text in ("x" * 10_000, "é" * 300 + "tail", "<html>" + "☕" * 1000):
        message = envelope_of(502, None, text.encode())["message"]
        assert len(message) <= 256 and text.startswith(message.removesuffix("..."))
    assert envelope_of(503, None, b"\xff\xfe not utf-8")["message"].endswith("not utf-8")
    assert envelope_of(500, "InternalServerException", b'{"message": ""}')["message"] == '{"message": ""}'


@pytest.mark.parametrize(
    ("status", "error_type", "kind", "code"),
    [
        (400, "ValidationException", "invalid_request_error", "invalid_request_error"),
        (400, "ServiceQuotaExceededException", "invalid_request_error", "quota_exceeded"),
        (
            403,
            "AccessDeniedException:http://internal.amazon.com/coral/com.amazon.bedrock/",
            "permission_error",
            "permission_denied",
        ),
        (403, "InvalidSignatureException", "authentication_error", "invalid_api_key"),
        (403, "ExpiredTokenException", "authentication_error", "invalid_api_key"),
        (404, "ResourceNotFoundException", "invalid_request_error", "model_not_found"),
        (408, "ModelTimeoutException", "server_error", "timeout"),
        (424, "ModelErrorException", "server_error", "model_error"),
        (429, " ThrottlingException ", "rate_limit_error", "rate_limit_exceeded"),
        (429, "ModelNotReadyException", "rate_limit_error", "model_not_ready"),
        (500, "InternalServerException", "server_error", "internal_error"),
        (503, "ServiceUnavailableException", "server_error", "service_unavailable"),
        (401, None, "authentication_error", "invalid_api_key"),
        (418, None, "invalid_request_error", "invalid_request_error"),
        (599, "", "server_error", "internal_error"),
        (429, "NewException", "rate_limit_error", "rate_limit_exceeded"),
    ],
)
def test_error_table(status: int, error_type: str | None, kind: str, code: str) -> None:
    error = envelope_of(status, error_type, b'{"message":"m"}')
    assert (error["message"], error["type"], error["code"], error["param"]) == ("m", kind, code, None)


def test_every_error_of_the_service_model_is_mapped() -> None:
    """Each error Converse and ConverseStream may answer, by its type, keeps the HTTP status's meaning."""
    names = {shape.name for op in ("Converse", "ConverseStream") for shape in SERVICE.operation_model(op).error_shapes}
    names |= {member.name for member in STREAM_OUTPUT.members.values() if member.metadata.get("exception")}
    for name in sorted(names):
        status = SERVICE.shape_for(name).metadata["error"]["httpStatusCode"]
        by_type = envelope_of(status, name, b'{"message":"m"}')
        by_status = envelope_of(status, None, b'{"message":"m"}')
        assert by_type["type"] == by_status["type"], name
