"""Kinds of the gateway API groups this controller does not implement (Envoy Gateway's policies, the Gateway API
route kinds other than HTTPRoute, ...). An operator who writes a SecurityPolicy expects authentication: each such
object gets `Accepted: False` (reason `Unsupported`) saying what is not enforced, in `translate`, `/debug/status`
and `up`, rather than an open gateway and no hint."""

from __future__ import annotations

from translators.ir import ConditionStatus, ObjectRef, Translation
from translators.loader import UnknownObject
from translators.resources import split_api_version

UNSUPPORTED_REASON = "Unsupported"
# The API groups whose kinds configure a gateway: an unknown kind there is something a user expects to take effect.
GATEWAY_GROUPS = frozenset(
    {
        "gateway.networking.k8s.io",
        "gateway.networking.x-k8s.io",
        "gateway.envoyproxy.io",
        "aigateway.envoyproxy.io",
        "inference.networking.k8s.io",
        "inference.networking.x-k8s.io",
    }
)
# What a kind would have done, as its users know it; a kind not listed is said generically.
NOT_ENFORCED = {
    "SecurityPolicy": "authentication and authorization (the routes it targets are open)",
    "BackendTrafficPolicy": "rate limits, retries, timeouts, circuit breakers and load balancing settings",
    "ClientTrafficPolicy": "client connection settings (timeouts, limits, HTTP versions, TLS options)",
    "EnvoyExtensionPolicy": "its ext_proc, Wasm and Lua extensions",
    "EnvoyPatchPolicy": "its patches to the Envoy configuration",
    "HTTPRouteFilter": "its filter",
    "GRPCRoute": "its routes (no request reaches its backends)",
    "TLSRoute": "its routes (no connection reaches its backends)",
    "TCPRoute": "its routes (no connection reaches its backends)",
    "UDPRoute": "its routes (no datagram reaches its backends)",
    "ListenerSet": "its listeners (nothing listens on them)",
    "MCPRoute": "its MCP routes (no request reaches its backends)",
    "QuotaPolicy": "its token quotas",
    "GatewayConfig": "its settings",
}


def unsupported_message(unknown: UnknownObject) -> str | None:
    """What the object's kind is not doing here, or None when the kind is not of a gateway API group."""
    group, _ = split_api_version(unknown.api_version)
    if group not in GATEWAY_GROUPS:
        return None
    what = NOT_ENFORCED.get(unknown.kind, "anything it configures")
    return f"{unknown.kind} ({group}) is not implemented by this controller; not enforced: {what}"


def unsupported_objects(translation: Translation) -> list[tuple[ObjectRef, str]]:
    """The objects of unsupported kinds a translation names, with what they do not do (for logs and warnings)."""
    return [
        (status.ref, condition.message)
        for status in translation.statuses
        for condition in status.conditions
        if condition.reason == UNSUPPORTED_REASON and condition.status is ConditionStatus.FALSE
    ]
