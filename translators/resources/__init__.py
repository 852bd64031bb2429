"""Typed models of every kind the project reads, and the registry that maps apiVersion/kind to a model."""

from __future__ import annotations

from translators.resources.aigateway import AIGatewayRoute, AIServiceBackend, BackendSecurityPolicy
from translators.resources.base import Resource, parse_duration_ms
from translators.resources.core import ConfigMap, Deployment, EndpointSlice, Pod, Secret, Service
from translators.resources.envoy_gateway import Backend, EnvoyProxy
from translators.resources.gateway_api import (
    BackendTLSPolicy,
    Gateway,
    GatewayClass,
    HTTPRoute,
    Namespace,
    ReferenceGrant,
)
from translators.resources.inference import InferenceObjective, InferencePool
from translators.resources.rbac import ClusterRole, ClusterRoleBinding, Role, RoleBinding, ServiceAccount

KINDS: tuple[type[Resource], ...] = (
    GatewayClass,
    Gateway,
    HTTPRoute,
    ReferenceGrant,
    BackendTLSPolicy,
    Namespace,
    AIGatewayRoute,
    AIServiceBackend,
    BackendSecurityPolicy,
    Backend,
    EnvoyProxy,
    InferencePool,
    InferenceObjective,
    Service,
    EndpointSlice,
    Pod,
    Deployment,
    ConfigMap,
    Secret,
    ServiceAccount,
    Role,
    RoleBinding,
    ClusterRole,
    ClusterRoleBinding,
)

# (group, kind) -> model; the version is checked separately so an unsupported version gets a clear error.
MODELS: dict[tuple[str, str], type[Resource]] = {(model.group, model.kind): model for model in KINDS}


def split_api_version(api_version: str) -> tuple[str, str]:
    """Splits an apiVersion: `apps/v1` gives ("apps", "v1"), and the core group's `v1` gives ("", "v1")."""
    group, _, version = api_version.rpartition("/")
    return group, version


__all__ = [
    "KINDS",
    "MODELS",
    "AIGatewayRoute",
    "AIServiceBackend",
    "Backend",
    "BackendSecurityPolicy",
    "BackendTLSPolicy",
    "ConfigMap",
    "Deployment",
    "EndpointSlice",
    "EnvoyProxy",
    "Gateway",
    "GatewayClass",
    "HTTPRoute",
    "InferenceObjective",
    "InferencePool",
    "Namespace",
    "Pod",
    "ReferenceGrant",
    "Resource",
    "Secret",
    "Service",
    "parse_duration_ms",
    "split_api_version",
]
