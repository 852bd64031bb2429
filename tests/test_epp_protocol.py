"""The Endpoint Picker protocol over real gRPC: the control plane's ext_proc server, driven like Envoy drives it.

These streams are written by the test (not by Envoy) so that every message can be checked, including the ones
Envoy only sends in setups the e2e tests do not build (a subset hint from another filter). e2e/test_picker.py
covers the same picker behind real Envoy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TypedDict

import grpc
import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from testing.manifests import CONFORMANCE_PICKER_CONFIG, inference_objective, inference_pool, pod
from testing.ports import free_port
from translators.ir import TranslateOptions
from translators.loader import load_texts
from xds_server.control_plane import ControlPlane
from xds_server.epp.picker import EndpointPicker
from xds_server.serve import start_extproc
from xds_server.xds.cache import SnapshotCache
from xds_server.xds.streams import ClientRegistry

Mode = processing_mode_pb2.ProcessingMode
POD_IPS = ("127.0.61.1", "127.0.61.2", "127.0.61.3")


def manifests() -> str:
    pods = "---".join(pod(f"llama-{i}", ip, {"app": "llama"}) for i, ip in enumerate(POD_IPS))
    conformance_pods = pod("conf-0", "127.0.61.9", {"app": "conformance"})
    return "---".join(
        [
            inference_pool("llama", 8000),
            pods,
            inference_objective("batch", "llama", -1),
            inference_objective("interactive", "llama", 5),
            inference_pool("conformance", 3000, config=CONFORMANCE_PICKER_CONFIG),
            conformance_pods,
            inference_pool("empty", 8000),
        ]
    )


PickerChannel = tuple[grpc.aio.Channel, EndpointPicker]  # the picker_channel fixture's value


@pytest.fixture
async def picker_channel() -> AsyncIterator[PickerChannel]:
    options = TranslateOptions(extproc_port=free_port())
    control_plane = ControlPlane(SnapshotCache(), ClientRegistry(), options)
    control_plane.apply(control_plane.build(load_texts([("pools.yaml", manifests())])))
    server, picker = await start_extproc(control_plane, options)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{options.extproc_port}")
    yield channel, picker
    await channel.close()
    await picker.scraper.close()
    await server.stop(grace=None)


def headers(
    mode: int = Mode.BUFFERED, end_of_stream: bool = False, metadata: dict[str, list[str]] | None = None, **more: str
) -> pb.ProcessingRequest:
    values = {":method": "POST", ":path": "/v1/chat/completions", **{k.replace("_", "-"): v for k, v in more.items()}}
    request = pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in values.items()]
            ),
            end_of_stream=end_of_stream,
        ),
        protocol_config=pb.ProtocolConfiguration(request_body_mode=mode),
    )
    for namespace, values_list in (metadata or {}).items():
        request.metadata_context.filter_metadata[namespace].update(
            {"x-gateway-destination-endpoint-subset": values_list}
        )
    return request


def body(payload: bytes, end_of_stream: bool = True) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=payload, end_of_stream=end_of_stream))


def chat(prompt: str = "Hi. Say this is a test", model: str = "llama") -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": prompt}]})


async def exchange(
    channel: grpc.aio.Channel, pool: str, requests: Sequence[pb.ProcessingRequest], replies: int
) -> list[pb.ProcessingResponse]:
    stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)
    call = stub.Process(metadata=(("x-inference-pool", pool),))
    for request in requests:
        await call.write(request)
    answers = [await call.read() for _ in range(replies)]
    await call.done_writing()
    return answers


def destination(common: pb.CommonResponse) -> str:
    values: dict[str, str] = {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}
    return values["x-gateway-destination-endpoint"]


def lb_metadata(reply: pb.ProcessingResponse) -> str:
    fields = reply.dynamic_metadata.fields["envoy.lb"].struct_value.fields
    endpoint: str = fields["x-gateway-destination-endpoint"].string_value
    return endpoint


async def test_buffered_body_reply_carries_the_pick_as_header_and_metadata(picker_channel: PickerChannel) -> None:
    channel, _ = picker_channel
    first, reply = await exchange(channel, "default/llama", [headers(), body(chat())], 2)
    assert first.WhichOneof("response") == "request_headers" and not first.request_headers.HasField("response")
    common = reply.request_body.response
    picked = destination(common)
    # The pick, then fallbacks for retries: every other endpoint of this 3-pod pool, each once.
    assert sorted(picked.split(",")) == sorted(f"{ip}:8000" for ip in POD_IPS)
    assert lb_metadata(reply) == picked
    assert common.clear_route_cache
    assert not common.HasField("body_mutation")  # nothing rewritten: the body goes on untouched


async def test_full_duplex_answers_headers_after_the_whole_body_then_streams_it_back_in_chunks(
    picker_channel: PickerChannel,
) -> None:
    channel, _ = picker_channel
    payload = chat("x" * 150_000)
    parts = [payload[:70_000], payload[70_000:]]
    replies = await exchange(
        channel,
        "default/llama",
        [headers(Mode.FULL_DUPLEX_STREAMED), body(parts[0], end_of_stream=False), body(parts[1])],
        4,
    )
    assert replies[0].WhichOneof("response") == "request_headers"
    picked = destination(replies[0].request_headers.response)
    assert lb_metadata(replies[0]) == picked
    chunks = [r.request_body.response.body_mutation.streamed_response for r in replies[1:]]
    assert all(len(c.body) <= 62_000 for c in chunks)
    assert b"".join(c.body for c in chunks) == payload
    assert [c.end_of_stream for c in chunks] == [False, False, True]


async def test_model_rewrite_header_rewrites_the_body_and_its_length(picker_channel: PickerChannel) -> None:
    channel, _ = picker_channel
    _, reply = await exchange(
        channel, "default/llama", [headers(x_gateway_model_name_rewrite="llama-v2"), body(chat())], 2
    )
    common = reply.request_body.response
    assert orjson.loads(common.body_mutation.body)["model"] == "llama-v2"
    lengths = [h.header.raw_value for h in common.header_mutation.set_headers if h.header.key == "content-length"]
    assert lengths == [str(len(common.body_mutation.body)).encode()]


class MoreHeaders(TypedDict, total=False):
    """The keywords a case below adds to `headers`; typed, so that `**more` is not read as its other parameters."""

    x_gateway_inference_objective: str


@pytest.mark.parametrize(
    ("pool", "request_body", "more", "status"),
    [
        ("default/llama", b"{not json", {}, 400),
        ("default/llama", orjson.dumps({"messages": [{"role": "user", "content": "hi"}]}), {}, 400),
        ("default/llama", orjson.dumps({"model": "llama"}), {}, 400),
        ("default/empty", chat(), {}, 503),
        ("default/unknown", chat(), {}, 503),
        ("default/llama", chat(), {"x_gateway_inference_objective": "batch"}, 429),  # no fresh metrics: saturated
    ],
)
async def test_errors_are_openai_json_immediate_responses(
    picker_channel: PickerChannel, pool: str, request_body: bytes, more: MoreHeaders, status: int
) -> None:
    channel, _ = picker_channel
    replies = await exchange(channel, pool, [headers(**more), body(request_body)], 2)
    immediate = replies[1].immediate_response
    assert immediate.status.code == status
    assert set(orjson.loads(immediate.body)["error"]) == {"message", "type", "code"}


async def test_a_known_objective_with_positive_priority_is_scheduled_on_the_same_pool(
    picker_channel: PickerChannel,
) -> None:
    channel, _ = picker_channel
    _, reply = await exchange(
        channel, "default/llama", [headers(x_gateway_inference_objective="interactive"), body(chat())], 2
    )
    assert destination(reply.request_body.response).endswith(":8000")


async def test_subset_hint_restricts_the_choice_and_an_empty_match_is_503(picker_channel: PickerChannel) -> None:
    channel, _ = picker_channel
    hint = {"envoy.lb.subset_hint": [f"{POD_IPS[1]}:8000"]}
    for _ in range(5):
        _, reply = await exchange(channel, "default/llama", [headers(metadata=hint), body(chat())], 2)
        assert destination(reply.request_body.response) == f"{POD_IPS[1]}:8000"
    nowhere = {"envoy.lb.subset_hint": ["10.9.9.9"]}
    _, refused = await exchange(channel, "default/llama", [headers(metadata=nowhere), body(chat())], 2)
    assert refused.immediate_response.status.code == 503


async def test_bodiless_request_is_routed_at_once(picker_channel: PickerChannel) -> None:
    channel, _ = picker_channel
    (reply,) = await exchange(channel, "default/llama", [headers(end_of_stream=True)], 1)
    assert destination(reply.request_headers.response).endswith(":8000")


async def test_mounted_config_runs_the_conformance_plugins(picker_channel: PickerChannel) -> None:
    channel, picker = picker_channel
    assert picker.pools["default/conformance"].config.origin.startswith("ConfigMap default/conformance-plugins")
    served = pb.ProcessingRequest(response_headers=pb.HttpHeaders())
    served.metadata_context.filter_metadata["envoy.lb"].update(
        {"x-gateway-destination-endpoint-served": "127.0.61.9:3000"}
    )
    replies = await exchange(
        channel,
        "default/conformance",
        [headers(test_epp_endpoint_selection="127.0.61.9"), body(chat()), served],
        3,
    )
    assert destination(replies[1].request_body.response) == "127.0.61.9:3000"
    echoed = {
        h.header.key: h.header.raw_value for h in replies[2].response_headers.response.header_mutation.set_headers
    }
    assert echoed == {"x-conformance-test-served-endpoint": b"127.0.61.9:3000"}
    # Without the selection header the conformance filter keeps nothing: the scheduler fails with 429.
    _, refused = await exchange(channel, "default/conformance", [headers(), body(chat())], 2)
    assert refused.immediate_response.status.code == 429


async def test_debug_header_returns_the_scores_of_the_pick_only_when_enabled(picker_channel: PickerChannel) -> None:
    channel, picker = picker_channel
    # Off by default: the header is ignored, the response phase turned off (no scores can follow), the stream ended.
    ignored = await exchange(channel, "default/llama", [headers(x_gateway_picker_debug="true"), body(chat())], 2)
    assert ignored[0].mode_override.response_header_mode == Mode.SKIP
    picker.debug = True  # as `serve --picker-debug` starts it
    replies = await exchange(
        channel,
        "default/llama",
        [headers(x_gateway_picker_debug="true"), body(chat()), pb.ProcessingRequest(response_headers=pb.HttpHeaders())],
        3,
    )
    header = replies[2].response_headers.response.header_mutation.set_headers[0].header
    assert header.key == "x-gateway-picker-scores"
    explained = orjson.loads(header.raw_value)
    sent = destination(replies[1].request_body.response).split(",")
    assert [*explained["picked"], *explained["fallbacks"]] == sent and len(explained["picked"]) == 1
    # Fallbacks are the best-scored of the others, in order.
    totals = [explained["endpoints"][key]["total"] for key in explained["fallbacks"]]
    assert totals == sorted(totals, reverse=True)
    assert set(explained["endpoints"]) == {f"{ip}:8000" for ip in POD_IPS}
    assert set(explained["weights"]) == {"queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer"}
    assert picker.pool_document("default/llama")["lastPick"]["picked"] == explained["picked"]


async def test_health_answers_the_protocol_services(picker_channel: PickerChannel) -> None:
    channel, _ = picker_channel
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "envoy.service.ext_proc.v3.ExternalProcessor", "inference-extension"):
        # The stubs' HealthStub declares no methods.
        answer = await stub.Check(health_pb2.HealthCheckRequest(service=service))  # type: ignore[attr-defined]
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_the_picker_ends_its_stream_once_nothing_more_will_come(picker_channel: PickerChannel) -> None:
    """Rather than wait for Envoy to cancel it (grpcio keeps native memory for every cancelled call): after the pick
    when the response phase is off, after the response headers when they were asked for."""
    channel, picker = picker_channel
    stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)
    call = stub.Process(metadata=(("x-inference-pool", "default/llama"),))
    await call.write(headers())
    await call.read()
    await call.write(body(chat()))
    assert (await call.read()).HasField("request_body")
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK

    picker.debug = True  # the scores asked for: the response headers come, and the stream ends after them
    call = stub.Process(metadata=(("x-inference-pool", "default/llama"),))
    for request in (headers(x_gateway_picker_debug="true"), body(chat())):
        await call.write(request)
        await call.read()
    await call.write(pb.ProcessingRequest(response_headers=pb.HttpHeaders()))
    assert (await call.read()).HasField("response_headers")
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK
