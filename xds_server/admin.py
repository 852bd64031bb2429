"""Admin HTTP (loopback by default): health, readiness, Prometheus metrics and the /debug views."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from xds_server.control_plane import ControlPlane
from xds_server.epp.picker import EndpointPicker


def _json(document: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(document, option=orjson.OPT_INDENT_2), status=status, content_type="application/json"
    )


class Synced(Protocol):
    @property
    def synced(self) -> bool: ...


class Leadership(Protocol):
    @property
    def is_leader(self) -> bool: ...

    @property
    def holder(self) -> str | None: ...

    @property
    def identity(self) -> str: ...

    @property
    def lease(self) -> str: ...


@dataclass(frozen=True)
class ClusterView:
    """Cluster mode's state for the admin views: has the source listed everything, and who leads."""

    source: Synced
    leadership: Leadership

    def document(self) -> dict[str, Any]:
        return {
            "synced": self.source.synced,
            "identity": self.leadership.identity,
            "leader": self.leadership.holder or "",
            "leading": self.leadership.is_leader,
            "lease": self.leadership.lease,
        }


def admin_app(
    control_plane: ControlPlane, picker: EndpointPicker | None = None, cluster: ClusterView | None = None
) -> web.Application:
    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_request: web.Request) -> web.Response:
        if control_plane.stopping.is_set():
            return web.Response(status=503, text="not ready: shutting down, finishing requests in flight\n")
        if not control_plane.ready:
            return web.Response(status=503, text="not ready: resources not loaded yet\n")
        if cluster is None:
            return web.Response(text="ready\n")
        # Every replica serves, so a follower is ready too; the text says which one writes status.
        role = "leader" if cluster.leadership.is_leader else f"follower (leader: {cluster.leadership.holder or 'none'})"
        return web.Response(text=f"ready, {role}\n")

    async def prometheus(_request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def snapshots(_request: web.Request) -> web.Response:
        return _json(control_plane.snapshots_document())

    async def clients(_request: web.Request) -> web.Response:
        return _json(control_plane.clients_document())

    async def status(_request: web.Request) -> web.Response:
        document = control_plane.status_document()
        if cluster is not None:
            document["cluster"] = cluster.document()
        return _json(document)

    async def pools(_request: web.Request) -> web.Response:
        return _json(picker.pools_document() if picker is not None else [])

    async def pool(request: web.Request) -> web.Response:
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        if picker is None or key not in picker.pools:
            return _json({"error": f"no InferencePool {key}"}, status=404)
        return _json(picker.pool_document(key))

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/debug/snapshots", snapshots)
    app.router.add_get("/debug/clients", clients)
    app.router.add_get("/debug/status", status)
    app.router.add_get("/debug/pools", pools)
    app.router.add_get("/debug/pools/{namespace}/{name}", pool)
    return app
