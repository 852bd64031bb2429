"""OpenAI wire shapes the simulators answer with: one place for bodies, stream chunks, SSE framing and errors.

Only the fields clients and the gateway read are produced; values are plain dicts ready for orjson.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import orjson

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "model",
    "servers",
    "stream",
    "tokens",
    "to",
    "patient",
    "clients",
    "and",
    "gateways",
    "pick",
    "endpoints",
    "by",
    "queue",
    "depth",
    "cache",
    "usage",
    "and",
    "shared",
    "prompt",
    "prefixes",
]

JsonObject = dict[str, Any]


def random_sentence(rng: random.Random, words: int = 12) -> str:
    """A sentence of `words` words, capitalised and ending with a full stop."""
    text = " ".join(rng.choice(WORDS) for _ in range(max(1, words)))
    return text[0].upper() + text[1:] + "."


def usage(prompt_tokens: int, completion_tokens: int) -> JsonObject:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(
    completion_id: str, model: str, content: str, prompt_tokens: int, completion_tokens: int
) -> JsonObject:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"},
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_chunk(
    completion_id: str,
    model: str,
    content: str | None,
    finish_reason: str | None = None,
    chunk_usage: JsonObject | None = None,
) -> JsonObject:
    """One `chat.completion.chunk`; the final usage-only chunk (stream_options.include_usage) has no choices."""
    choices: list[JsonObject] = []
    if content is not None or finish_reason is not None:
        delta: JsonObject = {"content": content} if content is not None else {}
        choices.append({"index": 0, "delta": delta, "finish_reason": finish_reason})
    chunk: JsonObject = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if chunk_usage is not None:
        chunk["usage"] = chunk_usage
    return chunk


def text_completion(
    completion_id: str, model: str, text: str, prompt_tokens: int, completion_tokens: int
) -> JsonObject:
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def text_completion_chunk(
    completion_id: str,
    model: str,
    text: str,
    finish_reason: str | None = None,
    chunk_usage: JsonObject | None = None,
) -> JsonObject:
    chunk: JsonObject = {
        "id": completion_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}],
    }
    if chunk_usage is not None:
        chunk["usage"] = chunk_usage
    return chunk


def text_completion_usage_chunk(completion_id: str, model: str, chunk_usage: JsonObject) -> JsonObject:
    """The last `text_completion` chunk of a stream with stream_options.include_usage: usage and no choices."""
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": chunk_usage,
    }


def embeddings(model: str, inputs: Sequence[str], dimensions: int, rng: random.Random) -> JsonObject:
    prompt_tokens = sum(len(text.split()) for text in inputs)
    return {
        "object": "list",
        "model": model,
        "data": [
            {"object": "embedding", "index": index, "embedding": [rng.uniform(-1.0, 1.0) for _ in range(dimensions)]}
            for index in range(len(inputs))
        ],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def model_list(models: Sequence[str], owned_by: str) -> JsonObject:
    return {
        "object": "list",
        "data": [{"id": model, "object": "model", "created": 0, "owned_by": owned_by} for model in models],
    }


def error(message: str, error_type: str, code: str | int | None = None) -> JsonObject:
    """The OpenAI error envelope every error response of the project uses."""
    return {"error": {"message": message, "type": error_type, "code": code}}


def sse_event(data: JsonObject | str) -> bytes:
    """One server-sent event: `data: <json>` and a blank line (`[DONE]` is passed as a string)."""
    payload = data.encode() if isinstance(data, str) else orjson.dumps(data)
    return b"data: " + payload + b"\n\n"


SSE_DONE = sse_event("[DONE]")
