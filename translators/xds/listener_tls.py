"""TLS termination on Gateway listeners: each HTTPS listener's filter chain (selected by SNI) and the certificates it
presents, delivered over SDS on the Gateway's ADS stream. A listener names its certificates; only the SDS Secret
holds the private key, so a listener (or its config dump) never does, and a rotated Secret reaches Envoy as a new
version of the same SDS resource: Envoy swaps the certificate for new connections and keeps the open ones."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2

from translators.ir import CertificateIR, TlsChainIR
from translators.xds.clusters import ads_config_source
from translators.xds.names import pack
from translators.xds.tls import TLS_TRANSPORT_SOCKET

TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
# HTTP/2 when the client offers it (every HTTP/2 client over TLS does, through ALPN), else HTTP/1.1.
ALPN_PROTOCOLS = ("h2", "http/1.1")


def certificate_secret(certificate: CertificateIR) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=certificate.name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_string=certificate.certificate_chain),
            private_key=base_pb2.DataSource(inline_string=certificate.private_key),
        ),
    )


def tls_inspector() -> listener_components_pb2.ListenerFilter:
    """Reads the ClientHello's SNI before a filter chain is chosen."""
    return listener_components_pb2.ListenerFilter(
        name=TLS_INSPECTOR, typed_config=pack(tls_inspector_pb2.TlsInspector())
    )


def tls_filter_chain_parts(
    chain: TlsChainIR,
) -> tuple[listener_components_pb2.FilterChainMatch, base_pb2.TransportSocket]:
    """The SNI match of one HTTPS listener's filter chain, and its TLS: the named certificates, over SDS."""
    common = tls_pb2.CommonTlsContext(
        alpn_protocols=list(ALPN_PROTOCOLS),
        tls_certificate_sds_secret_configs=[
            secret_pb2.SdsSecretConfig(name=name, sds_config=ads_config_source()) for name in chain.certificates
        ],
    )
    context = tls_pb2.DownstreamTlsContext(common_tls_context=common)
    match = listener_components_pb2.FilterChainMatch(server_names=list(chain.server_names))
    return match, base_pb2.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=pack(context))
