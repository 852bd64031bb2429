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
STATUS_WRITES = Counter(
    "xds_server_status_writes_total",
    "status subresource writes to the API server, per kind and result (ok, conflict, error)",
    ["kind", "result"],
)
LEADER = Gauge("xds_server_leader", "1 while this replica holds the leader Lease (writes status, provisions), else 0")
LEADER_TRANSITIONS = Counter(
    "xds_server_leader_transitions_total", "changes of this replica's leadership, gained or lost"
)
KUBE_WATCH_RESTARTS = Counter(
    "xds_server_kube_watch_restarts_total",
    "Kubernetes watches reopened, per kind and reason (gone: 410, error, inactivity, not_found: kind not served, "
    "forbidden: a kind the RBAC lacks)",
    ["kind", "reason"],
)
KUBE_RELISTS = Counter("xds_server_kube_relists_total", "Kubernetes LISTs after the first one, per kind", ["kind"])
KUBE_EVENTS = Counter(
    "xds_server_kube_events_total",
    "Kubernetes watch events, per kind and type (SYNTHETIC_DELETED: gone at a relist)",
    ["kind", "type"],
)
KUBE_OBJECTS = Gauge("xds_server_kube_objects", "Kubernetes objects stored, per kind", ["kind"])
PROVISIONED = Counter(
    "xds_server_provisioned_objects_total",
    "Envoy objects the provisioner applied or deleted, per kind, action (apply, delete) and result (ok, error)",
    ["kind", "action", "result"],
)
REFUSED_STREAMS = Counter(
    "xds_server_refused_streams_total",
    "gRPC streams refused because the client certificate does not name the Gateway asked for, per server (ads, "
    "upstream_settings, picker) and reason (no_identity, other_gateway)",
    ["server", "reason"],
)
CERTIFICATES_ISSUED = Counter(
    "xds_server_certificates_issued_total", "certificates this replica issued, per kind (ca, server, client)", ["kind"]
)
