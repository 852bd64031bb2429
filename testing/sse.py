"""Event streams for property tests: valid streams (comments, other fields, LF or CRLF line ends, `data:` with or
without its space) cut anywhere, with the data of their events and the last `usage` they report. Shared by the
tests of the Python parser (tests/test_metering.py) and of the AI filter's own reader (tests/test_ai_filter.py)."""

from __future__ import annotations

import orjson
from hypothesis import strategies as st

usages = st.fixed_dictionaries(
    {"prompt_tokens": st.integers(0, 10**6), "completion_tokens": st.integers(0, 10**6)},
    optional={"total_tokens": st.integers(0, 10**6)},
)
chunks = st.fixed_dictionaries(
    {"model": st.sampled_from(["m", "m-2024"]), "choices": st.just([])},
    optional={"usage": st.none() | usages, "note": st.text(max_size=20)},
)


def sse_stream(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A valid event stream and the data of its events."""
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
    """(stream, the data of its events, the stream cut into pieces at random places)."""
    stream, expected = sse_stream(draw)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    return stream, expected, pieces


def last_usage(events: list[bytes]) -> dict[str, int] | None:
    """The `usage` object of the last event that has one (None: no event had one)."""
    found = None
    for data in events:
        if data != b"[DONE]" and isinstance(usage := orjson.loads(data).get("usage"), dict):
            found = usage
    return found
