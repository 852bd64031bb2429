"""The Envoy bootstrap for one Gateway: node identity, ADS over HTTP/2 to the control plane, admin on loopback."""

from __future__ import annotations

from typing import Any


def bootstrap(
    gateway: str, node_id: str, xds: tuple[str, int], admin: tuple[str, int], delta: bool = False
) -> dict[str, Any]:
    """`gateway` is "<ns>/<name>": Envoy's node.cluster, the key of the snapshot it is served.

    `delta` selects incremental ADS (`DeltaAggregatedResources`) instead of state of the world.
    """
    ads = {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"}
    return {
        "node": {"id": node_id, "cluster": gateway},
        "admin": {"address": {"socket_address": {"address": admin[0], "port_value": admin[1]}}},
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
        "static_resources": {
            "clusters": [
                {
                    "name": "xds-server/ads",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "xds-server/ads",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {"socket_address": {"address": xds[0], "port_value": xds[1]}}
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {
                                "http2_protocol_options": {"connection_keepalive": {"interval": "30s", "timeout": "5s"}}
                            },
                        }
                    },
                }
            ]
        },
    }
