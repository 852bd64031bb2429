"""The usage log's records as the AI filter's module encodes them (native/usage_log.c), read by `serve`'s reader.

The module writes each AI request's record as protocol buffer bytes of its own making and frames a batch as one gRPC
message of OpenTelemetry's ExportLogsServiceRequest. These tests call its encoder through ctypes on generated
records and read the message back with the usage log's messages and xds_server.extproc.usage_log.fields: every
value comes back under its name, "-" where the record had none, whatever bytes a client put in the model.
"""

from __future__ import annotations

import ctypes

from hypothesis import given
from hypothesis import strategies as st

from testing.ai_module import LIB, ModuleBuffer, UsageRecord
from translators.xds.names import USAGE_RECORD_ATTRIBUTE, USAGE_RECORD_LINES
from xds_server.api import usage_log_pb2
from xds_server.extproc.usage_log import fields, records

Record = dict[str, bytes | None]


def buffer(value: bytes | None) -> ModuleBuffer:
    return ModuleBuffer(value, len(value)) if value is not None else ModuleBuffer(None, 0)


def message(batch: list[Record], capacity: int | None = None) -> bytes:
    """The gRPC message the module makes of `batch` (b"" when it does not fit in `capacity` bytes)."""
    encoded = (UsageRecord * max(1, len(batch)))()
    for at, record in enumerate(batch):
        for line, name in enumerate(USAGE_RECORD_LINES):
            encoded[at].lines[line] = buffer(record.get(name))
        encoded[at].response_model = buffer(record.get(USAGE_RECORD_ATTRIBUTE))
    generous = 64 + sum(64 + sum(len(value or b"-") + 8 for value in record.values()) for record in batch)
    size = capacity if capacity is not None else generous
    out = ctypes.create_string_buffer(size)
    length = LIB.xds_ai_usage_message(encoded, len(batch), out, size)
    return out.raw[:length]


def read(framed: bytes) -> list[dict[str, str]]:
    """A gRPC message's records, as the usage log reads them: not compressed, its length in the frame."""
    assert framed[0] == 0 and int.from_bytes(framed[1:5], "big") == len(framed) - 5
    return [fields(record) for record in records(usage_log_pb2.ExportLogsServiceRequest.FromString(framed[5:]))]


def expected(record: Record) -> dict[str, str]:
    found = {name: (record.get(name) or b"-").decode(errors="replace") for name in USAGE_RECORD_LINES}
    if record.get(USAGE_RECORD_ATTRIBUTE) is not None:
        found[USAGE_RECORD_ATTRIBUTE] = (record[USAGE_RECORD_ATTRIBUTE] or b"").decode(errors="replace")
    return found


# A line but the last holds no line break (the filter's are paths, numbers and names); the model, last, holds anything.
LINE = st.one_of(st.none(), st.binary(min_size=1, max_size=300).filter(lambda value: b"\n" not in value))
RECORD = st.fixed_dictionaries(
    {
        **{name: LINE for name in USAGE_RECORD_LINES[:-1]},
        USAGE_RECORD_LINES[-1]: st.one_of(st.none(), st.binary(min_size=1, max_size=300)),
        USAGE_RECORD_ATTRIBUTE: st.one_of(st.none(), st.binary(max_size=300)),
    }
)


@given(st.lists(RECORD, min_size=1, max_size=4))
def test_every_value_reads_back_under_its_name(batch: list[Record]) -> None:
    assert read(message(batch)) == [expected(record) for record in batch]


def test_a_record_of_the_filter_reads_as_the_usage_entry_it_makes() -> None:
    record: Record = {
        "path": b"/v1/chat/completions",
        "status": b"200",
        "backend": b"aiservicebackend/default/a",
        "duration_us": b"2500",
        "stream_ms": b"3",
        "input_tokens": b"7",
        "output_tokens": b"11",
        "model": b"model-a",
        USAGE_RECORD_ATTRIBUTE: b"model-a-0613",
    }
    [found] = read(message([record]))
    assert found == {**expected(record), "cluster": "-", "first_token_ms": "-"}


def test_a_batch_past_two_byte_lengths_frames_right() -> None:
    """Thousands of records: the enclosing messages' lengths take several bytes, which the frame's room holds."""
    record: Record = {"path": b"/v1/chat/completions", "model": b"m" * 200, USAGE_RECORD_ATTRIBUTE: b"r" * 200}
    batch = [record] * 3000
    assert read(message(batch)) == [expected(record)] * 3000


def test_a_batch_that_does_not_fit_is_not_written() -> None:
    record: Record = {"path": b"/v1/chat/completions"}
    assert message([record], capacity=20) == b""
    assert read(message([record], capacity=200)) == [expected(record)]


def test_a_model_that_is_not_utf8_loses_nothing_else() -> None:
    """A client's model cut at a byte limit, or with a lone surrogate's bytes: the batch still reads, that record's
    other values too."""
    bad: Record = {"status": b"200", "model": "é".encode() * 3 + b"\xc3", USAGE_RECORD_ATTRIBUTE: b"\xed\xa0\x80"}
    good: Record = {"status": b"404", "model": b"m"}
    first, second = read(message([bad, good]))
    assert first["status"] == "200" and first["model"] == "ééé\ufffd"
    assert second == expected(good)
