"""A resource given as its deterministic serialization, assembled from the cached serializations of its parts.

Protobuf's encoding of a message is the encoding of each field in field-number order, and a field holding a message
is its tag, the length of the message's encoding and that encoding. So a RouteConfiguration of 10,000 routes can be
written by joining the bytes of each route, kept from the build that made it, instead of copying 10,000 messages
into a new one and serializing them all again at each reload; tests/test_serialized.py holds the result to what
`SerializeToString(deterministic=True)` of the message would be.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Generic, TypeVar

from google.protobuf.message import Message

M = TypeVar("M", bound=Message, covariant=True)

_LENGTH_DELIMITED = 2  # the wire type of strings, bytes and messages


def varint(value: int) -> bytes:
    """`value` (not negative) in protobuf's base-128 varint: seven bits a byte, the lowest first."""
    encoded = bytearray()
    while value > 0x7F:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


def field_header(number: int, length: int) -> bytes:
    """What precedes `length` bytes of a message (or string) in field `number` of the message holding it."""
    return varint(number << 3 | _LENGTH_DELIMITED) + varint(length)


@dataclass(frozen=True, eq=False)
class SerializedResource(Generic[M]):
    """One xDS resource as the bytes the snapshot cache serves. `references`: the names of other resources it
    refers to, by type URL (a RouteConfiguration's clusters), which the cache checks exist without reading it."""

    name: str
    serialized: bytes  # deterministic, as SerializeToString(deterministic=True) would write it
    message_type: type[M]
    references: Mapping[str, frozenset[str]]

    @cached_property
    def message(self) -> M:
        """Parsed when first asked (goldens, tests, a failed check's explanation); Envoy is sent the bytes."""
        return self.message_type.FromString(self.serialized)
