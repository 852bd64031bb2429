"""Writing an OpenAI chat.completion.chunk stream, for the stream translators of every provider schema.

The shape is OpenAI's own, as its SDKs read it: every chunk names the same id, created and model; the first one
carries the role; the finish reason comes on a chunk with an empty delta; with `stream_options.include_usage` every
chunk has `"usage": null` and a last one, with no choices, the usage; then `data: [DONE]`. Reading the upstream's
events is `xds_server.extproc.sse.SseParser`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

DONE: Final = b"data: [DONE]\n\n"
PING: Final = b": ping\n\n"  # an SSE comment: keeps an idle client's connection open, and clients skip it


def event(document: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(document) + b"\n\n"


class ChunkWriter:
    """The chunks of one answer (choice 0), in order. `id` may be set once the upstream has told it."""

    def __init__(self, model: str, created: int, include_usage: bool) -> None:
        self.id = ""
        self._model = model
        self._created = created
        self._include_usage = include_usage
        self._started = False

    def delta(self, delta: Mapping[str, Any]) -> bytes:
        """A chunk of content, reasoning or tool calls, after the role chunk if that is not sent yet."""
        return self.start() + self._chunk(delta, None)

    def start(self) -> bytes:
        """The first chunk, once (b"" after): the role, with empty content as OpenAI sends it."""
        if self._started:
            return b""
        self._started = True
        return self._chunk({"role": "assistant", "content": ""}, None)

    def finish(self, finish_reason: str, usage: Mapping[str, Any] | None) -> bytes:
        """The end of a complete answer: the finish reason, the usage chunk if asked for, [DONE]. `usage` None: the
        upstream never told it (its stream ended right after the answer), and no usage chunk beats a made-up one."""
        out = self.start() + self._chunk({}, finish_reason)
        if self._include_usage and usage is not None:
            out += event({**self._header(), "choices": [], "usage": usage})
        return out + DONE

    def _header(self) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self._created, "model": self._model}

    def _chunk(self, delta: Mapping[str, Any], finish_reason: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        chunk: dict[str, Any] = {**self._header(), "choices": [choice]}
        if self._include_usage:
            chunk["usage"] = None
        return event(chunk)


def error_event(error: Mapping[str, Any]) -> bytes:
    """An error after the HTTP 200 went out: an OpenAI error envelope as a data event. OpenAI's SDKs raise APIError on
    a chunk that carries `error`; nothing may follow it (no [DONE]: the answer did not complete)."""
    return event({"error": error})
