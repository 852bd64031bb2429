"""Reading OpenAI requests into what the engine needs, and deciding each answer the way vLLM would bound it.

Validation follows vLLM's OpenAI server where it matters to clients: a malformed body or field is a 400, a prompt
that leaves no room (or a `max_tokens` that exceeds `max_model_len`) is a 400 naming the context length, `n` other
than 1 is refused because one sequence per request is all the engine models.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import orjson

from xds_server.sim import openai
from xds_server.sim.vllm.tokens import chat_prompt, tokenize

JsonObject = openai.JsonObject

# Without max_tokens, random mode answers one complete sentence of this many words (about 1.5 tokens each).
RANDOM_SENTENCE_WORDS = (8, 24)


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, error_type: str = "invalid_request_error", code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code

    def body(self) -> JsonObject:
        return openai.error(self.message, self.error_type, self.code)


@dataclass(frozen=True)
class ParsedRequest:
    model: str
    prompt_tokens: list[str]
    echo_text: str  # what echo mode answers: the prompt, or for chat the last user message
    max_tokens: int | None
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class Answer:
    tokens: list[str]
    finish_reason: str


def read_body(raw: bytes) -> JsonObject:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def model_of(body: JsonObject) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required and must be a non-empty string")
    return model


def parse_chat(body: JsonObject) -> ParsedRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list")
    rendered: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(400, f"messages[{index}] must be an object with a string 'role'")
        rendered.append((message["role"], _content_text(message.get("content"), index)))
    last_user = next((content for role, content in reversed(rendered) if role == "user"), "")
    stream, include_usage = _streaming(body)
    return ParsedRequest(
        model=model_of(body),
        prompt_tokens=tokenize(chat_prompt(rendered)),
        echo_text=last_user,
        max_tokens=_max_tokens(body, "max_completion_tokens") or _max_tokens(body, "max_tokens"),
        stream=stream,
        include_usage=include_usage,
    )


def parse_completion(body: JsonObject) -> ParsedRequest:
    prompt = body.get("prompt")
    # A batch of exactly one prompt is the same request; larger batches would need several sequences.
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        text = "".join(f"{token_id} " for token_id in prompt)  # token ids: one simulated token each
    else:
        raise ApiError(400, "'prompt' must be a string or a list of token ids (batches of prompts are not supported)")
    if not text:
        raise ApiError(400, "the prompt cannot be empty")
    stream, include_usage = _streaming(body)
    return ParsedRequest(
        model=model_of(body),
        prompt_tokens=tokenize(text),
        echo_text=text,
        max_tokens=_max_tokens(body, "max_tokens"),
        stream=stream,
        include_usage=include_usage,
    )


def plan_answer(request: ParsedRequest, mode: str, max_model_len: int, rng: random.Random) -> Answer:
    """The output tokens and finish reason, bounded by max_tokens and by what the context window leaves."""
    prompt_len = len(request.prompt_tokens)
    room = max_model_len - prompt_len
    if room < 1 or (request.max_tokens is not None and request.max_tokens > room):
        wanted = request.max_tokens if request.max_tokens is not None else 1
        raise ApiError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_len + wanted} tokens ({prompt_len} in the messages, {wanted} in the completion). "
            "Please reduce the length of the messages or completion.",
            code="context_length_exceeded",
        )
    if mode == "echo":
        tokens = tokenize(request.echo_text) or [""]  # an empty answer still costs the end-of-sequence token
    elif request.max_tokens is not None:
        # A sentence of max_tokens words has at least max_tokens tokens; the model is cut off, hence "length".
        tokens = tokenize(openai.random_sentence(rng, request.max_tokens))[: request.max_tokens]
        return Answer(tokens, "length")
    else:
        tokens = tokenize(openai.random_sentence(rng, rng.randint(*RANDOM_SENTENCE_WORDS)))
    limit = min(room, request.max_tokens if request.max_tokens is not None else room)
    if len(tokens) > limit:
        return Answer(tokens[:limit], "length")
    return Answer(tokens, "stop")


def _content_text(content: Any, index: int) -> str:
    """Message content as text: a string, or the text parts of a content list joined by newlines, as vLLM renders
    them (other parts, images and the like, add nothing here)."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(part, dict) for part in content):
        return "\n".join(
            part["text"] for part in content if part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    raise ApiError(400, f"messages[{index}].content must be a string or a list of content parts")


def _max_tokens(body: JsonObject, key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ApiError(400, f"'{key}' must be an integer of at least 1")
    return value


def _streaming(body: JsonObject) -> tuple[bool, bool]:
    """`stream` and `stream_options.include_usage` (which only means something when streaming)."""
    n = body.get("n", 1)
    if n not in (1, None) or isinstance(n, bool):
        raise ApiError(400, "'n' other than 1 is not supported")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be a boolean")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise ApiError(400, "'stream_options' must be an object with a boolean 'include_usage'")
    return stream, stream and options.get("include_usage", False)
