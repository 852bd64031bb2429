"""IR -> the frozen tables the per-request services read: backend settings (upstream phase), pools (the picker).

Computed once per build, in the build's worker thread, and swapped whole with it: a request sees one consistent
version and never waits for a table to be rebuilt. The services know nothing of resources or of the control plane;
these tables are all they are handed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from translators.ir import BackendSettingsIR, PickerMode, PoolIR, Translation


@dataclass(frozen=True)
class RuntimeTables:
    # The upstream phase's settings by (rule, backend). They hold credentials: never printed.
    backend_settings: Mapping[tuple[str, str], BackendSettingsIR] = field(default_factory=dict, repr=False)
    # The pools the embedded picker serves (and scrapes), by "<ns>/<name>": a pool in reference mode is its own
    # Endpoint Picker's, so it is left out.
    pools: Mapping[str, PoolIR] = field(default_factory=dict)
    # The Gateways ("<ns>/<name>") whose routes use each route rule that has settings, and each pool: in a cluster, an
    # Envoy gets a rule's settings (its backend's credential) and a pool's picks only for the Gateway its certificate
    # names.
    rule_gateways: Mapping[str, frozenset[str]] = field(default_factory=dict)
    pool_gateways: Mapping[str, frozenset[str]] = field(default_factory=dict)


EMPTY_TABLES = RuntimeTables()


def runtime_tables(translation: Translation) -> RuntimeTables:
    rules: dict[str, set[str]] = {}
    pools: dict[str, set[str]] = {}
    # Only a rule with settings is ever looked up: with none and no pool, no route needs a look (10,000 routes are
    # a few milliseconds of each reload).
    scoped = {s.rule for s in translation.backend_settings}
    if scoped or translation.pools:
        for gateway in translation.gateways:
            for listener in gateway.listeners:
                for route in listener.routes:
                    if route.rule in scoped:
                        rules.setdefault(route.rule, set()).add(gateway.key)
                    if route.pool is not None:
                        pools.setdefault(route.pool.pool.key, set()).add(gateway.key)
    return RuntimeTables(
        MappingProxyType({(s.rule, s.backend): s for s in translation.backend_settings}),
        MappingProxyType({pool.key: pool for pool in translation.pools if pool.picker is PickerMode.EMBEDDED}),
        MappingProxyType({rule: frozenset(keys) for rule, keys in rules.items()}),
        MappingProxyType({pool: frozenset(keys) for pool, keys in pools.items()}),
    )
