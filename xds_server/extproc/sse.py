"""Incremental server-sent events parsing, for responses that pass through in chunks (the providers' schema
translation reads a provider's event stream with it).

Envoy hands an ext_proc service the response body in whatever pieces the upstream wrote: an event, a line, even a
`\\r\\n` may be split anywhere. The parser keeps only the unfinished line between chunks, so each byte is scanned
once. Lines end with LF or CRLF (a lone CR, allowed by the SSE spec, is not used by any OpenAI-style server).
Only `data` fields matter for usage; `event`, `id`, `retry` and comments are skipped.
"""

from __future__ import annotations


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
