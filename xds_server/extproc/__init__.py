"""The ext_proc services Envoy calls per request, and the protocol kernel they share.

`protocol` is the kernel: the stream-handler contract, reading headers, attributes and the request body's `model`,
and building replies. `metering` (the usage of streamed AI answers, with `sse`; never on the request path: Envoy
routes by model and reads JSON usage itself) and `upstream` (per-attempt backend settings) are peers built on it,
as is the Endpoint Picker in `xds_server.epp`; each reads only the runtime tables it is handed
(`translators.runtime`). `server` is the gRPC dispatcher that hands each stream to a handler by its initial
metadata; the composition root registers the handlers. `usage_log` is not ext_proc: it receives Envoy's access log
entries of AI requests and records the GenAI metrics (`telemetry`).
"""
