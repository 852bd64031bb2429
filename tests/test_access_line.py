"""The AI access log's line as the AI filter's module writes it (native/access_log.c), held to Envoy's and to JSON.

Envoy's JSON access logger still writes the listener's other refused or failed requests, from
translators.xds.ai_listener.AI_ACCESS_LOG_FIELDS; the module writes the AI requests' lines to the same stdout. These
tests call the module's formatter through ctypes: the same keys in the order Envoy's formatter writes them (sorted),
numbers as numbers, null where there is no value, and a line that is valid JSON in UTF-8 whatever bytes a client
sent (Envoy's own formatter writes each byte past ASCII as a \\u00XX escape; the module keeps UTF-8 and writes what
is not UTF-8 as U+FFFD).
"""

from __future__ import annotations

import ctypes
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testing.ai_module import ACCESS_FIELDS, LIB, AccessValues, Bytes, ModuleBuffer
from translators.xds.ai_listener import AI_ACCESS_LOG_FIELDS

KEYS = sorted(AI_ACCESS_LOG_FIELDS)  # the module's enum access_field order
NUMBERS = {"status", "duration_ms", "input_tokens", "output_tokens", "total_tokens"}


def line(values: dict[str, bytes]) -> bytes:
    encoded = AccessValues()
    for at, key in enumerate(KEYS):
        if key in values:
            encoded.values[at] = ModuleBuffer(values[key], len(values[key]))
    out = Bytes()
    assert LIB.xds_ai_access_line(ctypes.byref(encoded), ctypes.byref(out))
    written = ctypes.string_at(out.at, out.length)
    ctypes.CDLL(None).free(ctypes.c_void_p(out.at))
    return written


def test_the_module_writes_envoys_keys_in_envoys_order() -> None:
    assert len(KEYS) == ACCESS_FIELDS
    written = line({})
    assert written.endswith(b"}\n") and written.count(b"\n") == 1
    assert list(json.loads(written)) == KEYS
    assert json.loads(written) == dict.fromkeys(KEYS)  # no value: null, as Envoy writes one


def test_numbers_are_numbers_and_text_is_text() -> None:
    values = {key: b"7" for key in KEYS}
    found = json.loads(line(values))
    assert found == {key: 7 if key in NUMBERS else "7" for key in KEYS}


@given(st.text(max_size=64))
def test_any_text_reads_back_unchanged(text: str) -> None:
    found = json.loads(line({"model": text.encode(), "path": text.encode()}).decode("utf-8"))
    assert (found["model"], found["path"]) == (text, text)


@given(st.binary(max_size=64))
def test_any_bytes_make_one_valid_json_line_in_utf8(value: bytes) -> None:
    written = line({"model": value, "request_id": value})
    assert written.count(b"\n") == 1
    found = json.loads(written.decode("utf-8"))  # strict: the line is UTF-8
    assert found["model"] == found["request_id"]
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        assert "\ufffd" in found["model"]
    else:
        assert found["model"] == text


def test_bytes_that_are_not_utf8_become_replacement_characters() -> None:
    cut = "模".encode() * 2 + "模".encode()[:2]  # a value cut at a byte limit inside a character
    surrogate = b"\xed\xa0\x80"  # a lone surrogate's bytes: not UTF-8
    found = json.loads(line({"model": cut, "path": surrogate}).decode("utf-8"))
    assert found["model"] == "模模\ufffd\ufffd" and found["path"] == "\ufffd\ufffd\ufffd"


# The module copies a value eight bytes at a time up to what it must escape or check (native/json_run.h): each such
# byte at every offset of a value longer than a word, and 0x7f, which is copied as it is.
@pytest.mark.parametrize("at", range(18))
def test_a_byte_to_escape_or_check_is_found_at_any_offset(at: int) -> None:
    for stop in b'"\\\x00\x1f\x7f\x80\xc3\xff':
        value = b"a" * at + bytes([stop]) + b"b" * (17 - at)
        found = json.loads(line({"model": value}).decode("utf-8"))
        assert found["model"] == value.decode("utf-8", errors="replace")
    accented = b"a" * at + "é".encode() + b"b" * 17
    assert json.loads(line({"model": accented}).decode("utf-8"))["model"] == accented.decode()
