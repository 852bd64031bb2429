"""Usage metering in `serve`: the usage log (a log record of an AI request -> GenAI metrics, from hand-built records
and over real gRPC); the SSE parser the providers' translation uses; and the ext_proc server's dispatch of streams
by their initial metadata. (Envoy reads the usage itself, with the AI filter: tests/test_ai_filter.py.)"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as otel_service_pb2
from opentelemetry.proto.common.v1 import common_pb2 as otel_common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2 as otel_logs_pb2
from prometheus_client import REGISTRY

from testing.ports import free_port
from testing.sse import split_streams
from translators.ir import TranslateOptions
from translators.xds.names import (
    PICKER_POOL_METADATA,
    UPSTREAM_SETTINGS_METADATA,
    USAGE_RECORD_ATTRIBUTE,
    USAGE_RECORD_LINES,
)
from xds_server.api import usage_log_pb2
from xds_server.control_plane import ControlPlane
from xds_server.extproc import telemetry
from xds_server.extproc.protocol import PASS_THROUGH
from xds_server.extproc.sse import SseParser
from xds_server.extproc.upstream import NO_SETTINGS
from xds_server.extproc.usage_log import LOGS_SERVICE, SLICE, UsageEntry, UsageLog, fields
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


def headers(*pairs: tuple[str, str], end_of_stream: bool = False) -> pb.HttpHeaders:
    values = [base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
    return pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=values), end_of_stream=end_of_stream)


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


# --- SSE parsing ---


@given(split_streams())
def test_any_split_of_an_event_stream_gives_the_same_events(case: tuple[bytes, list[bytes], list[bytes]]) -> None:
    """The parser the providers' translation reads event streams with (the AI filter has its own, in C:
    tests/test_ai_filter.py holds it to the same cases)."""
    _, expected, pieces = case
    parser = SseParser()
    events: list[bytes] = []
    for piece in pieces:
        events += parser.feed(piece)
    events += parser.finish()
    assert events == expected


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
    """A record's values as the AI filter writes USAGE_RECORD_LINES and USAGE_RECORD_ATTRIBUTE: "-" for what it has
    no value of (None here); counts in decimal (usage); `duration` in seconds, written in whole microseconds."""
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
    """log_entry builds what the filter writes: the same names, every usage key but the total."""
    assert set(log_entry(usage=FULL_USAGE)) == {*USAGE_RECORD_LINES, USAGE_RECORD_ATTRIBUTE}


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


@given(st.dictionaries(st.sampled_from([*USAGE_RECORD_LINES, USAGE_RECORD_ATTRIBUTE]), st.text(max_size=12)))
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
    """A JSON answer (the AI filter writes no first_token_ms for one): its tokens, but no streaming timings."""
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
    """Two clocks (the AI filter's for the first token, Envoy's for the last byte): the first may seem later."""
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
    """A record as the filter sends it: the lines of its body, then its attribute."""
    body = "\n".join(values[name] for name in USAGE_RECORD_LINES).encode()
    key = USAGE_RECORD_ATTRIBUTE
    attribute = usage_log_pb2.KeyValue(key=key, value=usage_log_pb2.AnyValue(string_value=values[key].encode()))
    return usage_log_pb2.LogRecord(body=usage_log_pb2.AnyValue(string_value=body), attributes=[attribute])


def test_a_record_reads_back_as_the_values_the_filter_wrote() -> None:
    values = log_entry(usage=FULL_USAGE)
    assert fields(log_record(values)) == values


def test_the_model_is_read_whole_whatever_it_holds() -> None:
    """The client chose the model (the filter put its body's value in a header): line breaks in it stay in it, and
    move no other value."""
    values = log_entry(model="a\nb\n\nc", usage=FULL_USAGE)
    found = UsageEntry.of(fields(log_record(values)))
    assert found is not None and found.model == "a\nb\n\nc" and (found.input_tokens, found.status) == (7, 200)


@given(st.binary(max_size=40), st.lists(st.tuples(st.text(max_size=16), st.binary(max_size=16)), max_size=3))
def test_any_record_gives_an_entry_or_none(body: bytes, attributes: list[tuple[str, bytes]]) -> None:
    """Whatever a record holds, bytes that are not UTF-8 included, reading it never fails."""
    record = usage_log_pb2.LogRecord(
        body=usage_log_pb2.AnyValue(string_value=body),
        attributes=[usage_log_pb2.KeyValue(key=k, value=usage_log_pb2.AnyValue(string_value=v)) for k, v in attributes],
    )
    found = UsageEntry.of(fields(record))
    assert found is None or (found.duration >= 0 and found.backend != "")


# A line as the filter writes it, or as another sender might: counts, "-", numbers that are not counts, any bytes.
LINE_VALUES = st.sampled_from([b"-", b"", b"0", b"7", b"1250", b"1.5", b"-3", b"nan", b"1e3", b"\xff", b"200", b"404"])
PATHS = st.sampled_from([b"/v1/chat/completions", b"/v1/embeddings?x=1", b"/v2/other", b"-"])
NAMES = st.sampled_from([b"-", b"", b"m", b"aiservicebackend/default/a", b"\xe6\xa8\xa1"]) | st.binary(max_size=6)


@st.composite
def filter_records(draw: st.DrawFn) -> usage_log_pb2.LogRecord:
    """A record with the filter's lines (sometimes one short, or a model with line breaks) and any attributes."""
    lines = [draw(PATHS), draw(LINE_VALUES), draw(NAMES), draw(NAMES), *(draw(LINE_VALUES) for _ in range(5))]
    lines.append(draw(NAMES | st.just(b"a\nb")))
    if draw(st.booleans()) and draw(st.booleans()):
        del lines[draw(st.integers(0, len(lines) - 1)) :]
    keys = st.sampled_from([USAGE_RECORD_ATTRIBUTE, "other"])
    attributes = draw(st.lists(st.tuples(keys, NAMES), max_size=2))
    return usage_log_pb2.LogRecord(
        body=usage_log_pb2.AnyValue(string_value=b"\n".join(lines)),
        attributes=[usage_log_pb2.KeyValue(key=k, value=usage_log_pb2.AnyValue(string_value=v)) for k, v in attributes],
    )


@given(st.lists(filter_records(), min_size=1, max_size=4))
def test_the_export_records_what_each_records_entry_says(batch: list[usage_log_pb2.LogRecord]) -> None:
    """The export's quick reading of the filter's lines (by position, a record's labels looked up from the records
    before it) records what reading each record by name does: twice over, so looked-up labels are checked too."""
    expected = Metrics()
    for record in batch * 2:
        entry = UsageEntry.of(fields(record))
        if entry is not None:
            entry.record()
    by_name = expected.delta()
    found = Metrics()
    usage_log = UsageLog()
    for record in batch * 2:
        usage_log.add(record)
    # A sum that moved by 0 shows in a delta only for a series new to it: the second reading finds them all made.
    moved = {key: value for key, value in found.delta().items() if value}
    assert moved == pytest.approx({key: value for key, value in by_name.items() if value})  # sums: to rounding


def export(*batches: list[dict[str, str]]) -> usage_log_pb2.ExportLogsServiceRequest:
    """One export: a resource (with no labels) per batch of records."""
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
    assert found.body.string_value == b"b"
    assert [(pair.key, pair.value.string_value) for pair in found.attributes] == [("response_model", b"model-o")]


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

    # No metadata names no service: refused (no filter we configure opens such a stream).
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        [r async for r in stub.Process(requests(pb.ProcessingRequest(request_headers=headers((":path", CHAT)))))]
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert PICKER_POOL_METADATA in (refused.value.details() or "")

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
