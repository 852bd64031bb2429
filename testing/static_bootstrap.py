"""Turns one Gateway's xDS resources into a static Envoy bootstrap, so `envoy --mode validate` checks them.

RDS becomes an inline route_config and EDS clusters get their ClusterLoadAssignment inline (as STATIC): every
resource we would serve is then parsed and validated by the real Envoy, without a control plane.
"""

from __future__ import annotations

import copy
from typing import Any


def static_bootstrap(resources: dict[str, Any]) -> dict[str, Any]:
    """`resources` is one gateway entry of `translation_dict` (listeners, routes, clusters, endpoints)."""
    routes = {r["name"]: r for r in resources["routes"]}
    assignments = {a["cluster_name"]: a for a in resources["endpoints"]}
    listeners = copy.deepcopy(resources["listeners"])
    for listener in listeners:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                manager = network_filter["typed_config"]
                manager["route_config"] = routes[manager.pop("rds")["route_config_name"]]
        listener["address"]["socket_address"]["port_value"] = 0  # validation never binds, but stay harmless
    clusters = copy.deepcopy(resources["clusters"])
    for cluster in clusters:
        if cluster.get("type") == "EDS":
            del cluster["eds_cluster_config"]
            cluster["type"] = "STATIC"
            cluster["load_assignment"] = assignments[cluster["name"]]
    return {
        "node": {"id": "validate", "cluster": resources["gateway"]},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }
