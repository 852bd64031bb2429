"""The control plane's gRPC servers under mutual TLS (cluster mode): the certificate they present and the CAs whose
client certificates they accept, replaced in place when renewed.

gRPC asks `dynamic_ssl_server_credentials`' fetcher before each TLS handshake; it answers with the new configuration
once after each change (None otherwise: keep the last one). So a renewed certificate is used from the next connection
on, with no restart, and connections already open keep theirs.
"""

from __future__ import annotations

import grpc


class ServerCertificate:
    def __init__(self, certificate_pem: bytes, key_pem: bytes, client_ca_pem: bytes) -> None:
        # One tuple, replaced whole: the fetcher runs on a gRPC thread and must never see half an update.
        self._current = (0, certificate_pem, key_pem, client_ca_pem)

    @property
    def certificate_pem(self) -> bytes:
        return self._current[1]

    def update(self, certificate_pem: bytes, key_pem: bytes, client_ca_pem: bytes) -> bool:
        """Takes a renewed certificate (or CA bundle); False when nothing changed."""
        version, *current = self._current
        if current == [certificate_pem, key_pem, client_ca_pem]:
            return False
        self._current = (version + 1, certificate_pem, key_pem, client_ca_pem)
        return True

    def _configuration(self) -> tuple[int, grpc.ServerCertificateConfiguration]:
        version, certificate, key, client_ca = self._current
        return version, grpc.ssl_server_certificate_configuration([(key, certificate)], root_certificates=client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials for one server: TLS with a client certificate required, following every update."""
        seen, configuration = self._configuration()
        served = [seen]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            version, configuration = self._configuration()
            if version == served[0]:
                return None
            served[0] = version
            return configuration

        # The stub's fetcher type leaves out None, which gRPC documents as "no change".
        return grpc.dynamic_ssl_server_credentials(configuration, fetch, require_client_authentication=True)  # type: ignore[arg-type]
