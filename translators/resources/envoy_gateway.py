"""Envoy Gateway kinds (gateway.envoyproxy.io v1alpha1): Backend (with its TLS settings) and EnvoyProxy."""

from __future__ import annotations

import ipaddress
from functools import cached_property
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from translators.resources.base import K8sModel, PortNumber, Resource
from translators.resources.gateway_api import LocalObjectReference, WellKnownCas

ENVOY_GATEWAY_GROUP = "gateway.envoyproxy.io"
# The port of fqdn endpoints that are TLS without saying so (Envoy Gateway's rule, translators.upstream_tls).
TLS_PORT = 443


class FQDNEndpoint(K8sModel):
    hostname: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$")
    port: PortNumber


class IPEndpoint(K8sModel):
    address: str
    port: PortNumber

    @field_validator("address")
    @classmethod
    def _is_ip(cls, value: str) -> str:
        ipaddress.ip_address(value)  # raises ValueError naming the bad address
        return value


class UnixSocket(K8sModel):
    path: str = Field(min_length=1)


class BackendEndpoint(K8sModel):
    fqdn: FQDNEndpoint | None = None
    ip: IPEndpoint | None = None
    unix: UnixSocket | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> BackendEndpoint:
        if sum(x is not None for x in (self.fqdn, self.ip, self.unix)) != 1:
            raise ValueError("an endpoint needs exactly one of fqdn, ip or unix")
        return self


class BackendTLSSettings(K8sModel):
    """The subset of Envoy Gateway's BackendTLSSettings this project reads: whom to trust (CA certificates from
    ConfigMaps or Secrets, or the system's), or nobody at all when asked to, and the SNI to send. Client
    certificates, TLS versions, ciphers and ALPN are read by Envoy Gateway only: they are ignored here."""

    ca_certificate_refs: list[LocalObjectReference] = Field(default_factory=list, max_length=8)
    well_known_ca_certificates: WellKnownCas | None = Field(default=None, alias="wellKnownCACertificates")
    insecure_skip_verify: bool = False
    sni: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    )

    @model_validator(mode="after")
    def _one_trust_source(self) -> BackendTLSSettings:
        """Envoy Gateway's CRD rules: CA references or well-known CAs, not both, and neither with insecureSkipVerify.
        With none of the three the server is verified against the system CAs (Envoy Gateway's default)."""
        if self.ca_certificate_refs and self.well_known_ca_certificates:
            raise ValueError("caCertificateRefs and wellKnownCACertificates cannot both be set")
        if self.insecure_skip_verify and (self.ca_certificate_refs or self.well_known_ca_certificates):
            raise ValueError("insecureSkipVerify cannot be combined with caCertificateRefs or wellKnownCACertificates")
        return self


class BackendSpec(K8sModel):
    endpoints: list[BackendEndpoint] = Field(min_length=1, max_length=64)
    tls: BackendTLSSettings | None = None  # None: plain HTTP, except fqdn endpoints on port 443 (TLS, system CAs)

    @model_validator(mode="after")
    def _unix_alone(self) -> BackendSpec:
        kinds = {"unix" if e.unix else "network" for e in self.endpoints}
        if len(kinds) > 1:
            raise ValueError("unix socket endpoints cannot be mixed with fqdn or ip endpoints")
        return self

    @cached_property
    def wants_tls(self) -> bool:
        """Its settings or an endpoint ask for TLS. Kept with the object, which outlives reloads while its file is
        unchanged: a reload asks it of every Backend (in C, `attrgetter`, once it is known)."""
        return self.tls is not None or self.fqdn_on_tls_port

    @cached_property
    def fqdn_on_tls_port(self) -> bool:
        """An fqdn endpoint on port 443, which implies TLS (translators.upstream_tls). Kept with the object: a reload
        asks it of every Backend, and the object outlives reloads while its file is unchanged."""
        return any(e.fqdn is not None and e.fqdn.port == TLS_PORT for e in self.endpoints)


class Backend(Resource):
    group = ENVOY_GATEWAY_GROUP
    kind = "Backend"
    versions = ("v1alpha1",)

    spec: BackendSpec


class EnvoyProxyContainer(K8sModel):
    image: str | None = None  # None: the provisioner's default image
    resources: dict[str, Any] | None = None  # a core ResourceRequirements, passed on as written


class EnvoyProxyDeployment(K8sModel):
    replicas: int | None = Field(default=None, ge=0)  # None: the provisioner's default (1)
    container: EnvoyProxyContainer = Field(default_factory=EnvoyProxyContainer)


class EnvoyProxyService(K8sModel):
    type: Literal["ClusterIP", "LoadBalancer", "NodePort"] = "LoadBalancer"  # Envoy Gateway's default


class EnvoyProxyKubernetes(K8sModel):
    envoy_deployment: EnvoyProxyDeployment = Field(default_factory=EnvoyProxyDeployment)
    envoy_service: EnvoyProxyService = Field(default_factory=EnvoyProxyService)


class EnvoyProxyProvider(K8sModel):
    type: str = "Kubernetes"
    kubernetes: EnvoyProxyKubernetes = Field(default_factory=EnvoyProxyKubernetes)


class EnvoyProxySpec(K8sModel):
    """The fields the cluster-mode provisioner reads (image, replicas, resources, Service type); the rest of Envoy
    Gateway's schema is accepted and ignored."""

    provider: EnvoyProxyProvider = Field(default_factory=EnvoyProxyProvider)


class EnvoyProxy(Resource):
    """Referenced by a GatewayClass's parametersRef: shapes the Envoy Deployment and Service provisioned per Gateway
    in a cluster; it does not change the xDS."""

    group = ENVOY_GATEWAY_GROUP
    kind = "EnvoyProxy"
    versions = ("v1alpha1",)

    spec: EnvoyProxySpec = Field(default_factory=EnvoyProxySpec)

    @property
    def kubernetes(self) -> EnvoyProxyKubernetes:
        return self.spec.provider.kubernetes
