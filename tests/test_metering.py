"""Usage metering per message (responses only: headers with Envoy's attributes, then the body when asked for), its SSE
parser, when a request started, and the ext_proc server's dispatch of streams by their initial metadata."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import grpc
import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from google.protobuf import struct_pb2
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from testing.ports import free_port
from translators.ir import TranslateOptions
from translators.xds.names import (
    BACKEND_ATTRIBUTE,
    CLUSTER_ATTRIBUTE,
    EXTPROC_ATTRIBUTES_KEY,
    METERING_METADATA_NAMESPACE,
    MODEL_ATTRIBUTE,
    PATH_ATTRIBUTE,
    PICKER_POOL_METADATA,
    REQUEST_TIME_ATTRIBUTE,
    UPSTREAM_SETTINGS_METADATA,
)
from xds_server.control_plane import ControlPlane
from xds_server.extproc.metering import BUFFER_RESPONSE_BODY, STREAM_RESPONSE_BODY, MeteringStream, request_started
from xds_server.extproc.protocol import CONTINUE_RESPONSE_BODY, PASS_THROUGH, Mode
from xds_server.extproc.sse import SseParser, Usage
from xds_server.extproc.upstream import NO_SETTINGS
from xds_server.serve import start_extproc
from xds_server.xds.cache import SnapshotCache
from xds_server.xds.streams import ClientRegistry

BACKEND = "aiservicebackend/default/a"
CHAT = "/v1/chat/completions"
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


def attributes(
    model: str | None = "model-a",
    path: str | None = CHAT,
    backend: str | None = BACKEND,
    cluster: str | None = BACKEND,
    time: str | None = REQUEST_TIME,
) -> dict[str, struct_pb2.Struct]:
    """The response attributes Envoy sends usage metering; None leaves one out (Envoy omits what it cannot read)."""
    values = {
        MODEL_ATTRIBUTE: model,
        PATH_ATTRIBUTE: path,
        BACKEND_ATTRIBUTE: backend,
        CLUSTER_ATTRIBUTE: cluster,
        REQUEST_TIME_ATTRIBUTE: time,
    }
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
    """What the access log gets (numbers come back as floats: 7.0 == 7)."""
    if METERING_METADATA_NAMESPACE not in response.dynamic_metadata.fields:
        return {}
    fields = response.dynamic_metadata.fields[METERING_METADATA_NAMESPACE].struct_value.fields
    return {k: v.string_value if v.WhichOneof("kind") == "string_value" else v.number_value for k, v in fields.items()}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def labels(
    model: str, response_model: str, operation: str = "chat", error_type: str = "", backend: str = BACKEND
) -> dict[str, str]:
    return {
        "gen_ai_operation_name": operation,
        "gen_ai_request_model": model,
        "gen_ai_response_model": response_model,
        "backend": backend,
        "error_type": error_type,
    }


class Samples:
    """Histogram samples of one label set, read before and after: the registry is global, so tests compare deltas."""

    NAMES = (
        "gen_ai_server_request_duration_count",
        "gen_ai_server_request_duration_sum",
        "gen_ai_server_time_to_first_token_count",
        "gen_ai_server_time_to_first_token_sum",
        "gen_ai_server_time_per_output_token_count",
        "gen_ai_server_time_per_output_token_sum",
    )

    def __init__(self, **found: str) -> None:
        self.labels = found
        self.before = self.read()

    def read(self) -> dict[str, float]:
        values = {name: sample(name, **self.labels) for name in self.NAMES}
        for token_type in ("input", "output"):
            for suffix in ("count", "sum"):
                name = f"gen_ai_client_token_usage_{suffix}"
                values[f"{name}/{token_type}"] = sample(name, **self.labels, gen_ai_token_type=token_type)
        return values

    def delta(self) -> dict[str, float]:
        """Only what changed."""
        after = self.read()
        return {name: after[name] - self.before[name] for name in after if after[name] != self.before[name]}


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


# --- answers that are read ---


def test_a_json_answer_is_buffered_and_its_usage_counted() -> None:
    clock = Clock()
    stream = metering(clock)
    counted = Samples(**labels("model-a", "model-a-0613"))
    reply = stream.process(response_headers(200, "application/json; charset=utf-8"))
    assert reply == BUFFER_RESPONSE_BODY
    assert reply.WhichOneof("response") == "response_headers"
    assert reply.mode_override.response_body_mode == Mode.BUFFERED
    clock.advance(0.5)
    usage = {"prompt_tokens": 7, "completion_tokens": 11, "total_tokens": 18}
    reply = stream.process(response_body(orjson.dumps({"model": "model-a-0613", "usage": usage}), True))
    assert reply.WhichOneof("response") == "response_body" and not reply.HasField("mode_override")
    assert metadata(reply) == {
        "backend": BACKEND,
        "response_model": "model-a-0613",
        "input_tokens": 7,
        "output_tokens": 11,
        "total_tokens": 18,
    }
    recorded = counted.delta()
    delta = dict(recorded)
    # From request.time (a quarter second before the headers) to the body: 0.75 s.
    assert delta.pop("gen_ai_server_request_duration_sum") == pytest.approx(0.75, abs=1e-5)
    assert delta == {
        "gen_ai_server_request_duration_count": 1,
        "gen_ai_client_token_usage_count/input": 1,
        "gen_ai_client_token_usage_sum/input": 7,
        "gen_ai_client_token_usage_count/output": 1,
        "gen_ai_client_token_usage_sum/output": 11,
    }  # no time to first token: the body came in one piece
    assert stream.finished
    stream.record()  # the handler's `finally` records again when the stream ends: nothing more is counted
    assert counted.delta() == recorded


@pytest.mark.parametrize(
    ("path", "operation"),
    [
        ("/v1/chat/completions", "chat"),
        ("/v1/completions", "text_completion"),
        ("/v1/embeddings", "embeddings"),
    ],
)
def test_the_labels_are_the_operation_of_the_path_and_the_model_envoy_routed_on(path: str, operation: str) -> None:
    """The request model is the x-ai-eg-model header Envoy routed on (the body's `model`), not the response's."""
    model = f"routed-{operation}"
    backend = "aiservicebackend/default/b"
    counted = Samples(**labels(model, "served-as", operation, backend=backend))
    stream = metering()
    stream.process(response_headers(200, "application/json", found=attributes(model, path, backend, "cluster-b")))
    reply = stream.process(response_body(b'{"model": "served-as", "usage": {"prompt_tokens": 4}}', True))
    assert metadata(reply) == {"backend": backend, "response_model": "served-as", "input_tokens": 4, "total_tokens": 4}
    delta = counted.delta()
    assert delta["gen_ai_server_request_duration_count"] == 1
    assert delta["gen_ai_client_token_usage_sum/input"] == 4
    assert "gen_ai_client_token_usage_count/output" not in delta  # embeddings-style usage: no completion tokens


def test_the_cluster_names_the_backend_when_no_endpoint_metadata_does() -> None:
    counted = Samples(**labels("model-c", "", error_type="503", backend="cluster-only"))
    stream = metering()
    only_cluster = attributes("model-c", backend=None, cluster="cluster-only")
    reply = stream.process(response_headers(503, "application/json", found=only_cluster))
    assert metadata(reply) == {"backend": "cluster-only"}
    delta = counted.delta()
    assert delta.pop("gen_ai_server_request_duration_sum") == pytest.approx(0.25, abs=1e-5)
    assert delta == {"gen_ai_server_request_duration_count": 1}


def test_an_event_stream_is_streamed_chunk_by_chunk_and_keeps_the_last_usage() -> None:
    clock = Clock()
    stream = metering(clock)
    counted = Samples(**labels("model-s", "model-s-1"))
    reply = stream.process(response_headers(200, "text/event-stream; charset=utf-8", found=attributes("model-s")))
    assert reply == STREAM_RESPONSE_BODY and reply.mode_override.response_body_mode == Mode.STREAMED
    events = (
        b'data: {"model":"model-s-1","choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
        b'data: {"model":"model-s-1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}\n\n'
        b'data: {"model":"model-s-1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":21,"total_tokens":24}}'
        b"\r\n\r\ndata: [DONE]\n\n"
    )
    clock.advance(0.25)
    assert stream.process(response_body(b"", False)) == CONTINUE_RESPONSE_BODY  # an empty chunk is no token yet
    first_at = 0.0
    for index in range(0, len(events), 7):
        clock.advance(0.25)
        first_at = first_at or clock.now
        assert stream.process(response_body(events[index : index + 7], False)) == CONTINUE_RESPONSE_BODY
        assert not stream.finished
    assert counted.delta() == {}  # nothing is recorded before the end of the body
    clock.advance(0.1)
    final = stream.process(response_body(b"", True))
    assert final.WhichOneof("response") == "response_body"
    assert metadata(final) == {
        "backend": BACKEND,
        "response_model": "model-s-1",
        "input_tokens": 3,
        "output_tokens": 21,
        "total_tokens": 24,
    }
    delta = counted.delta()
    started = 100.0 - 0.25  # request.time is a quarter second before the headers
    assert delta["gen_ai_server_time_to_first_token_count"] == 1
    assert delta["gen_ai_server_time_to_first_token_sum"] == pytest.approx(first_at - started, abs=1e-5)
    assert delta["gen_ai_server_time_per_output_token_count"] == 1
    per_token = (clock.now - first_at) / (21 - 1)  # the tokens after the first, over the time after the first chunk
    assert delta["gen_ai_server_time_per_output_token_sum"] == pytest.approx(per_token, abs=1e-5)
    assert delta["gen_ai_server_request_duration_sum"] == pytest.approx(clock.now - started, abs=1e-5)
    assert (delta["gen_ai_client_token_usage_sum/input"], delta["gen_ai_client_token_usage_sum/output"]) == (3, 21)
    assert delta["gen_ai_client_token_usage_count/output"] == 1  # the last usage only, not one per usage event


def test_a_stream_of_one_output_token_has_no_time_per_output_token() -> None:
    counted = Samples(**labels("model-one", "model-one"))
    stream = metering()
    stream.process(response_headers(200, "text/event-stream", found=attributes("model-one")))
    usage = b'data: {"model":"model-one","usage":{"prompt_tokens":2,"completion_tokens":1}}\n\n'
    stream.process(response_body(usage, False))
    stream.process(response_body(b"data: [DONE]", True))  # the last event never got its blank line
    delta = counted.delta()
    assert delta["gen_ai_server_time_to_first_token_count"] == 1
    assert "gen_ai_server_time_per_output_token_count" not in delta


# --- answers that are not read ---


@pytest.mark.parametrize(
    ("status", "content_type", "extra", "end_of_stream"),
    [
        (500, "application/json", (), False),
        (429, "text/event-stream", (), False),
        (404, "application/json", (), False),
        (200, "text/plain", (), False),
        (200, None, (), False),
        (200, "application/json", (("content-encoding", "gzip"),), False),
        (200, "text/event-stream", (("content-encoding", "br"),), False),
        (200, "application/json", (), True),  # HEAD, or a 200 without a body
    ],
    ids=["500", "429-stream", "404", "text", "no-type", "gzip-json", "br-stream", "no-body"],
)
def test_other_answers_pass_unread_and_finish_at_their_headers(
    status: int, content_type: str | None, extra: tuple[tuple[str, str], ...], end_of_stream: bool
) -> None:
    error_type = "" if status == 200 else str(status)
    counted = Samples(**labels("model-e", "", error_type=error_type))
    stream = metering()
    found = attributes("model-e")
    reply = stream.process(response_headers(status, content_type, *extra, end_of_stream=end_of_stream, found=found))
    assert reply.WhichOneof("response") == "response_headers" and not reply.HasField("mode_override")
    assert metadata(reply) == {"backend": BACKEND}
    assert stream.finished
    delta = counted.delta()
    assert delta["gen_ai_server_request_duration_count"] == 1
    assert "gen_ai_client_token_usage_count/input" not in delta


def test_a_reply_that_no_backend_gave_is_not_measured() -> None:
    """Envoy's own answers (model_not_found, invalid_json...) have no upstream: no label set a client could grow."""
    stream = metering()
    before = sample("gen_ai_server_request_duration_count", **labels("unknown-model", "", error_type="404", backend=""))
    no_backend = attributes("unknown-model", backend=None, cluster=None)
    reply = stream.process(response_headers(404, "application/json", found=no_backend))
    assert reply.WhichOneof("response") == "response_headers" and not reply.HasField("mode_override")
    assert metadata(reply) == {}
    assert not stream.finished
    stream.record()
    assert not stream.finished
    after = sample("gen_ai_server_request_duration_count", **labels("unknown-model", "", error_type="404", backend=""))
    assert after == before


@pytest.mark.parametrize("path", ["/v1/models", "/v1/responses", "/healthz", "/v1/chat/completions/", ""])
def test_a_path_that_is_not_an_openai_operation_is_not_measured(path: str) -> None:
    counted = Samples(**labels("model-p", "model-p", operation=""))
    stream = metering()
    reply = stream.process(response_headers(200, "application/json", found=attributes("model-p", path or None)))
    assert reply.WhichOneof("response") == "response_headers" and not reply.HasField("mode_override")  # not read
    assert metadata(reply) == {"backend": BACKEND}
    assert not stream.finished
    stream.record()
    assert counted.delta() == {}


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
    """The same through MeteringStream, as Envoy hands it the chunks: the access log gets the last usage."""
    stream_bytes, expected, pieces = case
    stream = metering()
    stream.process(response_headers(200, "text/event-stream", found=attributes("model-h")))
    for piece in pieces:
        assert stream.process(response_body(piece, False)) == CONTINUE_RESPONSE_BODY
    found = metadata(stream.process(response_body(b"", True)))
    want = last_usage(expected)
    if want is None:
        assert "input_tokens" not in found
    else:
        total = want.get("total_tokens", want["prompt_tokens"] + want["completion_tokens"])
        assert (found["input_tokens"], found["output_tokens"], found["total_tokens"]) == (
            want["prompt_tokens"],
            want["completion_tokens"],
            total,
        )
    assert stream.finished and bool(stream_bytes) == (stream.first_chunk_at is not None)


def test_multi_line_data_and_an_unterminated_last_event() -> None:
    parser = SseParser()
    assert parser.feed(b"data: a\ndata: b\n\ndata:") == [b"a\nb"]
    assert parser.feed(b" tail") == []
    assert parser.finish() == [b"tail"]
    assert parser.finish() == []


# --- the gRPC server: dispatch by stream metadata ---


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


async def test_streams_are_dispatched_by_their_initial_metadata(channel: grpc.aio.Channel) -> None:
    stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)

    # No metadata: usage metering, the default handler.
    counted = Samples(**labels("model-g", "model-g"))
    usage = b'{"model": "model-g", "usage": {"prompt_tokens": 2, "completion_tokens": 3}}'
    metered = (response_headers(200, "application/json", found=attributes("model-g")), response_body(usage, True))
    answers = [r async for r in stub.Process(requests(*metered))]
    assert answers[0] == BUFFER_RESPONSE_BODY
    assert metadata(answers[1]) == {
        "backend": BACKEND,
        "response_model": "model-g",
        "input_tokens": 2,
        "output_tokens": 3,
        "total_tokens": 5,
    }
    assert counted.delta()["gen_ai_client_token_usage_sum/output"] == 3

    # The picker's stream: headers pass, and the body is answered by the picker (this pool is unknown to it).
    picker = (
        pb.ProcessingRequest(request_headers=headers((":method", "POST"), (":path", CHAT))),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=b'{"model": "x", "prompt": "hi"}', end_of_stream=True)),
    )
    answers = [r async for r in stub.Process(requests(*picker), metadata=((PICKER_POOL_METADATA, "default/pool"),))]
    assert answers[0] == PASS_THROUGH["request_headers"]
    assert answers[1].immediate_response.details == "endpoint_picker_unknown_pool"

    # The upstream-settings filter's stream: an attempt of a rule with no settings turns its body off.
    attempt = pb.ProcessingRequest(request_headers=headers((":path", CHAT)))
    answers = [r async for r in stub.Process(requests(attempt), metadata=((UPSTREAM_SETTINGS_METADATA, "1"),))]
    assert answers == [NO_SETTINGS]


async def test_a_metered_stream_that_ends_before_its_last_body_still_counts(channel: grpc.aio.Channel) -> None:
    """The client went away, or the response ended with trailers: what was seen is recorded when the stream ends."""
    stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)
    counted = Samples(**labels("model-gone", "model-gone"))
    partial = b'data: {"model":"model-gone","usage":{"prompt_tokens":5,"completion_tokens":8}}\n\n'
    messages = (
        response_headers(200, "text/event-stream", found=attributes("model-gone")),
        response_body(partial, False),
    )
    answers = [r async for r in stub.Process(requests(*messages))]
    assert answers == [STREAM_RESPONSE_BODY, CONTINUE_RESPONSE_BODY]
    delta = counted.delta()
    assert delta["gen_ai_server_request_duration_count"] == 1
    assert delta["gen_ai_client_token_usage_sum/output"] == 8
    assert delta["gen_ai_server_time_to_first_token_count"] == 1
