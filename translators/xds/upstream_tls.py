"""UpstreamTlsIR -> Envoy: the TLS transport socket of a cluster's connections to its backends.

Envoy has one transport socket per cluster. A cluster whose backends all speak the same TLS (or all plain HTTP, by
far the common case) says it once, in `transport_socket`. A rule that sends to backends reached differently (a
hosted provider over TLS with a local model server as fallback) gets a cluster whose endpoints carry their backend
in `envoy.transport_socket_match` metadata, and one `transport_socket_matches` entry per TLS backend selects its
socket; the plain backends take the cluster's default.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import struct_pb2

from translators.ir import CaSource, ClusterIR, SanKind, SubjectNameIR, UpstreamTlsIR
from translators.xds.names import pack
from translators.xds.tls import TLS_TRANSPORT_SOCKET

# Where Envoy looks for the endpoint metadata `transport_socket_matches` match on.
TRANSPORT_SOCKET_MATCH_NAMESPACE = "envoy.transport_socket_match"
TRANSPORT_SOCKET_MATCH_KEY = "backend"
_SAN_TYPES = {SanKind.DNS: common_pb2.SubjectAltNameMatcher.DNS, SanKind.URI: common_pb2.SubjectAltNameMatcher.URI}


def _san_matcher(name: SubjectNameIR) -> common_pb2.SubjectAltNameMatcher:
    matcher = string_pb2.StringMatcher(exact=name.value)
    return common_pb2.SubjectAltNameMatcher(san_type=_SAN_TYPES[name.kind], matcher=matcher)


def _validation(tls: UpstreamTlsIR, system_ca_bundle: str) -> common_pb2.CertificateValidationContext:
    """The CAs (inline PEM, or the system bundle read by Envoy from its own filesystem) and the names to verify."""
    if tls.ca is CaSource.INLINE:
        trusted = base_pb2.DataSource(inline_string=tls.ca_pem)
    else:
        trusted = base_pb2.DataSource(filename=system_ca_bundle)
    return common_pb2.CertificateValidationContext(
        trusted_ca=trusted, match_typed_subject_alt_names=[_san_matcher(n) for n in tls.verify_names]
    )


def upstream_tls_context(tls: UpstreamTlsIR, system_ca_bundle: str, http2: bool) -> tls_pb2.UpstreamTlsContext:
    """ALPN offers exactly the protocol the cluster speaks, so a server that could do both picks that one.
    CaSource.NONE (insecureSkipVerify) leaves the validation context out: Envoy then takes any certificate."""
    common = tls_pb2.CommonTlsContext(alpn_protocols=["h2" if http2 else "http/1.1"])
    if tls.ca is not CaSource.NONE:
        common.validation_context.CopyFrom(_validation(tls, system_ca_bundle))
    context = tls_pb2.UpstreamTlsContext(common_tls_context=common)
    if tls.sni is not None:
        context.sni = tls.sni
    return context


def _socket(tls: UpstreamTlsIR, system_ca_bundle: str, http2: bool) -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(
        name=TLS_TRANSPORT_SOCKET, typed_config=pack(upstream_tls_context(tls, system_ca_bundle, http2))
    )


def mixed_transports(ir: ClusterIR) -> bool:
    """The cluster's backends are not all reached the same way: its endpoints say which backend they belong to."""
    return len({group.tls for group in ir.groups}) > 1


def set_transport_sockets(built: cluster_pb2.Cluster, ir: ClusterIR, system_ca_bundle: str) -> None:
    """Gives the cluster its TLS: one socket for all, or one per TLS backend (see the module's docstring)."""
    reached = [group.tls for group in ir.groups]
    if not mixed_transports(ir):
        if reached and reached[0] is not None:
            built.transport_socket.CopyFrom(_socket(reached[0], system_ca_bundle, ir.http2))
        return
    for group in ir.groups:
        if group.tls is None:
            continue
        match = struct_pb2.Struct()
        match.update({TRANSPORT_SOCKET_MATCH_KEY: group.backend})
        built.transport_socket_matches.append(
            cluster_pb2.Cluster.TransportSocketMatch(
                name=group.backend, match=match, transport_socket=_socket(group.tls, system_ca_bundle, ir.http2)
            )
        )
    # The default serves endpoints no entry matches: only plain backends' when there are some. When every backend
    # speaks TLS (differently), it is the first one's, so that no endpoint could ever fall through to plain text.
    if all(tls is not None for tls in reached):
        first = next(tls for tls in reached if tls is not None)
        built.transport_socket.CopyFrom(_socket(first, system_ca_bundle, ir.http2))
