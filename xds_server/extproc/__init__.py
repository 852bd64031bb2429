"""The ext_proc services Envoy calls per request: the model router, and (later) the Endpoint Picker, on one server.

`server` dispatches each gRPC stream to a handler by its initial metadata; `router` is the model router, built on
`tables` (per-build lookups), `sse` (incremental SSE and usage parsing), `responses` (protobuf replies) and
`telemetry` (GenAI metrics).
"""
