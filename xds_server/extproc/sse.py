"""Incremental server-sent events parsing and OpenAI usage extraction, for responses that pass through in chunks.

Envoy hands metering the response body in whatever pieces the upstream wrote: an event, a line, even a
`\\r\\n` may be split anywhere. The parser keeps only the unfinished line between chunks, so each byte is scanned
once. Lines end with LF or CRLF (a lone CR, allowed by the SSE spec, is not used by any OpenAI-style server).
Only `data` fields matter for usage; `event`, `id`, `retry` and comments are skipped.
"""

from __future__ import annotations

from typing import Any

import orjson


class SseParser:
    __slots__ = ("_data", "_partial")

    def __init__(self) -> None:
        self._partial: list[bytes] = []  # pieces of the line not finished yet
        self._data: list[bytes] = []  # data lines of the event not finished yet

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of every event completed by this chunk (several data lines are joined with LF)."""
        if b"\n" not in chunk:
            if chunk:
                self._partial.append(chunk)
            return []
        if self._partial:
            self._partial.append(chunk)
            chunk = b"".join(self._partial)
            self._partial.clear()
        lines = chunk.split(b"\n")
        unfinished = lines.pop()
        if unfinished:
            self._partial.append(unfinished)
        events: list[bytes] = []
        for line in lines:
            self._line(line[:-1] if line.endswith(b"\r") else line, events)
        return events

    def finish(self) -> list[bytes]:
        """At the end of the body: an event whose closing blank line never came still counts (lenient)."""
        events: list[bytes] = []
        if self._partial:
            line = b"".join(self._partial)
            self._partial.clear()
            self._line(line[:-1] if line.endswith(b"\r") else line, events)
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if not line:  # a blank line ends the event
            if self._data:
                data = b"\n".join(self._data)
                self._data.clear()
                if data:
                    events.append(data)
        elif line.startswith(b"data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)


class Usage:
    """Token counts and response model of one response: the last `usage` seen wins, as the stream goes on."""

    __slots__ = ("input_tokens", "output_tokens", "response_model", "total_tokens")

    def __init__(self) -> None:
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.total_tokens: int | None = None
        self.response_model = ""

    @property
    def known(self) -> bool:
        return self.input_tokens is not None

    def read_json(self, document: Any) -> None:
        """A whole response (or one stream chunk) already decoded."""
        if not isinstance(document, dict):
            return
        model = document.get("model")
        if isinstance(model, str) and model:
            self.response_model = model
        usage = document.get("usage")
        if isinstance(usage, dict):
            prompt = _count(usage.get("prompt_tokens"))
            completion = _count(usage.get("completion_tokens"))
            total = _count(usage.get("total_tokens"))
            self.input_tokens = prompt or 0
            self.output_tokens = completion
            self.total_tokens = total if total is not None else (prompt or 0) + (completion or 0)

    def read_event(self, data: bytes) -> None:
        """One SSE event's data. Only events that can change something are decoded: the first one with a model
        (every chunk repeats it) and those that mention usage."""
        if self.response_model and b'"usage"' not in data:
            return
        if data == b"[DONE]":
            return
        try:
            self.read_json(orjson.loads(data))
        except orjson.JSONDecodeError:
            return


def _count(value: object) -> int | None:
    # bool is an int in Python; a token count is not.
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
