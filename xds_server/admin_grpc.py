"""The gRPC admin API (protos/xds_server/api/admin.proto), served beside ADS: what `xds-server status` reads."""

from __future__ import annotations

import grpc

from xds_server.admin import ClusterView
from xds_server.api import admin_pb2, admin_pb2_grpc
from xds_server.control_plane import ControlPlane
from xds_server.xds.streams import short_type
from xds_server.xds.sync import stream_sync


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, control_plane: ControlPlane, cluster: ClusterView | None = None) -> None:
        self._control_plane = control_plane
        self._cluster = cluster

    async def ListClients(
        self,
        request: admin_pb2.ListClientsRequest,
        context: grpc.aio.ServicerContext[admin_pb2.ListClientsRequest, admin_pb2.ListClientsResponse],
    ) -> admin_pb2.ListClientsResponse:
        cache = self._control_plane.cache
        response = admin_pb2.ListClientsResponse()
        if self._cluster is not None:
            leadership = self._cluster.leadership
            response.leadership.identity = leadership.identity
            response.leadership.leader = leadership.holder or ""
            response.leadership.leading = leadership.is_leader
            response.leadership.lease = leadership.lease
        for stream in self._control_plane.clients.streams():
            if not stream.key or (request.gateway and stream.key != request.gateway):
                continue
            snapshot = cache.get(stream.key)
            client = response.clients.add(
                node_id=stream.node_id,
                gateway=stream.key,
                protocol=str(stream.protocol),
                connected_at=stream.connected_at,
            )
            sync = stream_sync(stream, cache)
            for type_url, state in sorted(stream.types.items()):
                latest = snapshot.version(type_url) if snapshot is not None and type_url in snapshot.types else ""
                client.types.add(
                    type=short_type(type_url),
                    snapshot_version=latest,
                    sent_version=state.sent_version or "",
                    acked_version=state.acked_version,
                    state=str(sync[type_url]),
                    nacked_version=state.nacked_version,
                    last_error=state.last_error,
                )
        return response


COLUMNS = {"Cluster": "CDS", "ClusterLoadAssignment": "EDS", "Listener": "LDS", "RouteConfiguration": "RDS"}


def status_table(response: admin_pb2.ListClientsResponse) -> str:
    """One line per Envoy, like `istioctl proxy-status`: gateway, node, protocol and the state of each type."""
    rows = [["GATEWAY", "NODE", "PROTOCOL", *COLUMNS.values()]]
    errors = []
    for client in response.clients:
        states = {t.type: t for t in client.types}
        row = [client.gateway, client.node_id, client.protocol]
        for type_name in COLUMNS:
            status = states.get(type_name)
            row.append(f"{status.state} ({status.acked_version or '-'})" if status else "-")
            if status and status.state == "NACKED":
                errors.append(f"{client.node_id} {type_name} {status.nacked_version}: {status.last_error}")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    if len(rows) == 1:
        lines.append("no Envoy connected")
    if response.HasField("leadership"):
        leadership = response.leadership
        role = "this replica" if leadership.leading else "another replica"
        lines.append(f"leader: {leadership.leader or 'none'} ({role}; lease {leadership.lease or 'not used'})")
    return "\n".join([*lines, *(f"rejected: {error}" for error in errors)]) + "\n"
