"""One attempt to a backend of another API, as the upstream-settings service runs it (xds_server/extproc/providers):
the messages Envoy would send, and the replies checked field by field. The translation itself has its own goldens
(tests/test_schema_anthropic.py); end to end through Envoy: e2e/test_providers.py."""

from __future__ import annotations

import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from translators.ir import ApiKey, ApiSchema, BackendSettingsIR, SchemaIR
from xds_server.extproc.protocol import Mode
from xds_server.extproc.providers import azure_path
from xds_server.extproc.upstream import UpstreamPlan

KEY = "sk-unit-not-a-real-key"


def _headers(**values: str) -> pb.HttpHeaders:
    return pb.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k.replace("_", "-"), raw_value=v.encode()) for k, v in values.items()]
        )
    )


def _plan(schema: SchemaIR, **settings: object) -> UpstreamPlan:
    return UpstreamPlan(BackendSettingsIR("rule", "backend", schema=schema, **settings))  # type: ignore[arg-type]


def _mutation(reply: pb.ProcessingResponse) -> tuple[dict[str, str], list[str]]:
    mutation = reply.request_headers.response.header_mutation
    return {o.header.key: o.header.raw_value.decode() for o in mutation.set_headers}, list(mutation.remove_headers)


CLIENT = {
    ":path": "/v1/chat/completions",
    "authorization": "Bearer client-token",
    "accept-encoding": "gzip",
    "x-ai-eg-model": "gpt-4o-mini",
    "x-gateway-destination-endpoint": "10.0.0.1:80",
    "x-tenant": "blue",
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/chat/completions", "/openai/deployments/gpt%2F4o/chat/completions?api-version=2024-10-21"),
        ("/v1/embeddings?user=a", "/openai/deployments/gpt%2F4o/embeddings?api-version=2024-10-21&user=a"),
        ("/v1/completions", "/openai/deployments/gpt%2F4o/completions?api-version=2024-10-21"),
        ("/v1/models", None),
        ("/v1/images/generations", None),
    ],
)
def test_azure_paths_name_the_deployment_escaped_and_keep_the_clients_query(path: str, expected: str | None) -> None:
    assert azure_path(path, "gpt/4o", "2024-10-21") == expected


def test_an_azure_attempt_rewrites_the_path_and_forwards_no_client_credential_or_internal_header() -> None:
    plan = _plan(SchemaIR(ApiSchema.AZURE_OPENAI, "2024-06-01"), api_key=ApiKey("api-key", KEY))
    attempt = plan.attempt()
    assert attempt is not None
    reply = attempt.request_headers(_headers(**CLIENT))
    sets, removes = _mutation(reply)
    assert sets == {"api-key": KEY, ":path": "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-06-01"}
    assert set(removes) == {"authorization", "accept-encoding", "x-ai-eg-model", "x-gateway-destination-endpoint"}
    # Azure answers in OpenAI's format: nothing more to see of this attempt, not even the body.
    assert reply.mode_override.request_body_mode == Mode.NONE
    assert reply.mode_override.response_header_mode == Mode.SKIP


def test_the_deployment_is_the_model_name_override_when_there_is_one() -> None:
    plan = _plan(SchemaIR(ApiSchema.AZURE_OPENAI), model_name_override="prod-gpt4o")
    attempt = plan.attempt()
    assert attempt is not None
    reply = attempt.request_headers(_headers(**CLIENT))
    assert _mutation(reply)[0][":path"] == "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21"
    assert reply.mode_override.request_body_mode == Mode.BUFFERED  # the override also goes into the body


def test_a_credential_sent_as_authorization_is_not_removed_with_the_clients() -> None:
    plan = _plan(SchemaIR(ApiSchema.ANTHROPIC), api_key=ApiKey("authorization", f"Bearer {KEY}"))
    attempt = plan.attempt()
    assert attempt is not None
    sets, removes = _mutation(attempt.request_headers(_headers(**CLIENT)))
    assert sets["authorization"] == f"Bearer {KEY}" and "authorization" not in removes


def test_an_operation_the_provider_has_not_is_a_404_json_error() -> None:
    plan = _plan(SchemaIR(ApiSchema.ANTHROPIC))
    attempt = plan.attempt()
    assert attempt is not None
    reply = attempt.request_headers(_headers(**{**CLIENT, ":path": "/v1/embeddings"}))
    assert reply.immediate_response.status.code == 404
    assert orjson.loads(reply.immediate_response.body)["error"]["code"] == "unsupported_operation"


def test_an_anthropic_attempt_translates_the_request_then_streams_the_answer() -> None:
    plan = _plan(SchemaIR(ApiSchema.ANTHROPIC, "2023-06-01", "v2"), model_name_override="claude-sonnet-4-5")
    attempt = plan.attempt()
    assert attempt is not None
    sets, _ = _mutation(attempt.request_headers(_headers(**CLIENT)))
    assert sets[":path"] == "/v2/messages" and sets["anthropic-version"] == "2023-06-01"
    body = {"model": "claude", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    reply = attempt.request_body(orjson.dumps(body)).request_body.response
    sent = orjson.loads(reply.body_mutation.body)
    assert sent["model"] == "claude-sonnet-4-5" and sent["max_tokens"] > 0 and sent["stream"] is True
    [length] = [o.header.raw_value for o in reply.header_mutation.set_headers if o.header.key == "content-length"]
    assert int(length) == len(reply.body_mutation.body)
    # A 200 event stream is switched to STREAMED, and each chunk comes back as OpenAI chunks.
    headers = attempt.response_headers(_headers(**{":status": "200", "content-type": "text/event-stream"}))
    assert headers.mode_override.response_body_mode == Mode.STREAMED
    assert list(headers.response_headers.response.header_mutation.remove_headers) == ["content-length"]
    start = {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 3, "output_tokens": 1}}}
    event = b"event: message_start\ndata: " + orjson.dumps(start) + b"\n\n"
    chunk = attempt.response_body(pb.HttpBody(body=event[:20])).response_body.response.body_mutation.body
    assert chunk == b""  # half an event: nothing to say yet
    rest = attempt.response_body(pb.HttpBody(body=event[20:], end_of_stream=True))
    out = rest.response_body.response.body_mutation.body
    assert out.startswith(b"data: ") and b'"model":"claude"' in out  # the client's model, not the override
    assert b'"error"' in out  # the stream ended before message_stop: said, so no client takes it as complete


def test_an_anthropic_error_answer_is_an_openai_error_with_a_matching_length() -> None:
    plan = _plan(SchemaIR(ApiSchema.ANTHROPIC))
    attempt = plan.attempt()
    assert attempt is not None
    attempt.request_headers(_headers(**CLIENT))
    attempt.request_body(orjson.dumps({"model": "claude", "messages": [{"role": "user", "content": "hi"}]}))
    assert not attempt.response_headers(_headers(**{":status": "429"})).HasField("mode_override")  # stays buffered
    error = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    reply = attempt.response_body(pb.HttpBody(body=orjson.dumps(error), end_of_stream=True)).response_body.response
    translated = orjson.loads(reply.body_mutation.body)["error"]
    assert translated["type"] == "rate_limit_error" and translated["message"] == "slow down"
    lengths = [o.header.raw_value for o in reply.header_mutation.set_headers if o.header.key == "content-length"]
    assert lengths == [str(len(reply.body_mutation.body)).encode()]


def test_a_field_anthropic_cannot_honour_is_answered_400_before_anything_is_sent() -> None:
    plan = _plan(SchemaIR(ApiSchema.ANTHROPIC))
    attempt = plan.attempt()
    assert attempt is not None
    attempt.request_headers(_headers(**CLIENT))
    reply = attempt.request_body(orjson.dumps({"model": "c", "messages": [{"role": "user", "content": "x"}], "n": 3}))
    assert reply.immediate_response.status.code == 400
    error = orjson.loads(reply.immediate_response.body)["error"]
    assert error["param"] == "n" and error["type"] == "invalid_request_error"


def test_an_unusable_credential_is_refused_before_any_attempt_state() -> None:
    plan = _plan(SchemaIR(ApiSchema.ANTHROPIC), credential_error="BackendSecurityPolicy default/p is not usable")
    assert plan.attempt() is None  # the plan's own reply refuses the request (503), with no translation
    assert plan.headers_reply.immediate_response.status.code == 503


def test_the_messages_api_passes_to_an_anthropic_backend_with_the_clients_version_and_the_backends_key() -> None:
    plan = _plan(SchemaIR(ApiSchema.ANTHROPIC, "2023-06-01"), api_key=ApiKey("x-api-key", KEY))
    attempt = plan.attempt()
    assert attempt is not None
    client = {**CLIENT, ":path": "/v1/messages", "anthropic-version": "2024-01-01", "anthropic-beta": "x"}
    reply = attempt.request_headers(_headers(**client))
    sets, removes = _mutation(reply)
    assert sets == {"x-api-key": KEY, ":path": "/v1/messages"}  # the client's anthropic-version stays
    assert "authorization" in removes and "anthropic-beta" not in removes
    assert not attempt.translates  # no body or answer translation: both phases off
    assert reply.mode_override.request_body_mode == Mode.NONE
    assert reply.mode_override.response_header_mode == Mode.SKIP
