"""Manifests the e2e tests and benchmarks write: a Gateway, and Backend + HTTPRoute pairs."""

from __future__ import annotations


def gateway(listen_ports: list[int], name: str = "gw") -> str:
    """GatewayClass `eg` (a controller this project serves) and Gateway `name` with one HTTP listener per port."""
    listeners = ", ".join(f"{{name: l{p}, protocol: HTTP, port: {p}}}" for p in listen_ports)
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: eg}}
spec: {{controllerName: gateway.envoyproxy.io/gatewayclass-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}}}
spec: {{gatewayClassName: eg, listeners: [{listeners}]}}
"""


def backend_route(name: str, address: str, port: int, path: str = "/", gateway_name: str = "gw") -> str:
    """A Backend at address:port and an HTTPRoute sending path prefix `path` to it."""
    return f"""
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {{name: {name}}}
spec: {{endpoints: [{{ip: {{address: {address}, port: {port}}}}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: {gateway_name}}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]
    backendRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: {name}}}]
"""


def ai_service_backend(name: str, address: str, port: int) -> str:
    """An OpenAI-schema AIServiceBackend `name` in front of a Backend at address:port."""
    return f"""
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIServiceBackend
metadata: {{name: {name}}}
spec: {{schema: {{name: OpenAI}}, backendRef: {{group: gateway.envoyproxy.io, kind: Backend, name: {name}}}}}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {{name: {name}}}
spec: {{endpoints: [{{ip: {{address: {address}, port: {port}}}}}]}}
"""


def ai_gateway_route(
    name: str, models: dict[str, str], hostnames: tuple[str, ...] = (), gateway_name: str = "gw"
) -> str:
    """An AIGatewayRoute with one rule per model (exact x-ai-eg-model match) to the AIServiceBackend named beside it."""
    rules = "".join(
        f"""
  - matches: [{{headers: [{{type: Exact, name: x-ai-eg-model, value: {model}}}]}}]
    backendRefs: [{{name: {backend}}}]"""
        for model, backend in models.items()
    )
    return f"""
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIGatewayRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: {gateway_name}}}]
  hostnames: [{", ".join(f'"{h}"' for h in hostnames)}]
  rules:{rules}
"""
