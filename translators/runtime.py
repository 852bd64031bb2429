"""IR -> the frozen tables the per-request services read: models per Gateway and host, backend settings, pools.

Computed once per build, in the build's worker thread, and swapped whole with it: a request sees one consistent
version and never waits for a table to be rebuilt. The services know nothing of resources or of the control plane;
these tables are all they are handed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from translators.ir import BackendSettingsIR, GatewayIR, ModelIR, PoolIR, Translation


def request_host(authority: str) -> str:
    """The host of a `:authority` as Envoy matches virtual hosts: lower case, without a port."""
    host = authority.lower()
    if host.startswith("["):  # [v6]:port
        return host.partition("]")[0] + "]"
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() else host


@dataclass(frozen=True)
class HostModels:
    """One Gateway's `/v1/models` lists, chosen by request host the way Envoy chooses a virtual host."""

    exact: Mapping[str, tuple[ModelIR, ...]] = field(default_factory=dict)
    wildcards: tuple[tuple[str, str], ...] = ()  # ("<suffix>", domain) for a "*<suffix>" domain, longest first
    by_domain: Mapping[str, tuple[ModelIR, ...]] = field(default_factory=dict)  # every domain, "*" included

    def domain(self, authority: str) -> str | None:
        """The virtual host domain a request to `authority` lands on; None when no virtual host takes it."""
        host = request_host(authority)
        if host in self.exact:
            return host
        for suffix, domain in self.wildcards:
            if host.endswith(suffix) and len(host) > len(suffix):
                return domain
        return "*" if "*" in self.by_domain else None

    def models(self, domain: str | None) -> tuple[ModelIR, ...]:
        return self.by_domain.get(domain, ()) if domain is not None else ()


NO_MODELS = HostModels()


def host_models(gateway: GatewayIR) -> HostModels:
    """Gateway listeners on other ports may serve the same host: their models are merged, first route first."""
    by_domain: dict[str, dict[str, ModelIR]] = {}
    for listener in gateway.listeners:
        for vhost in listener.virtual_hosts:
            for domain in vhost.domains:
                merged = by_domain.setdefault(domain, {})
                for model in vhost.models:
                    merged.setdefault(model.name, model)
    domains = {domain: tuple(models.values()) for domain, models in by_domain.items()}
    wildcards = sorted(((d[1:], d) for d in domains if d.startswith("*") and d != "*"), key=lambda w: -len(w[0]))
    exact = {d: models for d, models in domains.items() if not d.startswith("*")}
    return HostModels(MappingProxyType(exact), tuple(wildcards), MappingProxyType(domains))


@dataclass(frozen=True)
class RuntimeTables:
    models: Mapping[str, HostModels] = field(default_factory=dict)  # by Gateway "<ns>/<name>"
    routed_models: frozenset[str] = frozenset()  # every model some route names exactly
    # The upstream phase's settings by (rule, backend). They hold credentials: never printed.
    backend_settings: Mapping[tuple[str, str], BackendSettingsIR] = field(default_factory=dict, repr=False)
    pools: Mapping[str, PoolIR] = field(default_factory=dict)  # by "<ns>/<name>"

    def host_models(self, gateway: str) -> HostModels:
        return self.models.get(gateway, NO_MODELS)


EMPTY_TABLES = RuntimeTables()


def runtime_tables(translation: Translation) -> RuntimeTables:
    models = {gateway.key: host_models(gateway) for gateway in translation.gateways}
    routed = frozenset(m.name for hosts in models.values() for listed in hosts.by_domain.values() for m in listed)
    return RuntimeTables(
        MappingProxyType(models),
        routed,
        MappingProxyType({(s.rule, s.backend): s for s in translation.backend_settings}),
        MappingProxyType({pool.key: pool for pool in translation.pools}),
    )
