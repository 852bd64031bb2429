"""ClusterIR -> Envoy Cluster (and ClusterLoadAssignment for EDS clusters)."""

from __future__ import annotations

import ipaddress

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, extension_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.filters.http.credential_injector.v3 import credential_injector_pb2
from envoy.extensions.filters.http.upstream_codec.v3 import upstream_codec_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.http.injected_credentials.generic.v3 import generic_pb2
from envoy.extensions.load_balancing_policies.override_host.v3 import override_host_pb2
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.metadata.v3 import metadata_pb2
from google.protobuf import duration_pb2

from translators.ir import (
    SYSTEM_CA_BUNDLE,
    AddressKind,
    ClusterIR,
    Discovery,
    Endpoint,
    EndpointGroup,
    EndpointHealth,
    EndpointPickerIR,
    TranslateOptions,
)
from translators.xds.extproc import upstream_settings_filter
from translators.xds.names import (
    CREDENTIAL_FILTER,
    CREDENTIAL_SECRET_PREFIX,
    DESTINATION_HEADER,
    EXTPROC_CLUSTER,
    GENERIC_CREDENTIAL,
    LB_METADATA_NAMESPACE,
    SERVED_ENDPOINT_KEY,
    UPSTREAM_CODEC_FILTER,
    XDS_METADATA_NAMESPACE,
    pack,
)
from translators.xds.override_host import with_selected_host_key
from translators.xds.tls import TLS_TRANSPORT_SOCKET, control_plane_transport_socket
from translators.xds.upstream_tls import (
    TRANSPORT_SOCKET_MATCH_KEY,
    TRANSPORT_SOCKET_MATCH_NAMESPACE,
    mixed_transports,
    set_transport_sockets,
)

CONNECT_TIMEOUT = duration_pb2.Duration(seconds=10)
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# The largest values Envoy takes (uint32; HTTP/2's window maximum): see extproc_cluster.
LARGEST_BUFFER_LIMIT = 2**32 - 1
LARGEST_HTTP2_WINDOW = 2**31 - 1


def ads_config_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )


def _address(endpoint: Endpoint) -> address_pb2.Address:
    if endpoint.kind is AddressKind.UNIX:
        return address_pb2.Address(pipe=address_pb2.Pipe(path=endpoint.address))
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=endpoint.address, port_value=endpoint.port)
    )


# Balancing skips these; override_host (the picker's choice) still finds them (it looks hosts up by address).
_EDS_HEALTH = {
    EndpointHealth.NOT_READY: health_check_pb2.UNHEALTHY,
    EndpointHealth.TERMINATING: health_check_pb2.DRAINING,
}


def _lb_endpoint(endpoint: Endpoint, backend: str, socket_match: bool) -> endpoint_components_pb2.LbEndpoint:
    """`socket_match`: the endpoint's cluster mixes transports, and its backend selects the endpoint's socket."""
    metadata = base_pb2.Metadata()
    metadata.filter_metadata[XDS_METADATA_NAMESPACE].update({"backend": backend})
    if socket_match:
        metadata.filter_metadata[TRANSPORT_SOCKET_MATCH_NAMESPACE].update({TRANSPORT_SOCKET_MATCH_KEY: backend})
    built = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=_address(endpoint)), metadata=metadata
    )
    if endpoint.health in _EDS_HEALTH:
        built.health_status = _EDS_HEALTH[endpoint.health]
    return built


def _locality(group: EndpointGroup, weighted: bool, socket_match: bool) -> endpoint_components_pb2.LocalityLbEndpoints:
    locality = endpoint_components_pb2.LocalityLbEndpoints(
        locality=base_pb2.Locality(sub_zone=group.backend),
        lb_endpoints=[_lb_endpoint(e, group.backend, socket_match) for e in group.endpoints],
        priority=group.priority,
    )
    if weighted:
        locality.load_balancing_weight.value = group.weight
    return locality


def load_assignment(cluster: ClusterIR) -> endpoint_pb2.ClusterLoadAssignment:
    weighted = len(cluster.groups) > 1
    socket_match = mixed_transports(cluster)
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster.name, endpoints=[_locality(g, weighted, socket_match) for g in cluster.groups]
    )


def _protocol_options(ir: ClusterIR) -> http_protocol_options_pb2.HttpProtocolOptions:
    """HTTP/2 when the backend speaks it; the upstream-settings filters when a backend of the cluster has settings
    (Envoy then wants the protocol said explicitly)."""
    explicit = http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig()
    if ir.http2:
        explicit.http2_protocol_options.SetInParent()
    else:
        explicit.http_protocol_options.SetInParent()
    options = http_protocol_options_pb2.HttpProtocolOptions(explicit_http_config=explicit)
    if ir.upstream_settings:
        options.http_filters.append(upstream_settings_filter(translates=ir.translates))
    elif ir.api_key is not None:
        options.http_filters.append(_credential_filter(ir))
    if options.http_filters:  # an upstream filter chain ends with the codec
        codec = pack(upstream_codec_pb2.UpstreamCodec())
        options.http_filters.append(hcm_pb2.HttpFilter(name=UPSTREAM_CODEC_FILTER, typed_config=codec))
    return options


def credential_secret_name(cluster_name: str) -> str:
    return CREDENTIAL_SECRET_PREFIX + cluster_name


def credential_secret(ir: ClusterIR) -> secret_pb2.Secret:
    """The SDS secret holding a cluster's API key, as the header value Envoy injects (`Bearer <key>` for
    Authorization). A rotated key is a new version of this secret alone: no cluster changes."""
    assert ir.api_key is not None
    return secret_pb2.Secret(
        name=credential_secret_name(ir.name),
        generic_secret=secret_pb2.GenericSecret(secret=base_pb2.DataSource(inline_string=ir.api_key.value)),
    )


def _credential_filter(ir: ClusterIR) -> hcm_pb2.HttpFilter:
    """Each request to the cluster gets the API key, replacing any the client sent; the cluster names the secret,
    never the key, so neither the cluster nor a config dump shows it (Envoy redacts secrets)."""
    assert ir.api_key is not None
    generic = generic_pb2.Generic(
        credential=secret_pb2.SdsSecretConfig(name=credential_secret_name(ir.name), sds_config=ads_config_source()),
        header=ir.api_key.header,
    )
    injector = credential_injector_pb2.CredentialInjector(
        overwrite=True,
        credential=extension_pb2.TypedExtensionConfig(name=GENERIC_CREDENTIAL, typed_config=pack(generic)),
    )
    return hcm_pb2.HttpFilter(name=CREDENTIAL_FILTER, typed_config=pack(injector))


def _policy(name: str, config: object) -> cluster_pb2.LoadBalancingPolicy.Policy:
    return cluster_pb2.LoadBalancingPolicy.Policy(
        typed_extension_config=extension_pb2.TypedExtensionConfig(name=name, typed_config=pack(config))  # type: ignore[arg-type]
    )


def _round_robin() -> cluster_pb2.LoadBalancingPolicy:
    return cluster_pb2.LoadBalancingPolicy(
        policies=[_policy("envoy.load_balancing_policies.round_robin", round_robin_pb2.RoundRobin())]
    )


def _lb_key(key: str) -> metadata_pb2.MetadataKey:
    return metadata_pb2.MetadataKey(key=LB_METADATA_NAMESPACE, path=[metadata_pb2.MetadataKey.PathSegment(key=key)])


def _pool_policy() -> cluster_pb2.LoadBalancingPolicy:
    """Envoy takes the picker's endpoints from `envoy.lb` metadata; only pool endpoints can be reached.

    The picker sends the same list as a header too (the protocol asks for both), but only one source is read:
    override_host concatenates its sources, so reading both would list each endpoint twice, and the first retry
    would go back to the endpoint that just failed. Metadata is the one a client can never write.

    A pick Envoy does not hold falls back to round robin over the pool's Ready endpoints, FailOpen or FailClose
    alike (failureMode is about the picker failing, which ext_proc's failure_mode_allow decides before any host is
    chosen). The picker watches pods itself and may pick a pod that became Ready a moment before the control plane
    could tell Envoy about it (a pod without a readiness probe gets its address and Ready at once): another Ready
    pod of the pool serves that request, where failing it would be a 503 "no healthy upstream".
    """
    override = override_host_pb2.OverrideHost(
        override_host_sources=[
            override_host_pb2.OverrideHost.OverrideHostSource(metadata=_lb_key(DESTINATION_HEADER)),
        ],
        fallback_policy=_round_robin(),
    )
    # Envoy reports the endpoint that served (after retries) to the picker in `envoy.lb` metadata.
    override = with_selected_host_key(override, _lb_key(SERVED_ENDPOINT_KEY))
    return cluster_pb2.LoadBalancingPolicy(policies=[_policy("envoy.load_balancing_policies.override_host", override)])


def cluster(ir: ClusterIR, buffer_limit_bytes: int, system_ca_bundle: str = SYSTEM_CA_BUNDLE) -> cluster_pb2.Cluster:
    """`buffer_limit_bytes`: room for a whole request body in the upstream-settings filter. `system_ca_bundle`: the
    file of CAs the backends reached with CaSource.SYSTEM are verified against."""
    built = cluster_pb2.Cluster(name=ir.name, connect_timeout=CONNECT_TIMEOUT)
    set_transport_sockets(built, ir, system_ca_bundle)
    if ir.discovery is Discovery.EDS:
        built.type = cluster_pb2.Cluster.EDS
        built.eds_cluster_config.eds_config.CopyFrom(ads_config_source())
    else:
        built.type = cluster_pb2.Cluster.STATIC if ir.discovery is Discovery.STATIC else cluster_pb2.Cluster.STRICT_DNS
        built.load_assignment.CopyFrom(load_assignment(ir))
    if len(ir.groups) > 1:
        built.common_lb_config.locality_weighted_lb_config.SetInParent()
    if ir.pool is not None:
        built.load_balancing_policy.CopyFrom(_pool_policy())
        # Never balance onto a pool's not-Ready pods, however few are Ready (Envoy's default panics below 50%).
        built.common_lb_config.healthy_panic_threshold.value = 0
    if ir.http2 or ir.upstream_settings or ir.api_key is not None:
        built.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(pack(_protocol_options(ir)))
    if ir.upstream_settings:
        built.per_connection_buffer_limit_bytes.value = buffer_limit_bytes
    return built


def extproc_cluster(options: TranslateOptions) -> cluster_pb2.Cluster:
    """The control plane's ext_proc server (picker, upstream settings, the usage log on one gRPC server), over HTTP/2:
    at a Unix socket (a pipe address), an IP, or a name re-resolved (a Service's, in a cluster, with mutual TLS)."""
    if options.extproc_unix is not None:
        endpoint = Endpoint(options.extproc_unix, 0, AddressKind.UNIX)
    else:
        try:
            ipaddress.ip_address(options.extproc_host)
            kind = AddressKind.IP
        except ValueError:
            kind = AddressKind.DNS
        endpoint = Endpoint(options.extproc_host, options.extproc_port, kind)
    ir = ClusterIR(
        EXTPROC_CLUSTER,
        Discovery.STRICT_DNS if endpoint.kind is AddressKind.DNS else Discovery.STATIC,
        (EndpointGroup(EXTPROC_CLUSTER, (endpoint,)),),
        http2=True,
    )
    built = cluster(ir, options.buffer_limit_bytes)
    # No flow-control watermark between Envoy and the services: Envoy 1.40 crashes (SIGSEGV) when the gRPC stream of
    # an upstream ext_proc filter (the upstream settings) crosses one before its attempt has a connection, as a
    # 45 MiB body sent while the backend's connection was being made did (bench/large_bodies.py). A stream's send
    # buffer is bounded by its HTTP/2 window (16 MiB by default) and the connection's by its buffer limit, so both go
    # to their largest. What goes over the connection is bounded anyway: each body by --buffer-limit-bytes, and the
    # bodies sent at once by the services' budget, which admits a body before Envoy sends it (extproc.budget).
    protocol = http_protocol_options_pb2.HttpProtocolOptions()
    http2 = protocol.explicit_http_config.http2_protocol_options
    http2.initial_stream_window_size.value = http2.initial_connection_window_size.value = LARGEST_HTTP2_WINDOW
    built.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(pack(protocol))
    built.per_connection_buffer_limit_bytes.value = LARGEST_BUFFER_LIMIT
    if options.control_plane_tls is not None:
        built.transport_socket.CopyFrom(control_plane_transport_socket(options.control_plane_tls))
    return built


def endpoint_picker_cluster_ir(picker: EndpointPickerIR) -> ClusterIR:
    """A referenced Endpoint Picker's cluster: EDS of its Service's ready pods, gRPC over HTTP/2."""
    group = EndpointGroup(picker.cluster, picker.endpoints, dynamic=True)
    return ClusterIR(picker.cluster, Discovery.EDS, (group,), http2=True)


def _skip_verify_tls() -> base_pb2.TransportSocket:
    """TLS that does not verify the server, as the Inference Extension's own configurations reach the EPP: it serves
    a self-signed certificate unless given one. ALPN says h2, which gRPC servers in Go require."""
    context = tls_pb2.UpstreamTlsContext(common_tls_context=tls_pb2.CommonTlsContext(alpn_protocols=["h2"]))
    return base_pb2.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=pack(context))


def endpoint_picker_cluster(picker: EndpointPickerIR, buffer_limit_bytes: int) -> cluster_pb2.Cluster:
    """`buffer_limit_bytes`: as for the control plane's ext_proc cluster, room for the bodies the picker streams."""
    built = cluster(endpoint_picker_cluster_ir(picker), buffer_limit_bytes)
    built.per_connection_buffer_limit_bytes.value = buffer_limit_bytes
    if picker.tls:
        built.transport_socket.CopyFrom(_skip_verify_tls())
    return built
