"""GenAI metrics of AI requests, recorded from the usage log (OpenTelemetry GenAI semantic conventions, Prometheus
names).

Recorded only for requests routed to a backend (the gateway's own refusals of unknown models are direct responses,
never metered), so client-chosen model names cannot grow label sets beyond what the routes match.
Bucket boundaries are the ones the conventions advise.
"""

from __future__ import annotations

from prometheus_client import Histogram

LABELS = ["gen_ai_operation_name", "gen_ai_request_model", "gen_ai_response_model", "backend", "error_type"]

TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage",
    "tokens used per request, by token type (input, output)",
    [*LABELS, "gen_ai_token_type"],
    buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864),
)
REQUEST_DURATION = Histogram(
    "gen_ai_server_request_duration",
    "seconds from the request's start to the last byte of the answer sent to the client",
    LABELS,
    buckets=(0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92),
)
TIME_TO_FIRST_TOKEN = Histogram(
    "gen_ai_server_time_to_first_token",
    "seconds from the request's headers to the first chunk of a streamed response",
    LABELS,
    buckets=(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0),
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "gen_ai_server_time_per_output_token",
    "seconds per output token after the first, of a streamed response",
    LABELS,
    buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5),
)
