"""The Anthropic Messages API simulator (testing/providers/anthropic_sim.py) as a subprocess on its own loopback
address: the official SDK parses what it answers, and it refuses what api.anthropic.com refuses."""

from __future__ import annotations

import http.client
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic.types import MessageParam, ToolParam

from testing.ports import loopback_address
from testing.sims import SimProcess, start_anthropic_sim
from testing.web import Response, request

API_KEY = "sk-ant-sim-test-key"
MODEL = "claude-sonnet-4-5"
WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "note": {"type": "string"},
        },
        "required": ["city", "days", "unit"],
    },
}
HEADERS = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01", "content-type": "application/json"}
BODY: dict[str, Any] = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "hello there"}]}


class Client(anthropic.Anthropic):
    """The SDK client with its key in `x-api-key`, the header the API documents and our gateway sends: SDK 2.17
    sends `api_key` as `Authorization: Bearer`, which the simulator refuses as a leaked client credential."""

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"X-Api-Key": self.api_key or ""}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    host, _ = loopback_address()
    started = start_anthropic_sim(host, tmp_path_factory.mktemp("anthropic-sim") / "log", API_KEY)
    yield started
    started.kill()


@pytest.fixture
def client(sim: SimProcess) -> Iterator[Client]:
    with Client(base_url=sim.url, api_key=API_KEY, max_retries=0) as sdk:
        yield sdk


def post(sim: SimProcess, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None) -> Response:
    data = raw if raw is not None else json.dumps(body).encode()
    return request(sim.url, "POST", "/v1/messages", data, HEADERS if headers is None else headers)


def sse_events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in data.decode().split("\n\n"):
        if block.strip():
            name, payload = block.split("\n")
            events.append((name.removeprefix("event: "), json.loads(payload.removeprefix("data: "))))
    return events


# The SDK parses every answer.


def test_message(client: Client) -> None:
    message = client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hello there"}])
    assert message.id.startswith("msg_") and message.model == MODEL and message.role == "assistant"
    assert [(block.type, getattr(block, "text", None)) for block in message.content] == [
        ("text", "You said: hello there")
    ]
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (2, 4)
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (0, 0)


def test_max_tokens_and_stop_sequences(client: Client) -> None:
    words = "one two three four five"
    cut = client.messages.create(model=MODEL, max_tokens=3, messages=[{"role": "user", "content": words}])
    assert (cut.content[0].type, cut.stop_reason, cut.usage.output_tokens) == ("text", "max_tokens", 3)
    assert cut.content[0].text == "You said: one"  # type: ignore[union-attr]
    stopped = client.messages.create(
        model=MODEL, max_tokens=64, stop_sequences=["four", "three"], messages=[{"role": "user", "content": words}]
    )
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "three")
    assert stopped.content[0].text == "You said: one two "  # type: ignore[union-attr]


def test_cache_read_from_system_prompt(client: Client) -> None:
    message = client.messages.create(
        model=MODEL,
        max_tokens=64,
        system=[{"type": "text", "text": "Keep this in the cache please", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "hello there"}],
    )
    assert (message.usage.cache_read_input_tokens, message.usage.input_tokens) == (6, 2)


def test_stream_helper(client: Client) -> None:
    text = "a fairly long sentence that the simulator will stream in several pieces"
    with client.messages.stream(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": text}]) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 3 and "".join(pieces) == f"You said: {text}"
    assert final.content[0].text == f"You said: {text}"  # type: ignore[union-attr]
    assert (final.stop_reason, final.usage.input_tokens, final.usage.output_tokens) == ("end_turn", 12, 14)


def test_create_stream_true(client: Client) -> None:
    events = list(
        client.messages.create(model=MODEL, max_tokens=64, stream=True, messages=[{"role": "user", "content": "hi"}])
    )
    types = [event.type for event in events]
    assert types == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 2,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and (start.message.usage.input_tokens, start.message.usage.output_tokens) == (
        1,
        1,
    )
    assert delta.type == "message_delta" and (delta.delta.stop_reason, delta.usage.output_tokens) == ("end_turn", 3)


def test_raw_stream_order_and_ping(sim: SimProcess) -> None:
    answer = post(sim, {**BODY, "stream": True})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
    events = sse_events(answer.content)
    assert all(name == data["type"] for name, data in events)
    assert [name for name, _ in events[:3]] == ["message_start", "ping", "content_block_start"]
    assert [name for name, _ in events[-2:]] == ["message_delta", "message_stop"]


def test_tool_call_and_result(client: Client) -> None:
    question: MessageParam = {"role": "user", "content": "What is the weather? Please call get_weather"}
    call = client.messages.create(model=MODEL, max_tokens=256, tools=[WEATHER], messages=[question])
    assert call.stop_reason == "tool_use" and len(call.content) == 1
    tool_use = call.content[0]
    assert tool_use.type == "tool_use" and tool_use.id.startswith("toolu_")
    assert (tool_use.name, tool_use.input) == ("get_weather", {"city": "x", "days": 1, "unit": "celsius"})

    result: MessageParam = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "14 degrees and rain"}],
    }
    follow_up = client.messages.create(
        model=MODEL,
        max_tokens=256,
        tools=[WEATHER],
        messages=[question, {"role": "assistant", "content": call.content}, result],
    )
    assert follow_up.stop_reason == "end_turn"
    assert follow_up.content[0].text == "The tool returned: 14 degrees and rain"  # type: ignore[union-attr]


def test_forced_tool_streamed(client: Client) -> None:
    with client.messages.stream(
        model=MODEL,
        max_tokens=256,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "hello"}],
    ) as stream:
        partials = [event.partial_json for event in stream if event.type == "input_json"]
        final = stream.get_final_message()
    assert len(partials) == 3 and not any(_is_json(piece) for piece in partials)  # cut mid-JSON
    assert final.stop_reason == "tool_use" and final.content[0].type == "tool_use"
    assert final.content[0].input == {"city": "x", "days": 1, "unit": "celsius"}


def test_thinking_block_first(client: Client) -> None:
    kwargs: dict[str, Any] = {"model": MODEL, "max_tokens": 2048, "messages": [{"role": "user", "content": "hi"}]}
    thinking: anthropic.types.ThinkingConfigParam = {"type": "enabled", "budget_tokens": 1024}
    message = client.messages.create(thinking=thinking, **kwargs)
    assert [block.type for block in message.content] == ["thinking", "text"]
    with client.messages.stream(thinking=thinking, **kwargs) as stream:
        kinds = {event.delta.type for event in stream if event.type == "content_block_delta"}
        final = stream.get_final_message()
    assert kinds == {"thinking_delta", "signature_delta", "text_delta"}
    assert final.content[0].type == "thinking" and final.content[0].signature.startswith("sig_")


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


# What the real API refuses.


def test_sdk_bearer_key_is_refused_as_leaked_header(sim: SimProcess) -> None:
    with (
        anthropic.Anthropic(base_url=sim.url, api_key=API_KEY, max_retries=0) as sdk,
        pytest.raises(anthropic.BadRequestError) as error,
    ):
        sdk.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert "authorization: header must not reach the upstream" in str(error.value)


@pytest.mark.parametrize(
    ("headers", "status", "kind", "message"),
    [
        ({"x-api-key": "wrong"}, 401, "authentication_error", "invalid x-api-key"),
        ({"x-api-key": None}, 401, "authentication_error", "invalid x-api-key"),
        ({"anthropic-version": None}, 400, "invalid_request_error", "anthropic-version: header is required"),
        ({"anthropic-version": "latest"}, 400, "invalid_request_error", "anthropic-version: "),
        ({"content-type": "text/plain"}, 400, "invalid_request_error", "content-type: "),
        ({"authorization": "Bearer sk-openai"}, 400, "invalid_request_error", "authorization: "),
        ({"x-ai-eg-model": MODEL}, 400, "invalid_request_error", "x-ai-eg-model: "),
        (
            {"x-gateway-destination-endpoint": "1.2.3.4:80"},
            400,
            "invalid_request_error",
            "x-gateway-destination-endpoint: ",
        ),
    ],
)
def test_headers(sim: SimProcess, headers: dict[str, str | None], status: int, kind: str, message: str) -> None:
    sent = {name: value for name, value in {**HEADERS, **headers}.items() if value is not None}
    answer = post(sim, BODY, sent)
    assert answer.status_code == status
    assert answer.json() == {"type": "error", "error": {"type": kind, "message": answer.json()["error"]["message"]}}
    assert answer.json()["error"]["message"].startswith(message)


def test_chunked_body_is_refused(sim: SimProcess) -> None:
    host, port = sim.url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("POST", "/v1/messages", iter([json.dumps(BODY).encode()]), HEADERS, encode_chunked=True)
        answer = connection.getresponse()
        assert answer.status == 411
        assert json.loads(answer.read())["error"]["message"].startswith("content-length: ")
    finally:
        connection.close()


TOOL_TURNS: list[dict[str, Any]] = [
    {"role": "user", "content": "call get_weather"},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bogus": 1}, "bogus: Extra inputs are not permitted"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_contol": {}}]}]},
            "messages.0.content.0.text.cache_contol: Extra inputs are not permitted",
        ),
        ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "messages.0.name: Extra inputs"),
        ({"tools": [{**WEATHER, "function": {}}]}, "tools.0.custom.function: Extra inputs are not permitted"),
        ({"tools": [{"type": "function", "function": WEATHER}]}, "tools.0: Input tag 'function'"),
        ({"metadata": {"user_id": "u", "session": "s"}}, "metadata.session: Extra inputs are not permitted"),
        ({"max_tokens": None}, "max_tokens: Field required"),
        ({"max_tokens": "64"}, "max_tokens: Input should be a valid integer"),
        ({"max_tokens": 0}, "max_tokens: Value must be greater than or equal to 1"),
        ({"temperature": 1.5}, "temperature: Value must be between 0 and 1"),
        ({"temperature": -0.1}, "temperature: Value must be between 0 and 1"),
        ({"top_p": 1.01}, "top_p: Value must be between 0 and 1"),
        ({"stream": "yes"}, "stream: Input should be False"),
        ({"messages": []}, "messages: at least one message is required"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, 'messages: first message must use the "user" role'),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0: Input should have a 'role' of"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
            'messages.1.role: roles must alternate between "user" and "assistant"',
        ),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]},
            "messages.1.role: roles must alternate",
        ),
        ({"messages": [{"role": "user", "content": ""}]}, "messages.0: all messages must have non-empty content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": " "}]}]},
            "messages.0.content.0.text: text content blocks must contain non-whitespace text",
        ),
        (
            {
                "tools": [WEATHER],
                "messages": [
                    *TOOL_TURNS,
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2"}]},
                ],
            },
            "messages.2.content.0: unexpected `tool_use_id` found in `tool_result` blocks: toolu_2.",
        ),
        (
            {"tools": [WEATHER], "messages": [*TOOL_TURNS, {"role": "user", "content": "and?"}]},
            "messages.2: `tool_use` ids were found without `tool_result` blocks immediately after: toolu_1.",
        ),
        ({"tool_choice": {"type": "auto"}}, "tool_choice: tool_choice may only be specified while providing tools"),
        ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice.name: "),
        ({"tools": [{**WEATHER, "name": "get.weather"}]}, "tools.0.custom.name: String should match pattern"),
        ({"tools": [WEATHER, WEATHER]}, "tools: Tool names must be unique."),
        ({"thinking": {"type": "enabled", "budget_tokens": 100}}, "thinking.enabled.budget_tokens: "),
        (
            {"max_tokens": 2048, "thinking": {"type": "enabled", "budget_tokens": 1024}, "temperature": 0.5},
            "temperature: `temperature` may only be set to 1 when thinking is enabled",
        ),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "max_tokens: `max_tokens` must be greater than"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "AA=="}}
                        ],
                    }
                ]
            },
            "messages.0.content.0.image.source.base64.media_type: Input should be 'image/jpeg'",
        ),
        (
            {"messages": [{"role": "user", "content": 5}]},
            "messages.0.content: Input should be a valid string or a valid list",
        ),
    ],
)
def test_body_rules(sim: SimProcess, change: dict[str, Any], message: str) -> None:
    body = {name: value for name, value in {**BODY, **change}.items() if value is not None}
    answer = post(sim, body)
    assert answer.status_code == 400, answer.text
    error = answer.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"].startswith(message), error["error"]["message"]


def test_body_that_is_not_json(sim: SimProcess) -> None:
    answer = post(sim, None, raw=b'{"model": ')
    assert answer.status_code == 400 and answer.json()["error"]["message"].startswith("body: not valid JSON")


def test_a_valid_body_passes_every_rule(sim: SimProcess) -> None:
    body = {
        **BODY,
        "system": "Be brief.",
        "temperature": 1,
        "top_p": 0.9,
        "top_k": 5,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
        "tools": [WEATHER],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "messages": [
            *TOOL_TURNS,
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
        ],
    }
    answer = post(sim, body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["content"] == [{"type": "text", "text": "The tool returned: sunny"}]


# The error hooks.


def test_overloaded(sim: SimProcess, client: Client) -> None:
    answer = post(sim, {**BODY, "model": "claude-overloaded"})
    assert (answer.status_code, answer.json()["error"]["type"]) == (529, "overloaded_error")
    with pytest.raises(anthropic.OverloadedError):
        client.messages.create(model="claude-overloaded", max_tokens=8, messages=[{"role": "user", "content": "hi"}])


def test_rate_limited(sim: SimProcess, client: Client) -> None:
    answer = post(sim, {**BODY, "model": "claude-rate-limited"})
    assert (answer.status_code, answer.json()["error"]["type"]) == (429, "rate_limit_error")
    assert answer.headers["retry-after"] == "7"
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model="claude-rate-limited", max_tokens=8, messages=[{"role": "user", "content": "hi"}])


def test_plain_500(sim: SimProcess, client: Client) -> None:
    answer = post(sim, {**BODY, "model": "claude-plain-500"})
    assert answer.status_code == 500 and answer.headers["content-type"].startswith("text/plain")
    assert not _is_json(answer.text)
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(model="claude-plain-500", max_tokens=8, messages=[{"role": "user", "content": "hi"}])


def test_unknown_model(sim: SimProcess, client: Client) -> None:
    answer = post(sim, {**BODY, "model": "gpt-4o"})
    assert answer.status_code == 404
    assert answer.json()["error"] == {"type": "not_found_error", "message": "model: gpt-4o"}
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="gpt-4o", max_tokens=8, messages=[{"role": "user", "content": "hi"}])


def test_hooks_answer_only_valid_requests(sim: SimProcess) -> None:
    assert post(sim, {**BODY, "model": "claude-overloaded", "max_tokens": 0}).status_code == 400


def test_midstream_error(sim: SimProcess, client: Client) -> None:
    answer = post(
        sim,
        {
            **BODY,
            "model": "claude-midstream-error",
            "stream": True,
            "messages": [{"role": "user", "content": "a b c d"}],
        },
    )
    events = sse_events(answer.content)
    names = [name for name, _ in events]
    assert answer.status_code == 200 and names[-1] == "error" and "message_stop" not in names
    assert names.count("content_block_delta") >= 2
    assert events[-1][1] == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    stream = client.messages.create(
        model="claude-midstream-error", max_tokens=8, stream=True, messages=[{"role": "user", "content": "hi"}]
    )
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as error:
        seen.extend(event.type for event in stream)
    assert "content_block_delta" in seen and "overloaded_error" in str(error.value)


def test_cut_stream(sim: SimProcess, client: Client) -> None:
    with pytest.raises(http.client.IncompleteRead) as incomplete:
        post(sim, {**BODY, "model": "claude-cut", "stream": True})
    names = [name for name, _ in sse_events(incomplete.value.partial)]
    assert "content_block_stop" in names and "message_stop" not in names
    with (
        pytest.raises(anthropic.APIConnectionError),
        client.messages.stream(
            model="claude-cut", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        stream.get_final_message()


# What tests can ask the simulator.


def test_debug_requests_redacts_the_key(sim: SimProcess, client: Client) -> None:
    assert request(sim.url, "DELETE", "/debug/requests").status_code == 204
    assert request(sim.url, "GET", "/debug/requests").json() == []
    client.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    post(sim, {**BODY, "model": "claude-overloaded"})
    listing = request(sim.url, "GET", "/debug/requests")
    assert API_KEY not in listing.text
    first, second = listing.json()
    assert (first["method"], first["path"], first["status"]) == ("POST", "/v1/messages", 200)
    assert first["headers"]["x-api-key"] == "REDACTED" and first["headers"]["content-type"] == "application/json"
    assert first["body"] == {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    assert (second["body"]["model"], second["status"]) == ("claude-overloaded", 529)


def test_sigterm_exits_cleanly(tmp_path: Path) -> None:
    host, _ = loopback_address()
    sim = start_anthropic_sim(host, tmp_path / "log", API_KEY)
    sim.process.send_signal(signal.SIGTERM)
    assert sim.process.wait(timeout=10) == 0
