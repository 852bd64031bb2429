"""The Envoy bootstrap for one Gateway: node identity, ADS over HTTP/2 to the control plane (mutual TLS in a cluster),
admin on loopback."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from google.protobuf import json_format

from translators.ir import ControlPlaneTls
from translators.xds.tls import control_plane_transport_socket
from xds_server.listen import Address

ADMIN_CLUSTER = "xds-server/admin"
READINESS_LISTENER = "xds-server/readiness"
HTTP_CONNECTION_MANAGER = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
DRAIN_PATH = "/drain"  # a provisioned Envoy's preStop hook


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _static_cluster(name: str, address: Address) -> dict[str, Any]:
    """A cluster of one address: a Unix socket (a pipe) or an IP as it is, a hostname (a Service's DNS name) resolved
    and re-resolved, so the Envoy follows the name to wherever it points next."""
    if address.path is not None:
        target: dict[str, Any] = {"pipe": {"path": address.path}}
    else:
        target = {"socket_address": {"address": address.host, "port_value": address.port}}
    endpoint = {"endpoint": {"address": target}}
    return {
        "name": name,
        "type": "STATIC" if address.unix or _is_ip(address.host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }


def _readiness_listener(port: int, drain_seconds: int) -> dict[str, Any]:
    """A listener on every address for the kubelet, since the admin listens on loopback only (and exposing it would
    expose /quitquitquit and the rest). Two routes, nothing else of the admin:

    - `/ready` -> the admin's `/ready`: 200 once the server is LIVE (it has its first configuration), 503 after
      `/healthcheck/fail`; the readiness probe.
    - `/drain` -> POSTs the admin's `/healthcheck/fail` (the admin takes no GET for a change of state, and a
      kubelet's httpGet hook can only GET; the images are distroless, so there is no shell for an exec hook), then
      answers after `drain_seconds`; the preStop hook. Meanwhile the pod turns unready and leaves the Service's
      endpoints, and Envoy closes keep-alive connections as their requests end (HTTP/1 `Connection: close`,
      HTTP/2 GOAWAY), before the SIGTERM that follows the hook.
    """
    fail = (
        "function envoy_on_request(handle)\n"
        f'  handle:httpCall("{ADMIN_CLUSTER}", {{[":method"] = "POST", [":path"] = "/healthcheck/fail",'
        ' [":authority"] = "admin"}, "", 2000)\n'
        "end\n"
    )
    manager = {
        "@type": HTTP_CONNECTION_MANAGER,
        "stat_prefix": "readiness",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "readiness",
                    "domains": ["*"],
                    "routes": [
                        {"match": {"path": "/ready"}, "route": {"cluster": ADMIN_CLUSTER}},
                        {
                            "match": {"path": DRAIN_PATH},
                            "direct_response": {"status": 200, "body": {"inline_string": "draining\n"}},
                            "typed_per_filter_config": {
                                "envoy.filters.http.lua": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute",
                                    "source_code": {"inline_string": fail},
                                },
                                "envoy.filters.http.fault": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                                    "delay": {"fixed_delay": f"{drain_seconds}s", "percentage": {"numerator": 100}},
                                },
                            },
                        },
                    ],
                }
            ]
        },
        # Lua and fault do nothing but on the /drain route (their per-route configuration); Lua first, so the
        # health check fails before the delay starts.
        "http_filters": [
            {
                "name": "envoy.filters.http.lua",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"},
            },
            {
                "name": "envoy.filters.http.fault",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"},
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    return {
        "name": READINESS_LISTENER,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }


# Envoy's edge best practice: a cap on client connections across all listeners (Envoy warns without one), so a flood
# of idle connections cannot exhaust file descriptors and memory; past it, new connections are refused.
MAX_DOWNSTREAM_CONNECTIONS = 50_000
FIXED_HEAP = "envoy.resource_monitors.fixed_heap"
# With a heap limit, as the edge best practice has it: free memory is returned to the system from 95% of it on, and
# from 98% new requests get a 503 (`overload` in the access log) instead of the process growing into the OOM killer.
HEAP_ACTIONS = (("envoy.overload_actions.shrink_heap", 0.95), ("envoy.overload_actions.stop_accepting_requests", 0.98))


def overload_manager(max_heap_bytes: int | None = None) -> dict[str, Any]:
    """The connection cap, and with `max_heap_bytes` the heap limit and its actions."""
    monitors: list[dict[str, Any]] = [
        {
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
            },
        }
    ]
    if max_heap_bytes is None:
        return {"resource_monitors": monitors}
    monitors.append(
        {
            "name": FIXED_HEAP,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                "max_heap_size_bytes": max_heap_bytes,
            },
        }
    )
    actions = [
        {"name": action, "triggers": [{"name": FIXED_HEAP, "threshold": {"value": threshold}}]}
        for action, threshold in HEAP_ACTIONS
    ]
    return {"refresh_interval": "0.25s", "resource_monitors": monitors, "actions": actions}


# RE2 programs Envoy accepts (its default error level is 100): the refusal of a model longer than the limit unrolls
# the count (translators.gatewayapi.model_routes.too_long), which RE2 also caps at 1,000 repetitions: hence
# MAX_MODEL_LENGTH (checked with Envoy's --mode validate). Routes' own regular expressions get the same room.
RE2_MAX_PROGRAM_SIZE = 65_536
MAX_MODEL_LENGTH = 999
RUNTIME = {
    "layers": [
        {"name": "static", "static_layer": {"re2.max_program_size.error_level": RE2_MAX_PROGRAM_SIZE}},
        {"name": "admin", "admin_layer": {}},
    ]
}


def bootstrap(
    gateway: str,
    node_id: str,
    xds: tuple[str, int] | Address,
    admin: tuple[str, int],
    delta: bool = False,
    readiness_port: int | None = None,
    drain_seconds: int = 5,
    tls: ControlPlaneTls | None = None,
    max_heap_bytes: int | None = None,
) -> dict[str, Any]:
    """`gateway` is "<ns>/<name>": Envoy's node.cluster, the key of the snapshot it is served.

    `xds` is a Unix socket (`Address(path=...)`, on one machine), an IP, or a hostname (STRICT_DNS: a Service's name
    in a cluster). `delta` selects incremental ADS
    (`DeltaAggregatedResources`) instead of state of the world. `readiness_port` adds the listener a kubelet probes
    (`/ready`) and drains through (`/drain`, answered after `drain_seconds`); see `_readiness_listener`. `tls`: ADS
    over mutual TLS, Envoy's certificate (which names the Gateway) read from files (see `translators.xds.tls`).
    `max_heap_bytes`: the overload manager's heap limit (`overload_manager`).
    """
    ads = {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"}
    ads_cluster = _static_cluster("xds-server/ads", xds if isinstance(xds, Address) else Address(*xds))
    ads_cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {
                "http2_protocol_options": {"connection_keepalive": {"interval": "30s", "timeout": "5s"}}
            },
        }
    }
    if tls is not None:
        socket = json_format.MessageToJson(control_plane_transport_socket(tls), preserving_proto_field_name=True)
        ads_cluster["transport_socket"] = json.loads(socket)  # plain dicts (an Any would come as an OrderedDict)
    static: dict[str, Any] = {"clusters": [ads_cluster]}
    if readiness_port is not None:
        static["clusters"].append(_static_cluster(ADMIN_CLUSTER, Address(*admin)))
        static["listeners"] = [_readiness_listener(readiness_port, drain_seconds)]
    return {
        "node": {"id": node_id, "cluster": gateway},
        "admin": {"address": {"socket_address": {"address": admin[0], "port_value": admin[1]}}},
        "overload_manager": overload_manager(max_heap_bytes),
        "layered_runtime": RUNTIME,
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-server/ads"}}],
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": static,
    }
