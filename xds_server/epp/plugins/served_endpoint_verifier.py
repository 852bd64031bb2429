"""destination-endpoint-served-verifier (conformance): echoes the endpoint that served the request."""

from __future__ import annotations

from translators.xds.names import SERVED_ECHO_HEADER
from xds_server.epp.plugins.base import ResponsePlugin


class ServedEndpointVerifier(ResponsePlugin):
    """Answers the response headers with the endpoint Envoy reports having served the request."""

    type_name = "destination-endpoint-served-verifier"

    def response_headers(self, served: str | None) -> list[tuple[str, str]]:
        value = served if served else "fail: missing destination endpoint served metadata"
        return [(SERVED_ECHO_HEADER, value)]
