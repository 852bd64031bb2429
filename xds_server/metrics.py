"""The control plane's Prometheus metrics (served at the admin `/metrics`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTED_ENVOYS = Gauge("xds_server_connected_envoys", "ADS streams identified by a node, per gateway", ["gateway"])
PUSHES = Counter(
    "xds_server_pushes_total", "xDS responses sent, per gateway, type and protocol", ["gateway", "type", "protocol"]
)
PUSH_BYTES = Counter(
    "xds_server_push_bytes_total",
    "serialized size of xDS responses sent, per type and protocol",
    ["type", "protocol"],
)
NACKS = Counter("xds_server_nacks_total", "xDS responses an Envoy rejected, per gateway and type", ["gateway", "type"])
TRANSLATION_SECONDS = Histogram(
    "xds_server_translation_seconds",
    "translation and snapshot build time of one reload",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
RELOADS = Counter("xds_server_reloads_total", "reloads of the resource sources, by result", ["result"])
LOAD_ERRORS = Gauge("xds_server_load_errors", "invalid objects in the latest load")
