"""The verdicts the translator writes besides attachment: GatewayClass acceptance, a route's summary over its
parents, AIServiceBackend acceptance, and an InferencePool's parents (the Gateways whose accepted routes use it)."""

from __future__ import annotations

from translators.backends import BackendResolver, Unresolved
from translators.gatewayapi.rules import Route
from translators.gatewayapi.status import StatusBook, condition, ref_of
from translators.ir import Condition, ConditionStatus, ObjectRef, ParentRefIR, PickerMode
from translators.loader import ResourceSet
from translators.resources import (
    AIGatewayRoute,
    AIServiceBackend,
    EnvoyProxy,
    Gateway,
    GatewayClass,
    InferencePool,
    Service,
)
from translators.resources.envoy_gateway import ENVOY_GATEWAY_GROUP

RESOLVED = condition("ResolvedRefs", True, "ResolvedRefs", "every backendRef resolved")


class Verdicts:
    def __init__(self, book: StatusBook, resources: ResourceSet, backends: BackendResolver) -> None:
        self.book = book
        self.resources = resources
        self.backends = backends

    def class_status(self, gateway_class: GatewayClass) -> None:
        ref = gateway_class.spec.parameters_ref
        problem = None
        if ref is not None:
            if (ref.group, ref.kind) != (ENVOY_GATEWAY_GROUP, "EnvoyProxy") or not ref.namespace:
                problem = f"parametersRef must name an EnvoyProxy ({ENVOY_GATEWAY_GROUP}) and its namespace"
            elif self.resources.get(EnvoyProxy, ref.namespace, ref.name) is None:
                problem = f"parametersRef: EnvoyProxy {ref.namespace}/{ref.name} not found"
        if problem is None:
            self.book.report(gateway_class, "Accepted", True, "Accepted", "the GatewayClass is served")
        else:
            self.book.report(gateway_class, "Accepted", False, "InvalidParameters", problem)

    def gateway_parameters_problem(self, gateway: Gateway) -> str | None:
        """Why the Gateway's own parametersRef (spec.infrastructure) cannot be used, or None: it may name an
        EnvoyProxy of its namespace, which then shapes its Envoy instead of the GatewayClass's."""
        ref = gateway.spec.infrastructure.parameters_ref if gateway.spec.infrastructure else None
        if ref is None:
            return None
        if (ref.group, ref.kind) != (ENVOY_GATEWAY_GROUP, "EnvoyProxy"):
            return f"infrastructure.parametersRef: {ref.group}/{ref.kind} is not supported (an EnvoyProxy is)"
        if self.resources.get(EnvoyProxy, gateway.namespace, ref.name) is None:
            return f"infrastructure.parametersRef: EnvoyProxy {gateway.namespace}/{ref.name} not found"
        return None

    def route_verdict(self, route: Route) -> None:
        """The backends' verdict goes on every parent entry; an AIGatewayRoute also gets one Accepted of its own
        (what Envoy AI Gateway writes): True when attached somewhere with every backendRef resolved."""
        resolved = self.book.take(route, "ResolvedRefs") or RESOLVED
        parents = self.book.parent_conditions(route)
        for parent in parents:
            self.book.report_parent(route, parent, resolved)
        if not isinstance(route, AIGatewayRoute):
            return
        verdicts = {parent: next(c for c in found if c.type == "Accepted") for parent, found in parents.items()}
        refusals: list[Condition] = []
        if not any(c.status is ConditionStatus.TRUE for c in verdicts.values()):
            missing = self.book.take(route, "Accepted")  # parentRefs to missing Gateways
            refusals += [missing] if missing is not None else []
            refusals += [_on_parent(parent, c) for parent, c in verdicts.items()]
        if resolved.status is ConditionStatus.FALSE:
            refusals.append(resolved)
        if refusals:
            message = "; ".join(c.message for c in refusals)
            self.book.report(route, "Accepted", False, refusals[0].reason, message)
        else:
            self.book.take(route, "Accepted")
            self.book.report(route, "Accepted", True, "Accepted", "attached, and every backendRef resolved")

    def ai_backend_statuses(self) -> None:
        for backend in self.resources.of_kind(AIServiceBackend):
            try:
                self.backends.ai_service_backend_cluster(backend.namespace, backend.name)
            except Unresolved as exc:
                self.book.report(backend, "Accepted", False, exc.reason, exc.message)
            self.book.report(backend, "Accepted", True, "Accepted", "the backend is valid")  # any False wins

    def pool_statuses(self, pool_parents: dict[ObjectRef, set[ParentRefIR]]) -> None:
        """A pool's parents are the Gateways whose accepted routes send to it; a pool no route uses has none."""
        for pool in self.resources.of_kind(InferencePool):
            self.book.track(pool)
            picker = self.picker_verdict(pool)
            for gateway in sorted(pool_parents.get(ref_of(pool), ())):
                accepted = condition("Accepted", True, "Accepted", "an accepted route of the Gateway sends to it")
                self.book.report_parent(pool, gateway, accepted)
                self.book.report_parent(pool, gateway, picker)

    def picker_verdict(self, pool: InferencePool) -> Condition:
        ref = pool.spec.endpoint_picker_ref
        if ref is None:
            return condition("ResolvedRefs", True, "ResolvedRefs", "no endpointPickerRef: the embedded picker")
        if self.backends.pool(pool).picker is PickerMode.EMBEDDED:  # nothing calls the referenced Service
            return condition("ResolvedRefs", True, "ResolvedRefs", "picked by the embedded picker")
        if (ref.group, ref.kind) != ("", "Service"):
            message = f"endpointPickerRef: kind {ref.kind} of group {ref.group!r} is not supported (a Service is)"
            return condition("ResolvedRefs", False, "InvalidExtensionRef", message)
        service = self.resources.get(Service, pool.namespace, ref.name)
        if service is None:
            message = f"endpointPickerRef: Service {pool.namespace}/{ref.name} not found"
            return condition("ResolvedRefs", False, "InvalidExtensionRef", message)
        port = ref.port.number if ref.port is not None else None
        if not any(p.port == port for p in service.spec.ports):  # a pool calling its picker gets a 500 then
            message = f"endpointPickerRef: Service {pool.namespace}/{ref.name} has no port {port}"
            return condition("ResolvedRefs", False, "InvalidExtensionRef", message)
        return condition("ResolvedRefs", True, "ResolvedRefs", f"endpointPickerRef: Service {ref.name}")


def _on_parent(parent: ParentRefIR, found: Condition) -> Condition:
    """A parent entry's condition, its message naming the parent."""
    where = "/".join(str(p) for p in (parent.namespace, parent.name, parent.section_name, parent.port) if p)
    return Condition(found.type, found.status, found.reason, f"{where}: {found.message}")
