"""Envoy AI Gateway kinds (aigateway.envoyproxy.io, v1alpha1 and v1beta1 have the same shape here)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from translators.resources.base import Hostname, K8sModel, ObjectName, PortNumber, Resource
from translators.resources.gateway_api import HeaderMatch, HTTPRouteTimeouts, ParentReference
from translators.xds.names import HEADER_VALUE_FORBIDDEN

AIGATEWAY_GROUP = "aigateway.envoyproxy.io"
AIGATEWAY_VERSIONS = ("v1alpha1", "v1beta1")


class AIGatewayRouteMatch(K8sModel):
    headers: list[HeaderMatch] = Field(default_factory=list, max_length=16)


class HTTPHeader(K8sModel):
    name: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
    value: str = Field(max_length=4096, pattern=f"^[^{HEADER_VALUE_FORBIDDEN}]*$")  # no control characters


class HTTPHeaderMutation(K8sModel):
    """Headers set (overwritten) and removed on the request to the backend."""

    set: list[HTTPHeader] = Field(default_factory=list, max_length=16)
    remove: list[str] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _no_pseudo_or_host_headers(self) -> HTTPHeaderMutation:
        for name in [h.name for h in self.set] + self.remove:
            if name.startswith(":") or name.lower() == "host":
                raise ValueError(f"header {name!r} cannot be mutated")
        return self


class HTTPBodyField(K8sModel):
    path: str = Field(min_length=1)  # a top-level field of the JSON body
    value: str  # JSON text: '"text"', '0.7', '{"a": 1}'

    @field_validator("value")
    @classmethod
    def _json(cls, value: str) -> str:
        try:
            json.loads(value)
        except ValueError as exc:
            raise ValueError(f"value must be JSON text (quote strings): {exc}") from None
        return value


class HTTPBodyMutation(K8sModel):
    """Top-level fields of the JSON request body set or removed before it goes to the backend."""

    set: list[HTTPBodyField] = Field(default_factory=list, max_length=16)
    remove: list[str] = Field(default_factory=list, max_length=16)


class AIGatewayRouteBackendRef(K8sModel):
    group: str | None = None
    kind: str | None = None
    name: ObjectName
    namespace: ObjectName | None = None
    weight: int = Field(default=1, ge=0, le=1_000_000)
    priority: int = Field(default=0, ge=0)
    model_name_override: str | None = None
    header_mutation: HTTPHeaderMutation | None = None
    body_mutation: HTTPBodyMutation | None = None

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


class AIServiceBackendSpec(K8sModel):
    schema_: VersionedAPISchema = Field(alias="schema")
    backend_ref: BackendObjectRef
    header_mutation: HTTPHeaderMutation | None = None
    body_mutation: HTTPBodyMutation | None = None


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


class AWSCredentialsFile(K8sModel):
    secret_ref: SecretRef
    profile: str = "default"


class AWSCredentials(K8sModel):
    region: str
    credentials_file: AWSCredentialsFile | None = None
    oidc_exchange_token: dict[str, Any] | None = None  # read so it can be refused by name (not supported)


class GCPCredentialsFile(K8sModel):
    secret_ref: SecretRef


class GCPCredentials(K8sModel):
    project_name: str
    region: str
    credentials_file: GCPCredentialsFile | None = None
    workload_identity_federation_config: dict[str, Any] | None = None  # read so it can be refused by name


class AzureCredentials(K8sModel):
    client_id: str = Field(alias="clientID")
    tenant_id: str = Field(alias="tenantID")
    client_secret_ref: SecretRef | None = None
    oidc_exchange_token: dict[str, Any] | None = None  # read so it can be refused by name


class PolicyTargetRef(K8sModel):
    group: str = AIGATEWAY_GROUP
    kind: str = "AIServiceBackend"
    name: ObjectName


# The key-based policy types: the spec block each needs, and the request header its key goes in (with a prefix).
API_KEY_TYPES: dict[str, tuple[str, str, str]] = {
    "APIKey": ("api_key", "authorization", "Bearer "),
    "AzureAPIKey": ("azure_api_key", "api-key", ""),
    "AnthropicAPIKey": ("anthropic_api_key", "x-api-key", ""),
}
API_KEY_SECRET_KEY = "apiKey"
AWS_CREDENTIALS_SECRET_KEY = "credentials"  # an AWS shared credentials file (INI)
GCP_CREDENTIALS_SECRET_KEY = "service_account.json"  # a service account's key file, as Google issues it
AZURE_CLIENT_SECRET_KEY = "client-secret"
# The credential types' spec blocks (the API key types' are in API_KEY_TYPES).
CREDENTIAL_BLOCKS = {
    "AWSCredentials": ("aws_credentials", "awsCredentials"),
    "GCPCredentials": ("gcp_credentials", "gcpCredentials"),
    "AzureCredentials": ("azure_credentials", "azureCredentials"),
}


class BackendSecurityPolicySpec(K8sModel):
    target_refs: list[PolicyTargetRef] = Field(default_factory=list)
    type: Literal["APIKey", "AzureAPIKey", "AnthropicAPIKey", "AWSCredentials", "AzureCredentials", "GCPCredentials"]
    api_key: APIKeyAuth | None = None
    azure_api_key: APIKeyAuth | None = Field(default=None, alias="azureAPIKey")
    anthropic_api_key: APIKeyAuth | None = Field(default=None, alias="anthropicAPIKey")
    aws_credentials: AWSCredentials | None = None
    gcp_credentials: GCPCredentials | None = None
    azure_credentials: AzureCredentials | None = None

    @model_validator(mode="after")
    def _key_block(self) -> BackendSecurityPolicySpec:
        wanted = API_KEY_TYPES.get(self.type)
        if wanted is not None and getattr(self, wanted[0]) is None:
            block = type(self).model_fields[wanted[0]].alias or wanted[0]
            raise ValueError(f"type {self.type} needs the {block} block")
        if self.type in CREDENTIAL_BLOCKS and getattr(self, CREDENTIAL_BLOCKS[self.type][0]) is None:
            raise ValueError(f"type {self.type} needs the {CREDENTIAL_BLOCKS[self.type][1]} block")
        return self

    @property
    def key_auth(self) -> APIKeyAuth | None:
        """The secretRef block of a key-based type; None for the credential types (not supported)."""
        wanted = API_KEY_TYPES.get(self.type)
        return getattr(self, wanted[0]) if wanted is not None else None


class BackendSecurityPolicy(Resource):
    group = AIGATEWAY_GROUP
    kind = "BackendSecurityPolicy"
    versions = AIGATEWAY_VERSIONS

    spec: BackendSecurityPolicySpec
