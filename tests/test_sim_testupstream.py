"""`xds-server sim testupstream` as e2e tests use it: a real subprocess on its own loopback address, real HTTP."""

from __future__ import annotations

import base64
import gzip
import signal
import urllib.request
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDictProxy
from yarl import URL

from testing.ports import loopback_address
from testing.sims import SimProcess, start_sim

UPSTREAM_ID = "tu-1"
POD_NAME = "pod-1"
MODELS = ["m-a", "m-b"]


Upstream = SimProcess


@dataclass(frozen=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    chunks: list[bytes]  # the body cut at HTTP chunk boundaries, as the server wrote it

    def json(self) -> Any:
        return orjson.loads(self.body)


def b64(value: str | bytes) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode()


def start_upstream(log: Path, args: list[str], env: dict[str, str], host: str, port: int) -> Upstream:
    return start_sim("testupstream", args, host, port, log, env)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    host, port = loopback_address()
    args = ["--host", host, "--port", str(port), *(f"--model={model}" for model in MODELS), "--sse-gap-ms", "1"]
    env = {"TESTUPSTREAM_ID": UPSTREAM_ID, "POD_NAME": POD_NAME}
    started = start_upstream(tmp_path_factory.mktemp("testupstream") / "log", args, env, host, port)
    yield started
    started.kill()


async def fetch(
    url: str | URL,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    data: bytes | AsyncIterator[bytes] | None = None,
    decompress: bool = True,
) -> Reply:
    async with (
        aiohttp.ClientSession(auto_decompress=decompress) as session,
        session.request(method, url, headers=headers, data=data) as response,
    ):
        chunks, pending = [], b""
        async for data_piece, end_of_http_chunk in response.content.iter_chunks():
            pending += data_piece
            if end_of_http_chunk and pending:
                chunks.append(pending)
                pending = b""
        if pending:
            chunks.append(pending)
        return Reply(response.status, response.headers, b"".join(chunks), chunks)


async def chunked(*pieces: bytes) -> AsyncIterator[bytes]:
    """A request body without Content-Length, sent with Transfer-Encoding: chunked."""
    for piece in pieces:
        yield piece


def sse_data(reply: Reply) -> list[str]:
    assert reply.status == 200, reply.body
    assert reply.headers["Content-Type"] == "text/event-stream"
    assert all(chunk.startswith(b"data: ") and chunk.endswith(b"\n\n") for chunk in reply.chunks), reply.chunks
    return [chunk[len(b"data: ") : -2].decode() for chunk in reply.chunks]


def assert_check_failed(reply: Reply, *mentions: str) -> None:
    assert reply.status == 400
    assert reply.headers["X-TestUpstream-Error"] == "true"
    assert reply.headers["Content-Type"].startswith("text/plain")
    for mention in mentions:
        assert mention in reply.body.decode(), reply.body


async def test_health_names_the_pod(upstream: Upstream) -> None:
    reply = await fetch(f"{upstream.url}/health", method="GET")
    assert reply.status == 200
    assert reply.headers["x-inference-pod"] == POD_NAME
    assert reply.headers["x-testupstream-id"] == UPSTREAM_ID
    assert f"testupstream {UPSTREAM_ID} listening on {upstream.url}" in upstream.log.read_text()


# (request path, request headers, passing check headers, failing check headers, words the failure must contain)
CHECKS = {
    "host": ("/any", {}, None, {"x-expected-host": "other.example"}, ["other.example"]),
    "headers": (
        "/any",
        {"x-a": "1", "x-b": "two:parts"},
        {"x-expected-headers": b64("x-a:1,x-b:two:parts")},
        {"x-expected-headers": b64("x-a:1,x-b:three")},
        ["'x-b'", "'two:parts'", "'three'"],
    ),
    "non-expected headers": (
        "/any",
        {"x-present": "yes"},
        {"x-non-expected-request-headers": b64("x-absent,x-gone")},
        {"x-non-expected-request-headers": b64("x-absent,x-present")},
        ["'x-present'", "'yes'"],
    ),
    "testupstream id": (
        "/any",
        {},
        {"x-expected-testupstream-id": UPSTREAM_ID},
        {"x-expected-testupstream-id": "tu-2"},
        [f"'{UPSTREAM_ID}'", "'tu-2'"],
    ),
    "path as sent, without query": (
        "/v1/a%3Ab?x=1",
        {},
        {"x-expected-path": b64("/v1/a%3Ab")},
        {"x-expected-path": b64("/v1/a:b")},
        ["'/v1/a%3Ab'", "'/v1/a:b'"],
    ),
    "raw query": (
        "/any?x=1&y=a%2Fb",
        {},
        {"x-expected-raw-query": "x=1&y=a%2Fb"},
        {"x-expected-raw-query": "x=1&y=a/b"},
        ["'x=1&y=a%2Fb'", "'x=1&y=a/b'"],
    ),
    "request body": (
        "/any",
        {},
        {"x-expected-request-body": b64(b'{"model":"m"}')},
        {"x-expected-request-body": b64(b'{"model":"n"}')},
        ['{"model":"m"}', '{"model":"n"}'],
    ),
}


@pytest.mark.parametrize("case", CHECKS.values(), ids=CHECKS.keys())
async def test_request_check_passes_and_fails(upstream: Upstream, case: tuple[Any, ...]) -> None:
    path, request_headers, passing, failing, mentions = case
    if passing is None:  # the Host header depends on the fixture's address
        passing = {"x-expected-host": f"{upstream.host}:{upstream.port}"}
        mentions = [*mentions, f"'{upstream.host}:{upstream.port}'"]
    url = URL(upstream.url + path, encoded=True)
    base = {**request_headers, "x-response-body": b64("ok")}
    ok = await fetch(url, headers={**base, **passing}, data=b'{"model":"m"}')
    assert (ok.status, ok.body) == (200, b"ok")
    assert "X-TestUpstream-Error" not in ok.headers
    failed = await fetch(url, headers={**base, **failing}, data=b'{"model":"m"}')
    assert_check_failed(failed, *mentions)
    assert failed.headers["x-testupstream-id"] == UPSTREAM_ID


async def test_undecodable_check_header_is_reported(upstream: Upstream) -> None:
    reply = await fetch(f"{upstream.url}/any", headers={"x-expected-path": "%%%"})
    assert_check_failed(reply, "x-expected-path", "base64")


async def test_chunked_body_needs_an_endpoint_picker_header(upstream: Upstream) -> None:
    headers = {"x-response-body": b64("ok"), "x-expected-request-body": b64("abcdef")}
    rejected = await fetch(f"{upstream.url}/any", headers=headers, data=chunked(b"abc", b"def"))
    assert_check_failed(rejected, "Content-Length")
    picked = {**headers, "x-gateway-destination-endpoint": "127.0.0.1:8080"}
    accepted = await fetch(f"{upstream.url}/any", headers=picked, data=chunked(b"abc", b"def"))
    assert (accepted.status, accepted.body) == (200, b"ok")
    with_length = await fetch(f"{upstream.url}/any", headers=headers, data=b"abcdef")
    assert (with_length.status, with_length.body) == (200, b"ok")


async def test_response_status_headers_and_body(upstream: Upstream) -> None:
    headers = {
        "x-response-status": "503",
        "x-response-headers": b64("x-one:1,content-type:text/plain,x-url:http://a"),
        "x-response-body": b64(b"upstream says no"),
    }
    reply = await fetch(f"{upstream.url}/v1/chat/completions", headers=headers, data=b"{}")
    assert reply.status == 503
    assert reply.body == b"upstream says no"
    assert reply.headers["x-one"] == "1"
    assert reply.headers["x-url"] == "http://a"
    assert reply.headers["Content-Type"] == "text/plain"
    assert reply.headers["x-inference-pod"] == POD_NAME


async def test_default_content_type_is_json(upstream: Upstream) -> None:
    reply = await fetch(f"{upstream.url}/any", headers={"x-response-body": b64("{}")})
    assert reply.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("headers", "mention"),
    [
        ({"x-response-status": "abc"}, "x-response-status"),
        ({"x-response-status": "42"}, "x-response-status"),
        ({"x-response-headers": b64("no-colon")}, "no-colon"),
        ({"x-response-type": "aws-event-stream"}, "'aws-event-stream' is not supported"),
        ({"x-response-type": "sse", "x-sse-gap-ms": "soon"}, "x-sse-gap-ms"),
        ({"x-fake-response": "huge"}, "x-fake-response"),
    ],
    ids=["status-not-a-number", "status-out-of-range", "header-without-colon", "aws", "gap", "fake-size"],
)
async def test_unusable_response_headers_are_reported(
    upstream: Upstream, headers: dict[str, str], mention: str
) -> None:
    reply = await fetch(f"{upstream.url}/v1/chat/completions", headers=headers, data=b"{}")
    assert_check_failed(reply, mention)


async def test_sse_lines_become_one_event_each(upstream: Upstream) -> None:
    body = b'\n{"a":1}\n{"b":2}\n{"c":3}\n'  # empty lines carry no event
    headers = {"x-response-type": "sse", "x-response-body": b64(body), "x-sse-gap-ms": "0"}
    reply = await fetch(f"{upstream.url}/v1/chat/completions", headers=headers, data=b"{}")
    assert reply.chunks == [b'data: {"a":1}\n\n', b'data: {"b":2}\n\n', b'data: {"c":3}\n\n']


async def test_sse_raw_blocks_are_passed_through(upstream: Upstream) -> None:
    body = b"event: start\ndata: 1\n\n\n\nevent: end\ndata: 2\n\n"
    headers = {"x-response-type": "sse", "x-response-body": b64(body), "x-response-status": "201"}
    reply = await fetch(f"{upstream.url}/any", headers=headers, data=b"{}")
    assert reply.status == 201
    assert reply.headers["Content-Type"] == "text/event-stream"
    assert reply.chunks == [b"event: start\ndata: 1\n\n", b"event: end\ndata: 2\n\n"]


async def test_sse_gzip_decodes_event_by_event(upstream: Upstream) -> None:
    headers = {"x-response-type": "sse-gzip", "x-response-body": b64(b"one\ntwo\nthree")}
    reply = await fetch(f"{upstream.url}/any", headers=headers, data=b"{}", decompress=False)
    assert reply.headers["Content-Encoding"] == "gzip"
    assert reply.headers["Content-Type"] == "text/event-stream"
    decoder = zlib.decompressobj(wbits=31)
    decoded = [decoder.decompress(chunk) for chunk in reply.chunks]
    assert decoded == [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n", b""]  # the last chunk is the trailer
    assert decoder.eof
    assert gzip.decompress(reply.body) == b"data: one\n\ndata: two\n\ndata: three\n\n"


async def test_gzip_body(upstream: Upstream) -> None:
    headers = {"x-response-type": "gzip", "x-response-body": b64(b'{"ok":true}')}
    reply = await fetch(f"{upstream.url}/any", headers=headers, data=b"{}", decompress=False)
    assert reply.headers["Content-Encoding"] == "gzip"
    assert reply.headers["Content-Type"] == "application/json"
    assert gzip.decompress(reply.body) == b'{"ok":true}'


async def test_gzip_canned_body(upstream: Upstream) -> None:
    reply = await fetch(f"{upstream.url}/non-llm-route", headers={"x-response-type": "gzip"}, decompress=False)
    assert orjson.loads(gzip.decompress(reply.body)) == {"message": "This is a non-LLM endpoint response"}


@pytest.mark.parametrize(
    ("body", "model"),
    [(b'{"model":"m-x","messages":[]}', "m-x"), (b'{"model":7}', None), (b"model=m-x", None), (b"", None)],
    ids=["string", "not-a-string", "not-json", "empty"],
)
async def test_model_is_echoed(upstream: Upstream, body: bytes, model: str | None) -> None:
    reply = await fetch(f"{upstream.url}/any", headers={"x-response-body": b64("ok")}, data=body)
    assert reply.headers.get("X-Model") == model


async def test_canned_chat_completion(upstream: Upstream) -> None:
    reply = await fetch(f"{upstream.url}/v1/chat/completions", data=b'{"model":"m-a","messages":[]}')
    assert reply.status == 200
    assert reply.headers["X-Model"] == "m-a"
    document = reply.json()
    assert document["object"] == "chat.completion"
    assert document["model"] == "m-a"
    [choice] = document["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].endswith(".")
    assert choice["finish_reason"] == "stop"
    assert document["usage"] == {"prompt_tokens": 1, "completion_tokens": 100, "total_tokens": 101}


async def test_canned_chat_stream_ends_with_usage_and_done(upstream: Upstream) -> None:
    body = b'{"model":"m-a","stream":true,"messages":[]}'
    reply = await fetch(f"{upstream.url}/v1/chat/completions", headers={"x-sse-gap-ms": "0"}, data=body)
    *events, done = sse_data(reply)
    assert done == "[DONE]"
    chunks = [orjson.loads(event) for event in events]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    *deltas, finish, usage = chunks
    text = "".join(chunk["choices"][0]["delta"]["content"] for chunk in deltas)
    assert len(deltas) == len(text.split(" ")) > 1 and text.endswith(".")
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 1, "completion_tokens": 100, "total_tokens": 101}


async def test_canned_stream_can_be_gzipped(upstream: Upstream) -> None:
    headers = {"x-response-type": "gzip", "x-sse-gap-ms": "0"}
    reply = await fetch(
        f"{upstream.url}/v1/chat/completions", headers=headers, data=b'{"stream":true}', decompress=False
    )
    assert reply.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(reply.body).endswith(b"data: [DONE]\n\n")


async def test_canned_text_completion(upstream: Upstream) -> None:
    document = (await fetch(f"{upstream.url}/v1/completions", data=b'{"model":"m-b","prompt":"hi"}')).json()
    assert document["object"] == "text_completion"
    assert document["model"] == "m-b"
    assert document["choices"][0]["text"].endswith(".")
    assert document["usage"] == {"prompt_tokens": 1, "completion_tokens": 100, "total_tokens": 101}


async def test_canned_text_completion_stream(upstream: Upstream) -> None:
    body = b'{"model":"m-b","prompt":"hi","stream":true}'
    reply = await fetch(f"{upstream.url}/v1/completions", headers={"x-sse-gap-ms": "0"}, data=body)
    *events, done = sse_data(reply)
    assert done == "[DONE]"
    chunks = [orjson.loads(event) for event in events]
    assert {chunk["object"] for chunk in chunks} == {"text_completion"}
    assert "".join(chunk["choices"][0]["text"] for chunk in chunks).endswith(".")
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == {"prompt_tokens": 1, "completion_tokens": 100, "total_tokens": 101}
    assert all("usage" not in chunk for chunk in chunks[:-1])


@pytest.mark.parametrize(
    ("request_input", "count"),
    [("one two", 1), (["one", "two three"], 2), ([1, 2, 3], 1), ([[1, 2], [3]], 2)],
    ids=["string", "strings", "tokens", "token-arrays"],
)
async def test_canned_embeddings(upstream: Upstream, request_input: object, count: int) -> None:
    body = orjson.dumps({"model": "m-e", "input": request_input, "dimensions": 3})
    document = (await fetch(f"{upstream.url}/v1/embeddings", data=body)).json()
    assert document["object"] == "list"
    assert document["model"] == "m-e"
    assert [item["index"] for item in document["data"]] == list(range(count))
    assert all(len(item["embedding"]) == 3 for item in document["data"])
    assert document["usage"]["prompt_tokens"] == document["usage"]["total_tokens"] > 0


async def test_embeddings_without_input_is_an_api_error(upstream: Upstream) -> None:
    reply = await fetch(f"{upstream.url}/v1/embeddings", data=b'{"model":"m-e"}')
    assert reply.status == 400
    assert "X-TestUpstream-Error" not in reply.headers
    assert reply.json()["error"]["type"] == "invalid_request_error"


async def test_models_lists_the_model_flags(upstream: Upstream) -> None:
    document = (await fetch(f"{upstream.url}/v1/models", method="GET")).json()
    assert document["object"] == "list"
    assert [model["id"] for model in document["data"]] == MODELS


async def test_non_llm_route_and_unknown_path(upstream: Upstream) -> None:
    reply = await fetch(f"{upstream.url}/non-llm-route", method="GET")
    assert reply.json() == {"message": "This is a non-LLM endpoint response"}
    missing = await fetch(f"{upstream.url}/v2/unknown", data=b"{}")
    assert missing.status == 404
    assert missing.headers["Content-Type"] == "application/json"
    assert "/v2/unknown" in missing.json()["error"]["message"]
    assert missing.headers["x-inference-pod"] == POD_NAME


@pytest.mark.parametrize(("size", "low", "high"), [("small", 4_000, 7_000), ("medium", 400_000, 700_000)])
async def test_fake_response_sizes(upstream: Upstream, size: str, low: int, high: int) -> None:
    reply = await fetch(f"{upstream.url}/v1/chat/completions", headers={"x-fake-response": size}, data=b"{}")
    assert low <= len(reply.body) <= high
    assert reply.json()["object"] == "chat.completion"


async def test_large_fake_response(upstream: Upstream) -> None:
    reply = await fetch(f"{upstream.url}/v1/chat/completions", headers={"x-fake-response": "large"}, data=b"{}")
    assert 4_000_000 <= len(reply.body) <= 7_000_000
    assert reply.json()["choices"][0]["message"]["content"].startswith("This is a line")


def test_id_flag_listener_port_env_and_sigterm(tmp_path: Path) -> None:
    host, port = loopback_address()
    env = {"LISTENER_PORT": str(port), "TESTUPSTREAM_ID": "from-env", "POD_NAME": ""}
    second = start_upstream(tmp_path / "log", ["--host", host, "--id", "from-flag"], env, host, port)
    try:
        with urllib.request.urlopen(f"{second.url}/health", timeout=5) as response:
            assert response.headers["x-testupstream-id"] == "from-flag"
            assert response.headers["x-inference-pod"] == "from-flag"
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(timeout=10) == 0
    finally:
        second.kill()
