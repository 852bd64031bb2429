"""The model router's decisions per message, its tables, its SSE parser, and the ext_proc server's dispatch."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc
import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from google.protobuf import struct_pb2
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from testing.ports import free_port
from translators.gatewayapi import translate
from translators.ir import TranslateOptions
from translators.loader import load_texts
from translators.runtime import runtime_tables
from translators.xds.names import BACKEND_ATTRIBUTE, EXTPROC_ATTRIBUTES_KEY, PICKER_POOL_METADATA
from xds_server.control_plane import ControlPlane
from xds_server.extproc.protocol import PASS_THROUGH, Mode
from xds_server.extproc.router import RouterStream, RouterTables
from xds_server.extproc.sse import SseParser, Usage
from xds_server.serve import start_extproc
from xds_server.xds.cache import SnapshotCache
from xds_server.xds.streams import ClientRegistry

MANIFESTS = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: eg}
spec: {controllerName: gateway.envoyproxy.io/gatewayclass-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec: {gatewayClassName: eg, listeners: [{name: http, protocol: HTTP, port: 80}]}
---
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIGatewayRoute
metadata: {name: everywhere, creationTimestamp: "2025-01-02T03:04:05Z"}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{headers: [{type: Exact, name: x-ai-eg-model, value: model-a}]}]
    backendRefs: [{name: a}]
  - matches: [{headers: [{type: RegularExpression, name: x-ai-eg-model, value: "llama-.*"}]}]
    backendRefs: [{name: a}]
---
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIGatewayRoute
metadata: {name: team}
spec:
  parentRefs: [{name: gw}]
  hostnames: ["*.team.example"]
  rules:
  - matches: [{headers: [{type: Exact, name: x-ai-eg-model, value: model-t}]}]
    backendRefs: [{name: a}]
---
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIServiceBackend
metadata: {name: a}
spec: {schema: {name: OpenAI}, backendRef: {group: gateway.envoyproxy.io, kind: Backend, name: a}}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {name: a}
spec: {endpoints: [{ip: {address: 127.0.0.1, port: 8080}}]}
"""
GATEWAY = "default/gw"
BACKEND = "aiservicebackend/default/a"


@pytest.fixture(scope="module")
def tables() -> RouterTables:
    resources = load_texts([("manifests.yaml", MANIFESTS)])
    return RouterTables(runtime_tables(translate(resources)))


def headers(*pairs: tuple[str, str], end_of_stream: bool = False) -> pb.HttpHeaders:
    values = [base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
    return pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=values), end_of_stream=end_of_stream)


def request_headers(path: str, authority: str = "gw.local", end_of_stream: bool = False) -> pb.ProcessingRequest:
    found = headers((":method", "POST"), (":path", path), (":authority", authority), end_of_stream=end_of_stream)
    return pb.ProcessingRequest(request_headers=found)


def request_body(body: bytes) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True))


def response_headers(status: int, content_type: str, *extra: tuple[str, str]) -> pb.ProcessingRequest:
    attributes = struct_pb2.Struct()
    attributes.update({BACKEND_ATTRIBUTE: BACKEND})
    found = headers((":status", str(status)), ("content-type", content_type), *extra)
    return pb.ProcessingRequest(response_headers=found, attributes={EXTPROC_ATTRIBUTES_KEY: attributes})


def response_body(body: bytes, end_of_stream: bool) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=body, end_of_stream=end_of_stream))


def immediate(response: pb.ProcessingResponse) -> tuple[int, dict[str, object], dict[str, bytes]]:
    assert response.WhichOneof("response") == "immediate_response", response
    answer = response.immediate_response
    set_headers = {h.header.key: h.header.raw_value for h in answer.headers.set_headers}
    return answer.status.code, orjson.loads(answer.body), set_headers


def metadata(response: pb.ProcessingResponse) -> dict[str, object]:
    fields = response.dynamic_metadata.fields["io.envoy.ai_gateway"].struct_value
    return {k: (v.string_value or v.number_value) for k, v in fields.fields.items()}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def routed(tables: RouterTables, body: bytes, clock: Clock | None = None) -> RouterStream:
    stream = RouterStream(tables, GATEWAY, clock or Clock())
    assert stream.process(request_headers("/v1/chat/completions")).WhichOneof("response") == "request_headers"
    reply = stream.process(request_body(body))
    assert reply.WhichOneof("response") == "request_body", reply
    return stream


# --- request path ---


def test_models_lists_exact_matches_of_the_gateway_scoped_by_host(tables: RouterTables) -> None:
    def listed(authority: str, gateway: str = GATEWAY) -> list[object]:
        stream = RouterStream(tables, gateway)
        status, body, set_headers = immediate(stream.process(request_headers("/v1/models?x=1", authority, True)))
        assert status == 200 and set_headers["content-type"] == b"application/json"
        assert body["object"] == "list"
        data = body["data"]
        assert isinstance(data, list)
        return data

    everywhere = listed("gw.local")
    assert [m["id"] for m in everywhere] == ["model-a"]  # regex matches are not listable
    assert everywhere[0] == {"id": "model-a", "object": "model", "created": 1735787045, "owned_by": "xds-server"}
    assert [m["id"] for m in listed("a.team.example:8080")] == ["model-t", "model-a"]  # own routes first
    assert [m["id"] for m in listed("team.example")] == ["model-a"]  # "*.team.example" needs a label before it
    assert listed("gw.local", gateway="default/other") == []


@pytest.mark.parametrize("path", ["/v1/responses", "/v2/chat/completions", "/", "/v1/chat/completions/"])
def test_paths_the_router_does_not_serve_are_404_json(tables: RouterTables, path: str) -> None:
    status, body, set_headers = immediate(RouterStream(tables, GATEWAY).process(request_headers(path)))
    assert status == 404 and set_headers["content-type"] == b"application/json"
    assert body == {
        "error": {"message": f"unsupported path: {path}", "type": "invalid_request_error", "code": "unsupported_path"}
    }


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"model": "model-a"', "invalid_json"),
        (b"", "invalid_json"),
        (b'["model-a"]', "invalid_json"),
        (b'{"messages": []}', "missing_model"),
        (b'{"model": ""}', "missing_model"),
        (b'{"model": null}', "missing_model"),
        (b'{"model": 4}', "invalid_model"),
        (b'{"model": ["model-a"]}', "invalid_model"),
        (b'{"model": "model-a\\r\\nx-evil: 1"}', "invalid_model"),
    ],
)
def test_bodies_without_a_usable_model_are_400_json(tables: RouterTables, body: bytes, code: str) -> None:
    stream = RouterStream(tables, GATEWAY)
    stream.process(request_headers("/v1/completions"))
    status, answer, _ = immediate(stream.process(request_body(body)))
    error = answer["error"]
    assert status == 400 and isinstance(error, dict)
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]


def test_a_request_without_a_body_is_400_at_once(tables: RouterTables) -> None:
    reply = RouterStream(tables, GATEWAY).process(request_headers("/v1/embeddings", end_of_stream=True))
    status, body, _ = immediate(reply)
    assert status == 400 and body["error"]["code"] == "missing_model"  # type: ignore[index]


@pytest.mark.parametrize("model", ["model-a", "not-configured", "llama-3 \u00e9"])
def test_the_body_model_is_set_as_the_routing_header_and_the_route_chosen_again(
    tables: RouterTables, model: str
) -> None:
    stream = RouterStream(tables, GATEWAY)
    stream.process(request_headers("/v1/chat/completions"))
    reply = stream.process(request_body(orjson.dumps({"model": model, "stream": True})))
    common = reply.request_body.response
    [mutation] = common.header_mutation.set_headers
    assert (mutation.header.key, mutation.header.raw_value) == ("x-ai-eg-model", model.encode())
    assert mutation.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    assert common.clear_route_cache
    assert metadata(reply) == {"model": model}


def test_route_replies_are_shared_for_configured_models_only(tables: RouterTables) -> None:
    assert tables.route_reply("model-a") is tables.route_reply("model-a")
    assert tables.route_reply("made-up") is not tables.route_reply("made-up")


# --- response path ---


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def labels(model: str, response_model: str, operation: str = "chat", error_type: str = "") -> dict[str, str]:
    return {
        "gen_ai_operation_name": operation,
        "gen_ai_request_model": model,
        "gen_ai_response_model": response_model,
        "backend": BACKEND,
        "error_type": error_type,
    }


def test_a_json_answer_is_buffered_and_its_usage_counted(tables: RouterTables) -> None:
    clock = Clock()
    stream = routed(tables, b'{"model": "model-a"}', clock)
    reply = stream.process(response_headers(200, "application/json"))
    assert reply.mode_override.response_body_mode == Mode.BUFFERED
    before = sample("gen_ai_client_token_usage_sum", **labels("model-a", "model-a-0613"), gen_ai_token_type="output")
    clock.now += 0.5
    usage = {"prompt_tokens": 7, "completion_tokens": 11, "total_tokens": 18}
    reply = stream.process(response_body(orjson.dumps({"model": "model-a-0613", "usage": usage}), True))
    assert reply.WhichOneof("response") == "response_body"
    assert metadata(reply) == {
        "backend": BACKEND,
        "response_model": "model-a-0613",
        "input_tokens": 7,
        "output_tokens": 11,
        "total_tokens": 18,
    }
    after = sample("gen_ai_client_token_usage_sum", **labels("model-a", "model-a-0613"), gen_ai_token_type="output")
    assert after - before == 11
    assert sample("gen_ai_server_request_duration_sum", **labels("model-a", "model-a-0613")) >= 0.5


def test_an_event_stream_is_streamed_chunk_by_chunk_and_keeps_the_last_usage(tables: RouterTables) -> None:
    clock = Clock()
    stream = routed(tables, b'{"model": "model-s", "stream": true}', clock)
    reply = stream.process(response_headers(200, "text/event-stream; charset=utf-8"))
    assert reply.mode_override.response_body_mode == Mode.STREAMED
    events = (
        b'data: {"model":"model-s-1","choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
        b'data: {"model":"model-s-1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}\n\n'
        b'data: {"model":"model-s-1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":21,"total_tokens":24}}'
        b"\r\n\r\ndata: [DONE]\n\n"
    )
    for index in range(0, len(events), 7):
        clock.now += 0.25
        assert stream.process(response_body(events[index : index + 7], False)).WhichOneof("response") == (
            "response_body"
        )
    ttft_before = sample("gen_ai_server_time_to_first_token_count", **labels("model-s", "model-s-1"))
    final = stream.process(response_body(b"", True))
    assert metadata(final) == {
        "backend": BACKEND,
        "response_model": "model-s-1",
        "input_tokens": 3,
        "output_tokens": 21,
        "total_tokens": 24,
    }
    assert sample("gen_ai_server_time_to_first_token_count", **labels("model-s", "model-s-1")) == ttft_before + 1
    assert sample("gen_ai_server_time_to_first_token_sum", **labels("model-s", "model-s-1")) >= 0.25
    assert sample("gen_ai_server_time_per_output_token_count", **labels("model-s", "model-s-1")) >= 1


@pytest.mark.parametrize(
    ("status", "content_type", "extra"),
    [
        (500, "application/json", ()),
        (200, "text/plain", ()),
        (200, "application/json", (("content-encoding", "gzip"),)),
    ],
)
def test_other_answers_pass_unread_and_finish_at_their_headers(
    tables: RouterTables, status: int, content_type: str, extra: tuple[tuple[str, str], ...]
) -> None:
    stream = routed(tables, b'{"model": "model-e"}')
    reply = stream.process(response_headers(status, content_type, *extra))
    assert not reply.HasField("mode_override")
    assert metadata(reply) == {"backend": BACKEND}
    error_type = "" if status == 200 else str(status)
    assert sample("gen_ai_server_request_duration_count", **labels("model-e", "", error_type=error_type)) >= 1


def test_a_reply_that_no_backend_gave_is_not_measured(tables: RouterTables) -> None:
    stream = routed(tables, b'{"model": "unknown-model"}')
    no_backend = pb.ProcessingRequest(response_headers=headers((":status", "404")))  # the catch-all route
    reply = stream.process(no_backend)
    assert reply.WhichOneof("response") == "response_headers" and metadata(reply) == {}
    assert not stream.finished


# --- SSE parsing ---

usages = st.fixed_dictionaries(
    {"prompt_tokens": st.integers(0, 10**6), "completion_tokens": st.integers(0, 10**6)},
    optional={"total_tokens": st.integers(0, 10**6)},
)
chunks = st.fixed_dictionaries(
    {"model": st.sampled_from(["m", "m-2024"]), "choices": st.just([])},
    optional={"usage": st.none() | usages, "note": st.text(max_size=20)},
)


def sse_stream(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A valid event stream (with comments, other fields, LF or CRLF endings) and the data of its events."""
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    stream = b""
    expected: list[bytes] = []
    for chunk in draw(st.lists(chunks, max_size=8)):
        data = orjson.dumps(chunk)
        if draw(st.booleans()):
            stream += b": keep-alive" + newline
        if draw(st.booleans()):
            stream += b"event: message" + newline + b"id: 7" + newline
        separator = draw(st.sampled_from([b"data: ", b"data:"]))
        stream += separator + data + newline + newline
        expected.append(data)
    if draw(st.booleans()):
        stream += b"data: [DONE]" + newline + newline
        expected.append(b"[DONE]")
    return stream, expected


@st.composite
def split_streams(draw: st.DrawFn) -> tuple[bytes, list[bytes], list[bytes]]:
    stream, expected = sse_stream(draw)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    return stream, expected, pieces


def last_usage(events: list[bytes]) -> dict[str, int] | None:
    found = None
    for data in events:
        if data != b"[DONE]" and isinstance(usage := orjson.loads(data).get("usage"), dict):
            found = usage
    return found


@given(split_streams())
def test_any_split_of_an_event_stream_gives_the_same_events_and_last_usage(
    case: tuple[bytes, list[bytes], list[bytes]],
) -> None:
    _, expected, pieces = case
    parser = SseParser()
    usage = Usage()
    events: list[bytes] = []
    for piece in pieces:
        events += parser.feed(piece)
    events += parser.finish()
    assert events == expected
    for data in events:
        usage.read_event(data)
    want = last_usage(expected)
    if want is None:
        assert not usage.known
    else:
        assert (usage.input_tokens, usage.output_tokens) == (want["prompt_tokens"], want["completion_tokens"])
        assert usage.total_tokens == want.get("total_tokens", want["prompt_tokens"] + want["completion_tokens"])
    if expected and expected != [b"[DONE]"]:
        assert usage.response_model in ("m", "m-2024")


def test_multi_line_data_and_an_unterminated_last_event() -> None:
    parser = SseParser()
    assert parser.feed(b"data: a\ndata: b\n\ndata:") == [b"a\nb"]
    assert parser.feed(b" tail") == []
    assert parser.finish() == [b"tail"]
    assert parser.finish() == []


# --- the gRPC server: dispatch by stream metadata ---


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    port = free_port()
    control_plane = ControlPlane(SnapshotCache(), ClientRegistry())
    resources = load_texts([("manifests.yaml", MANIFESTS)])
    control_plane.apply(control_plane.build(resources))
    server, picker = await start_extproc(control_plane, TranslateOptions(extproc_port=port))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    await picker.scraper.close()
    await server.stop(grace=None)


def requests(*messages: pb.ProcessingRequest) -> Iterator[pb.ProcessingRequest]:
    yield from messages


async def test_streams_are_dispatched_by_their_initial_metadata(channel: grpc.aio.Channel) -> None:
    stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)
    models = request_headers("/v1/models", end_of_stream=True)
    [answer] = [r async for r in stub.Process(requests(models), metadata=(("x-ai-eg-gateway", GATEWAY),))]
    assert [m["id"] for m in immediate(answer)[1]["data"]] == ["model-a"]  # type: ignore[attr-defined]

    # The picker's stream: headers pass, and the body is answered by the picker (this pool is unknown to it).
    picker = (request_headers("/v1/chat/completions"), request_body(b'{"model": "x", "prompt": "hi"}'))
    answers = [r async for r in stub.Process(requests(*picker), metadata=((PICKER_POOL_METADATA, "default/pool"),))]
    assert answers[0] == PASS_THROUGH["request_headers"]
    assert answers[1].immediate_response.details == "endpoint_picker_unknown_pool"
