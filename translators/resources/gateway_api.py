"""Gateway API kinds (gateway.networking.k8s.io): GatewayClass, Gateway, HTTPRoute, ReferenceGrant, BackendTLSPolicy."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from translators.resources.base import (
    Duration,
    Hostname,
    K8sModel,
    LabelSelector,
    ObjectName,
    PortNumber,
    Resource,
)

GATEWAY_API_GROUP = "gateway.networking.k8s.io"


class ParametersRef(K8sModel):
    group: str
    kind: str
    name: str
    namespace: str | None = None


class GatewayClassSpec(K8sModel):
    controller_name: str
    parameters_ref: ParametersRef | None = None


class GatewayClass(Resource):
    group = GATEWAY_API_GROUP
    kind = "GatewayClass"
    versions = ("v1", "v1beta1")
    namespaced = False

    spec: GatewayClassSpec


class RouteNamespaces(K8sModel):
    from_: Literal["Same", "All", "Selector"] = Field(default="Same", alias="from")
    selector: LabelSelector | None = None


class RouteGroupKind(K8sModel):
    group: str = GATEWAY_API_GROUP
    kind: str = Field(min_length=1)


class AllowedRoutes(K8sModel):
    namespaces: RouteNamespaces = Field(default_factory=RouteNamespaces)
    kinds: list[RouteGroupKind] = Field(default_factory=list, max_length=8)  # empty: every kind the protocol takes


class SecretObjectReference(K8sModel):
    group: str = ""
    kind: str = "Secret"
    name: ObjectName
    namespace: ObjectName | None = None


class GatewayTLSConfig(K8sModel):
    mode: Literal["Terminate", "Passthrough"] = "Terminate"
    certificate_refs: list[SecretObjectReference] = Field(default_factory=list, max_length=64)
    options: dict[str, str] = Field(default_factory=dict)


class Listener(K8sModel):
    name: ObjectName
    hostname: Hostname | None = None
    port: PortNumber
    protocol: str
    tls: GatewayTLSConfig | None = None
    allowed_routes: AllowedRoutes = Field(default_factory=AllowedRoutes)


class LocalParametersReference(K8sModel):
    group: str
    kind: str = Field(min_length=1)
    name: str = Field(min_length=1)


class GatewayInfrastructure(K8sModel):
    # What the objects made for the Gateway (its Envoys' Deployment, Service, ...) carry besides their own.
    labels: dict[str, str] = Field(default_factory=dict, max_length=8)
    annotations: dict[str, str] = Field(default_factory=dict, max_length=8)
    parameters_ref: LocalParametersReference | None = None


class GatewaySpec(K8sModel):
    gateway_class_name: ObjectName
    listeners: list[Listener] = Field(min_length=1, max_length=64)
    infrastructure: GatewayInfrastructure | None = None


class Gateway(Resource):
    group = GATEWAY_API_GROUP
    kind = "Gateway"
    versions = ("v1", "v1beta1")

    spec: GatewaySpec


class ParentReference(K8sModel):
    group: str = GATEWAY_API_GROUP
    kind: str = "Gateway"
    namespace: ObjectName | None = None
    name: ObjectName
    section_name: str | None = None
    port: PortNumber | None = None


class HeaderMatch(K8sModel):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
    value: str = Field(max_length=4096)


class PathMatch(K8sModel):
    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: str = Field(default="/", max_length=1024)


class HTTPRouteMatch(K8sModel):
    path: PathMatch = Field(default_factory=PathMatch)
    headers: list[HeaderMatch] = Field(default_factory=list, max_length=16)
    method: str | None = None


class HTTPRouteTimeouts(K8sModel):
    request: Duration | None = None
    backend_request: Duration | None = None


class HTTPBackendRef(K8sModel):
    group: str = ""
    kind: str = "Service"
    name: ObjectName
    namespace: ObjectName | None = None
    port: PortNumber | None = None
    weight: int = Field(default=1, ge=0, le=1_000_000)
    filters: list[HTTPRouteFilter] = Field(default_factory=list, max_length=16)  # not implemented: refused


class HTTPHeader(K8sModel):
    name: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
    value: str = Field(max_length=4096)


class HTTPHeaderFilter(K8sModel):
    set: list[HTTPHeader] = Field(default_factory=list, max_length=16)
    add: list[HTTPHeader] = Field(default_factory=list, max_length=16)
    remove: list[str] = Field(default_factory=list, max_length=16)


class HTTPPathModifier(K8sModel):
    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    replace_full_path: str | None = Field(default=None, max_length=1024)
    replace_prefix_match: str | None = Field(default=None, max_length=1024)


class HTTPRequestRedirectFilter(K8sModel):
    scheme: Literal["http", "https"] | None = None
    hostname: Hostname | None = None
    path: HTTPPathModifier | None = None
    port: PortNumber | None = None
    status_code: Literal[301, 302, 303, 307, 308] = 302


class HTTPURLRewriteFilter(K8sModel):
    hostname: Hostname | None = None
    path: HTTPPathModifier | None = None


class HTTPRouteFilter(K8sModel):
    """`type` names the one field that configures it; the kinds not implemented keep their name only."""

    type: str
    request_header_modifier: HTTPHeaderFilter | None = None
    response_header_modifier: HTTPHeaderFilter | None = None
    request_redirect: HTTPRequestRedirectFilter | None = None
    url_rewrite: HTTPURLRewriteFilter | None = Field(default=None, alias="urlRewrite")


class HTTPRouteRule(K8sModel):
    name: str | None = None
    matches: list[HTTPRouteMatch] = Field(default_factory=lambda: [HTTPRouteMatch()], max_length=64)
    filters: list[HTTPRouteFilter] = Field(default_factory=list, max_length=16)
    backend_refs: list[HTTPBackendRef] = Field(default_factory=list)
    timeouts: HTTPRouteTimeouts | None = None


class HTTPRouteSpec(K8sModel):
    parent_refs: list[ParentReference] = Field(default_factory=list, max_length=32)
    hostnames: list[Hostname] = Field(default_factory=list, max_length=16)
    rules: list[HTTPRouteRule] = Field(default_factory=lambda: [HTTPRouteRule()], max_length=16)


class HTTPRoute(Resource):
    group = GATEWAY_API_GROUP
    kind = "HTTPRoute"
    versions = ("v1", "v1beta1")

    spec: HTTPRouteSpec


class Namespace(Resource):
    """Only its labels matter here: listeners may admit routes by a namespace selector."""

    group = ""
    kind = "Namespace"
    versions = ("v1",)
    namespaced = False


class ReferenceGrantFrom(K8sModel):
    group: str
    kind: str = Field(min_length=1)
    namespace: ObjectName


class ReferenceGrantTo(K8sModel):
    group: str
    kind: str = Field(min_length=1)
    name: ObjectName | None = None  # None: every object of that kind in the grant's namespace


class ReferenceGrantSpec(K8sModel):
    from_: list[ReferenceGrantFrom] = Field(alias="from", min_length=1, max_length=16)
    to: list[ReferenceGrantTo] = Field(min_length=1, max_length=16)


class ReferenceGrant(Resource):
    """Lets objects of other namespaces (`from`) refer to objects of this grant's namespace (`to`)."""

    group = GATEWAY_API_GROUP
    kind = "ReferenceGrant"
    versions = ("v1beta1", "v1")

    spec: ReferenceGrantSpec


class LocalObjectReference(K8sModel):
    """An object in the referrer's namespace (a CA certificate's ConfigMap or Secret)."""

    group: str = ""
    kind: str = Field(min_length=1, max_length=63)
    name: str = Field(min_length=1, max_length=253)


# The one well-known CA set there is: the CA bundle of the system Envoy runs on (TranslateOptions.system_ca_bundle).
SYSTEM_CAS = "System"
# Gateway API's pattern: "System", or an implementation's own prefixed name (none is defined here: such a policy is
# read, and refused with Accepted False / Invalid).
_WELL_KNOWN_CAS = (
    r"^(System|([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[A-Za-z0-9][-A-Za-z0-9_.]*))$"
)
WellKnownCas = Annotated[str, Field(min_length=1, max_length=253, pattern=_WELL_KNOWN_CAS)]


class PolicyTargetReference(K8sModel):
    """LocalPolicyTargetReferenceWithSectionName: an object in the policy's namespace, or one section of it (a
    Service port, by name)."""

    group: str
    kind: str = Field(min_length=1, max_length=63)
    name: str = Field(min_length=1, max_length=253)
    section_name: str | None = None


class SubjectAltName(K8sModel):
    type: Literal["Hostname", "URI"]
    hostname: Hostname | None = None
    uri: str | None = Field(default=None, min_length=1, max_length=253, pattern=r"^[^:/?#]+://")

    @model_validator(mode="after")
    def _value_of_its_type(self) -> SubjectAltName:
        value, other = (self.hostname, self.uri) if self.type == "Hostname" else (self.uri, self.hostname)
        if not value or other:
            raise ValueError(f"a {self.type} subjectAltName needs {self.type.lower()} and nothing else")
        return self


class BackendTLSPolicyValidation(K8sModel):
    ca_certificate_refs: list[LocalObjectReference] = Field(default_factory=list, max_length=8)
    well_known_ca_certificates: WellKnownCas | None = Field(default=None, alias="wellKnownCACertificates")
    hostname: str = Field(
        min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    )
    subject_alt_names: list[SubjectAltName] = Field(default_factory=list, max_length=5)

    @model_validator(mode="after")
    def _one_trust_source(self) -> BackendTLSPolicyValidation:
        if bool(self.ca_certificate_refs) == bool(self.well_known_ca_certificates):
            raise ValueError("exactly one of caCertificateRefs and wellKnownCACertificates is required")
        return self


class BackendTLSPolicySpec(K8sModel):
    target_refs: list[PolicyTargetReference] = Field(min_length=1, max_length=16)
    validation: BackendTLSPolicyValidation
    options: dict[str, str] = Field(default_factory=dict)  # implementation-specific: none is read


class BackendTLSPolicy(Resource):
    """How Envoy connects to a Service or Backend over TLS: the CA that signs its certificate, the SNI it sends and
    the name it verifies. v1alpha3 (what Envoy AI Gateway's examples use) has the same shape as v1."""

    group = GATEWAY_API_GROUP
    kind = "BackendTLSPolicy"
    versions = ("v1", "v1alpha3")

    spec: BackendTLSPolicySpec
