"""The budget of request-body bytes the per-request services hold (xds_server.extproc.budget): its arithmetic, the
memory given back after large bodies, parsing off the event loop, and both services refusing over real gRPC (the
upstream settings of a backend with a modelNameOverride, the embedded picker of a pool) before any body is sent."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence

import grpc
import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from google.protobuf import struct_pb2

from testing.manifests import ai_gateway_route, ai_service_backend, gateway, inference_pool, pod
from testing.ports import free_port
from translators.ir import TranslateOptions
from translators.loader import load_texts
from translators.xds.names import (
    BACKEND_ATTRIBUTE,
    EXTPROC_ATTRIBUTES_KEY,
    PICKER_POOL_METADATA,
    RULE_ATTRIBUTE,
    UPSTREAM_SETTINGS_METADATA,
)
from xds_server.control_plane import ControlPlane
from xds_server.extproc.budget import OFF_THE_LOOP_BYTES, TRIM_AFTER_BYTES, BodyBudget, off_the_loop
from xds_server.serve import start_extproc
from xds_server.xds.cache import SnapshotCache
from xds_server.xds.streams import ClientRegistry

RULE = "aigatewayroute/default/big/rule/0"
BACKEND = "aiservicebackend/default/big"
ROUTE = ai_gateway_route("big", {"big": "big"}, model_name_overrides={"big": "pinned"})


def _headers_of(refusal: pb.ProcessingResponse) -> dict[str, bytes]:
    return {o.header.key: o.header.raw_value for o in refusal.immediate_response.headers.set_headers}


def _error(refusal: pb.ProcessingResponse) -> tuple[int, str]:
    answer = refusal.immediate_response
    return answer.status.code, orjson.loads(answer.body)["error"]["code"]


def _request_headers(content_length: int | None, **attributes: str) -> pb.ProcessingRequest:
    values = [(":method", "POST"), (":path", "/v1/chat/completions")]
    if content_length is not None:
        values.append(("content-length", str(content_length)))
    headers = pb.HttpHeaders(
        headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in values])
    )
    request = pb.ProcessingRequest(request_headers=headers)
    if attributes:
        found = struct_pb2.Struct()
        found.update(attributes)
        request.attributes[EXTPROC_ATTRIBUTES_KEY].CopyFrom(found)
    return request


# --- the arithmetic ----------------------------------------------------------------------------------------------


async def test_a_body_that_fits_is_held_until_released_and_the_next_one_waits_its_turn() -> None:
    budget = BodyBudget(100, trim=None)
    first, second = budget.hold("upstream_settings"), budget.hold("upstream_settings")
    assert first.before_body(_request_headers(60).request_headers) is None
    assert budget.held == 60
    refusal = second.before_body(_request_headers(60).request_headers)
    assert refusal is not None
    assert _error(refusal) == (503, "server_overloaded")
    assert _headers_of(refusal)["retry-after"] == b"1"
    assert refusal.immediate_response.details == "upstream_settings_server_overloaded"
    first.release()
    first.release()  # again: nothing more is given back
    assert budget.held == 0
    assert second.before_body(_request_headers(60).request_headers) is None
    assert budget.held == 60


async def test_a_body_larger_than_the_whole_budget_is_413_as_no_retry_can_help() -> None:
    budget = BodyBudget(100, trim=None)
    refusal = budget.hold("endpoint_picker").before_body(_request_headers(101).request_headers)
    assert refusal is not None
    assert _error(refusal) == (413, "request_too_large")
    assert "retry-after" not in _headers_of(refusal)
    assert budget.held == 0


async def test_without_a_content_length_the_bytes_are_taken_as_they_arrive() -> None:
    budget = BodyBudget(100, trim=None)
    hold = budget.hold("endpoint_picker")
    assert hold.before_body(_request_headers(None).request_headers) is None
    assert budget.held == 0
    assert hold.arrived(40) is None
    assert hold.arrived(40) is None
    assert budget.held == 80
    refusal = hold.arrived(40)  # 120 in all
    assert refusal is not None and _error(refusal) == (413, "request_too_large")
    hold.release()
    assert budget.held == 0


async def test_a_declared_length_covers_its_body_and_more_than_declared_is_taken_too() -> None:
    budget = BodyBudget(100, trim=None)
    hold = budget.hold("upstream_settings")
    assert hold.before_body(_request_headers(50).request_headers) is None
    assert hold.arrived(50) is None
    assert budget.held == 50
    assert hold.arrived(10) is None
    assert budget.held == 60


async def test_memory_is_given_back_once_after_streams_with_large_bodies_end_and_not_for_small_ones() -> None:
    trims: list[int] = []
    budget = BodyBudget(2 * TRIM_AFTER_BYTES, trim=lambda: trims.append(threading.get_ident()), trim_delay=0.01)
    for _ in range(2 * TRIM_AFTER_BYTES // 500_000):  # small bodies, however many, are never worth a trim
        small = budget.hold("upstream_settings")
        small.arrived(500_000)
        small.close()
    large = [budget.hold("upstream_settings") for _ in range(2)]
    for hold in large:
        hold.arrived(TRIM_AFTER_BYTES)
        hold.release()  # answered, but its stream goes on (its messages are still referenced): no trim yet
    await asyncio.sleep(0.05)
    assert trims == []
    for hold in large:  # both streams end within the delay: one trim
        hold.close()
        hold.close()
    for _ in range(100):
        if trims:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert len(trims) == 1
    assert trims[0] != threading.get_ident()  # never on the event loop
    assert budget.held == 0


async def test_a_large_body_is_parsed_in_a_worker_thread_and_a_small_one_on_the_loop() -> None:
    loop_thread = threading.get_ident()
    assert await off_the_loop(OFF_THE_LOOP_BYTES - 1, threading.get_ident) == loop_thread
    assert await off_the_loop(OFF_THE_LOOP_BYTES, threading.get_ident) != loop_thread


# --- the services over real gRPC ---------------------------------------------------------------------------------


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    options = TranslateOptions(extproc_port=free_port())
    control_plane = ControlPlane(SnapshotCache(), ClientRegistry(), options)
    documents = [
        gateway([8080]),
        ROUTE,
        ai_service_backend("big", "127.0.0.1", 9),
        inference_pool("llama", 8000),
        pod("llama-0", "127.0.62.1", {"app": "llama"}),
    ]
    control_plane.apply(control_plane.build(load_texts([("budget.yaml", "---".join(documents))])))
    server, picker = await start_extproc(control_plane, options, budget=BodyBudget(100, trim=None))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{options.extproc_port}") as opened:
        yield opened
    await picker.scraper.close()
    await server.stop(grace=None)


ExtProcCall = grpc.aio.StreamStreamCall[pb.ProcessingRequest, pb.ProcessingResponse]


async def _open(channel: grpc.aio.Channel, metadata: Sequence[tuple[str, str]]) -> ExtProcCall:
    call: ExtProcCall = external_processor_pb2_grpc.ExternalProcessorStub(channel).Process(metadata=metadata)
    return call


async def _read(call: ExtProcCall) -> pb.ProcessingResponse:
    """The next reply, which the service must send before it ends the stream."""
    reply = await call.read()
    assert reply is not grpc.aio.EOF, "the stream ended"
    return reply


async def test_the_upstream_settings_refuse_a_body_past_the_budget_before_it_is_sent(channel: grpc.aio.Channel) -> None:
    settings = ((UPSTREAM_SETTINGS_METADATA, "1"),)
    attributes = {RULE_ATTRIBUTE: RULE, BACKEND_ATTRIBUTE: BACKEND}
    body = b'{"model": "big", "n": 1}'
    first = await _open(channel, settings)
    await first.write(_request_headers(80, **attributes))
    accepted = await _read(first)
    assert accepted.WhichOneof("response") == "request_headers"

    second = await _open(channel, settings)
    await second.write(_request_headers(80, **attributes))
    refused = await _read(second)
    assert _error(refused) == (503, "server_overloaded")
    await second.done_writing()

    await first.write(pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)))
    rewritten = await _read(first)
    assert orjson.loads(rewritten.request_body.response.body_mutation.body)["model"] == "pinned"
    await first.done_writing()

    third = await _open(channel, settings)  # the first gave its share back with its body's answer
    await third.write(_request_headers(80, **attributes))
    assert (await _read(third)).WhichOneof("response") == "request_headers"
    await third.done_writing()


async def test_the_picker_refuses_a_body_past_the_budget_and_a_settings_free_attempt_takes_nothing(
    channel: grpc.aio.Channel,
) -> None:
    pool = ((PICKER_POOL_METADATA, "default/llama"),)
    first = await _open(channel, pool)
    await first.write(_request_headers(90))
    assert (await _read(first)).WhichOneof("response") == "request_headers"
    second = await _open(channel, pool)
    await second.write(_request_headers(20))
    refused = await _read(second)
    assert _error(refused) == (503, "server_overloaded")
    assert refused.immediate_response.details == "endpoint_picker_server_overloaded"
    await second.done_writing()

    # An attempt whose backend has no settings gets no body: it takes nothing from the budget.
    unknown = await _open(channel, ((UPSTREAM_SETTINGS_METADATA, "1"),))
    await unknown.write(_request_headers(90, **{RULE_ATTRIBUTE: "aigatewayroute/default/other/rule/0"}))
    assert (await _read(unknown)).WhichOneof("response") == "request_headers"
    await unknown.done_writing()

    first.cancel()  # a stream that ends without its body (Envoy reset it) gives its share back too
    third = await _open(channel, pool)
    for _ in range(100):
        await third.write(_request_headers(90))
        if (await _read(third)).WhichOneof("response") == "request_headers":
            break
        third = await _open(channel, pool)
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the cancelled stream's share was never given back")
    await third.done_writing()
