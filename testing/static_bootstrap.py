"""Turns one Gateway's xDS resources into a static Envoy bootstrap, so `envoy --mode validate` checks them.

RDS becomes an inline route_config and EDS clusters get their ClusterLoadAssignment inline (as STATIC), and the API
keys' SDS secrets become static secrets (Envoy's validate mode crashes on a credential it would fetch over ADS, which
it does not run): every resource we would serve is then parsed and validated by the real Envoy, without a control
plane.
"""

from __future__ import annotations

import copy
from typing import Any

from xds_server.bootstrap import RUNTIME


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
    generic = [secret for secret in resources.get("secrets", []) if "generic_secret" in secret]
    for cluster in clusters:
        options = cluster.get("typed_extension_protocol_options", {}).values()
        for http_filter in (f for option in options for f in option.get("http_filters", [])):
            credential = http_filter["typed_config"].get("credential", {}).get("typed_config", {}).get("credential")
            if credential is not None:
                del credential["sds_config"]  # a name alone: the static secret of that name
    static: dict[str, Any] = {"listeners": listeners, "clusters": clusters}
    if generic:
        static["secrets"] = generic
    # The runtime every bootstrap we write has (the model-length check's RE2 program needs its budget).
    return {
        "node": {"id": "validate", "cluster": resources["gateway"]},
        "layered_runtime": RUNTIME,
        "static_resources": static,
    }
