"""The ext_proc services Envoy calls per request, and the protocol kernel they share.

`protocol` is the kernel: the stream-handler contract, reading headers, attributes and the request body's `model`,
and building replies. `metering` (usage of AI responses, with `sse` for streamed usage and `telemetry` for GenAI
metrics; never on the request path: Envoy routes by model itself) and `upstream` (per-attempt backend settings) are
peers built on it, as is the Endpoint Picker in `xds_server.epp`; each reads only the runtime tables it is handed
(`translators.runtime`). `server` is the gRPC dispatcher that hands each stream to a handler by its initial
metadata; the composition root registers the handlers.
"""
