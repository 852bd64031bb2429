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
from typing import Any

import grpc

from translators.xds.names import OPERATIONS, USAGE_RECORD_ATTRIBUTE, USAGE_RECORD_LINES
from xds_server.api import usage_log_pb2
from xds_server.extproc import telemetry

LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
MISSING = "-"  # the filter's rendering of a value it does not have (Envoy's word for it)
SLICE = 256  # records recorded between two turns of the event loop: a few milliseconds


def _count(text: str | None) -> float | None:
    """A count or a time: a finite number >= 0 (an upstream may send anything where a count belongs)."""
    if not text or text == MISSING:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _text(text: str | None) -> str:
    return "" if text is None or text == MISSING else text


@dataclass(frozen=True)
class UsageEntry:
    """What one usage log record says of an AI request a backend answered."""

    operation: str
    model: str
    response_model: str
    backend: str
    status: int
    duration: float  # seconds from the request's start to the last byte sent to the client
    input_tokens: int | None
    output_tokens: int | None
    first_token: float | None  # seconds from the request's start to the first chunk of a streamed answer

    @classmethod
    def of(cls, attributes: Mapping[str, str]) -> UsageEntry | None:
        """From a record's values by name (`fields`); None for a request no backend answered (Envoy's own replies)
        or not to an OpenAI operation."""
        backend = _text(attributes.get("backend")) or _text(attributes.get("cluster"))
        operation = OPERATIONS.get(attributes.get("path", "").partition("?")[0], "")
        # An answer the client did not wait for to the end has no last byte sent: its duration is the stream's.
        if (micros := _count(attributes.get("duration_us"))) is not None:
            duration = micros / 1e6
        elif (millis := _count(attributes.get("stream_ms"))) is not None:
            duration = millis / 1e3
        else:
            return None
        if not backend or not operation:
            return None
        status = attributes.get("status", "")
        input_tokens = _count(attributes.get("input_tokens"))
        output_tokens = _count(attributes.get("output_tokens"))
        first_token_ms = _count(attributes.get("first_token_ms"))
        return cls(
            operation=operation,
            model=_text(attributes.get("model")),
            response_model=_text(attributes.get("response_model")),
            backend=backend,
            status=int(status) if status.isdigit() else 0,
            duration=duration,
            input_tokens=int(input_tokens) if input_tokens is not None else None,
            output_tokens=int(output_tokens) if output_tokens is not None else None,
            first_token=first_token_ms / 1000 if first_token_ms is not None else None,
        )

    def record(self) -> None:
        error_type = "" if 200 <= self.status < 300 else str(self.status)
        labels = (self.operation, self.model, self.response_model, self.backend, error_type)
        telemetry.REQUEST_DURATION.observe(labels, self.duration)
        if self.input_tokens is not None:
            telemetry.TOKEN_USAGE.observe((*labels, "input"), self.input_tokens)
        if self.output_tokens is not None:
            telemetry.TOKEN_USAGE.observe((*labels, "output"), self.output_tokens)
        if self.first_token is not None:
            telemetry.TIME_TO_FIRST_TOKEN.observe(labels, self.first_token)
            if self.output_tokens is not None and self.output_tokens > 1:
                per_token = max(0.0, self.duration - self.first_token) / (self.output_tokens - 1)
                telemetry.TIME_PER_OUTPUT_TOKEN.observe(labels, per_token)


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

    async def export(
        self, request: usage_log_pb2.ExportLogsServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> usage_log_pb2.ExportLogsServiceResponse:
        for index, entry in enumerate(records(request), 1):
            usage = UsageEntry.of(fields(entry))
            if usage is not None:
                usage.record()
            if index % SLICE == 0:
                await asyncio.sleep(0)  # picks and xDS between slices of a large export (some 13 µs a record)
        return usage_log_pb2.ExportLogsServiceResponse()

    def add_to(self, server: grpc.aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(
            self.export,
            request_deserializer=usage_log_pb2.ExportLogsServiceRequest.FromString,
            response_serializer=usage_log_pb2.ExportLogsServiceResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(LOGS_SERVICE, {"Export": handler}),))
