"""The xDS side, knowing nothing of Gateway API (go-control-plane's split): `cache` holds one snapshot per Envoy
node cluster, `streams` the per-stream subscription state (with make-before-break), `sotw` and `delta` the two ADS
protocols on top of it, `stream_loop` the event loop of one stream, `sync` whether an Envoy holds the latest
snapshot, and `server` the gRPC servicer that serves both protocols."""
