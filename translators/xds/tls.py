"""Mutual TLS from Envoy to the control plane (cluster mode): the transport socket of the clusters that reach it (the
bootstrap's ADS cluster and the translated ext_proc cluster) and the file-based SDS documents it reads.

The certificate, its key and the CA are files of a mounted Secret (`tls.crt`, `tls.key`, `ca.crt`), and so are the
two SDS documents naming them. Every source watches the directory: the kubelet updates a mounted Secret by renaming
one symlink (`..data`) to a new set of files, and Envoy reloads the certificate when it sees that rename, with no
restart and no dropped connection (connections already open keep the certificate they were made with).
"""

from __future__ import annotations

import json
import posixpath

from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import json_format

from translators.ir import ControlPlaneTls
from translators.xds.names import pack

TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
# The files of an Envoy's certificate Secret (the kubernetes.io/tls keys, plus the CA and the SDS documents).
CERTIFICATE_FILE = "tls.crt"
KEY_FILE = "tls.key"
CA_FILE = "ca.crt"
CERTIFICATE_SDS_FILE = "sds-certificate.json"
VALIDATION_SDS_FILE = "sds-validation.json"
# The SDS resources' names.
CLIENT_CERTIFICATE_SECRET = "xds-server/client-certificate"
TRUSTED_CA_SECRET = "xds-server/trusted-ca"


def _file(tls: ControlPlaneTls, name: str) -> str:
    return posixpath.join(tls.directory, name)


def _watched(tls: ControlPlaneTls) -> base_pb2.WatchedDirectory:
    return base_pb2.WatchedDirectory(path=tls.directory)


def _sds(tls: ControlPlaneTls, name: str, document: str) -> secret_pb2.SdsSecretConfig:
    path = config_source_pb2.PathConfigSource(path=_file(tls, document), watched_directory=_watched(tls))
    source = config_source_pb2.ConfigSource(path_config_source=path, resource_api_version=config_source_pb2.V3)
    return secret_pb2.SdsSecretConfig(name=name, sds_config=source)


def control_plane_tls_context(tls: ControlPlaneTls) -> tls_pb2.UpstreamTlsContext:
    """Envoy's side of a connection to the control plane: its certificate, and the control plane's verified against
    the CA and `server_name` (also sent as SNI). ALPN h2: gRPC."""
    san = common_pb2.SubjectAltNameMatcher(
        san_type=common_pb2.SubjectAltNameMatcher.DNS, matcher=string_pb2.StringMatcher(exact=tls.server_name)
    )
    common = tls_pb2.CommonTlsContext(
        alpn_protocols=["h2"],
        tls_certificate_sds_secret_configs=[_sds(tls, CLIENT_CERTIFICATE_SECRET, CERTIFICATE_SDS_FILE)],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=common_pb2.CertificateValidationContext(match_typed_subject_alt_names=[san]),
            validation_context_sds_secret_config=_sds(tls, TRUSTED_CA_SECRET, VALIDATION_SDS_FILE),
        ),
    )
    return tls_pb2.UpstreamTlsContext(common_tls_context=common, sni=tls.server_name)


def control_plane_transport_socket(tls: ControlPlaneTls) -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=pack(control_plane_tls_context(tls)))


def sds_documents(tls: ControlPlaneTls) -> dict[str, str]:
    """The two SDS documents (file name -> JSON text) the transport socket reads: the client certificate with its
    key, and the trusted CA."""
    certificate = secret_pb2.Secret(
        name=CLIENT_CERTIFICATE_SECRET,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(filename=_file(tls, CERTIFICATE_FILE)),
            private_key=base_pb2.DataSource(filename=_file(tls, KEY_FILE)),
            watched_directory=_watched(tls),
        ),
    )
    validation = secret_pb2.Secret(
        name=TRUSTED_CA_SECRET,
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(filename=_file(tls, CA_FILE)), watched_directory=_watched(tls)
        ),
    )
    documents = {}
    for name, secret in ((CERTIFICATE_SDS_FILE, certificate), (VALIDATION_SDS_FILE, validation)):
        response = discovery_pb2.DiscoveryResponse(resources=[pack(secret)])
        document = json_format.MessageToDict(response, preserving_proto_field_name=True)
        documents[name] = json.dumps(document, indent=2, sort_keys=True) + "\n"
    return documents
