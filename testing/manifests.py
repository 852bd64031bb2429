"""Manifests tests and benchmarks write: Gateways, routes, backends, and InferencePools with their pods."""

from __future__ import annotations

import json
from collections.abc import Mapping


def gateway(listen_ports: list[int], name: str = "gw", listeners: list[str] | None = None) -> str:
    """GatewayClass `eg` (a controller this project serves) and Gateway `name` with one HTTP listener per port, or
    with `listeners` (each a listener in YAML flow style) when given."""
    listed = listeners or [f"{{name: l{p}, protocol: HTTP, port: {p}}}" for p in listen_ports]
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: eg}}
spec: {{controllerName: gateway.envoyproxy.io/gatewayclass-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}}}
spec: {{gatewayClassName: eg, listeners: [{", ".join(listed)}]}}
"""


def backend_route(
    name: str, address: str, port: int, path: str = "/", gateway_name: str = "gw", hostname: str | None = None
) -> str:
    """A Backend at address:port and an HTTPRoute sending path prefix `path` (of `hostname`, if given) to it."""
    hostnames = f"[{hostname}]" if hostname else "[]"
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
  hostnames: {hostnames}
  parentRefs: [{{name: {gateway_name}}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]
    backendRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: {name}}}]
"""


def ai_service_backend(name: str, address: str, port: int, schema: str = "OpenAI", version: str | None = None) -> str:
    """An AIServiceBackend `name` of `schema` (and its version) in front of a Backend at address:port."""
    versioned = f", version: {version!r}" if version is not None else ""
    return f"""
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIServiceBackend
metadata: {{name: {name}}}
spec:
  schema: {{name: {schema}{versioned}}}
  backendRef: {{group: gateway.envoyproxy.io, kind: Backend, name: {name}}}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {{name: {name}}}
spec: {{endpoints: [{{ip: {{address: {address}, port: {port}}}}}]}}
"""


# Each BackendSecurityPolicy type's spec block.
POLICY_BLOCKS = {
    "APIKey": "apiKey",
    "AzureAPIKey": "azureAPIKey",
    "AnthropicAPIKey": "anthropicAPIKey",
    "AWSCredentials": "awsCredentials",
    "AzureCredentials": "azureCredentials",
    "GCPCredentials": "gcpCredentials",
}


def secured_backend(
    name: str,
    address: str,
    port: int,
    schema: str,
    version: str | None,
    policy_type: str,
    block: Mapping[str, object],
    secret: Mapping[str, str],
) -> str:
    """`ai_service_backend` with a BackendSecurityPolicy `name` of `policy_type` (its spec block `block`, which
    names Secret `name`) and that Secret's `stringData`. The block and data are written as JSON (YAML reads it), so
    multi-line values such as a credentials file need no indenting."""
    spec_block = POLICY_BLOCKS[policy_type]
    return (
        ai_service_backend(name, address, port, schema, version)
        + f"""
---
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: BackendSecurityPolicy
metadata: {{name: {name}}}
spec:
  type: {policy_type}
  {spec_block}: {json.dumps(block)}
  targetRefs: [{{group: aigateway.envoyproxy.io, kind: AIServiceBackend, name: {name}}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: {name}}}
stringData: {json.dumps(secret)}
"""
    )


def keyed_backend(
    name: str,
    address: str,
    port: int,
    api_key: str,
    schema: str = "OpenAI",
    version: str | None = None,
    policy_type: str = "APIKey",
) -> str:
    """`ai_service_backend` with a BackendSecurityPolicy of `policy_type` reading `api_key` from Secret `name`: the
    key goes on each attempt to it (APIKey: `authorization: Bearer <key>`; AzureAPIKey: `api-key`; AnthropicAPIKey:
    `x-api-key`)."""
    block = {"secretRef": {"name": name}}
    return secured_backend(name, address, port, schema, version, policy_type, block, {"apiKey": api_key})


def ai_gateway_route(
    name: str,
    models: dict[str, str],
    hostnames: tuple[str, ...] = (),
    gateway_name: str = "gw",
    model_name_overrides: dict[str, str] | None = None,
) -> str:
    """An AIGatewayRoute with one rule per model (exact x-ai-eg-model match) to the AIServiceBackend named beside it;
    `model_name_overrides`: a backend's modelNameOverride, by backend name."""
    overrides = model_name_overrides or {}

    def backend_ref(backend: str) -> str:
        override = f", modelNameOverride: {overrides[backend]}" if backend in overrides else ""
        return f"{{name: {backend}{override}}}"

    rules = "".join(
        f"""
  - matches: [{{headers: [{{type: Exact, name: x-ai-eg-model, value: {model}}}]}}]
    backendRefs: [{backend_ref(backend)}]"""
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


def pod(name: str, address: str, labels: dict[str, str], ready: bool = True) -> str:
    """A Pod as the control plane sees it on a cluster: labels, an IP, and a Ready condition."""
    label_text = ", ".join(f"{k}: {v}" for k, v in labels.items())
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{{label_text}}}}}
spec: {{containers: [{{name: server, image: sim}}]}}
status: {{podIP: {address}, conditions: [{{type: Ready, status: "{ready}"}}]}}
"""


def inference_pool(name: str, target_port: int, failure_mode: str = "FailClose", config: str | None = None) -> str:
    """InferencePool `name` over pods labelled app=<name>, with its picker Service and Deployment; with `config`,
    the Deployment runs the picker with --config-file from a ConfigMap, as the tutorial does."""
    mounted = ""
    if config is not None:
        indented = "\n".join("    " + line for line in config.strip().splitlines())
        mounted = f"""
        args: [--config-file, /config/plugins.yaml]
        volumeMounts: [{{name: plugins, mountPath: /config}}]
      volumes: [{{name: plugins, configMap: {{name: {name}-plugins}}}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}-plugins}}
data:
  plugins.yaml: |
{indented}"""
    return f"""
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {{name: {name}}}
spec:
  targetPorts: [{{number: {target_port}}}]
  selector: {{matchLabels: {{app: {name}}}}}
  endpointPickerRef: {{name: {name}-epp, port: {{number: 9002}}, failureMode: {failure_mode}}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}-epp}}
spec: {{selector: {{app: {name}-epp}}, ports: [{{port: 9002}}]}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}-epp}}
spec:
  selector: {{matchLabels: {{app: {name}-epp}}}}
  template:
    metadata: {{labels: {{app: {name}-epp}}}}
    spec:
      containers:
      - name: epp
        image: registry.k8s.io/gateway-api-inference-extension/epp:v1.0.1{mounted}
"""


def inference_objective(name: str, pool_name: str, priority: int) -> str:
    return f"""
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {{name: {name}}}
spec: {{priority: {priority}, poolRef: {{name: {pool_name}}}}}
"""


def pool_route(name: str, pool_name: str, hostname: str, body_mode: str | None = None, gateway_name: str = "gw") -> str:
    """An HTTPRoute sending requests for `hostname` to InferencePool `pool_name`; `body_mode`: the picker's mode."""
    annotations = f", annotations: {{xds-server.io/picker-body-mode: {body_mode}}}" if body_mode else ""
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}{annotations}}}
spec:
  parentRefs: [{{name: {gateway_name}}}]
  hostnames: ["{hostname}"]
  rules:
  - backendRefs: [{{group: inference.networking.k8s.io, kind: InferencePool, name: {pool_name}}}]
"""


# The tutorial's picker config (seed 03-inferencepool-resources.yaml, ConfigMap plugins-config).
TUTORIAL_PICKER_CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
  - pluginRef: kv-cache-utilization-scorer
  - pluginRef: prefix-cache-scorer
"""
# The Inference Extension's conformance picker: only listed endpoints, and the served endpoint echoed back.
CONFORMANCE_PICKER_CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: header-based-testing-filter
- type: destination-endpoint-served-verifier
- type: max-score-picker
"""


def chat_body(mib: int, model: str = "big") -> bytes:
    """An OpenAI chat request of about `mib` MiB (one user message), for tests of large bodies."""
    content = "lorem ipsum " * (mib * 1024 * 1024 // 12)
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}]}).encode()
