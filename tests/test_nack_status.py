"""A rejection by Envoy becomes a condition on the Gateway and on every object its error message names."""

from __future__ import annotations

from testing.bulk_manifests import http_routes
from testing.manifests import gateway
from translators.ir import ObjectRef, TranslateOptions
from translators.loader import load_texts
from translators.xds.names import CLUSTER_TYPE, objects_named_in
from xds_server.control_plane import ControlPlane
from xds_server.xds.cache import SnapshotCache
from xds_server.xds.streams import ClientRegistry, XdsProtocol


def test_object_names_are_read_back_from_resource_names_in_an_error() -> None:
    text = (
        "Error adding/updating cluster(s) backend/default/r1: bad; aiservicebackend/team/openai: worse; "
        "route aigatewayroute/default/models/rule/0/match/1 and backend/default/r1 again; weighted/abc123"
    )
    assert objects_named_in(text) == [
        ObjectRef("Backend", "default", "r1"),
        ObjectRef("AIServiceBackend", "team", "openai"),
        ObjectRef("AIGatewayRoute", "default", "models"),
    ]


def test_a_nack_marks_the_gateway_and_the_named_backend_until_a_newer_version_is_acked() -> None:
    clients = ClientRegistry()
    control_plane = ControlPlane(SnapshotCache(), clients, TranslateOptions())
    control_plane.apply(
        control_plane.build(load_texts([("m.yaml", gateway([10080]) + "---" + http_routes(2, "127.0.6.1", 80))]))
    )
    stream = clients.open(XdsProtocol.SOTW)
    clients.identified(stream, "envoy-1", "default/gw")
    stream.state(CLUSTER_TYPE).sent_version = "v1"
    stream.responded(CLUSTER_TYPE, clients.next_nonce())
    clients.nacked(stream, CLUSTER_TYPE, "Error adding/updating cluster(s) backend/default/r1: invalid")

    def programmed() -> dict[tuple[str, str], str]:
        return {
            (s.ref.kind, s.ref.name): c.status
            for s in control_plane.statuses()
            for c in s.conditions
            if c.type == "Programmed"
        }

    assert programmed()[("Gateway", "gw")] == "False"
    assert programmed()[("Backend", "r1")] == "False"
    assert ("Backend", "r0") not in programmed()
    stream.state(CLUSTER_TYPE).sent_version = "v2"
    stream.responded(CLUSTER_TYPE, clients.next_nonce())
    clients.acked(stream, CLUSTER_TYPE)
    # No longer rejected, but the ACKed response was not built from the current snapshot: not Programmed yet.
    assert programmed()[("Gateway", "gw")] == "False" and ("Backend", "r1") not in programmed()
    snapshot = control_plane.cache.get("default/gw")
    assert snapshot is not None
    stream.state(CLUSTER_TYPE).built_from = snapshot.version(CLUSTER_TYPE)
    assert programmed()[("Gateway", "gw")] == "True"
    clients.close(stream)
    assert programmed()[("Gateway", "gw")] == "False"  # no Envoy of it holds the configuration any more
