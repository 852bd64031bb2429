"""What the model router looks up per request, computed once per build (in the build's worker thread).

A reload swaps the whole `RouterTables` with the build, so a stream sees one consistent version and the event
loop never waits for a table to be rebuilt.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import orjson

from translators.gatewayapi import MODEL_HEADER
from translators.ir import RouteIR, Translation
from translators.loader import ResourceSet
from translators.resources import AIGatewayRoute
from xds_server.extproc.responses import ProcessingResponse, immediate_json, route_by_model
from xds_server.extproc.upstream import UpstreamPlan, upstream_plans

OWNED_BY = "xds-server"


@dataclass(frozen=True)
class ModelLists:
    """One Gateway's `/v1/models` answers, chosen by request host the way Envoy chooses a virtual host."""

    exact: Mapping[str, ProcessingResponse]
    wildcards: tuple[tuple[str, ProcessingResponse], ...]  # ("<suffix>", answer) for "*<suffix>", longest first
    any_host: ProcessingResponse

    def answer(self, authority: str) -> ProcessingResponse:
        host = _host(authority)
        found = self.exact.get(host)
        if found is not None:
            return found
        for suffix, answer in self.wildcards:
            if host.endswith(suffix) and len(host) > len(suffix):
                return answer
        return self.any_host


EMPTY_MODEL_LIST = immediate_json(200, orjson.dumps({"object": "list", "data": []}), "model_router_models")
NO_MODELS = ModelLists({}, (), EMPTY_MODEL_LIST)


@dataclass(frozen=True)
class RouterTables:
    model_lists: Mapping[str, ModelLists] = field(default_factory=dict)  # by Gateway "<ns>/<name>"
    models: frozenset[str] = frozenset()  # every model some route names exactly
    # The upstream phase's settings by (rule, backend). They hold credentials: never printed.
    upstream: Mapping[tuple[str, str], UpstreamPlan] = field(default_factory=dict, repr=False)
    # Route replies of known models, made on first use: bounded by `models`, never by what clients send.
    _route_replies: dict[str, ProcessingResponse] = field(default_factory=dict, compare=False, repr=False)

    def models_answer(self, gateway: str, authority: str) -> ProcessingResponse:
        return self.model_lists.get(gateway, NO_MODELS).answer(authority)

    def route_reply(self, model: str) -> ProcessingResponse:
        reply = self._route_replies.get(model)
        if reply is None:
            reply = route_by_model(model)
            if model in self.models:
                self._route_replies[model] = reply
        return reply


def _host(authority: str) -> str:
    """Envoy already strips the port (strip_any_host_port); this keeps the lookup right without it too."""
    host = authority.lower()
    if host.startswith("["):  # [v6]:port
        return host.partition("]")[0] + "]"
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() else host


def exact_models(routes: Iterable[RouteIR]) -> list[str]:
    """The models a virtual host names exactly, in route order, once each. Regex matches are not listable."""
    models: dict[str, None] = {}
    for route in routes:
        if route.model_router:
            for match in route.headers:
                if match.name == MODEL_HEADER and not match.regex:
                    models.setdefault(match.value)
    return list(models)


def _created(resources: ResourceSet, rule: str) -> int:
    """The creation time of the AIGatewayRoute a rule ("aigatewayroute/<ns>/<name>/rule/<i>") belongs to."""
    kind, namespace, name, *_ = [*rule.split("/"), "", "", ""]
    route = resources.get(AIGatewayRoute, namespace, name) if kind == "aigatewayroute" else None
    stamp = route.metadata.creation_timestamp if route is not None else None
    try:
        return int(datetime.fromisoformat(stamp).timestamp()) if stamp else 0
    except ValueError:
        return 0


def _model_list(models: list[str], created: Mapping[str, int]) -> ProcessingResponse:
    data = [{"id": m, "object": "model", "created": created.get(m, 0), "owned_by": OWNED_BY} for m in models]
    return immediate_json(200, orjson.dumps({"object": "list", "data": data}), "model_router_models")


def router_tables(translation: Translation, resources: ResourceSet) -> RouterTables:
    lists: dict[str, ModelLists] = {}
    every_model: set[str] = set()
    for gateway in translation.gateways:
        by_domain: dict[str, dict[str, None]] = {}
        created: dict[str, int] = {}
        for listener in gateway.listeners:  # Gateway listeners on other ports may serve the same host: merged
            for vhost in listener.virtual_hosts:
                for domain in vhost.domains:
                    by_domain.setdefault(domain, {}).update(dict.fromkeys(exact_models(vhost.routes)))
                for route in vhost.routes:
                    for match in route.headers:
                        if match.name == MODEL_HEADER and not match.regex and match.value not in created:
                            created[match.value] = _created(resources, route.rule)
        for models in by_domain.values():
            every_model.update(models)
        answers = {domain: _model_list(list(models), created) for domain, models in by_domain.items()}
        any_host = answers.pop("*", EMPTY_MODEL_LIST)
        wildcards = sorted(((d[1:], a) for d, a in answers.items() if d.startswith("*")), key=lambda w: -len(w[0]))
        exact = {d: a for d, a in answers.items() if not d.startswith("*")}
        lists[gateway.key] = ModelLists(exact, tuple(wildcards), any_host)
    return RouterTables(lists, frozenset(every_model), upstream_plans(translation.backend_settings))
