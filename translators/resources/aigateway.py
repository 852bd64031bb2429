"""Envoy AI Gateway kinds (aigateway.envoyproxy.io, v1alpha1 and v1beta1 have the same shape here)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from translators.resources.base import Hostname, K8sModel, ObjectName, PortNumber, Resource
from translators.resources.gateway_api import HeaderMatch, HTTPRouteTimeouts, ParentReference

AIGATEWAY_GROUP = "aigateway.envoyproxy.io"
AIGATEWAY_VERSIONS = ("v1alpha1", "v1beta1")


class AIGatewayRouteMatch(K8sModel):
    headers: list[HeaderMatch] = Field(default_factory=list, max_length=16)


class AIGatewayRouteBackendRef(K8sModel):
    group: str | None = None
    kind: str | None = None
    name: ObjectName
    namespace: ObjectName | None = None
    weight: int = Field(default=1, ge=0, le=1_000_000)
    priority: int = Field(default=0, ge=0)
    model_name_override: str | None = None

    @property
    def is_inference_pool(self) -> bool:
        return self.kind == "InferencePool"


class AIGatewayRouteRule(K8sModel):
    name: str | None = None
    matches: list[AIGatewayRouteMatch] = Field(default_factory=list, max_length=128)
    backend_refs: list[AIGatewayRouteBackendRef] = Field(default_factory=list, max_length=128)
    timeouts: HTTPRouteTimeouts | None = None

    @model_validator(mode="after")
    def _one_pool_or_only_backends(self) -> AIGatewayRouteRule:
        pools = [ref for ref in self.backend_refs if ref.is_inference_pool]
        if pools and len(self.backend_refs) > 1:
            raise ValueError("an InferencePool must be the only backendRef of its rule")
        return self


class AIGatewayRouteSpec(K8sModel):
    parent_refs: list[ParentReference] = Field(default_factory=list, max_length=16)
    hostnames: list[Hostname] = Field(default_factory=list, max_length=16)
    rules: list[AIGatewayRouteRule] = Field(min_length=1, max_length=15)

    @model_validator(mode="after")
    def _parents_are_gateways(self) -> AIGatewayRouteSpec:
        for ref in self.parent_refs:
            if ref.kind != "Gateway":
                raise ValueError(f"parentRefs may only name Gateways, not {ref.kind}")
        return self


class AIGatewayRoute(Resource):
    group = AIGATEWAY_GROUP
    kind = "AIGatewayRoute"
    versions = AIGATEWAY_VERSIONS

    spec: AIGatewayRouteSpec


class VersionedAPISchema(K8sModel):
    name: Literal[
        "OpenAI",
        "Cohere",
        "AWSBedrock",
        "AzureOpenAI",
        "GCPVertexAI",
        "GCPAnthropic",
        "Anthropic",
        "AWSAnthropic",
    ]
    version: str | None = None
    prefix: str | None = None


class BackendObjectRef(K8sModel):
    group: str | None = None
    kind: str | None = None
    name: ObjectName
    namespace: ObjectName | None = None
    port: PortNumber | None = None


class LocalObjectRef(K8sModel):
    name: ObjectName


class AIServiceBackendSpec(K8sModel):
    schema_: VersionedAPISchema = Field(alias="schema")
    backend_ref: BackendObjectRef
    backend_security_policy_ref: LocalObjectRef | None = None


class AIServiceBackend(Resource):
    group = AIGATEWAY_GROUP
    kind = "AIServiceBackend"
    versions = AIGATEWAY_VERSIONS

    spec: AIServiceBackendSpec


class SecretRef(K8sModel):
    name: ObjectName
    namespace: ObjectName | None = None


class APIKeyAuth(K8sModel):
    secret_ref: SecretRef


class PolicyTargetRef(K8sModel):
    group: str = AIGATEWAY_GROUP
    kind: str = "AIServiceBackend"
    name: ObjectName


class BackendSecurityPolicySpec(K8sModel):
    target_refs: list[PolicyTargetRef] = Field(default_factory=list)
    type: Literal["APIKey", "AzureAPIKey", "AnthropicAPIKey", "AWSCredentials", "AzureCredentials", "GCPCredentials"]
    api_key: APIKeyAuth | None = None

    @model_validator(mode="after")
    def _api_key_block(self) -> BackendSecurityPolicySpec:
        if self.type == "APIKey" and self.api_key is None:
            raise ValueError("type APIKey needs the apiKey block")
        return self


class BackendSecurityPolicy(Resource):
    group = AIGATEWAY_GROUP
    kind = "BackendSecurityPolicy"
    versions = AIGATEWAY_VERSIONS

    spec: BackendSecurityPolicySpec
