"""`python -m testing.providers.anthropic_sim`: Anthropic's Messages API on a loopback address, for tests.

`POST /v1/messages` refuses what api.anthropic.com refuses (headers, body shape, value rules: see
anthropic_contract.py), so a translation bug in the gateway fails the test that sent it, and answers like the
real API: a `Message` built through the SDK's own model, or its event stream. The answer is deterministic:
- an echo, "You said: <last user text>", cut at a stop sequence or at `max_tokens` words;
- one `tool_use` block when `tool_choice` forces a tool, or the last user text says "call <tool name>";
- a text naming the results when the last message carries `tool_result` blocks;
- a `thinking` block first when the request enables thinking; cache reads when the system prompt says "cache".

Models that choose a failure, once the request passed validation: `claude-overloaded` (529),
`claude-rate-limited` (429 with retry-after), `claude-plain-500` (500, a text body), and, when streamed (otherwise
they answer as usual), `claude-midstream-error` (an `error` event after some text) and `claude-cut` (the connection
drops before message_delta). A model not starting with `claude-` is a 404.

`GET /debug/requests` lists what arrived (x-api-key redacted); `DELETE /debug/requests` forgets it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from testing.providers import common
from testing.providers.anthropic_contract import ApiError, check_headers, parse_body, request_adapter
from testing.providers.common import (
    REDACTED,
    Json,
    Recorder,
    arg_parser,
    sample_value,
    send_stream,
    serve_app,
    tool_named_in,
    words,
)

DEFAULT_PORT = 8090
WORDS_PER_TEXT_DELTA = 2
JSON_DELTAS = 3
EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)

log = structlog.get_logger("anthropic-sim")


@dataclass
class Settings:
    api_key: str
    gap_seconds: float
    requests: list[Json] = field(default_factory=list)


# The answer.


def block_texts(content: str | list[Json]) -> list[str]:
    """The texts a model reads in a message's content: text blocks and tool results' texts."""
    if isinstance(content, str):
        return [content]
    texts: list[str] = []
    for block in content:
        if block["type"] == "text":
            texts.append(block["text"])
        elif block["type"] == "tool_result":
            texts.extend(block_texts(block.get("content", "")))
    return texts


def system_text(body: Json) -> str:
    system = body.get("system", "")
    return system if isinstance(system, str) else " ".join(block["text"] for block in system)


def last_user_text(messages: list[Json]) -> str:
    user = next(message for message in reversed(messages) if message["role"] == "user")
    content = user["content"]
    return content if isinstance(content, str) else " ".join(b["text"] for b in content if b["type"] == "text")


def tool_results(message: Json) -> list[str]:
    content = message["content"]
    if message["role"] != "user" or isinstance(content, str):
        return []
    return [" ".join(block_texts(b.get("content", ""))) for b in content if b["type"] == "tool_result"]


def chosen_tool(body: Json) -> Json | None:
    tools: list[Json] = [tool for tool in body.get("tools", []) if "input_schema" in tool]  # client tools only
    choice = body.get("tool_choice") or {"type": "auto"}
    if not tools or choice["type"] == "none":
        return None
    if choice["type"] == "tool":
        return next((tool for tool in tools if tool["name"] == choice["name"]), None)
    if choice["type"] == "any":
        return tools[0]
    if tool_results(body["messages"][-1]):
        return None
    return tool_named_in(tools, last_user_text(body["messages"]))


def reply_text(body: Json) -> tuple[str, str, str | None]:
    """(text, stop_reason, stop_sequence) of a text answer."""
    results = tool_results(body["messages"][-1])
    if results:
        text = "The tool returned: " + "; ".join(results)
    else:
        text = "You said: " + " ".join(words(last_user_text(body["messages"])))
    stop_reason, stop_sequence = "end_turn", None
    found = sorted((text.find(stop), stop) for stop in body.get("stop_sequences", []) if stop in text)
    if found:
        position, stop_sequence = found[0]
        text, stop_reason = text[:position], "stop_sequence"
    if len(words(text)) > body["max_tokens"]:
        text, stop_reason, stop_sequence = " ".join(words(text)[: body["max_tokens"]]), "max_tokens", None
    return text, stop_reason, stop_sequence


def answer(body: Json) -> Message:
    """The assistant's message, validated by the SDK's own model so it is what the real API could send."""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    content: list[Json] = []
    thinking = body.get("thinking") or {}
    if thinking.get("type") in ("enabled", "adaptive"):
        thought = f"The user wrote {len(words(last_user_text(body['messages'])))} words. A short answer will do."
        shown = "" if thinking.get("display") == "omitted" else thought
        content.append({"type": "thinking", "thinking": shown, "signature": "sig_" + digest[:40]})
    tool = chosen_tool(body)
    if tool is not None:
        tool_input = sample_value(tool["input_schema"] | {"type": "object"})
        content.append({"type": "tool_use", "id": "toolu_" + digest[:24], "name": tool["name"], "input": tool_input})
        stop_reason, stop_sequence = "tool_use", None
    else:
        text, stop_reason, stop_sequence = reply_text(body)
        content.append({"type": "text", "text": text})
    system = system_text(body)
    prompt = [system, *(text for message in body["messages"] for text in block_texts(message["content"]))]
    cached = len(words(system)) if "cache" in system.lower() else 0
    said = [
        json.dumps(b["input"]) if b["type"] == "tool_use" else b.get("text", "") + b.get("thinking", "")
        for b in content
    ]
    output = len(words(" ".join(said)))
    usage = {
        "input_tokens": max(len(words(" ".join(prompt))) - cached, 1),
        "output_tokens": max(output, 1),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "service_tier": "standard",
    }
    return Message.model_validate(
        {
            "id": "msg_" + digest[:24],
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": usage,
        }
    )


# The stream.


def pieces(text: str, size: int) -> list[str]:
    """`text` in pieces of `size` words, spaces kept, so that the pieces add up to the text."""
    tokens = re.findall(r"\s*\S+\s*", text)
    return ["".join(tokens[i : i + size]) for i in range(0, len(tokens), size)]


def block_events(index: int, block: Json) -> list[Json]:
    kind = block["type"]
    start: Json
    deltas: list[Json]
    if kind == "text":
        start = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in pieces(block["text"], WORDS_PER_TEXT_DELTA)]
    elif kind == "tool_use":
        start = {**block, "input": {}}
        arguments = json.dumps(block["input"])
        step = -(-len(arguments) // JSON_DELTAS)  # the JSON cut mid-token, as the real API does
        deltas = [
            {"type": "input_json_delta", "partial_json": arguments[i : i + step]}
            for i in range(0, len(arguments), step)
        ]
    else:
        start = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": piece} for piece in pieces(block["thinking"], 4)]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    return [
        {"type": "content_block_start", "index": index, "content_block": start},
        *({"type": "content_block_delta", "index": index, "delta": delta} for delta in deltas),
        {"type": "content_block_stop", "index": index},
    ]


def stream_events(message: Message) -> list[Json]:
    """The documented order: message_start, ping, each block's start/deltas/stop, message_delta, message_stop."""
    data = message.model_dump(mode="json", exclude_unset=True)
    usage = data["usage"]
    start = {**data, "content": [], "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}
    events: list[Json] = [{"type": "message_start", "message": start}, {"type": "ping"}]
    for index, block in enumerate(data["content"]):
        events.extend(block_events(index, block))
    final_usage = {
        key: usage[key] for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    }
    delta = {"stop_reason": data["stop_reason"], "stop_sequence": data["stop_sequence"]}
    events.append(
        {"type": "message_delta", "delta": delta, "usage": {**final_usage, "output_tokens": usage["output_tokens"]}}
    )
    events.append({"type": "message_stop"})
    for event in events:
        if event["type"] != "ping":  # the SDK's union leaves pings out: its stream skips them
            EVENT_ADAPTER.validate_python(event)
    return events


def sse(event: Json) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


# The server.


class Simulator(Recorder):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.requests)
        self.settings = settings

    def redact(self, name: str, value: str) -> str:
        return REDACTED if name == "x-api-key" else value

    async def messages(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        entry = self.record(request, raw)
        try:
            check_headers(request.headers, self.settings.api_key)
            body = parse_body(raw)
            model = body["model"]
            if model == "claude-plain-500":
                entry["status"] = 500
                return web.Response(status=500, text="Internal Server Error: the model process crashed")
            check_model(model)
        except ApiError as exc:
            entry["status"] = exc.status
            log.info("refused", path=request.path, status=exc.status, message=exc.message)
            return web.json_response(exc.body(), status=exc.status, headers=exc.headers)
        entry["status"] = 200
        message = answer(body)
        headers = {"request-id": "req_" + message.id.removeprefix("msg_")}
        if not body.get("stream"):
            return web.json_response(message.model_dump(mode="json", exclude_unset=True), headers=headers)
        return await self.stream(request, model, message, headers)

    async def stream(
        self, request: web.Request, model: str, message: Message, headers: dict[str, str]
    ) -> web.StreamResponse:
        events = stream_events(message)
        stop = next(i for i, event in enumerate(events) if event["type"] == "content_block_stop")
        if model == "claude-midstream-error":
            error = ApiError(529, "overloaded_error", "Overloaded").body()
            events = [*events[:stop], error]
        elif model == "claude-cut":
            events = events[: next(i for i, event in enumerate(events) if event["type"] == "message_delta")]
        headers = {**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        data = [sse(event) for event in events]
        return await send_stream(request, headers, data, self.settings.gap_seconds, model == "claude-cut")

    async def not_found(self, request: web.Request) -> web.Response:
        entry = self.record(request, await request.read())
        entry["status"] = 404
        return web.json_response(ApiError(404, "not_found_error", "Not Found").body(), status=404)


def check_model(model: str) -> None:
    """The error hooks that answer before any content, and the 404 of a model that is not Claude."""
    if model == "claude-overloaded":
        raise ApiError(529, "overloaded_error", "Overloaded")
    if model == "claude-rate-limited":
        message = "This request would exceed the rate limit for your organization of 50 requests per minute."
        raise ApiError(429, "rate_limit_error", message, headers={"retry-after": "7"})
    if not model.startswith("claude-"):
        raise ApiError(404, "not_found_error", f"model: {model}")


def build_app(settings: Settings) -> web.Application:
    simulator = Simulator(settings)
    app = web.Application()
    simulator.add_routes(app)
    app.router.add_post("/v1/messages", simulator.messages)
    app.router.add_route("*", "/{tail:.*}", simulator.not_found)
    return app


async def serve(settings: Settings, host: str, port: int) -> int:
    for streaming in (False, True):  # built before /health answers, not on the first request
        request_adapter(streaming)
    return await serve_app(build_app(settings), host, port, log, "anthropic")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = arg_parser("anthropic_sim", __doc__, DEFAULT_PORT)
    parser.add_argument("--api-key", required=True, help="the only x-api-key accepted")
    return common.parse_args(parser, argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    settings = Settings(api_key=args.api_key, gap_seconds=args.gap_seconds)
    return asyncio.run(serve(settings, args.host, args.port))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
