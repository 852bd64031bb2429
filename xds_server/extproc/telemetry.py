"""GenAI metrics of AI requests, recorded from the usage log (OpenTelemetry GenAI semantic conventions, Prometheus
names).

Recorded only for requests routed to a backend (the gateway's own refusals of unknown models are direct responses,
never metered), so client-chosen model names cannot grow label sets beyond what the routes match.
Bucket boundaries are the ones the conventions advise.

The usage log records a batch of entries at a time, several observations each, on the event loop: prometheus_client's
Histogram (label validation, a lock per value, a linear bucket search: about 4 µs an observation) is replaced here by
a collector that keeps plain counts per label set and finds the bucket by bisection (well under 1 µs). Only the event
loop writes; a scrape reads a copy of each series.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import REGISTRY
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

LABELS = ("gen_ai_operation_name", "gen_ai_request_model", "gen_ai_response_model", "backend", "error_type")


class LabelledHistogram(Collector):
    """A Prometheus histogram by label values, for one writer (the event loop)."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self._bounds = tuple(float(bound) for bound in buckets)
        # Prometheus's spelling of a bound, as prometheus_client writes it.
        self._les = [floatToGoString(bound) for bound in self._bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        # Per label values: a count per bucket (not cumulative; the last one is +Inf), then the sum.
        self._series: dict[tuple[str, ...], list[float]] = {}
        REGISTRY.register(self)

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = [0.0] * (len(self._bounds) + 2)
        series[bisect_left(self._bounds, value)] += 1  # the first bound >= value: Prometheus's `le`
        series[-1] += value

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labels)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, series in list(self._series.items()):
            counts = list(series)  # one copy: the event loop may add to the series while this thread reads it
            buckets, total = [], 0.0
            for le, count in zip(self._les, counts, strict=False):
                total += count
                buckets.append((le, total))
            family.add_metric(list(labels), buckets, sum_value=counts[-1])
        yield family


TOKEN_USAGE = LabelledHistogram(
    "gen_ai_client_token_usage",
    "tokens used per request, by token type (input, output)",
    [*LABELS, "gen_ai_token_type"],
    buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864),
)
REQUEST_DURATION = LabelledHistogram(
    "gen_ai_server_request_duration",
    "seconds from the request's start to the last byte of the answer sent to the client",
    LABELS,
    buckets=(0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92),
)
TIME_TO_FIRST_TOKEN = LabelledHistogram(
    "gen_ai_server_time_to_first_token",
    "seconds from the request's headers to the first chunk of a streamed response",
    LABELS,
    buckets=(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0),
)
TIME_PER_OUTPUT_TOKEN = LabelledHistogram(
    "gen_ai_server_time_per_output_token",
    "seconds per output token after the first, of a streamed response",
    LABELS,
    buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5),
)
