"""RBAC kinds and ServiceAccount: the tutorial's picker Deployments come with them. Read and validated, but they
change nothing in the Envoy configuration (the embedded picker needs no RBAC of its own)."""

from __future__ import annotations

from pydantic import Field

from translators.resources.base import K8sModel, Resource

RBAC_GROUP = "rbac.authorization.k8s.io"


class PolicyRule(K8sModel):
    api_groups: list[str] = Field(default_factory=list)
    resources: list[str] = Field(default_factory=list)
    verbs: list[str] = Field(min_length=1)


class Subject(K8sModel):
    kind: str
    name: str
    namespace: str | None = None


class RoleRef(K8sModel):
    api_group: str
    kind: str
    name: str


class ServiceAccount(Resource):
    group = ""
    kind = "ServiceAccount"
    versions = ("v1",)


class _RoleKind(Resource):
    group = RBAC_GROUP
    versions = ("v1",)

    rules: list[PolicyRule] = Field(default_factory=list)


class Role(_RoleKind):
    kind = "Role"


class ClusterRole(_RoleKind):
    kind = "ClusterRole"
    namespaced = False


class _BindingKind(Resource):
    group = RBAC_GROUP
    versions = ("v1",)

    subjects: list[Subject] = Field(default_factory=list)
    role_ref: RoleRef


class RoleBinding(_BindingKind):
    kind = "RoleBinding"


class ClusterRoleBinding(_BindingKind):
    kind = "ClusterRoleBinding"
    namespaced = False
