"""The usage log: Envoy streams an access log entry for every AI request (gRPC access log service, batched on one
stream per worker), and the GenAI metrics are recorded from it. Nothing here runs on a request's path.

What an entry carries: the routed model and the stream flag (request headers the log is told to add), the backend (a
custom tag from the answering endpoint's metadata; the cluster when there is none), the timings, and the usage that
Envoy's json_to_metadata filter (JSON answers) or stream metering (event streams) wrote as dynamic metadata.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from google.protobuf import duration_pb2, struct_pb2

from translators.xds.names import METERING_METADATA_NAMESPACE, MODEL_HEADER, OPERATIONS, STREAM_HEADER
from xds_server.extproc import telemetry

log = logging.getLogger(__name__)


def _seconds(duration: duration_pb2.Duration) -> float:
    return float(duration.seconds) + duration.nanos / 1e9


def _number(fields: Mapping[str, struct_pb2.Value], key: str) -> int | None:
    """A count: a finite number >= 0 (an upstream may send anything where a count belongs; Envoy passes it on)."""
    value = fields.get(key)
    if value is None or value.WhichOneof("kind") != "number_value":
        return None
    number = value.number_value
    return int(number) if math.isfinite(number) and number >= 0 else None


@dataclass(frozen=True)
class UsageEntry:
    """What one access log entry says of an AI request a backend answered."""

    operation: str
    model: str
    response_model: str
    backend: str
    status: int
    stream: bool
    duration: float  # seconds from the request's start to the last byte sent to the client
    input_tokens: int | None
    output_tokens: int | None
    first_token: float | None  # seconds from the request's start to the first chunk of a streamed answer

    @classmethod
    def of(cls, entry: accesslog_pb2.HTTPAccessLogEntry) -> UsageEntry | None:
        """None for a request no backend answered (Envoy's own replies) or not to an OpenAI operation."""
        common = entry.common_properties
        backend = common.custom_tags.get("backend") or common.upstream_cluster
        operation = OPERATIONS.get(entry.request.path.partition("?")[0], "")
        # An answer the client did not wait for to the end has no last byte sent: its duration is the stream's.
        if common.HasField("time_to_last_downstream_tx_byte"):
            duration = _seconds(common.time_to_last_downstream_tx_byte)
        elif common.HasField("duration"):
            duration = _seconds(common.duration)
        else:
            return None
        if not backend or not operation:
            return None
        headers = entry.request.request_headers
        usage = common.metadata.filter_metadata.get(METERING_METADATA_NAMESPACE)
        fields: Mapping[str, struct_pb2.Value] = usage.fields if usage is not None else {}
        response_model = fields["response_model"].string_value if "response_model" in fields else ""
        first_token_ms = _number(fields, "first_token_ms")
        return cls(
            operation=operation,
            model=headers.get(MODEL_HEADER, ""),
            response_model=response_model,
            backend=backend,
            status=entry.response.response_code.value,
            stream=headers.get(STREAM_HEADER) == "true",
            duration=duration,
            input_tokens=_number(fields, "input_tokens"),
            output_tokens=_number(fields, "output_tokens"),
            first_token=first_token_ms / 1000 if first_token_ms is not None else None,
        )

    def record(self) -> None:
        error_type = "" if 200 <= self.status < 300 else str(self.status)
        labels = (self.operation, self.model, self.response_model, self.backend, error_type)
        telemetry.REQUEST_DURATION.labels(*labels).observe(self.duration)
        if self.input_tokens is not None:
            telemetry.TOKEN_USAGE.labels(*labels, "input").observe(self.input_tokens)
        if self.output_tokens is not None:
            telemetry.TOKEN_USAGE.labels(*labels, "output").observe(self.output_tokens)
        if self.first_token is not None:
            telemetry.TIME_TO_FIRST_TOKEN.labels(*labels).observe(self.first_token)
            if self.output_tokens is not None and self.output_tokens > 1:
                per_token = max(0.0, self.duration - self.first_token) / (self.output_tokens - 1)
                telemetry.TIME_PER_OUTPUT_TOKEN.labels(*labels).observe(per_token)


class UsageLog(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]  # the generated base is untyped
    """Envoy keeps one access-log stream open per worker for as long as it runs; `closing` (the process stopping)
    ends them, so that stopping waits for requests in flight, not for streams that never end."""

    def __init__(self, closing: asyncio.Event | None = None) -> None:
        self._closing = closing or asyncio.Event()

    async def StreamAccessLogs(  # gRPC's method name
        self,
        request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> als_pb2.StreamAccessLogsResponse:
        reading = asyncio.ensure_future(self._record(request_iterator))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({reading, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            reading.cancel()
        return als_pb2.StreamAccessLogsResponse()

    @staticmethod
    async def _record(request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage]) -> None:
        async for message in request_iterator:
            for entry in message.http_logs.log_entry:
                usage = UsageEntry.of(entry)
                if usage is not None:
                    usage.record()
