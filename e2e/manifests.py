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
