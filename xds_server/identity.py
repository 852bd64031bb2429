"""Who a gRPC peer is, in cluster mode: the Gateway its client certificate names.

An Envoy's certificate (issued by the controller's CA, `xds_server.kube.certificates`) carries one URI SAN,
`spiffe://xds-server/gateway/<namespace>/<name>`: a SPIFFE ID in the trust domain `xds-server`, whose path names
the Gateway whose snapshot and ext_proc answers it may have. The TLS layer has verified the certificate against the
CA before a servicer runs; this module only reads the verified name from the call's auth context.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc

TRUST_DOMAIN = "xds-server"
GATEWAY_URI_PREFIX = f"spiffe://{TRUST_DOMAIN}/gateway/"
# gRPC's auth context property with every subject alternative name of the verified peer certificate.
_SAN_PROPERTY = "x509_subject_alternative_name"


def gateway_uri(gateway: str) -> str:
    """The URI SAN naming a Gateway, "<ns>/<name>" -> spiffe://xds-server/gateway/<ns>/<name>."""
    if gateway_of_uri(GATEWAY_URI_PREFIX + gateway) is None:
        raise ValueError(f"not a Gateway key (NAMESPACE/NAME): {gateway!r}")
    return GATEWAY_URI_PREFIX + gateway


def gateway_of_uri(uri: str) -> str | None:
    """The Gateway ("<ns>/<name>") a URI SAN names; None for any other name (a namespace and a name, no more)."""
    if not uri.startswith(GATEWAY_URI_PREFIX):
        return None
    namespace, _, name = uri[len(GATEWAY_URI_PREFIX) :].partition("/")
    if not namespace or not name or "/" in name:
        return None
    return f"{namespace}/{name}"


def gateway_of_names(names: Iterable[str]) -> str | None:
    """The Gateway a certificate's subject alternative names name: exactly one, else None (ambiguous or none)."""
    found = {gateway for gateway in map(gateway_of_uri, names) if gateway is not None}
    return found.pop() if len(found) == 1 else None


def peer_gateway(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The Gateway the peer's verified client certificate names; None without one (plain connection, Unix socket,
    a certificate naming no Gateway or several)."""
    auth: Mapping[str, Iterable[bytes]] = context.auth_context() or {}
    return gateway_of_names(value.decode(errors="replace") for value in auth.get(_SAN_PROPERTY, ()))


def refusal(context: grpc.aio.ServicerContext[Any, Any], gateway: str) -> tuple[str, str] | None:
    """Why the peer may not have `gateway`'s configuration or answers, as (reason, message); None when it may.
    Reasons (metric labels): `no_identity`, `other_gateway`."""
    peer = peer_gateway(context)
    if peer is None:
        return "no_identity", f"no client certificate naming a Gateway: {gateway} is served only to its own Envoys"
    if peer != gateway:
        return "other_gateway", f"the client certificate names Gateway {peer}, not {gateway}"
    return None
