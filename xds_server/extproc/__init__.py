"""The ext_proc services Envoy calls per request, and the protocol kernel they share.

`protocol` is the kernel: the stream-handler contract, reading headers, attributes and the request body's `model`,
and building replies. `upstream` (per-attempt backend settings, with `providers` and `schemas` for other APIs) is
built on it, as is the Endpoint Picker in `xds_server.epp` (Envoy routes by model and reads usage itself, with our
AI filter module: no ext_proc runs for an ordinary backend); each reads only the runtime tables it is handed
(`translators.runtime`). `server` is the gRPC dispatcher that hands each stream to a handler by its initial
metadata; the composition root registers the handlers. `usage_log` is not ext_proc: it receives Envoy's log
records of AI requests and records the GenAI metrics (`telemetry`).
"""
