"""The AWS event-stream binary framing (`application/vnd.amazon.eventstream`), as Bedrock's ConverseStream answers.

A message is a 12-byte prelude (total length u32 BE, headers length u32 BE, CRC32 of those 8 bytes), the headers, the
payload, and a CRC32 of everything before it. A header is its name's length (u8), the name (UTF-8), a value type (u8)
and the value: 0 true and 1 false (no bytes), 2 int8, 3 int16, 4 int32, 5 int64 (big-endian), 6 bytes and 7 string
(u16 BE length, then the bytes), 8 timestamp (int64, milliseconds since the epoch), 9 UUID (16 bytes). Values decode
as botocore's `EventStreamBuffer` gives them: bool, int (the timestamp too), bytes (the UUID too), str.

`Decoder` takes the bytes in whatever pieces they come and keeps a partial message between them. A message that is not
well-formed (a CRC that does not match, lengths that do not add up, a header that runs past its end) raises
`EventStreamError`: the framing is lost from there, so every later read raises it again. `encode` writes a message,
for the tests and the simulated Bedrock.
"""

from __future__ import annotations

import struct
from binascii import crc32
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from xds_server.extproc.schemas.sse import error_event

HeaderValue = bool | int | bytes | str

_PRELUDE: Final = 12  # total length, headers length, prelude CRC
_OVERHEAD: Final = _PRELUDE + 4  # and the message CRC
# botocore's limits, so that nothing it reads is refused here; they also bound what a partial message may buffer.
MAX_HEADERS: Final = 128 * 1024
MAX_PAYLOAD: Final = 24 * 1024 * 1024

_INTEGERS: Final[Mapping[int, struct.Struct]] = {
    2: struct.Struct(">b"),
    3: struct.Struct(">h"),
    4: struct.Struct(">i"),
    5: struct.Struct(">q"),
    8: struct.Struct(">q"),  # a timestamp
}
_U16: Final = struct.Struct(">H")
_U32X3: Final = struct.Struct(">III")


class EventStreamError(Exception):
    """A message that is not well-formed. The text names what is wrong, never the message's content."""


@dataclass(frozen=True)
class Message:
    headers: dict[str, HeaderValue]
    payload: bytes


class Decoder:
    """Event-stream bytes in arbitrary pieces -> the complete messages, in order."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._error: EventStreamError | None = None

    @property
    def pending(self) -> int:
        """How many bytes of a message not complete yet are kept (0 between messages)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> Iterator[Message]:
        """Adds `data`, then yields each message complete so far. Raises EventStreamError (at the malformed message,
        after the good ones before it, and on every call after)."""
        if self._error is None:
            self._buffer += data
        return self._messages()

    def _messages(self) -> Iterator[Message]:
        while True:
            if self._error is not None:
                raise self._error
            if len(self._buffer) < _PRELUDE:
                return
            try:
                length = _prelude(self._buffer)
                if len(self._buffer) < length:
                    return
                message = _message(bytes(self._buffer[:length]))
            except EventStreamError as error:
                self._error = error
                self._buffer.clear()
                raise
            del self._buffer[:length]
            yield message


def _prelude(buffer: bytearray) -> int:
    """The message's total length, once its prelude is checked: a corrupt length is refused before anything waits
    for the bytes it announces."""
    total, headers, crc = _U32X3.unpack_from(buffer)
    if crc32(buffer[:8]) != crc:
        raise EventStreamError(f"prelude CRC mismatch: expected 0x{crc:08x}, calculated 0x{crc32(buffer[:8]):08x}")
    if headers > MAX_HEADERS:
        raise EventStreamError(f"headers length {headers} exceeds {MAX_HEADERS}")
    if total < _OVERHEAD + headers:
        raise EventStreamError(f"total length {total} is less than headers length {headers} plus {_OVERHEAD}")
    if total - _OVERHEAD - headers > MAX_PAYLOAD:
        raise EventStreamError(f"payload length {total - _OVERHEAD - headers} exceeds {MAX_PAYLOAD}")
    return int(total)


def _message(data: bytes) -> Message:
    (crc,) = struct.unpack_from(">I", data, len(data) - 4)
    calculated = crc32(data[:-4])
    if calculated != crc:
        raise EventStreamError(f"message CRC mismatch: expected 0x{crc:08x}, calculated 0x{calculated:08x}")
    (headers_length,) = struct.unpack_from(">I", data, 4)
    headers_end = _PRELUDE + headers_length
    return Message(_headers(data[_PRELUDE:headers_end]), data[headers_end:-4])


def _headers(data: bytes) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    at = 0
    try:
        while at < len(data):
            size = data[at]
            name = data[at + 1 : at + 1 + size].decode()
            at += 1 + size
            kind = data[at]
            at += 1
            value: HeaderValue
            if kind in (0, 1):
                value = kind == 0
            elif kind in _INTEGERS:
                (value,) = _INTEGERS[kind].unpack_from(data, at)
                at += _INTEGERS[kind].size
            elif kind in (6, 7):
                (size,) = _U16.unpack_from(data, at)
                raw = data[at + 2 : at + 2 + size]
                if len(raw) < size:
                    raise EventStreamError("a header value runs past the headers")
                value = raw.decode() if kind == 7 else raw
                at += 2 + size
            elif kind == 9:
                value = data[at : at + 16]
                if len(value) < 16:
                    raise EventStreamError("a header value runs past the headers")
                at += 16
            else:
                raise EventStreamError(f"unknown header value type {kind}")
            if name in headers:
                raise EventStreamError(f"duplicate header {name[:64]!r}")
            headers[name] = value
    except (IndexError, struct.error):
        raise EventStreamError("a header runs past the headers") from None
    except UnicodeDecodeError:
        raise EventStreamError("a header name or string value is not UTF-8") from None
    return headers


def encode(headers: Mapping[str, HeaderValue], payload: bytes) -> bytes:
    """One message. Values: bool (types 0 and 1), int (4, int32, or 5 beyond its range), bytes (6), str (7)."""
    out = bytearray()
    for name, value in headers.items():
        raw = name.encode()
        out += bytes((len(raw),)) + raw
        if isinstance(value, bool):
            out.append(0 if value else 1)
        elif isinstance(value, int):
            kind = 4 if -(2**31) <= value < 2**31 else 5
            out += bytes((kind,)) + _INTEGERS[kind].pack(value)
        else:
            raw = value.encode() if isinstance(value, str) else value
            out += bytes((7 if isinstance(value, str) else 6,)) + _U16.pack(len(raw)) + raw
    prelude = struct.pack(">II", _OVERHEAD + len(out) + len(payload), len(out))
    message = prelude + struct.pack(">I", crc32(prelude)) + out + payload
    return message + struct.pack(">I", crc32(message))


def translate_messages(
    messages: Iterator[Message], translate: Callable[[Message], bytes], done: Callable[[], bool]
) -> tuple[bytes, bool]:
    """(the bytes `translate` makes of each message, until `done()` says the answer has ended; whether the stream
    was corrupt, which ends it with an OpenAI-style error event). Joined once: a whole answer may come in one piece."""
    out: list[bytes] = []
    try:
        for message in messages:
            out.append(translate(message))
            if done():
                break
    except EventStreamError as error:
        why = f"the upstream's event stream is corrupt: {error}"
        out.append(error_event({"message": why, "type": "server_error", "param": None, "code": "invalid_stream"}))
        return b"".join(out), True
    return b"".join(out), False
