"""The embedded Endpoint Picker: one ext_proc stream per request to an InferencePool route.

Envoy's picker filter names the pool in the stream's gRPC metadata (`x-inference-pool: <ns>/<name>`), and the
route chooses how the request body arrives (the first message's `protocol_config` says which):
- BUFFERED: request headers (answered at once, unchanged), then the whole body; the body's reply carries the
  pick as a header mutation plus dynamic metadata, with `clear_route_cache`.
- FULL_DUPLEX_STREAMED: headers (not answered yet), body chunks until end of stream; then the reply to the
  headers carries the pick and the body goes back in chunks of at most 62,000 bytes.
Then the response headers arrive with the endpoint that served the request (`envoy.lb` metadata, written by the
pool cluster's override_host policy); response plugins and the debug header answer there.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

import grpc
import orjson
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from prometheus_client import Counter, Gauge, Histogram

from translators.ir import PickerBodyMode
from translators.runtime import RuntimeTables
from translators.xds.names import (
    MODEL_REWRITE_HEADER,
    OBJECTIVE_HEADER,
    PICKER_DEBUG_HEADER,
    PICKER_MODE_WITHOUT_RESPONSE,
    PICKER_MODES,
    PICKER_POOL_METADATA,
    PICKER_SCORES_HEADER,
    TEST_SELECTION_HEADER,
)
from xds_server import metrics
from xds_server.epp import protocol
from xds_server.epp.plugins.base import Candidate, PickRequest, restrict
from xds_server.epp.pools import PoolState
from xds_server.epp.scheduler import Decision, SchedulingError, schedule
from xds_server.epp.scrape import Scraper, Target
from xds_server.extproc.budget import BodyBudget, off_the_loop
from xds_server.extproc.protocol import (
    CONTINUE_REQUEST_HEADERS,
    PASS_THROUGH,
    BadRequestBody,
    Context,
    Exchange,
    ProcessingRequest,
    ProcessingResponse,
    ends_phase,
    header_values,
    parse_request_body,
)
from xds_server.identity import peer_gateway

log = logging.getLogger(__name__)

FULL_DUPLEX = processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED

_CONTROL_HEADERS = frozenset(
    {
        OBJECTIVE_HEADER,
        MODEL_REWRITE_HEADER,
        PICKER_DEBUG_HEADER,
        TEST_SELECTION_HEADER,
    }
)

PICKS = Counter(
    "inference_extension_scheduler_attempts_total", "Scheduling attempts by pool and outcome.", ["pool", "status"]
)
PICK_SECONDS = Histogram(
    "inference_extension_scheduler_e2e_duration_seconds",
    "Time to pick an endpoint, from the complete request body to the decision.",
    ["pool"],
    buckets=(0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01),
)
READY_ENDPOINTS = Gauge("inference_pool_ready_pods", "Ready endpoints of each pool.", ["name"])


class EndpointPicker:
    def __init__(
        self,
        scraper: Scraper,
        clock: Callable[[], float] = time.monotonic,
        debug: bool = False,
        gateway_scoped: bool = False,
        budget: BodyBudget | None = None,
    ) -> None:
        """`debug`: honour the request header asking for a pick's scores (off by default: the scores show the pool's
        endpoints and load to whoever asks). `gateway_scoped` (cluster mode, mutual TLS): a pool is picked for only
        when the client's certificate names a Gateway whose routes use it; for anyone else it is an unknown pool."""
        self.scraper = scraper
        self.clock = clock
        self.debug = debug
        self.gateway_scoped = gateway_scoped
        self.budget = budget if budget is not None else BodyBudget()
        self.pools: dict[str, PoolState] = {}
        self.pool_gateways: Mapping[str, frozenset[str]] = {}

    # --- the datastore follows the control plane --------------------------------------------------------------

    def follow(self, runtime: RuntimeTables) -> None:
        """Called with each applied build: pools, endpoints, objectives, configs and scrape targets."""
        self.pool_gateways = runtime.pool_gateways
        seen = set()
        targets: dict[str, Target] = {}
        for key, pool in runtime.pools.items():
            seen.add(key)
            state = self.pools.get(key)
            if state is None:
                state = self.pools[key] = PoolState(key)
            state.update(pool)
            READY_ENDPOINTS.labels(key).set(len(state.endpoints))
            for endpoint in state.endpoints:
                targets[endpoint.key] = Target(endpoint.address, endpoint.port, state.engines[endpoint.key])
        for gone in set(self.pools) - seen:
            del self.pools[gone]
            READY_ENDPOINTS.remove(gone)
        self.scraper.set_targets(targets)

    # --- one request ------------------------------------------------------------------------------------------

    async def handle(self, context: Context, metadata: Mapping[str, str]) -> None:
        stream = PickerStream(self, metadata.get(PICKER_POOL_METADATA, ""))
        if self.gateway_scoped:
            peer = peer_gateway(context)
            if peer is None or peer not in self.pool_gateways.get(stream.pool_key, ()):
                metrics.REFUSED_STREAMS.labels("picker", "no_identity" if peer is None else "other_gateway").inc()
                log.warning("picks for pool %s refused to %s: not a Gateway of that pool", stream.pool_key, peer)
                stream.pool = None  # answered as an unknown pool
        try:
            while (request := await context.read()) is not grpc.aio.EOF:
                replies = await stream.process(request)
                phase_ended = ends_phase(request)
                del request  # a body can be large: not kept while the answer is awaited
                if await _write(context, replies, stream.exchange, phase_ended):
                    return  # nothing more will come: ended here rather than cancelled by Envoy (Exchange)
                del replies
        finally:
            stream.hold.close()

    def candidates(self, pool: PoolState) -> tuple[Candidate, ...]:
        """The pool's endpoints paired with their latest metrics (new Candidates only where a sample changed)."""
        return pool.paired(self.scraper.get)

    # --- /debug ---------------------------------------------------------------------------------------------

    def pools_document(self) -> list[dict[str, Any]]:
        return [self.pool_document(key) for key in sorted(self.pools)]

    def pool_document(self, key: str) -> dict[str, Any]:
        pool = self.pools[key]
        now = self.clock()
        metrics = {}
        for endpoint in pool.endpoints:
            sample = self.scraper.get(endpoint.key)
            entry: dict[str, Any] = {"scrapeError": self.scraper.errors(endpoint.key)}
            if sample is not None:
                entry.update(
                    waiting=sample.waiting,
                    running=sample.running,
                    kvCacheUsage=sample.kv_usage,
                    activeModels=sorted(sample.active_models),
                    ageSeconds=round(now - sample.updated, 3),
                )
            metrics[endpoint.key] = entry
        return pool.document(metrics)


async def _write(
    context: Context, replies: Iterable[ProcessingResponse], exchange: Exchange, phase_ended: bool
) -> bool:
    """Writes the replies; whether the exchange is over. A function of its own, so nothing of a reply (a rewritten
    body) stays referenced after it is written."""
    over = False
    for reply in replies:
        await context.write(reply)
        over = exchange.over_after(reply, phase_ended)
    return over


class PickerStream:
    """One request's state. `process` returns the replies to one message (none, one, or several)."""

    __slots__ = (
        "body",
        "decision",
        "exchange",
        "full_duplex",
        "headers",
        "hold",
        "picker",
        "pool",
        "pool_key",
        "subset",
    )

    def __init__(self, picker: EndpointPicker, pool_key: str) -> None:
        self.picker = picker
        self.pool_key = pool_key
        self.pool = picker.pools.get(pool_key)
        self.full_duplex = False
        self.headers: dict[str, str] = {}
        self.subset: list[str] | None = None
        self.body: list[bytes] = []
        self.decision: Decision | None = None
        self.hold = picker.budget.hold("endpoint_picker")
        # The filter's own mode; a full-duplex route's replaces it (request_headers says).
        self.exchange = Exchange(PICKER_MODES[PickerBodyMode.BUFFERED])

    async def process(self, request: ProcessingRequest) -> Iterable[ProcessingResponse]:
        kind = request.WhichOneof("request")
        if kind == "request_headers":
            return self.request_headers(request)
        if kind == "request_body":
            if (refused := self.hold.arrived(len(request.request_body.body))) is not None:
                self.body = []
                return (refused,)
            self.body.append(request.request_body.body)
            if not request.request_body.end_of_stream:
                return ()  # buffered mode sends the body whole; full duplex waits for the rest before answering
            return await self.pick(end_of_stream=True)
        if kind == "request_trailers":  # full duplex: trailers end the body
            replies = list(await self.pick(end_of_stream=False)) if self.decision is None else []
            return [*replies, PASS_THROUGH[kind]]
        if kind == "response_headers":
            return (self.response_headers(request),)
        return (PASS_THROUGH[kind],)

    def request_headers(self, request: ProcessingRequest) -> Iterable[ProcessingResponse]:
        self.exchange.saw_request_headers(request.request_headers)
        if request.HasField("protocol_config"):
            self.full_duplex = request.protocol_config.request_body_mode == FULL_DUPLEX
            if self.full_duplex:
                self.exchange.mode = PICKER_MODES[PickerBodyMode.FULL_DUPLEX_STREAMED]
        self.headers = {
            k: v.decode("latin-1") for k, v in header_values(request.request_headers, _CONTROL_HEADERS).items()
        }
        self.subset = protocol.subset_hint(request)
        if request.request_headers.end_of_stream:  # no body to read: any candidate will do
            return (self.pick_without_body(),)
        if (refused := self.hold.before_body(request.request_headers)) is not None:
            return (refused,)
        return () if self.full_duplex else (self._headers_reply(CONTINUE_REQUEST_HEADERS),)

    def _candidates(self) -> tuple[PoolState, Sequence[Candidate]]:
        pool = self.pool
        if pool is None:
            raise SchedulingError(503, "unknown_pool", f"InferencePool {self.pool_key} is not known to the picker")
        candidates: Sequence[Candidate] = self.picker.candidates(pool)
        if self.subset is not None:
            candidates = restrict(candidates, self.subset)
            if not candidates:
                raise SchedulingError(503, "no_endpoints", "no endpoint of the pool is in the data plane's subset hint")
        return pool, candidates

    def pick_without_body(self) -> ProcessingResponse:
        try:
            _, candidates = self._candidates()
            if not candidates:
                raise SchedulingError(503, "no_endpoints", "no ready endpoint in the pool")
        except SchedulingError as error:
            return self._refuse(error)
        return self._headers_reply(protocol.routed(random.choice(candidates).key, "request_headers"))

    def _headers_reply(self, reply: ProcessingResponse) -> ProcessingResponse:
        """The fewest messages: when nothing is to be done with the answer (no response plugin, no scores asked
        for), the reply to the request headers (where Envoy honours a mode override) turns the response phase off.
        Full-duplex streams keep their mode."""
        needs_answer = self.pool is not None and bool(self.pool.config.response_plugins)
        needs_answer = needs_answer or (self.picker.debug and self.headers.get(PICKER_DEBUG_HEADER) == "true")
        if needs_answer or self.full_duplex:
            return reply
        overridden = ProcessingResponse()
        overridden.CopyFrom(reply)
        overridden.mode_override.CopyFrom(PICKER_MODE_WITHOUT_RESPONSE)
        return overridden

    async def pick(self, end_of_stream: bool) -> Iterable[ProcessingResponse]:
        started = time.perf_counter()
        body = b"".join(self.body)
        self.body = []
        try:
            request, rewritten = await off_the_loop(len(body), partial(self._parse, body))
            self.hold.release()  # what the pick keeps of the body is its prompt (the rewrite goes out at once)
            pool, candidates = self._candidates()
            decision = schedule(pool.config, request, candidates, self.picker.clock())
        except BadRequestBody as bad:
            return (protocol.refusal(400, bad.message, bad.code),)
        except SchedulingError as error:
            return (self._refuse(error),)
        self.decision = decision
        pool.last_decision = decision
        PICK_SECONDS.labels(self.pool_key).observe(time.perf_counter() - started)
        PICKS.labels(self.pool_key, "success").inc()
        destination = ",".join(decision.destinations())
        if not self.full_duplex:
            return (protocol.routed(destination, "request_body", rewritten),)
        return [
            protocol.routed(destination, "request_headers"),
            *protocol.streamed_body(rewritten if rewritten is not None else body, end_of_stream),
        ]

    def _parse(self, body: bytes) -> tuple[PickRequest, bytes | None]:
        payload, model = parse_request_body(body)
        rewritten = None
        target = self.headers.get(MODEL_REWRITE_HEADER)
        if target and target != model:
            payload["model"] = model = target
            rewritten = orjson.dumps(payload)
        objective = self.headers.get(OBJECTIVE_HEADER)
        priority = self.pool.objectives.get(objective, 0) if self.pool is not None and objective else 0
        return PickRequest(model, protocol.prompt_of(payload), self.headers, priority), rewritten

    def _refuse(self, error: SchedulingError) -> ProcessingResponse:
        PICKS.labels(self.pool_key, error.code).inc()
        log.debug("pool %s: %s", self.pool_key, error.message)
        return protocol.refusal(error.status, error.message, error.code)

    def response_headers(self, request: ProcessingRequest) -> ProcessingResponse:
        added: list[tuple[str, str]] = []
        if self.pool is not None:
            served = protocol.served_endpoint(request)
            for plugin in self.pool.config.response_plugins:
                added.extend(plugin.response_headers(served))
        if self.picker.debug and self.decision is not None and self.headers.get(PICKER_DEBUG_HEADER) == "true":
            added.append((PICKER_SCORES_HEADER, orjson.dumps(self.decision.explain()).decode()))
        return protocol.response_headers(added) if added else PASS_THROUGH["response_headers"]
