"""Hand-built xDS resources for the snapshot cache and ADS tests: Listener, RouteConfiguration, Cluster and
ClusterLoadAssignment protobufs made directly, so those tests need no translator and no manifests.

The shapes follow what the translator serves (an HTTP listener taking its routes over ADS, EDS clusters with their
assignments, the control plane's ext_proc cluster inline), reduced to what the cache and the ADS servers look at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf.message import Message

from translators.xds.names import CLUSTER_TYPE, ENDPOINT_TYPE, EXTPROC_CLUSTER, LISTENER_TYPE, ROUTE_TYPE

GATEWAY = "default/gw"  # Envoy's node.cluster for the resources of `gateway()`
ROUTES = "routes"  # the RouteConfiguration of `pointed_at()`
HCM_FILTER = "envoy.filters.network.http_connection_manager"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@dataclass
class Resources:
    """One Gateway's resources by kind, in lists a test may edit (on purpose, to break them) before building."""

    listeners: list[listener_pb2.Listener] = field(default_factory=list)
    routes: list[route_pb2.RouteConfiguration] = field(default_factory=list)
    clusters: list[cluster_pb2.Cluster] = field(default_factory=list)
    endpoints: list[endpoint_pb2.ClusterLoadAssignment] = field(default_factory=list)

    def by_type(self) -> dict[str, list[Message]]:
        """Keyed by xDS type URL, the shape `Snapshot.build` takes."""
        return {
            CLUSTER_TYPE: list(self.clusters),
            ENDPOINT_TYPE: list(self.endpoints),
            LISTENER_TYPE: list(self.listeners),
            ROUTE_TYPE: list(self.routes),
        }


def ads_source() -> config_source_pb2.ConfigSource:
    source = config_source_pb2.ConfigSource(resource_api_version=config_source_pb2.V3)
    source.ads.SetInParent()
    return source


def listener(name: str, port: int, route_config: str, extproc_cluster: str | None = None) -> listener_pb2.Listener:
    """An HTTP listener on 0.0.0.0:`port` taking RouteConfiguration `route_config` over ADS; with `extproc_cluster`,
    an ext_proc filter calling that cluster runs before the router."""
    manager = hcm_pb2.HttpConnectionManager(stat_prefix=name)
    manager.rds.route_config_name = route_config
    manager.rds.config_source.CopyFrom(ads_source())
    if extproc_cluster is not None:
        processor = ext_proc_pb2.ExternalProcessor()
        processor.grpc_service.envoy_grpc.cluster_name = extproc_cluster
        manager.http_filters.add(name="envoy.filters.http.ext_proc").typed_config.Pack(processor)
    manager.http_filters.add(name="envoy.filters.http.router").typed_config.Pack(router_pb2.Router())
    built = listener_pb2.Listener(name=name)
    built.address.socket_address.address = "0.0.0.0"
    built.address.socket_address.port_value = port
    built.filter_chains.add().filters.add(name=HCM_FILTER).typed_config.Pack(manager)
    return built


def route_configuration(name: str, clusters_by_prefix: Mapping[str, str]) -> route_pb2.RouteConfiguration:
    """One virtual host for every domain; route `to-<cluster>` sends path prefix `prefix` to `cluster`."""
    config = route_pb2.RouteConfiguration(name=name)
    host = config.virtual_hosts.add(name="all", domains=["*"])
    for prefix, cluster_name in clusters_by_prefix.items():
        route = host.routes.add(name="to-" + cluster_name)
        route.match.prefix = prefix
        route.route.cluster = cluster_name
    return config


def eds_cluster(name: str) -> cluster_pb2.Cluster:
    """A cluster whose endpoints come over ADS, as ClusterLoadAssignment `name`."""
    cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    cluster.eds_cluster_config.eds_config.ads.SetInParent()
    return cluster


def load_assignment(cluster_name: str, *addresses: str, port: int = 8000) -> endpoint_pb2.ClusterLoadAssignment:
    """One locality with an endpoint at address:`port` for each of `addresses`."""
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster_name)
    locality = assignment.endpoints.add()
    for address in addresses:
        socket_address = locality.lb_endpoints.add().endpoint.address.socket_address
        socket_address.address = address
        socket_address.port_value = port
    return assignment


def static_cluster(name: str, address: str, port: int) -> cluster_pb2.Cluster:
    """A cluster with its one endpoint inline (no ClusterLoadAssignment resource), over HTTP/2 as gRPC needs."""
    cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC)
    cluster.load_assignment.CopyFrom(load_assignment(name, address, port=port))
    options = http_protocol_options_pb2.HttpProtocolOptions()
    options.explicit_http_config.http2_protocol_options.SetInParent()
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Pack(options)
    return cluster


def backend_cluster(backend: str) -> str:
    """The name of `gateway()`'s cluster for `backend`."""
    return f"backend/default/{backend}"


def gateway(backends: Sequence[str] = ("a", "b", "c"), port: int = 10080) -> Resources:
    """A small Gateway: listener `http-<port>` with the ext_proc filter, RouteConfiguration `http-<port>` sending
    /<backend>/ to EDS cluster `backend/default/<backend>` (endpoint 10.0.0.<n>:8000 each), and the ext_proc cluster,
    which no route uses. Equal arguments give equal content, message for message."""
    name = f"http-{port}"
    clusters = [backend_cluster(backend) for backend in backends]
    return Resources(
        listeners=[listener(name, port, name, extproc_cluster=EXTPROC_CLUSTER)],
        routes=[route_configuration(name, {f"/{b}/": c for b, c in zip(backends, clusters, strict=True)})],
        clusters=[*map(eds_cluster, clusters), static_cluster(EXTPROC_CLUSTER, "127.0.0.1", 1063)],
        endpoints=[load_assignment(c, f"10.0.0.{index}") for index, c in enumerate(clusters, start=1)],
    )


def pointed_at(cluster_name: str, endpoint: str = "127.0.3.9") -> Resources:
    """One EDS cluster with one endpoint, and RouteConfiguration `routes` whose only route goes to it (no listener)."""
    return Resources(
        routes=[route_configuration(ROUTES, {"/": cluster_name})],
        clusters=[eds_cluster(cluster_name)],
        endpoints=[load_assignment(cluster_name, endpoint)],
    )


def with_unrouted(resources: Resources, name: str, endpoint: str = "127.0.3.9") -> Resources:
    """`resources` plus EDS cluster `name`, which no route uses, and its ClusterLoadAssignment."""
    resources.clusters.append(eds_cluster(name))
    resources.endpoints.append(load_assignment(name, endpoint))
    return resources
