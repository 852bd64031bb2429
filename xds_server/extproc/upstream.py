"""The upstream-settings service: each attempt's backend settings, applied where Envoy has chosen the backend.

AI clusters whose backends have settings run an ext_proc filter among their upstream filters. Envoy opens one
stream per attempt, after picking the host, and sends the request headers with two attributes: the route rule
(route metadata) and the backend (endpoint metadata). The reply sets and removes that (rule, backend)'s headers
and its credential; when the settings change the body, Envoy then sends the buffered body, which comes back with
`model` overridden, fields set and removed, and Content-Length to match. Otherwise the reply turns the body off.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from functools import partial

import grpc
import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb2

from translators.ir import BackendSettingsIR
from translators.runtime import EMPTY_TABLES, RuntimeTables
from translators.xds.names import (
    BACKEND_ATTRIBUTE,
    RULE_ATTRIBUTE,
    UPSTREAM_HEADERS_ONLY_MODE,
    UPSTREAM_SETTINGS_MODE,
)
from xds_server import metrics
from xds_server.extproc import providers
from xds_server.extproc.budget import BodyBudget, BodyHold, off_the_loop
from xds_server.extproc.protocol import (
    PASS_THROUGH,
    Context,
    Exchange,
    Mode,
    ProcessingResponse,
    attribute,
    ends_phase,
    error,
    replaced_body,
    set_header,
)
from xds_server.extproc.providers import ProviderAttempt
from xds_server.identity import peer_gateway
from xds_server.tokens import TokenMinter

log = logging.getLogger(__name__)

NO_SETTINGS = ProcessingResponse(
    request_headers=ext_proc_pb2.HeadersResponse(), mode_override=UPSTREAM_HEADERS_ONLY_MODE
)
# 20 digits or more: possibly an integer past 64 bits.
_HUGE_INTEGER = re.compile(rb"\d{20}")


class UpstreamPlan:
    """One (rule, backend)'s settings as ready-made replies: built once per build, used by every attempt."""

    __slots__ = ("changes_body", "fields", "headers_reply", "mutation", "removed_fields", "settings")

    def __init__(self, settings: BackendSettingsIR) -> None:
        self.settings = settings
        self.changes_body = settings.changes_body
        set_headers = [set_header(name, value.encode()) for name, value in settings.set_headers]
        if settings.api_key is not None:
            set_headers.append(set_header(settings.api_key.header, settings.api_key.value.encode()))
        mutation = ext_proc_pb2.HeaderMutation(set_headers=set_headers, remove_headers=list(settings.remove_headers))
        self.mutation = mutation
        headers = ext_proc_pb2.HeadersResponse(response=ext_proc_pb2.CommonResponse(header_mutation=mutation))
        self.headers_reply: ProcessingResponse
        if settings.credential_error is not None:
            # Never send a request without the credential it needs; the message names the policy, not the key.
            message = f"{settings.backend}: {settings.credential_error}"
            self.headers_reply = error(503, message, "backend_credentials_unavailable", "upstream_settings")
        elif settings.changes_body:
            self.headers_reply = ProcessingResponse(request_headers=headers, mode_override=UPSTREAM_SETTINGS_MODE)
        else:
            self.headers_reply = ProcessingResponse(request_headers=headers, mode_override=UPSTREAM_HEADERS_ONLY_MODE)
        self.fields: dict[str, object] = {path: orjson.loads(value) for path, value in settings.set_fields}
        if settings.model_name_override is not None:
            self.fields["model"] = settings.model_name_override
        self.removed_fields = settings.remove_fields

    def attempt(self, tokens: providers.TokenLookup = providers.no_tokens) -> ProviderAttempt | None:
        """The attempt's own state when the backend speaks another API or takes a minted token (and its credential
        is usable: otherwise the plan's own reply refuses the request)."""
        if self.settings.credential_error is not None:
            return None
        return providers.attempt(self.settings, self.mutation, tokens)

    def __repr__(self) -> str:  # the headers reply holds the credential
        return f"UpstreamPlan(fields={sorted(self.fields)}, removed={list(self.removed_fields)})"

    def body_reply(self, body: bytes) -> ProcessingResponse:
        """The body with the fields set and removed; Content-Length follows (Envoy keeps it in BUFFERED mode)."""
        # orjson reads integers past 64 bits as floats: such a body (a rare huge `seed`) takes the standard library.
        huge = _HUGE_INTEGER.search(body) is not None
        try:
            payload = json.loads(body) if huge else orjson.loads(body)
        except ValueError:
            return PASS_THROUGH["request_body"]  # the router has answered such a request already; never guess
        if not isinstance(payload, dict):
            return PASS_THROUGH["request_body"]
        for name in self.removed_fields:
            payload.pop(name, None)
        payload.update(self.fields)  # after the removals: a model name override always lands
        if huge:
            rewritten = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        else:
            rewritten = orjson.dumps(payload)
        return replaced_body("request_body", rewritten)


class UpstreamPlans:
    """One build's plans, each made on first use (a build swaps in while no attempt waits for plans to be made), and
    the Gateways whose routes use each rule."""

    def __init__(
        self,
        settings: Mapping[tuple[str, str], BackendSettingsIR],
        rule_gateways: Mapping[str, frozenset[str]] = EMPTY_TABLES.rule_gateways,
    ) -> None:
        self._settings = settings
        self.rule_gateways = rule_gateways
        self._plans: dict[tuple[str, str], UpstreamPlan] = {}

    def get(self, key: tuple[str, str]) -> UpstreamPlan | None:
        plan = self._plans.get(key)
        if plan is None:
            settings = self._settings.get(key)
            if settings is None:
                return None
            plan = self._plans[key] = UpstreamPlan(settings)
        return plan


class UpstreamSettingsService:
    """The stream handler. `follow` swaps in each build's settings; a stream reads them once, when it starts.

    `gateway_scoped` (cluster mode, mutual TLS): a rule's settings go only to a client whose certificate names a
    Gateway whose routes use that rule; anyone else asking is answered 403 and never gets the backend's credential.
    """

    def __init__(
        self,
        runtime: RuntimeTables = EMPTY_TABLES,
        gateway_scoped: bool = False,
        tokens: TokenMinter | None = None,
        budget: BodyBudget | None = None,
    ) -> None:
        self.budget = budget if budget is not None else BodyBudget()
        self.plans = UpstreamPlans(runtime.backend_settings, runtime.rule_gateways)
        self.gateway_scoped = gateway_scoped
        self.tokens = tokens  # mints the bearer tokens of backends that take them (must be made on the event loop)

    def follow(self, runtime: RuntimeTables) -> None:
        """Runs on the event loop (the minter starts its tasks there)."""
        self.plans = UpstreamPlans(runtime.backend_settings, runtime.rule_gateways)
        if self.tokens is not None:
            self.tokens.follow(s.token for s in runtime.backend_settings.values() if s.token is not None)

    def _token(self, key: str) -> tuple[str | None, str]:
        if self.tokens is None:
            return None, "no token minter in this process"
        return self.tokens.token(key)

    async def handle(self, context: Context, metadata: Mapping[str, str]) -> None:
        plan: UpstreamPlan | None = None
        attempt: ProviderAttempt | None = None
        plans = self.plans
        hold = self.budget.hold("upstream_settings")
        exchange = Exchange(None)  # the filter's mode depends on its cluster: the replies' overrides say
        try:
            while (request := await context.read()) is not grpc.aio.EOF:
                kind = request.WhichOneof("request")
                if kind == "request_headers":
                    exchange.saw_request_headers(request.request_headers)
                    plan, attempt, reply = self._headers(context, plans, request)
                    if _body_follows(reply) and (refused := hold.before_body(request.request_headers)):
                        plan = attempt = None
                        reply = refused
                elif kind == "request_body":
                    reply = await self._body(hold, plan, attempt, request.request_body.body)
                elif attempt is not None and attempt.translates and kind != "request_trailers":
                    size = request.response_body.ByteSize() if kind == "response_body" else 0
                    reply = await off_the_loop(size, partial(self._translate, attempt, request, kind))
                else:
                    reply = PASS_THROUGH[kind]
                phase_ended = ends_phase(request)
                del request  # a body can be large: not kept while the answer is awaited
                await context.write(reply)
                if kind == "request_body":
                    hold.release()
                if exchange.over_after(reply, phase_ended):
                    return  # nothing more will come: ended here rather than cancelled by Envoy (Exchange)
                del reply
        finally:
            hold.close()

    @staticmethod
    async def _body(
        hold: BodyHold, plan: UpstreamPlan | None, attempt: ProviderAttempt | None, body: bytes
    ) -> ProcessingResponse:
        """The reply to the request body (read from the message once: each read copies it)."""
        if (refused := hold.arrived(len(body))) is not None:
            return refused
        if attempt is not None and attempt.translates:
            return await off_the_loop(len(body), partial(attempt.request_body, body))
        if plan is not None:
            return await off_the_loop(len(body), partial(plan.body_reply, body))
        return PASS_THROUGH["request_body"]

    def _headers(
        self, context: Context, plans: UpstreamPlans, request: ext_proc_pb2.ProcessingRequest
    ) -> tuple[UpstreamPlan | None, ProviderAttempt | None, ProcessingResponse]:
        """The attempt's plan and provider state, and the reply to its request headers."""
        rule = attribute(request.attributes, RULE_ATTRIBUTE)
        plan = plans.get((rule, attribute(request.attributes, BACKEND_ATTRIBUTE)))
        if plan is None:
            return None, None, NO_SETTINGS
        if self.gateway_scoped and (refused := _refusal(context, plans, rule)):
            return None, None, refused
        attempt = plan.attempt(self._token)
        if attempt is not None:
            return plan, attempt, attempt.request_headers(request.request_headers)
        return plan, None, plan.headers_reply

    @staticmethod
    def _translate(attempt: ProviderAttempt, request: ext_proc_pb2.ProcessingRequest, kind: str) -> ProcessingResponse:
        if kind == "response_headers":
            return attempt.response_headers(request.response_headers)
        if kind == "response_body":
            return attempt.response_body(request.response_body)
        return PASS_THROUGH[kind]


def _body_follows(reply: ProcessingResponse) -> bool:
    """Whether Envoy sends the request body after this reply to the headers (the filter's own mode buffers it)."""
    if not reply.HasField("request_headers"):
        return False
    return not reply.HasField("mode_override") or reply.mode_override.request_body_mode != Mode.NONE


def _refusal(context: Context, plans: UpstreamPlans, rule: str) -> ProcessingResponse | None:
    """A 403 for a client whose certificate names no Gateway using `rule`; None when it may have the settings."""
    peer = peer_gateway(context)
    gateways = plans.rule_gateways.get(rule, frozenset())
    if peer is not None and peer in gateways:
        return None
    reason = "no_identity" if peer is None else "other_gateway"
    metrics.REFUSED_STREAMS.labels("upstream_settings", reason).inc()
    log.warning("upstream settings of %s refused to %s: not a Gateway of that rule", rule, peer or "an unnamed client")
    return error(403, "these upstream settings belong to another Gateway", "forbidden", "upstream_settings")
