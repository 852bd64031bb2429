"""Kinds of the gateway API groups this controller does not implement (Envoy Gateway's policies, the Gateway API
route kinds other than HTTPRoute, ...). An operator who writes a SecurityPolicy expects authentication: each such
object gets `Accepted: False` (reason `Unsupported`) saying what is not enforced, in `translate`, `/debug/status`
and `up`, rather than an open gateway and no hint.

Only objects that concern this controller are reported: one that references nothing (in files, it was written beside
our manifests), or one whose parentRefs or targetRef(s) name a Gateway of ours, or something attached to one (an
HTTPRoute, an AIGatewayRoute, or an object of an unsupported route kind or a ListenerSet whose parents are ours). It
then also gets one parent entry per Gateway concerned: for a route kind, each of its parentRefs that leads to one of
ours (echoed as written); for a policy, each Gateway of ours it targets, or that the route it targets is attached to
(the ancestors of Gateway API's PolicyAncestorStatus). An object that only names other controllers' Gateways gets
nothing: in a cluster, another controller (Envoy Gateway) may well implement it."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from translators.gatewayapi.status import StatusBook
from translators.ir import ConditionStatus, ObjectRef, ParentRefIR, Translation
from translators.loader import DEFAULT_NAMESPACE, Reference, UnknownObject
from translators.resources import AIGatewayRoute, HTTPRoute, split_api_version
from translators.resources.aigateway import AIGATEWAY_GROUP
from translators.resources.gateway_api import GATEWAY_API_GROUP

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
    "XListenerSet": "its listeners (nothing listens on them)",
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


# (group, kind, namespace, name) of an object something can reference.
_Key = tuple[str, str, str, str]
_Gateway = tuple[str, str]  # (namespace, name)


def _key(unknown: UnknownObject) -> _Key:
    group, _ = split_api_version(unknown.api_version)
    return (group, unknown.kind, unknown.namespace or DEFAULT_NAMESPACE, unknown.name)


def _route_key(route: HTTPRoute | AIGatewayRoute) -> _Key:
    return (route.group, route.kind, route.namespace, route.name)


def _target(reference: Reference) -> _Key:
    return (reference.group, reference.kind, reference.namespace, reference.name)


def report_unsupported(
    book: StatusBook,
    unknown: Sequence[UnknownObject],
    our_gateways: Collection[_Gateway],
    routes: Iterable[HTTPRoute | AIGatewayRoute],
) -> None:
    """Accepted False/Unsupported on every object of an unsupported gateway kind that concerns this controller (see
    the module's docstring), with its entries per Gateway. `our_gateways`: those of this controller's classes. (The
    cluster source leaves out the objects that reference nothing: there, they may be another controller's.)"""
    if not unknown:
        return

    def gateway(reference: Reference) -> _Gateway | None:
        found = (reference.namespace, reference.name)
        return (
            found
            if (reference.group, reference.kind) == (GATEWAY_API_GROUP, "Gateway") and found in our_gateways
            else None
        )

    # What each attachable object is attached to among our Gateways: the routes we read, then the unknown objects
    # with parentRefs, twice (a route of an unsupported kind may attach to a ListenerSet attached to our Gateway).
    attached: dict[_Key, set[_Gateway]] = {}
    for route in routes:
        for parent in route.spec.parent_refs:
            key = (parent.namespace or route.namespace, parent.name)
            if (parent.group, parent.kind) == (GATEWAY_API_GROUP, "Gateway") and key in our_gateways:
                attached.setdefault(_route_key(route), set()).add(key)
        # The AIServiceBackends an AI route sends to are reached through its Gateways (a QuotaPolicy targets them).
        if isinstance(route, AIGatewayRoute) and (gateways := attached.get(_route_key(route))):
            for rule in route.spec.rules:
                for backend_ref in rule.backend_refs:
                    if not backend_ref.is_inference_pool:
                        namespace = backend_ref.namespace or route.namespace
                        backend = (AIGATEWAY_GROUP, "AIServiceBackend", namespace, backend_ref.name)
                        attached.setdefault(backend, set()).update(gateways)
    for _ in range(2):
        for obj in unknown:
            for reference in obj.references:
                if reference.parent:
                    own = gateway(reference)
                    via = {own} if own is not None else attached.get(_target(reference), set())
                    if via:
                        attached.setdefault(_key(obj), set()).update(via)

    for obj in unknown:
        message = unsupported_message(obj)
        if message is None:
            continue
        ref = ObjectRef(obj.kind, obj.namespace or DEFAULT_NAMESPACE, obj.name)  # as kubectl would place it
        parents: list[ParentRefIR] = []
        for reference in obj.references:
            own = gateway(reference)
            if reference.parent:  # a route's entries echo its parentRefs
                if own is not None or _target(reference) in attached:
                    parents.append(
                        ParentRefIR(
                            reference.namespace,
                            reference.name,
                            reference.group,
                            reference.kind,
                            reference.section_name,
                            reference.port,
                        )
                    )
            elif own is not None:  # a policy's ancestors are Gateways
                parents.append(ParentRefIR(*own, section_name=reference.section_name))
            else:
                parents.extend(ParentRefIR(*g) for g in sorted(attached.get(_target(reference), ())))
        if parents or not obj.references:
            book.report_unread(
                ref, "Accepted", False, UNSUPPORTED_REASON, message, obj.generation, list(dict.fromkeys(parents))
            )
