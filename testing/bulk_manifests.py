"""Generated manifests sized by a count (many routes and backends for one Gateway), for benchmarks and tests."""

from __future__ import annotations

from testing.manifests import backend_route


def http_routes(count: int, address: str, port: int, prefix: str = "r", hostnames: bool = False) -> str:
    """`count` HTTPRoutes, each with its own path and its own Backend (so as many clusters as routes); with
    `hostnames`, each with its own hostname too (as many virtual hosts as routes)."""
    return "---".join(
        backend_route(
            f"{prefix}{i}", address, port, f"/{prefix}{i}/", hostname=f"{prefix}{i}.example.com" if hostnames else None
        )
        for i in range(count)
    )


def ai_gateway_routes(rules: int, rules_per_route: int = 15, prefix: str = "") -> str:
    """AIGatewayRoutes with `rules` model rules in all (15 per object, the CRD's maximum), one backend per rule;
    `prefix` starts every name (of objects and models), for more of them beside the first."""
    documents = []
    for route_index in range((rules + rules_per_route - 1) // rules_per_route):
        first = route_index * rules_per_route
        names = range(first, min(first + rules_per_route, rules))
        rule_text = "".join(
            f"""  - matches: [{{headers: [{{type: Exact, name: x-ai-eg-model, value: {prefix}model-{i}}}]}}]
    backendRefs: [{{name: {prefix}backend-{i}}}]
"""
            for i in names
        )
        documents.append(
            f"""apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIGatewayRoute
metadata: {{name: {prefix}route-{route_index}}}
spec:
  parentRefs: [{{name: gw, kind: Gateway, group: gateway.networking.k8s.io}}]
  rules:
{rule_text}"""
        )
        for i in names:
            documents.append(
                f"""apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIServiceBackend
metadata: {{name: {prefix}backend-{i}}}
spec:
  schema: {{name: OpenAI}}
  backendRef: {{name: {prefix}backend-{i}, kind: Backend, group: gateway.envoyproxy.io}}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {{name: {prefix}backend-{i}}}
spec: {{endpoints: [{{fqdn: {{hostname: {prefix}model-{i}.example.com, port: 443}}}}]}}
"""
            )
    return "---\n".join(documents)


def service_routes(count: int, changed: int | None = None) -> str:
    """`count` HTTPRoutes, each to its own Service with one ready Pod: `count` EDS clusters. Pod `changed` (if
    given) gets another IP, a one-endpoint change."""
    documents = []
    for index in range(count):
        octet = 200 if index == changed else 1
        documents.append(
            f"""apiVersion: v1
kind: Service
metadata: {{name: s{index}}}
spec: {{selector: {{app: s{index}}}, ports: [{{port: 80, targetPort: 8080}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: s{index}-pod, labels: {{app: s{index}}}}}
spec: {{containers: [{{name: c, image: x}}]}}
status:
  podIP: 10.{index // 250}.{index % 250}.{octet}
  phase: Running
  conditions: [{{type: Ready, status: "True"}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: s{index}}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /s{index}/}}}}]
    backendRefs: [{{name: s{index}, port: 80}}]
"""
        )
    return "---\n".join(documents)


def header_route(name: str, hostname: str, header: str, value: str, backend: str, gateway_name: str = "gw") -> str:
    """An HTTPRoute on `hostname` sending requests whose `header` equals `value` to the existing Backend `backend`."""
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: {gateway_name}}}]
  hostnames: ["{hostname}"]
  rules:
  - matches: [{{headers: [{{type: Exact, name: {header}, value: {value}}}]}}]
    backendRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: {backend}}}]
"""
