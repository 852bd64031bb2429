"""Usage metering: stream metering per message (responses only: headers with Envoy's attributes, then an event
stream's chunks), its SSE parser, when a request started; the usage log (an access log entry -> GenAI metrics, from
hand-built entries and over real gRPC); and the ext_proc server's dispatch of streams by their initial metadata."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime, timedelta

import grpc
import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from google.protobuf import struct_pb2
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as otel_service_pb2
from opentelemetry.proto.common.v1 import common_pb2 as otel_common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2 as otel_logs_pb2
from prometheus_client import REGISTRY

from testing.ports import free_port
from translators.ir import TranslateOptions
from translators.xds.ai_listener import USAGE_LOG_ATTRIBUTE, USAGE_LOG_LINES
from translators.xds.names import (
    EXTPROC_ATTRIBUTES_KEY,
    METERING_METADATA_NAMESPACE,
    PATH_ATTRIBUTE,
    PICKER_POOL_METADATA,
    REQUEST_TIME_ATTRIBUTE,
    UPSTREAM_SETTINGS_METADATA,
    USAGE_METADATA_KEYS,
)
from xds_server.api import usage_log_pb2
from xds_server.control_plane import ControlPlane
from xds_server.extproc import telemetry
from xds_server.extproc.metering import STREAM_RESPONSE_BODY, MeteringStream, request_started
from xds_server.extproc.protocol import CONTINUE_RESPONSE_BODY, PASS_THROUGH, Mode
from xds_server.extproc.sse import SseParser, Usage
from xds_server.extproc.upstream import NO_SETTINGS
from xds_server.extproc.usage_log import LOGS_SERVICE, SLICE, UsageEntry, fields
from xds_server.serve import start_extproc
from xds_server.xds.cache import SnapshotCache
from xds_server.xds.streams import ClientRegistry

BACKEND = "aiservicebackend/default/a"
CLUSTER = "aigatewayroute/default/r/rule/0"
CHAT = "/v1/chat/completions"
OPENAI_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
# The wall clock when the response headers arrive, and Envoy's `request.time` a quarter second before, as it sends
# it (the e2e run's real value looked like "2026-12-05T12:39:42.377263+00:00").
HEADERS_AT = datetime(2026, 12, 5, 12, 0, 0, 500000, tzinfo=UTC).timestamp()
REQUEST_TIME = "2026-12-05T12:00:00.250000+00:00"


class Clock:
    """The monotonic and the wall clock, moved together."""

    def __init__(self) -> None:
        self.now = 100.0
        self.wall_now = HEADERS_AT

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wall_now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall_now += seconds


def metering(clock: Clock | None = None) -> MeteringStream:
    """A stream on a test clock (a fresh one unless given): the request started a quarter second ago."""
    clock = clock or Clock()
    return MeteringStream(clock.monotonic, clock.wall)


def headers(*pairs: tuple[str, str], end_of_stream: bool = False) -> pb.HttpHeaders:
    values = [base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
    return pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=values), end_of_stream=end_of_stream)


def attributes(path: str | None = CHAT, time: str | None = REQUEST_TIME) -> dict[str, struct_pb2.Struct]:
    """The response attributes Envoy sends stream metering; None leaves one out (Envoy omits what it cannot read)."""
    values = {PATH_ATTRIBUTE: path, REQUEST_TIME_ATTRIBUTE: time}
    found = struct_pb2.Struct()
    found.update({k: v for k, v in values.items() if v is not None})
    return {EXTPROC_ATTRIBUTES_KEY: found}


def response_headers(
    status: int | str,
    content_type: str | None,
    *extra: tuple[str, str],
    end_of_stream: bool = False,
    found: dict[str, struct_pb2.Struct] | None = None,
) -> pb.ProcessingRequest:
    pairs = [(":status", str(status)), *([("content-type", content_type)] if content_type else []), *extra]
    return pb.ProcessingRequest(
        response_headers=headers(*pairs, end_of_stream=end_of_stream),
        attributes=attributes() if found is None else found,
    )


def response_body(body: bytes, end_of_stream: bool) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=body, end_of_stream=end_of_stream))


def metadata(response: pb.ProcessingResponse) -> dict[str, object]:
    """What the access and usage logs get (numbers come back as floats: 7.0 == 7)."""
    if METERING_METADATA_NAMESPACE not in response.dynamic_metadata.fields:
        return {}
    fields = response.dynamic_metadata.fields[METERING_METADATA_NAMESPACE].struct_value.fields
    return {k: v.string_value if v.WhichOneof("kind") == "string_value" else v.number_value for k, v in fields.items()}


# --- the GenAI metrics, read before and after: the registry is global, so tests compare deltas ---

GEN_AI_METRICS = {
    "gen_ai_server_request_duration": "duration",
    "gen_ai_client_token_usage": "tokens",
    "gen_ai_server_time_to_first_token": "ttft",
    "gen_ai_server_time_per_output_token": "tpot",
}
Series = tuple[str, tuple[str, ...]]  # ("duration_count", the label values in telemetry.LABELS order [+ token type])


def gen_ai_samples() -> dict[Series, float]:
    """Every _count and _sum sample of every GenAI histogram, whatever its labels."""
    found: dict[Series, float] = {}
    for family in REGISTRY.collect():
        short = GEN_AI_METRICS.get(family.name)
        if short is None:
            continue
        for sample in family.samples:
            suffix = sample.name.removeprefix(family.name)
            if suffix in ("_count", "_sum"):
                values = tuple(sample.labels[label] for label in telemetry.LABELS)
                if "gen_ai_token_type" in sample.labels:
                    values += (sample.labels["gen_ai_token_type"],)
                found[(short + suffix, values)] = sample.value
    return found


class Metrics:
    """What moved since it was made, in every series of the GenAI metrics (so a wrong label set shows too)."""

    def __init__(self) -> None:
        self.before = gen_ai_samples()

    def delta(self) -> dict[Series, float]:
        after = gen_ai_samples()
        return {key: value - self.before.get(key, 0.0) for key, value in after.items() if value != self.before.get(key)}


def labels(
    model: str, response_model: str, backend: str = BACKEND, error_type: str = "", operation: str = "chat"
) -> tuple[str, ...]:
    return (operation, model, response_model, backend, error_type)


# --- when a request started ---


@pytest.mark.parametrize(
    ("stamp", "seconds_before"),
    [
        ("2026-12-05T12:00:00.250Z", 0.75),
        ("2026-12-05T12:00:00.250000+00:00", 0.75),  # Envoy's own rendering
        ("2026-12-05T12:00:00.250000123+00:00", 0.75),  # nanoseconds
        ("2026-12-05T12:00:00.25+00:00", 0.75),
        ("2026-12-05T12:00:00Z", 1.0),
        ("2026-12-05T13:00:00.5+01:00", 0.5),  # another offset: 11:00:00.5Z
        ("2026-12-05T11:59:00Z", 61.0),
    ],
)
def test_request_time_moves_the_monotonic_start_back_by_the_time_since(stamp: str, seconds_before: float) -> None:
    wall = datetime(2026, 12, 5, 12, 0, 1, tzinfo=UTC).timestamp()
    started = request_started(attributes(time=stamp), wall, 500.0)
    assert started == pytest.approx(500.0 - seconds_before, abs=1e-5)


@pytest.mark.parametrize(
    "stamp",
    [None, "", "yesterday", "2026-13-05T12:00:00Z", "2026-12-05T25:00:00Z", "1733400000", "2026-12-05T12:00:05Z"],
    ids=["absent", "empty", "words", "month-13", "hour-25", "unix-seconds", "in-the-future"],
)
def test_a_missing_malformed_or_future_request_time_starts_now(stamp: str | None) -> None:
    wall = datetime(2026, 12, 5, 12, 0, 1, tzinfo=UTC).timestamp()
    assert request_started(attributes(time=stamp), wall, 500.0) == 500.0


def test_no_attributes_at_all_start_now() -> None:
    assert request_started({}, HEADERS_AT, 500.0) == 500.0


# --- event streams: read chunk by chunk ---


def test_an_event_stream_is_streamed_chunk_by_chunk_and_keeps_the_last_usage() -> None:
    clock = Clock()
    stream = metering(clock)
    moved = Metrics()
    reply = stream.process(response_headers(200, "text/event-stream; charset=utf-8"))
    assert reply == STREAM_RESPONSE_BODY
    assert reply.WhichOneof("response") == "response_headers"
    assert reply.mode_override.response_body_mode == Mode.STREAMED
    assert not reply.dynamic_metadata.fields  # nothing to say yet
    events = (
        b'data: {"model":"model-s-1","choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
        b'data: {"model":"model-s-1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}\n\n'
        b'data: {"model":"model-s-1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":21,"total_tokens":24}}'
        b"\r\n\r\ndata: [DONE]\n\n"
    )
    clock.advance(0.25)
    assert stream.process(response_body(b"", False)) == CONTINUE_RESPONSE_BODY  # an empty chunk is no token yet
    for index in range(0, len(events), 7):
        clock.advance(0.25)
        assert stream.process(response_body(events[index : index + 7], False)) == CONTINUE_RESPONSE_BODY
        assert not stream.ended
    clock.advance(0.1)
    final = stream.process(response_body(b"", True))
    assert final.WhichOneof("response") == "response_body" and not final.HasField("mode_override")
    # The first chunk came half a second after the headers, which came a quarter second after request.time.
    assert metadata(final) == {
        "response_model": "model-s-1",
        "input_tokens": 3,
        "output_tokens": 21,
        "total_tokens": 24,
        "first_token_ms": 750,
    }
    assert set(metadata(final)) <= set(USAGE_METADATA_KEYS)
    assert stream.ended
    assert moved.delta() == {}  # stream metering records no metric: the usage log does, from the access log entry


@pytest.mark.parametrize("path", OPENAI_PATHS)
def test_an_event_stream_on_any_openai_path_is_streamed(path: str) -> None:
    reply = metering().process(response_headers(200, "text/event-stream", found=attributes(path)))
    assert reply == STREAM_RESPONSE_BODY


def test_without_request_time_the_first_token_is_timed_from_the_response_headers() -> None:
    clock = Clock()
    stream = metering(clock)
    stream.process(response_headers(200, "text/event-stream", found=attributes(time=None)))
    clock.advance(0.4006)
    stream.process(response_body(b'data: {"model":"m"}\n\n', False))
    clock.advance(3.0)
    assert metadata(stream.process(response_body(b"", True))) == {"response_model": "m", "first_token_ms": 401}


def test_a_stream_without_usage_says_its_model_and_first_token_only() -> None:
    clock = Clock()
    stream = metering(clock)
    stream.process(response_headers(200, "text/event-stream"))
    clock.advance(0.05)
    stream.process(response_body(b'data: {"model":"m-1","choices":[{"delta":{}}]}\n\n', False))
    found = metadata(stream.process(response_body(b"data: [DONE]\n\n", True)))
    assert found == {"response_model": "m-1", "first_token_ms": 300}


def test_an_event_stream_with_an_empty_body_says_nothing() -> None:
    stream = metering()
    stream.process(response_headers(200, "text/event-stream"))
    final = stream.process(response_body(b"", True))
    assert final.WhichOneof("response") == "response_body" and metadata(final) == {}
    assert stream.ended


def test_an_unterminated_last_event_counts_at_the_end_of_the_body() -> None:
    """The last event's blank line never came, and its data line was cut between the last two chunks."""
    stream = metering()
    stream.process(response_headers(200, "text/event-stream"))
    stream.process(response_body(b'data: {"model":"m-u","usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n', False))
    stream.process(response_body(b'data: {"model":"m-u","usage":{"prompt_tokens":2,', False))
    final = stream.process(response_body(b'"completion_tokens":9}}', True))
    found = metadata(final)
    assert (found["input_tokens"], found["output_tokens"], found["total_tokens"]) == (2, 9, 11)


def test_trailers_end_an_answer_whose_body_never_said_end_of_stream() -> None:
    stream = metering()
    stream.process(response_headers(200, "text/event-stream"))
    stream.process(response_body(b'data: {"model":"m-t","usage":{"prompt_tokens":3,"completion_tokens":4}}', False))
    final = stream.process(pb.ProcessingRequest(response_trailers=pb.HttpTrailers()))
    assert final.WhichOneof("response") == "response_trailers"
    assert (metadata(final)["input_tokens"], metadata(final)["output_tokens"]) == (3, 4)


def test_end_reads_an_unterminated_event_once() -> None:
    stream = metering()
    stream.process(response_headers(200, "text/event-stream"))
    stream.process(response_body(b'data: {"model":"m-e","usage":{"prompt_tokens":4,"completion_tokens":6}}', False))
    assert stream.metadata() == {"first_token_ms": 250} and not stream.ended  # not read yet: the event may go on
    stream.end()
    assert (stream.usage.input_tokens, stream.usage.output_tokens, stream.ended) == (4, 6, True)
    assert stream.parser is not None and stream.parser.finish() == []  # nothing left over
    stream.end()
    assert stream.metadata() == {
        "response_model": "m-e",
        "input_tokens": 4,
        "output_tokens": 6,
        "total_tokens": 10,
        "first_token_ms": 250,
    }


def test_end_without_an_event_stream_is_a_no_op() -> None:
    stream = metering()
    stream.end()
    assert stream.ended and stream.metadata() == {}


# --- answers that are not read: Envoy reads JSON answers itself (json_to_metadata) ---


@pytest.mark.parametrize(
    ("status", "content_type", "extra", "end_of_stream"),
    [
        (500, "application/json", (), False),
        (429, "text/event-stream", (), False),
        (404, "text/event-stream", (), False),
        (201, "text/event-stream", (), False),
        (200, "application/json", (), False),
        (200, "application/json; charset=utf-8", (), False),
        (200, "text/plain", (), False),
        (200, None, (), False),
        (200, "text/event-stream", (("content-encoding", "gzip"),), False),
        (200, "text/event-stream", (("content-encoding", "br"),), False),
        (200, "text/event-stream", (), True),  # HEAD, or a 200 without a body
    ],
    ids=["500", "429-stream", "404-stream", "201-stream", "json", "json-charset", "text", "no-type", "gzip-stream",
         "br-stream", "no-body"],
)  # fmt: skip
def test_other_answers_finish_at_their_headers_with_nothing_to_say(
    status: int, content_type: str | None, extra: tuple[tuple[str, str], ...], end_of_stream: bool
) -> None:
    moved = Metrics()
    stream = metering()
    reply = stream.process(response_headers(status, content_type, *extra, end_of_stream=end_of_stream))
    assert reply.WhichOneof("response") == "response_headers" and not reply.HasField("mode_override")
    assert metadata(reply) == {}
    assert stream.ended and stream.parser is None
    # Envoy sends no body after that; were it to, the body would pass unread.
    assert stream.process(response_body(b'{"usage":{"prompt_tokens":1}}', True)) == CONTINUE_RESPONSE_BODY
    assert moved.delta() == {}


@pytest.mark.parametrize("path", ["/v1/models", "/v1/responses", "/healthz", "/v1/chat/completions/", "", None])
def test_an_event_stream_on_a_path_that_is_not_an_openai_operation_is_not_read(path: str | None) -> None:
    stream = metering()
    reply = stream.process(response_headers(200, "text/event-stream", found=attributes(path)))
    assert reply.WhichOneof("response") == "response_headers" and not reply.HasField("mode_override")
    assert metadata(reply) == {} and stream.parser is None


def test_messages_it_never_asks_for_are_answered_unchanged() -> None:
    stream = metering()
    trailers = pb.ProcessingRequest(response_trailers=pb.HttpTrailers())
    assert stream.process(trailers) == PASS_THROUGH["response_trailers"]
    request = pb.ProcessingRequest(request_headers=headers((":path", CHAT)))
    assert stream.process(request) == PASS_THROUGH["request_headers"]


# --- SSE parsing ---

usages = st.fixed_dictionaries(
    {"prompt_tokens": st.integers(0, 10**6), "completion_tokens": st.integers(0, 10**6)},
    optional={"total_tokens": st.integers(0, 10**6)},
)
chunks = st.fixed_dictionaries(
    {"model": st.sampled_from(["m", "m-2024"]), "choices": st.just([])},
    optional={"usage": st.none() | usages, "note": st.text(max_size=20)},
)


def sse_stream(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A valid event stream (with comments, other fields, LF or CRLF endings) and the data of its events."""
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    stream = b""
    expected: list[bytes] = []
    for chunk in draw(st.lists(chunks, max_size=8)):
        data = orjson.dumps(chunk)
        if draw(st.booleans()):
            stream += b": keep-alive" + newline
        if draw(st.booleans()):
            stream += b"event: message" + newline + b"id: 7" + newline
        separator = draw(st.sampled_from([b"data: ", b"data:"]))
        stream += separator + data + newline + newline
        expected.append(data)
    if draw(st.booleans()):
        stream += b"data: [DONE]" + newline + newline
        expected.append(b"[DONE]")
    return stream, expected


@st.composite
def split_streams(draw: st.DrawFn) -> tuple[bytes, list[bytes], list[bytes]]:
    stream, expected = sse_stream(draw)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    return stream, expected, pieces


def last_usage(events: list[bytes]) -> dict[str, int] | None:
    found = None
    for data in events:
        if data != b"[DONE]" and isinstance(usage := orjson.loads(data).get("usage"), dict):
            found = usage
    return found


@given(split_streams())
def test_any_split_of_an_event_stream_gives_the_same_events_and_last_usage(
    case: tuple[bytes, list[bytes], list[bytes]],
) -> None:
    _, expected, pieces = case
    parser = SseParser()
    usage = Usage()
    events: list[bytes] = []
    for piece in pieces:
        events += parser.feed(piece)
    events += parser.finish()
    assert events == expected
    for data in events:
        usage.read_event(data)
    want = last_usage(expected)
    if want is None:
        assert not usage.known
    else:
        assert (usage.input_tokens, usage.output_tokens) == (want["prompt_tokens"], want["completion_tokens"])
        assert usage.total_tokens == want.get("total_tokens", want["prompt_tokens"] + want["completion_tokens"])
    if expected and expected != [b"[DONE]"]:
        assert usage.response_model in ("m", "m-2024")


@given(split_streams())
def test_any_split_of_an_event_stream_meters_the_same_last_usage(case: tuple[bytes, list[bytes], list[bytes]]) -> None:
    """The same through MeteringStream, as Envoy hands it the chunks: the logs get the last usage."""
    stream_bytes, expected, pieces = case
    clock = Clock()
    stream = metering(clock)
    stream.process(response_headers(200, "text/event-stream"))
    for piece in pieces:
        clock.advance(0.01)
        assert stream.process(response_body(piece, False)) == CONTINUE_RESPONSE_BODY
    found = metadata(stream.process(response_body(b"", True)))
    want = last_usage(expected)
    if want is None:
        assert "input_tokens" not in found and "output_tokens" not in found
    else:
        total = want.get("total_tokens", want["prompt_tokens"] + want["completion_tokens"])
        assert (found["input_tokens"], found["output_tokens"], found["total_tokens"]) == (
            want["prompt_tokens"],
            want["completion_tokens"],
            total,
        )
    assert stream.ended
    # The first non-empty piece is the first token: 10 ms per piece, after the 250 ms before the headers.
    first = next((i for i, piece in enumerate(pieces) if piece), None)
    assert found.get("first_token_ms") == (None if first is None else 250 + 10 * (first + 1))
    assert bool(stream_bytes) == ("first_token_ms" in found)


def test_multi_line_data_and_an_unterminated_last_event() -> None:
    parser = SseParser()
    assert parser.feed(b"data: a\ndata: b\n\ndata:") == [b"a\nb"]
    assert parser.feed(b" tail") == []
    assert parser.finish() == [b"tail"]
    assert parser.finish() == []


# --- the usage log: a log record's attributes -> GenAI metrics ---


def log_entry(
    path: str = CHAT,
    status: int | None = 200,
    backend: str | None = BACKEND,
    cluster: str | None = CLUSTER,
    model: str | None = "model-a",
    duration: float | None = 2.5,
    stream_ms: int | None = None,
    usage: Mapping[str, object] | None = None,
) -> dict[str, str]:
    """A record's values as Envoy formats USAGE_LOG_LINES and USAGE_LOG_ATTRIBUTE: "-" for what it has no value of
    (None here);
    numbers as it prints a double (usage); `duration` in seconds, printed in whole microseconds."""
    rendered = {
        "path": path,
        "model": model,
        "status": None if status is None else str(status),
        "backend": backend,
        "cluster": cluster,
        "duration_us": None if duration is None else str(round(duration * 1e6)),
        "stream_ms": None if stream_ms is None else str(stream_ms),
        **dict.fromkeys(("input_tokens", "output_tokens", "first_token_ms", "response_model")),
        **{key: None if value is None else str(value) for key, value in (usage or {}).items()},
    }
    return {key: "-" if value is None else value for key, value in rendered.items()}


FULL_USAGE = {
    "response_model": "model-a-0613",
    "input_tokens": 7,
    "output_tokens": 11,
    "first_token_ms": 300,
}


def test_the_attributes_are_the_usage_logs() -> None:
    """log_entry builds what the translator asks Envoy for: the same attribute names, every usage key but the total."""
    assert set(log_entry(usage=FULL_USAGE)) == {key for key, _ in USAGE_LOG_LINES} | {USAGE_LOG_ATTRIBUTE[0]}


def test_an_entry_says_what_was_routed_where_when_and_what_it_used() -> None:
    entry = log_entry(model="model-a", usage=FULL_USAGE)
    assert UsageEntry.of(entry) == UsageEntry(
        operation="chat",
        model="model-a",
        response_model="model-a-0613",
        backend=BACKEND,
        status=200,
        duration=2.5,
        input_tokens=7,
        output_tokens=11,
        first_token=0.3,
    )


@pytest.mark.parametrize(
    ("path", "operation"),
    [
        ("/v1/chat/completions", "chat"),
        ("/v1/completions", "text_completion"),
        ("/v1/embeddings", "embeddings"),
        ("/v1/chat/completions?api-version=2024-10-21", "chat"),
        ("/v1/embeddings?", "embeddings"),
        ("/v1/completions?x=/v1/chat/completions", "text_completion"),
    ],
)
def test_the_operation_is_the_path_without_its_query(path: str, operation: str) -> None:
    found = UsageEntry.of(log_entry(path=path))
    assert found is not None and found.operation == operation


@pytest.mark.parametrize(
    "path", ["/v1/models", "/v1/responses", "/healthz", "/v1/chat/completions/", "", "?/v1/chat/completions", "/"]
)
def test_an_entry_on_a_path_that_is_not_an_openai_operation_is_none(path: str) -> None:
    assert UsageEntry.of(log_entry(path=path)) is None


def test_an_entry_no_backend_or_cluster_answered_is_none() -> None:
    """Envoy's own answers (model_not_found, invalid_json... direct responses) have neither: no label set a client
    could grow."""
    assert UsageEntry.of(log_entry(backend=None, cluster=None)) is None
    assert UsageEntry.of(log_entry(backend="", cluster="")) is None


def test_an_entry_without_any_timing_is_none() -> None:
    assert UsageEntry.of(log_entry(duration=None, usage=FULL_USAGE)) is None


def test_an_answer_the_client_left_before_its_end_is_timed_by_the_stream() -> None:
    """No last byte sent to the client (it went away mid-answer): the stream's own duration times it."""
    found = UsageEntry.of(log_entry(duration=None, stream_ms=1500, usage=FULL_USAGE))
    assert found is not None and found.duration == 1.5 and found.output_tokens == 11


def test_the_backend_is_the_endpoints_and_the_cluster_only_when_there_is_none() -> None:
    tagged = UsageEntry.of(log_entry(backend="aiservicebackend/default/b", cluster="cluster-x"))
    assert tagged is not None and tagged.backend == "aiservicebackend/default/b"
    untagged = UsageEntry.of(log_entry(backend=None, cluster="cluster-x"))
    assert untagged is not None and untagged.backend == "cluster-x"
    empty_tag = UsageEntry.of(log_entry(backend="", cluster="cluster-x"))
    assert empty_tag is not None and empty_tag.backend == "cluster-x"
    missing = UsageEntry.of({key: value for key, value in log_entry().items() if key not in ("backend", "status")})
    assert missing is not None and (missing.backend, missing.status) == (CLUSTER, 0)


def test_an_entry_without_usage_or_model_has_none_of_them() -> None:
    """A refused or failed answer (no usage metadata), a request Envoy routed without a model header."""
    found = UsageEntry.of(log_entry(status=503, model=None, usage=None))
    assert found == UsageEntry(
        operation="chat",
        model="",
        response_model="",
        backend=BACKEND,
        status=503,
        duration=2.5,
        input_tokens=None,
        output_tokens=None,
        first_token=None,
    )


def test_usage_values_that_are_not_numbers_are_left_out() -> None:
    """Envoy prints a metadata value as it is: whatever a backend sent under a token key that is not a number (a word,
    a boolean, a list) is no count."""
    odd = {"input_tokens": "seven", "output_tokens": "true", "first_token_ms": "[1]"}
    found = UsageEntry.of(log_entry(usage=odd))
    assert found is not None
    assert (found.input_tokens, found.output_tokens, found.first_token) == (None, None, None)
    doubles = UsageEntry.of(log_entry(usage={"input_tokens": 7.0, "output_tokens": 11.0, "first_token_ms": 1250.5}))
    assert doubles is not None
    assert (doubles.input_tokens, doubles.output_tokens, doubles.first_token) == (7, 11, 1.2505)


def test_counts_that_are_not_counts_are_left_out() -> None:
    found = UsageEntry.of(log_entry(usage={"input_tokens": math.nan, "output_tokens": -3, "first_token_ms": math.inf}))
    assert found is not None
    assert (found.input_tokens, found.output_tokens, found.first_token) == (None, None, None)
    assert UsageEntry.of(log_entry(duration=None, stream_ms=None)) is None


@given(
    st.dictionaries(
        st.sampled_from([*(key for key, _ in USAGE_LOG_LINES), USAGE_LOG_ATTRIBUTE[0]]), st.text(max_size=12)
    )
)
def test_any_attributes_give_an_entry_or_none(attributes: dict[str, str]) -> None:
    """Whatever a record holds (a backend chose the usage values, a client the model), reading it never fails; and
    what it reads is a count >= 0 or nothing."""
    found = UsageEntry.of(attributes)
    if found is not None:
        assert found.duration >= 0 and found.backend and found.operation
        assert all(count is None or count >= 0 for count in (found.input_tokens, found.output_tokens))


def test_the_duration_is_the_time_to_the_last_byte_sent_to_the_client() -> None:
    found = UsageEntry.of(log_entry(duration=1.005, stream_ms=9000))  # the whole stream: not this
    assert found is not None and found.duration == pytest.approx(1.005, abs=1e-12)


def test_record_observes_duration_tokens_first_token_and_time_per_output_token() -> None:
    moved = Metrics()
    found = UsageEntry.of(log_entry(model="model-r", usage={**FULL_USAGE, "response_model": "r-1"}))
    assert found is not None
    found.record()
    series = labels("model-r", "r-1")
    assert moved.delta() == pytest.approx(
        {
            ("duration_count", series): 1,
            ("duration_sum", series): 2.5,
            ("tokens_count", (*series, "input")): 1,
            ("tokens_sum", (*series, "input")): 7,
            ("tokens_count", (*series, "output")): 1,
            ("tokens_sum", (*series, "output")): 11,
            ("ttft_count", series): 1,
            ("ttft_sum", series): 0.3,
            ("tpot_count", series): 1,
            ("tpot_sum", series): (2.5 - 0.3) / (11 - 1),  # the time after the first token, over the tokens after it
        },
        abs=1e-9,
    )


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(200, ""), (201, ""), (299, ""), (300, "300"), (404, "404"), (429, "429"), (503, "503"), (504, "504")],
)
def test_the_error_type_is_the_status_of_an_answer_that_is_not_2xx(status: int, error_type: str) -> None:
    moved = Metrics()
    found = UsageEntry.of(log_entry(status=status, model=f"model-{status}", usage=None))
    assert found is not None
    found.record()
    series = labels(f"model-{status}", "", error_type=error_type)
    assert moved.delta() == pytest.approx({("duration_count", series): 1, ("duration_sum", series): 2.5})


def test_one_output_token_has_a_first_token_but_no_time_per_output_token() -> None:
    moved = Metrics()
    usage = {"response_model": "one", "input_tokens": 2, "output_tokens": 1, "first_token_ms": 100}
    found = UsageEntry.of(log_entry(model="model-one", usage=usage))
    assert found is not None
    found.record()
    delta = moved.delta()
    series = labels("model-one", "one")
    assert delta[("ttft_sum", series)] == pytest.approx(0.1)
    assert {name for name, _ in delta} == {
        "duration_count", "duration_sum", "tokens_count", "tokens_sum", "ttft_count", "ttft_sum"
    }  # fmt: skip


def test_without_a_first_token_there_is_no_ttft_nor_tpot() -> None:
    """A JSON answer (json_to_metadata has no first_token_ms): its tokens, but no streaming timings."""
    moved = Metrics()
    usage = {"response_model": "json-1", "input_tokens": 5, "output_tokens": 40}
    found = UsageEntry.of(log_entry(model="model-json", usage=usage))
    assert found is not None
    found.record()
    series = labels("model-json", "json-1")
    assert moved.delta() == pytest.approx(
        {
            ("duration_count", series): 1,
            ("duration_sum", series): 2.5,
            ("tokens_count", (*series, "input")): 1,
            ("tokens_sum", (*series, "input")): 5,
            ("tokens_count", (*series, "output")): 1,
            ("tokens_sum", (*series, "output")): 40,
        }
    )


def test_a_first_token_without_output_tokens_has_no_time_per_output_token() -> None:
    moved = Metrics()
    found = UsageEntry.of(log_entry(model="model-nout", usage={"first_token_ms": 20}))
    assert found is not None
    found.record()
    series = labels("model-nout", "")
    assert moved.delta() == pytest.approx(
        {
            ("duration_count", series): 1,
            ("duration_sum", series): 2.5,
            ("ttft_count", series): 1,
            ("ttft_sum", series): 0.02,
        }
    )


def test_a_first_token_after_the_last_byte_gives_no_negative_time_per_token() -> None:
    """Clocks of two processes: stream metering's first token may seem later than Envoy's last byte."""
    moved = Metrics()
    usage = {"output_tokens": 5, "first_token_ms": 3000}
    found = UsageEntry.of(log_entry(model="model-skew", usage=usage))
    assert found is not None
    found.record()
    series = labels("model-skew", "")
    delta = moved.delta()
    assert delta[("tpot_count", series)] == 1 and delta[("tpot_sum", series)] == 0.0


# --- the ext_proc gRPC server: the usage log, and dispatch by stream metadata ---


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    port = free_port()
    control_plane = ControlPlane(SnapshotCache(), ClientRegistry())
    server, picker = await start_extproc(control_plane, TranslateOptions(extproc_port=port))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    await picker.scraper.close()
    await server.stop(grace=None)


def requests(*messages: pb.ProcessingRequest) -> Iterator[pb.ProcessingRequest]:
    yield from messages


def log_record(values: Mapping[str, str]) -> usage_log_pb2.LogRecord:
    """A record as Envoy sends it: the lines of its body, then its attribute."""
    body = "\n".join(values[name] for name, _ in USAGE_LOG_LINES)
    key = USAGE_LOG_ATTRIBUTE[0]
    attribute = usage_log_pb2.KeyValue(key=key, value=usage_log_pb2.AnyValue(string_value=values[key]))
    return usage_log_pb2.LogRecord(body=usage_log_pb2.AnyValue(string_value=body), attributes=[attribute])


def test_a_record_reads_back_as_the_values_envoy_formatted() -> None:
    values = log_entry(usage=FULL_USAGE)
    assert fields(log_record(values)) == values


def test_the_model_is_read_whole_whatever_it_holds() -> None:
    """The client chose the model (Envoy put its body's value in a header): line breaks in it stay in it, and move
    no other value."""
    values = log_entry(model="a\nb\n\nc", usage=FULL_USAGE)
    found = UsageEntry.of(fields(log_record(values)))
    assert found is not None and found.model == "a\nb\n\nc" and (found.input_tokens, found.status) == (7, 200)


@given(st.text(max_size=40), st.lists(st.tuples(st.text(max_size=16), st.text(max_size=16)), max_size=3))
def test_any_record_gives_an_entry_or_none(body: str, attributes: list[tuple[str, str]]) -> None:
    """Whatever a record holds, reading it never fails."""
    record = usage_log_pb2.LogRecord(
        body=usage_log_pb2.AnyValue(string_value=body),
        attributes=[usage_log_pb2.KeyValue(key=k, value=usage_log_pb2.AnyValue(string_value=v)) for k, v in attributes],
    )
    found = UsageEntry.of(fields(record))
    assert found is None or (found.duration >= 0 and found.backend != "")


def export(*batches: list[dict[str, str]]) -> usage_log_pb2.ExportLogsServiceRequest:
    """One export as Envoy sends it: a resource (no labels: builtin labels are off) per batch of records."""
    return usage_log_pb2.ExportLogsServiceRequest(
        resource_logs=[
            usage_log_pb2.ResourceLogs(
                scope_logs=[usage_log_pb2.ScopeLogs(log_records=[log_record(record) for record in batch])]
            )
            for batch in batches
        ]
    )


def test_the_subset_reads_what_opentelemetrys_own_messages_encode() -> None:
    """The usage log's messages keep OpenTelemetry's field numbers: an export encoded with the OpenTelemetry messages
    xds-protos ships (from before ScopeLogs took the name of InstrumentationLibraryLogs, same numbers) reads the same,
    with every field it leaves unread."""
    record = otel_logs_pb2.LogRecord(
        time_unix_nano=1, severity_text="INFO", body=otel_common_pb2.AnyValue(string_value="b")
    )
    record.attributes.add(key="response_model", value=otel_common_pb2.AnyValue(string_value="model-o"))
    request = otel_service_pb2.ExportLogsServiceRequest()
    resource = request.resource_logs.add()
    resource.resource.attributes.add(key="node", value=otel_common_pb2.AnyValue(string_value="envoy-1"))
    resource.instrumentation_library_logs.add(logs=[record])
    read = usage_log_pb2.ExportLogsServiceRequest.FromString(request.SerializeToString())
    [[[found]]] = [[list(scope.log_records) for scope in resource.scope_logs] for resource in read.resource_logs]
    assert found.body.string_value == "b"
    assert [(pair.key, pair.value.string_value) for pair in found.attributes] == [("response_model", "model-o")]


def export_call(
    channel: grpc.aio.Channel,
) -> grpc.aio.UnaryUnaryMultiCallable[usage_log_pb2.ExportLogsServiceRequest, usage_log_pb2.ExportLogsServiceResponse]:
    """OpenTelemetry's LogsService/Export, as Envoy's OpenTelemetry access logger calls it."""
    return channel.unary_unary(
        f"/{LOGS_SERVICE}/Export",
        request_serializer=usage_log_pb2.ExportLogsServiceRequest.SerializeToString,
        response_deserializer=usage_log_pb2.ExportLogsServiceResponse.FromString,
    )


async def test_the_usage_log_records_exactly_what_its_entries_say(channel: grpc.aio.Channel) -> None:
    call = export_call(channel)
    moved = Metrics()
    streamed = log_entry(
        model="model-grpc",
        duration=3.0,
        usage={"response_model": "grpc-1", "input_tokens": 4, "output_tokens": 21, "first_token_ms": 1000},
    )
    answered = log_entry(
        path="/v1/embeddings?v=1",
        model="model-grpc",
        backend=None,
        cluster="cluster-grpc",
        duration=0.2,
        usage={"response_model": "grpc-1", "input_tokens": 9},
    )
    refused = log_entry(model="model-grpc", status=404, backend=None, cluster=None)  # Envoy's own reply: not recorded
    failed = log_entry(model="model-grpc", status=503, duration=0.05)
    unfinished = log_entry(model="model-grpc", duration=None, usage={"input_tokens": 99})  # no timing: not recorded
    response = await call(export([streamed, answered], [refused, failed, unfinished]))
    assert response == usage_log_pb2.ExportLogsServiceResponse()
    chat = labels("model-grpc", "grpc-1")
    embeddings = labels("model-grpc", "grpc-1", backend="cluster-grpc", operation="embeddings")
    failure = labels("model-grpc", "", error_type="503")
    assert moved.delta() == pytest.approx(
        {
            ("duration_count", chat): 1,
            ("duration_sum", chat): 3.0,
            ("tokens_count", (*chat, "input")): 1,
            ("tokens_sum", (*chat, "input")): 4,
            ("tokens_count", (*chat, "output")): 1,
            ("tokens_sum", (*chat, "output")): 21,
            ("ttft_count", chat): 1,
            ("ttft_sum", chat): 1.0,
            ("tpot_count", chat): 1,
            ("tpot_sum", chat): 0.1,
            ("duration_count", embeddings): 1,
            ("duration_sum", embeddings): 0.2,
            ("tokens_count", (*embeddings, "input")): 1,
            ("tokens_sum", (*embeddings, "input")): 9,
            ("duration_count", failure): 1,
            ("duration_sum", failure): 0.05,
        },
        abs=1e-9,
    )


async def test_an_export_larger_than_a_slice_is_recorded_whole(channel: grpc.aio.Channel) -> None:
    """The usage log yields to the event loop between slices of an export: every record still counts, once."""
    call = export_call(channel)
    moved = Metrics()
    many = 2 * SLICE + 3
    await call(export([log_entry(model="model-many", usage={"input_tokens": 2})] * many))
    series = labels("model-many", "")
    assert moved.delta() == pytest.approx(
        {
            ("duration_count", series): many,
            ("duration_sum", series): 2.5 * many,
            ("tokens_count", (*series, "input")): many,
            ("tokens_sum", (*series, "input")): 2 * many,
        }
    )


async def test_streams_are_dispatched_by_their_initial_metadata(channel: grpc.aio.Channel) -> None:
    stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)

    # No metadata: stream metering, the default handler. The request started a fifth of a second ago.
    moved = Metrics()
    started = (datetime.now(UTC) - timedelta(seconds=0.2)).isoformat()
    metered = (
        response_headers(200, "text/event-stream", found=attributes(time=started)),
        response_body(b'data: {"model":"model-g","usage":{"prompt_tokens":2,"completion_tokens":3}}\n\n', False),
        response_body(b"data: [DONE]\n\n", True),
    )
    answers = [r async for r in stub.Process(requests(*metered))]
    assert len(answers) == 3  # and the stream ended after the last chunk: no trailers follow an end of stream
    assert answers[:2] == [STREAM_RESPONSE_BODY, CONTINUE_RESPONSE_BODY]
    found = metadata(answers[2])
    first_token_ms = found.pop("first_token_ms")
    assert isinstance(first_token_ms, float) and 200 <= first_token_ms < 10_000
    assert found == {"response_model": "model-g", "input_tokens": 2, "output_tokens": 3, "total_tokens": 5}
    assert moved.delta() == {}

    # The picker's stream: headers pass, and the body is answered by the picker (this pool is unknown to it).
    picker = (
        pb.ProcessingRequest(request_headers=headers((":method", "POST"), (":path", CHAT))),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=b'{"model": "x", "prompt": "hi"}', end_of_stream=True)),
    )
    answers = [r async for r in stub.Process(requests(*picker), metadata=((PICKER_POOL_METADATA, "default/pool"),))]
    # Headers pass; nothing is to be done with the answer, so the response phase is turned off (fewest messages).
    assert answers[0].request_headers == PASS_THROUGH["request_headers"].request_headers
    assert answers[0].mode_override.response_header_mode == processing_mode_pb2.ProcessingMode.SKIP
    assert answers[1].immediate_response.details == "endpoint_picker_unknown_pool"

    # The upstream-settings filter's stream: an attempt of a rule with no settings turns its body off.
    attempt = pb.ProcessingRequest(request_headers=headers((":path", CHAT)))
    answers = [r async for r in stub.Process(requests(attempt), metadata=((UPSTREAM_SETTINGS_METADATA, "1"),))]
    assert answers == [NO_SETTINGS]


async def test_a_metered_stream_that_ends_before_its_last_body_is_answered_and_records_nothing(
    channel: grpc.aio.Channel,
) -> None:
    """The client went away, or the answer ended with trailers: every message was answered, and no metric is
    recorded here (the usage log has no entry to record for an answer that never ended)."""
    stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)
    moved = Metrics()
    partial = b'data: {"model":"model-gone","usage":{"prompt_tokens":5,"completion_tokens":8}}\n\n'
    messages = (response_headers(200, "text/event-stream"), response_body(partial, False))
    answers = [r async for r in stub.Process(requests(*messages))]
    assert answers == [STREAM_RESPONSE_BODY, CONTINUE_RESPONSE_BODY]
    assert moved.delta() == {}


async def test_stream_metering_ends_its_stream_after_the_last_chunk_of_an_event_stream(
    channel: grpc.aio.Channel,
) -> None:
    """Rather than wait for Envoy to cancel it (grpcio keeps native memory for every cancelled call): the answer's
    mode override sends no trailers, so a chunk that ends the answer is the last message."""
    stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)
    call = stub.Process()
    await call.write(response_headers(200, "text/event-stream"))
    assert await call.read() == STREAM_RESPONSE_BODY
    await call.write(response_body(b'data: {"model":"m"}\n\n', False))
    assert await call.read() == CONTINUE_RESPONSE_BODY
    await call.write(response_body(b"data: [DONE]\n\n", True))
    assert (await call.read()).HasField("response_body")
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK
