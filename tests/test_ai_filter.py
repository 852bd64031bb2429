"""The AI filter's JSON reading (native/ai_filter.c), held to Python's json module.

The filter decides routing: it tells whether a request body is one JSON object with no repeated top-level key and
copies its `model` into the header the routes match; it also reads a JSON answer's model and token usage into the
logs. A reader that disagreed with a real JSON parser would route a body otherwise than the upstream reads it, so
these tests call the module's exported scanners through ctypes and compare them with json.loads:

1. Validity: on generated JSON texts in any format, mutated ones, near misses of the grammar and junk, both scanners
   accept exactly what json.loads reads as an object with no repeated top-level key (NaN and Infinity refused),
   nested at most MAX_DEPTH deep.
2. A repeated top-level key is refused, even spelled with escapes; a repeated nested key is not.
3. model: its kind, and the header text it renders to, are json.loads' value.
4. Depth: MAX_DEPTH, on both sides of it.
5. Answers: the model and usage counts of OpenAI- and Anthropic-shaped answers; a malformed answer is not read.
6. Control characters: raw in a string they make the body invalid; escaped, they are decoded.
7. Event streams, cut anywhere: the last usage and the model, as `serve`'s metering read them before.
"""

from __future__ import annotations

import ctypes
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from testing.ai_module import (
    ABSENT,
    IS_NULL,
    IS_OTHER,
    IS_STRING,
    LIB,
    AnswerFields,
    EventReader,
    JsonValue,
    RequestFields,
)
from testing.sse import last_usage, split_streams

SOURCE = Path(__file__).parents[1] / "native" / "ai_filter.c"
MAX_DEPTH = int(re.findall(r"#define MAX_DEPTH (\d+)", SOURCE.read_text())[0])
FIELDS = {"prompt_tokens": 0, "input_tokens": 0, "completion_tokens": 1, "output_tokens": 1, "total_tokens": 2}


class Field(NamedTuple):
    kind: int
    rendered: bytes


class Scan(NamedTuple):
    ok: bool
    fields: dict[str, Field]  # model
    tokens: dict[int, float]  # an answer's usage counts, by enum usage_field
    usage_seen: bool = False  # an answer's `usage` is an object


def field(value: JsonValue) -> Field:
    if value.kind == ABSENT:
        return Field(ABSENT, b"")
    out = ctypes.create_string_buffer(value.text.length + 1)
    n = LIB.xds_ai_render(ctypes.byref(value), out)
    assert n <= value.text.length  # the room the contract asks for is enough
    return Field(value.kind, out.raw[:n])


def scan_request(body: bytes) -> Scan:
    fields = RequestFields()  # its spans point into `body`: rendered while it is alive
    ok = LIB.xds_ai_scan_request(body, len(body), ctypes.byref(fields))
    return Scan(ok, {"model": field(fields.model)}, {})


def scan_answer(body: bytes) -> Scan:
    fields = AnswerFields()
    ok = LIB.xds_ai_scan_answer(body, len(body), ctypes.byref(fields))
    tokens = {i: fields.tokens[i] for i in range(3) if fields.has[i]}
    return Scan(ok, {"model": field(fields.model)}, tokens, fields.usage_seen)


def outside_strings(text: str) -> str:
    """The characters of a valid JSON text that are not inside a string."""
    kept, in_string, escaped = [], False, False
    for ch in text:
        if in_string:
            in_string, escaped = (True, False) if escaped else (ch != '"', ch == "\\")
        elif ch == '"':
            in_string = True
        else:
            kept.append(ch)
    return "".join(kept)


def nesting(text: str) -> int:
    depth = deepest = 0
    for ch in outside_strings(text):
        depth += (ch in "[{") - (ch in "]}")
        deepest = max(deepest, depth)
    return deepest


def python_object(body: bytes) -> dict[str, Any] | None:
    """The body as json.loads reads it, if the filter's contract calls it JSON (an object, no top-level key twice)."""
    objects: list[list[tuple[str, Any]]] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        objects.append(pairs)  # nested objects come first: the top-level one is the last
        return dict(pairs)

    text = body.decode("utf-8")
    try:  # int() refuses NaN and Infinity, which json.loads would read
        value = json.loads(text, object_pairs_hook=hook, parse_constant=int)
    except ValueError:
        return None
    if not isinstance(value, dict) or nesting(text) > MAX_DEPTH:
        return None
    keys = [key for key, _ in objects[-1]]
    return value if len(set(keys)) == len(keys) else None


def assert_field(got: Field, document: dict[str, Any], name: str) -> None:
    """`got` is what json.loads read for `name`: its kind, and its header text."""
    value = document.get(name, ...)
    if value is ... or value is None or isinstance(value, str):
        kind = ABSENT if value is ... else IS_NULL if value is None else IS_STRING
        # A lone surrogate escape, which json.loads keeps as such, decodes to its 3 bytes (WTF-8).
        rendered = b"" if value is ... else b"null" if value is None else value.encode("utf-8", "surrogatepass")
        assert got == Field(kind, rendered)
        return
    assert got.kind == IS_OTHER
    text = got.rendered.decode()
    assert json.loads(text) == value  # not json.dumps(value): a number keeps how it is written (1E2)
    assert not set(outside_strings(text)) & set(" \t\n\r")


# Lone surrogates and the characters JSON escapes, often; keys without surrogates, so that they stay distinct.
SPECIAL = st.sampled_from([*'"\\/ \b\f\n\r\t\x00\x1f\x7féж€😀', "\ud800", "\udc00", "\ud83d"])
STRINGS = st.text(SPECIAL | st.characters(exclude_categories=()), max_size=6)
KEYS = st.sampled_from(["model", "usage", ""]) | st.text(max_size=4)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | STRINGS
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4))
SPACE = st.text(st.sampled_from(" \t\n\r"), max_size=2)
FORMS = st.lists(st.integers(0, 2), min_size=17, max_size=17)


def dump(draw: Callable[[st.SearchStrategy[Any]], Any], value: Any) -> bytes:
    """`value` as JSON in a random format: indent, space around separators, escaped or raw non-ASCII."""
    separators = (draw(SPACE) + "," + draw(SPACE), draw(SPACE) + ":" + draw(SPACE))
    options: dict[str, Any] = {"indent": draw(st.none() | st.integers(0, 2) | SPACE), "separators": separators}
    text = json.dumps(value, ensure_ascii=draw(st.booleans()), **options)
    if re.search("[\ud800-\udfff]", text):  # a raw lone surrogate has no UTF-8: escaped instead
        text = json.dumps(value, ensure_ascii=True, **options)
    return f"{draw(SPACE)}{text}{draw(SPACE)}".encode()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A JSON object as is, cut short, or with a few bytes inserted, removed or replaced."""
    body = bytearray(dump(draw, draw(st.dictionaries(KEYS, VALUES, max_size=4))))
    for _ in range(draw(st.integers(0, 2))):
        at, how = draw(st.integers(0, len(body))), draw(st.sampled_from(["cut", "insert", "delete", "replace"]))
        byte = draw(st.sampled_from(b'{}[]",:\\/ \n0159.eE+-tfnulNaIy\x00\x1f\x7f') | st.integers(0, 255))
        if how == "cut":
            del body[at:]
        elif how == "insert":
            body.insert(at, byte)
        elif at < len(body):
            body[at : at + 1] = b"" if how == "delete" else bytes([byte])
    return bytes(body)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """An object with or without `model` (any value), among other members, in any order."""
    members = [item for item in draw(st.dictionaries(KEYS, VALUES, max_size=3)).items() if item[0] != "model"]
    members += [("model", draw(VALUES))] * draw(st.booleans())
    return dump(draw, dict(draw(st.permutations(members))))


def spell(name: str, forms: list[int]) -> str:
    """`name` as a JSON string, its character i raw (forms[i] 0) or a \\u escape in lower (1) or upper (2) hex."""
    characters = (f"\\u{ord(ch):04{'xX'[form - 1]}}" if form else ch for ch, form in zip(name, forms, strict=False))
    return '"' + "".join(characters) + '"'


def assert_agrees(body: bytes) -> bool:
    """Both scanners' verdict on `body`, and its model, are json.loads'; returns the verdict."""
    result, document = scan_request(body), python_object(body)
    assert result.ok == (document is not None)
    assert scan_answer(body)[:2] == result[:2]
    if document is not None:
        assert_field(result.fields["model"], document, "model")
    return result.ok


@given(VALUES, st.data())
def test_generated_json_is_valid_when_an_object(value: Any, data: st.DataObject) -> None:
    assert assert_agrees(dump(data.draw, value)) == isinstance(value, dict)


# Valid UTF-8 only: the C scanner does not check UTF-8 (the bytes go upstream as they are), Python does.
@given(mutated() | st.binary(max_size=12))
def test_mutated_and_arbitrary_bodies(body: bytes) -> None:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        assume(False)
    assert_agrees(body)


# Values that are almost JSON, or JSON that is easily misread (a "|" between two).
NEAR_MISSES = (  # noqa: SIM905 (a list literal would take a line per value)
    "0|-0|01|-01|00|1.|-1.|.5|+1|-|1e|1e+|1E-2|1.5e|1e5|0x1|\u0661|true|tru|trUe|nuLL|fALSE|NaN|Infinity|-Infinity|"
    '"\\u00e"|"\\u00eG"|"\\u00E9"|"\\x41"|"\\a"|"\\\'"|"\\U0041"|"\\/"|"\t"|"\x7f"|\v1|1\f|\x001|\xa01|\ufeff1|'
    '[1,]|[,1]|[1 2]|{}|{"a"}|{"a":}|{"a":1,}|[]]|[[]|{"a":1}}|{"a":1 "b":2}'
).split("|")


@pytest.mark.parametrize("value", NEAR_MISSES)
def test_near_misses(value: str) -> None:
    assert_agrees(f'{{"model":{value}}}'.encode())
    assert_agrees(f'{{"a":[{value}]}}'.encode())


@given(requests())
def test_model(body: bytes) -> None:
    assert assert_agrees(body)


def test_rendering() -> None:
    body = rb'{"model": "\"\\\/\b\f\n\r\t\u0041\u00e9\u0436\u20AC\ud83d\ude00\ud800"}'
    rendered = '"\\/\b\f\n\r\tAéж€😀\ud800'.encode("utf-8", "surrogatepass")
    assert scan_request(body).fields["model"] == Field(IS_STRING, rendered)
    body = rb'{"model": [ 1 , "x \" y\\" , {"k" : 1E2} ]}'
    assert scan_request(body).fields["model"] == Field(IS_OTHER, rb'[1,"x \" y\\",{"k":1E2}]')


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        (rb'{"model":"a","mod\u0065l":"b"}', False),
        (rb'{"a":1,"b":2,"a":3}', False),
        ('{"\\ud83d\\ude00":1,"😀":2}'.encode(), False),  # an escaped surrogate pair is the character it encodes
        (rb'{"\ud800":1,"\udc00":2}', True),
        (rb'{"a":{"x":1,"x":2},"b":[{"y":1,"y":2}]}', True),  # only top-level keys are compared
    ],
)
def test_repeated_keys(body: bytes, valid: bool) -> None:
    assert assert_agrees(body) is valid


@given(FORMS, FORMS, VALUES)
def test_escaped_model_name(forms: list[int], again: list[int], value: Any) -> None:
    assert assert_agrees(f"{{{spell('model', forms)}:{json.dumps(value)}}}".encode())
    assert not assert_agrees(f'{{{spell("model", forms)}:1,"x":{{}},{spell("model", again)}:2}}'.encode())


def test_model_repeated_after_256_members() -> None:
    """Past MAX_TRACKED_KEYS members keys are compared no more (quadratic), but a second `model` is still refused:
    one for routing and another the upstream reads would be a way around the routes."""
    body = ("{" + "".join(f'"k{i}":0,' for i in range(256)) + '"model":"a","model":"b"}').encode()
    assert python_object(body) is None
    assert not scan_request(body).ok


@pytest.mark.parametrize(("open_", "close"), [("[", "]"), ('{"a":', "}")])
def test_depth_limit(open_: str, close: str) -> None:
    """MAX_DEPTH counts the body's own object: it may hold MAX_DEPTH - 1 containers nested in one another."""
    for inner, valid in ((MAX_DEPTH - 1, True), (MAX_DEPTH, False)):
        body = ('{"a":' + open_ * inner + "0" * (open_ != "[") + close * inner + "}").encode()
        json.loads(body)  # Python has no such limit: it is the filter's own
        assert nesting(body.decode()) == inner + 1
        assert scan_request(body).ok is valid
        assert scan_answer(body).ok is valid
    assert scan_request(b'{"a":"' + b"[" * 1000 + b'"}').ok  # brackets in strings do not nest


OPENAI, ANTHROPIC = ("prompt_tokens", "completion_tokens", "total_tokens"), ("input_tokens", "output_tokens")


@given(st.data(), st.sampled_from([OPENAI, ANTHROPIC]), st.just("m") | VALUES)
def test_answer_usage(data: st.DataObject, names: tuple[str, ...], model: Any) -> None:
    usage = {name: n for name in names if (n := data.draw(st.none() | st.integers(0, 2**40), label=name)) is not None}
    answer = {"id": "chatcmpl-1", "model": model, "choices": [{"index": 0, "message": {"content": "hi"}}]}
    answer["usage"] = usage | {"cache_read_input_tokens": 7}  # a usage member the filter does not read
    body = dump(data.draw, answer)
    result, document = scan_answer(body), python_object(body)
    assert document is not None
    assert result.ok
    assert result.usage_seen
    assert result.tokens == {FIELDS[name]: float(n) for name, n in usage.items()}
    assert_field(result.fields["model"], document, "model")


@given(st.sampled_from(sorted(FIELDS)), FORMS, st.integers(0, 2**40))
@example("completion_tokens", [1] * 17, 5)  # 102 bytes: more than key_is's buffer held before it had 6 * 17
def test_escaped_usage_names(name: str, forms: list[int], n: int) -> None:
    assert scan_answer(f'{{"usage":{{{spell(name, forms)}:{n}}}}}'.encode()).tokens == {FIELDS[name]: n}


@pytest.mark.parametrize(
    ("body", "tokens", "usage_seen"),
    [
        (b'{"usage":{"prompt_tokens":"1","completion_tokens":null,"total_tokens":true}}', {}, True),
        (b'{"usage":{"input_tokens":[1],"output_tokens":{"n":1},"total_tokens":25}}', {2: 25.0}, True),
        (b'{"usage":{"input_tokens":-1,"output_tokens":1.0,"total_tokens":1e3}}', {}, True),  # no counts
        (b'{"usage":{},"model":"m"}', {}, True),
        (b'{"usage":null,"model":"m"}', {}, False),
        (b'{"usage":"12"}', {}, False),
        (b'{"model":"m","usage":{"prompt_tokens":1,"total_tokens":3,"prompt_tokens":2}}', {}, False),  # a repeat
    ],
)
def test_answer_usage_values(body: bytes, tokens: dict[int, float], usage_seen: bool) -> None:
    result = scan_answer(body)
    assert (result.ok, result.tokens, result.usage_seen) == (True, tokens, usage_seen)


@given(st.integers(0, 2**40), st.data())
def test_malformed_answer(n: int, data: st.DataObject) -> None:
    body = json.dumps({"model": "m", "usage": {"prompt_tokens": n, "total_tokens": n}}).encode()
    assert scan_answer(body).tokens == {0: n, 2: n}
    assert not scan_answer(body[: data.draw(st.integers(0, len(body) - 1))]).ok  # cut short
    assert not scan_answer(body[:-1] + b',"model":"n"}').ok  # a repeated top-level key


# The scanner looks at a string eight bytes at a time (native/json_run.h): what ends or escapes it, at every offset.
@pytest.mark.parametrize("at", range(18))
def test_a_string_is_read_whatever_offset_its_escape_or_end_is_at(at: int) -> None:
    for inner in (b"", b'\\"', b"\\\\", b"\\n", b"\\u0041", b"\x00", b"\x1f", b"\x7f", b"\xc3\xa9"):
        assert_agrees(b'{"model":"' + b"a" * at + inner + b"b" * (17 - at) + b'"}')
        assert_agrees(b'{"' + b"k" * at + inner + b'":1,"model":"' + b"m" * at + b'"}')


@pytest.mark.parametrize("byte", range(0x20))
def test_control_characters(byte: int) -> None:
    assert not assert_agrees(b'{"model":"a%cb"}' % byte)
    assert not assert_agrees(b'{"a%cb":1}' % byte)
    assert scan_request(b'{"model":"a\\u%04xb"}' % byte).fields["model"] == Field(IS_STRING, b"a%cb" % byte)
    assert scan_request(b'{"model":"a\\nb"}').fields["model"] == Field(IS_STRING, b"a\nb")


# --- event streams: the AI filter's own reader (the events of a streamed answer, in pieces cut anywhere) ---


def read_stream(pieces: list[bytes]) -> tuple[bool, dict[int, float], bytes]:
    """Feeds the pieces to a reader as Envoy hands the filter a streamed answer's chunks: (every piece read, the
    counts, the model)."""
    reader = EventReader()
    try:
        fed = all([LIB.xds_ai_events_feed(ctypes.byref(reader), piece, len(piece)) for piece in pieces])
        LIB.xds_ai_events_end(ctypes.byref(reader))
        usage = reader.usage
        counts = {i: usage.tokens[i] for i in range(3) if usage.has[i]}
        model = ctypes.string_at(usage.model.at, usage.model.length) if usage.model.length else b""
        return fed, counts, model
    finally:
        LIB.xds_ai_events_free(ctypes.byref(reader))


@given(split_streams())
def test_any_split_of_an_event_stream_gives_the_last_usage_and_model(
    case: tuple[bytes, list[bytes], list[bytes]],
) -> None:
    """The same streams the Python parser is held to (testing/sse.py): the last `usage` wins, its total is input +
    output where it has none; the model is the first event's, then that of each event that may mention usage (the
    word, or a \\u escape that could spell it)."""
    _, expected, pieces = case
    fed, counts, model = read_stream(pieces)
    assert fed
    want = last_usage(expected)
    if want is None:
        assert counts == {}
    else:
        total = want.get("total_tokens", want["prompt_tokens"] + want["completion_tokens"])
        assert counts == {0: want["prompt_tokens"], 1: want["completion_tokens"], 2: total}
    wanted_model = b""
    for data in expected:
        if data != b"[DONE]" and (not wanted_model or b"usage" in data or b"\\u" in data):
            wanted_model = json.loads(data)["model"].encode()
    assert model == wanted_model


def test_a_usage_without_counts_sets_input_zero_and_its_total() -> None:
    """What OpenAI-style servers omit: an input count of 0 and a total of input + output, as `serve` read them."""
    assert read_stream([b'data: {"model":"m","usage":{"completion_tokens":4}}\n\n'])[1] == {0: 0, 1: 4, 2: 4}
    assert read_stream([b'data: {"model":"m","usage":{}}\n\n'])[1] == {0: 0, 2: 0}
    assert read_stream([b'data: {"model":"m","usage":null}\n\n'])[1] == {}  # no usage object: nothing


def test_a_usage_key_spelled_with_escapes_is_read_after_the_model_is_known() -> None:
    first = b'data: {"model":"m","choices":[]}\n\n'
    escaped = b'data: {"model":"m","\\u0075sage":{"prompt_tokens":2,"completion_tokens":3}}\n\n'
    assert read_stream([first, escaped])[1] == {0: 2, 1: 3, 2: 5}


def test_an_unterminated_last_event_counts_and_multi_line_data_is_joined() -> None:
    assert read_stream([b'data: {"model":"m",\ndata: "usage":{"prompt_tokens":1}}'])[1:] == ({0: 1, 2: 1}, b"m")


def test_a_line_past_the_limit_stops_the_reading() -> None:
    """A line (or an event) of more than a MiB: the stream is passed on unread rather than held."""
    fed, counts, _ = read_stream([b"data: " + b"x" * (1 << 20), b'\n\ndata: {"model":"m","usage":{}}\n\n'])
    assert not fed and counts == {}
