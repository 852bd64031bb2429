"""The usage log: the AI filter (native/ai_filter.c, an Envoy dynamic module) writes an OpenTelemetry log record for
every AI request, and the module exports them in batches (one export per flush interval, native/usage_log.c); the
GenAI metrics are recorded from them. Nothing here runs on a request's path.

A record's body is the lines of translators.xds.names.USAGE_RECORD_LINES (the path, the status, the backend, the
timings, the answer's usage, and last the routed model), its one attribute (USAGE_RECORD_ATTRIBUTE) the answer's
model. The filter writes "-" where it has no value.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, NamedTuple

import grpc

from translators.xds.names import OPERATIONS, USAGE_RECORD_ATTRIBUTE, USAGE_RECORD_LINES
from xds_server.api import usage_log_pb2
from xds_server.extproc import telemetry

LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
MISSING = "-"  # the filter's rendering of a value it does not have (Envoy's word for it)
SLICE = 256  # records recorded between two turns of the event loop: about 2 ms
# A record's lines that make its Request, and those that make its Measures.
REQUEST_LINES = ("path", "status", "backend", "cluster", "model")
MEASURE_LINES = ("duration_us", "stream_ms", "input_tokens", "output_tokens", "first_token_ms")
REQUEST_ITEMS = itemgetter(*(USAGE_RECORD_LINES.index(name) for name in REQUEST_LINES))
MEASURE_ITEMS = itemgetter(*(USAGE_RECORD_LINES.index(name) for name in MEASURE_LINES))
MAX_SERIES = 4096


def _count(text: str | None) -> float | None:
    """A count or a time: a finite number >= 0 (an upstream may send anything where a count belongs)."""
    if not text or text == MISSING:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _line_count(line: bytes) -> float | None:
    """_count of a record's line: the filter writes its counts and times as digits, read the quickest way."""
    return int(line) if line.isdigit() else _count(line.decode(errors="replace"))


def _text(text: str | None) -> str:
    return "" if text is None or text == MISSING else text


class Request(NamedTuple):
    """What a record says of the request apart from its numbers: what the metrics' labels are made of."""

    operation: str
    model: str
    response_model: str
    backend: str
    status: int

    @classmethod
    def of(cls, values: Mapping[str, str]) -> Request | None:
        """None for a request no backend answered (Envoy's own replies) or not to an OpenAI operation."""
        backend = _text(values.get("backend")) or _text(values.get("cluster"))
        operation = OPERATIONS.get(values.get("path", "").partition("?")[0], "")
        if not backend or not operation:
            return None
        status = values.get("status", "")
        model, response_model = _text(values.get("model")), _text(values.get("response_model"))
        return cls(operation, model, response_model, backend, int(status) if status.isdigit() else 0)


class Series(NamedTuple):
    """The label values a Request's measures are observed under."""

    labels: tuple[str, ...]
    input_tokens: tuple[str, ...]
    output_tokens: tuple[str, ...]

    @classmethod
    def of(cls, request: Request) -> Series:
        error_type = "" if 200 <= request.status < 300 else str(request.status)
        labels = (request.operation, request.model, request.response_model, request.backend, error_type)
        return cls(labels, (*labels, "input"), (*labels, "output"))


class Measures(NamedTuple):
    """What a record measured of the request."""

    duration: float  # seconds from the request's start to the last byte sent to the client
    input_tokens: int | None
    output_tokens: int | None
    first_token: float | None  # seconds from the request's start to the first chunk of a streamed answer

    @classmethod
    def of(
        cls,
        duration_us: float | None,
        stream_ms: float | None,
        input_tokens: float | None,
        output_tokens: float | None,
        first_token_ms: float | None,
    ) -> Measures | None:
        """From the record's numbers of those names (_count's); None without a time."""
        # An answer the client did not wait for to the end has no last byte sent: its duration is the stream's.
        if duration_us is not None:
            duration = duration_us / 1e6
        elif stream_ms is not None:
            duration = stream_ms / 1e3
        else:
            return None
        return cls(
            duration,
            int(input_tokens) if input_tokens is not None else None,
            int(output_tokens) if output_tokens is not None else None,
            first_token_ms / 1000 if first_token_ms is not None else None,
        )

    def record(self, series: Series) -> None:
        labels = series.labels
        telemetry.REQUEST_DURATION.observe(labels, self.duration)
        if self.input_tokens is not None:
            telemetry.TOKEN_USAGE.observe(series.input_tokens, self.input_tokens)
        if self.output_tokens is not None:
            telemetry.TOKEN_USAGE.observe(series.output_tokens, self.output_tokens)
        if self.first_token is not None:
            telemetry.TIME_TO_FIRST_TOKEN.observe(labels, self.first_token)
            if self.output_tokens is not None and self.output_tokens > 1:
                per_token = max(0.0, self.duration - self.first_token) / (self.output_tokens - 1)
                telemetry.TIME_PER_OUTPUT_TOKEN.observe(labels, per_token)


@dataclass(frozen=True)
class UsageEntry:
    """What one usage log record says of an AI request a backend answered: its Request and its Measures."""

    operation: str
    model: str
    response_model: str
    backend: str
    status: int
    duration: float
    input_tokens: int | None
    output_tokens: int | None
    first_token: float | None

    @classmethod
    def of(cls, values: Mapping[str, str]) -> UsageEntry | None:
        """From a record's values by name (`fields`); None where Request.of or Measures.of is."""
        request = Request.of(values)
        measures = Measures.of(*(_count(values.get(name)) for name in MEASURE_LINES))
        if request is None or measures is None:
            return None
        return cls(*request, *measures)

    def record(self) -> None:
        request = Request(self.operation, self.model, self.response_model, self.backend, self.status)
        Measures(self.duration, self.input_tokens, self.output_tokens, self.first_token).record(Series.of(request))


def fields(record: usage_log_pb2.LogRecord) -> dict[str, str]:
    """A record's values by name: its body's lines (the last one whatever it holds), then its attribute. Bytes that are
    not UTF-8 are read as replacement characters."""
    values = record.body.string_value.decode(errors="replace").split("\n", len(USAGE_RECORD_LINES) - 1)
    found = dict(zip(USAGE_RECORD_LINES, values, strict=False))  # a body cut short (not the filter's) lacks its last
    for pair in record.attributes:
        if pair.key == USAGE_RECORD_ATTRIBUTE:
            found[USAGE_RECORD_ATTRIBUTE] = pair.value.string_value.decode(errors="replace")
    return found


def records(request: usage_log_pb2.ExportLogsServiceRequest) -> Iterator[usage_log_pb2.LogRecord]:
    for resource in request.resource_logs:
        for scope in resource.scope_logs:
            yield from scope.log_records


class UsageLog:
    """OpenTelemetry's LogsService, as the AI filter's module calls it (and Envoy's OpenTelemetry access logger would):
    one unary Export per batch."""

    def __init__(self) -> None:
        # A record's Series (None: no metrics) by the lines its Request is made of: most records of a batch share a
        # few, so a record costs its numbers and a look-up (some 8 µs in an export, where reading it by name cost 11).
        self._series: dict[tuple[tuple[bytes, ...], bytes], Series | None] = {}

    def add(self, record: usage_log_pb2.LogRecord) -> None:
        """Records one record's metrics."""
        lines = record.body.string_value.split(b"\n", len(USAGE_RECORD_LINES) - 1)
        if len(lines) != len(USAGE_RECORD_LINES):  # not the filter's: read by name, what it has
            entry = UsageEntry.of(fields(record))
            if entry is not None:
                entry.record()
            return
        response_model = b""
        for pair in record.attributes:
            if pair.key == USAGE_RECORD_ATTRIBUTE:
                response_model = pair.value.string_value
        key = (REQUEST_ITEMS(lines), response_model)
        try:
            series = self._series[key]
        except KeyError:
            if len(self._series) >= MAX_SERIES:  # client-chosen models among them: bounded
                self._series.clear()
            values = dict(zip(REQUEST_LINES, (value.decode(errors="replace") for value in key[0]), strict=True))
            values[USAGE_RECORD_ATTRIBUTE] = response_model.decode(errors="replace")
            request = Request.of(values)
            series = self._series[key] = None if request is None else Series.of(request)
        if series is not None and (measures := Measures.of(*map(_line_count, MEASURE_ITEMS(lines)))) is not None:
            measures.record(series)

    async def export(
        self, request: usage_log_pb2.ExportLogsServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> usage_log_pb2.ExportLogsServiceResponse:
        for index, record in enumerate(records(request), 1):
            self.add(record)
            if index % SLICE == 0:
                await asyncio.sleep(0)  # picks and xDS between slices of a large export
        return usage_log_pb2.ExportLogsServiceResponse()

    def add_to(self, server: grpc.aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(
            self.export,
            request_deserializer=usage_log_pb2.ExportLogsServiceRequest.FromString,
            response_serializer=usage_log_pb2.ExportLogsServiceResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(LOGS_SERVICE, {"Export": handler}),))
