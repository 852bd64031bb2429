"""`xds-server sim testupstream`: Envoy AI Gateway's test upstream contract, driven by request headers.

Tests send `x-expected-*` headers to assert what reached the upstream (host, headers, path, query, body, which
pod) and `x-response-*` headers to choose the answer (status, headers, body, SSE or gzip framing). Any failed
check is a 400 text/plain answer with `X-TestUpstream-Error: true` that says what was expected and what arrived.
Without `x-response-body` the OpenAI paths get canned answers, so it also serves as a plain fast backend.

Canned usage is fixed at prompt 1, completion 100, total 101: the original keeps prompt 1 and completion 100
but reports total 300, which no real server would; a constant usage keeps token-based rate-limit and cost tests
predictable even though the sentence is random.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import gzip
import os
import random
import signal
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson
import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from xds_server.sim import openai

DEFAULT_PORT = 8080
DEFAULT_ID = "testupstream"
DEFAULT_MODEL = "testupstream-model"
DEFAULT_SSE_GAP_MS = 200.0
CANNED_PROMPT_TOKENS = 1
CANNED_COMPLETION_TOKENS = 100
EMBEDDING_DIMENSIONS = 8
MAX_EMBEDDING_DIMENSIONS = 4096
# Tests put whole response bodies into x-response-body and Envoy accepts headers up to 60 KiB by default,
# so aiohttp's 8 KiB header limit would reject requests the gateway passes through.
MAX_HEADER_BYTES = 1024 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
# An SSE stream being written when SIGTERM arrives gets this long to finish before the process exits.
SHUTDOWN_GRACE_SECONDS = 2.0

FAKE_RESPONSE_LINE = "This is a line in the large fake response content. "
# Line counts that give ~5 KB, ~500 KB and ~5 MB chat completions, the sizes the benchmarks expect.
FAKE_RESPONSE_LINES = {"small": 100, "medium": 10_000, "large": 100_000}

ERROR_HEADER = "X-TestUpstream-Error"
ENDPOINT_PICKER_HEADER = "x-gateway-destination-endpoint"
SSE_TYPES = frozenset({"sse", "sse-gzip"})
PLAIN_TYPES = frozenset({"", "gzip"})

log = structlog.get_logger("testupstream")

JsonObject = openai.JsonObject
CannedAnswer = bytes | list[bytes]  # a JSON body, or SSE events already framed


class Mismatch(Exception):
    """The request is not what the test said it would be, or a test header cannot be read."""


class ApiError(Exception):
    """A canned OpenAI endpoint rejects the request the way a model server would (JSON error envelope)."""

    def __init__(self, status: int, message: str, error_type: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


@dataclass(frozen=True)
class Settings:
    upstream_id: str
    pod_name: str
    sse_gap_seconds: float
    models: tuple[str, ...]


# Request checks. Each raises Mismatch with "got ... expected ..." so a failing e2e test explains itself.


def decode_b64(name: str, value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Mismatch(f"cannot decode {name} as base64: {exc}") from exc


def decode_b64_text(name: str, value: str) -> str:
    try:
        return decode_b64(name, value).decode()
    except UnicodeDecodeError as exc:
        raise Mismatch(f"{name} is not UTF-8 once decoded: {exc}") from exc


def parse_pairs(name: str, value: str) -> list[tuple[str, str]]:
    """`k:v,k:v` as the original has it: split on commas, then on the first colon, nothing trimmed."""
    pairs = []
    for item in decode_b64_text(name, value).split(","):
        key, sep, val = item.partition(":")
        if not sep:
            raise Mismatch(f"{name}: invalid header key-value pair {item!r}")
        pairs.append((key, val))
    return pairs


def check_request_line(request: web.Request, upstream_id: str) -> None:
    """Checks that need no body; an empty check header counts as absent, as in the original."""
    headers = request.headers
    if expected := headers.get("x-expected-host"):
        got = headers.get("Host")
        if got != expected:
            raise Mismatch(f"unexpected host: got {got!r}, expected {expected!r}")
    if expected := headers.get("x-expected-headers"):
        for key, value in parse_pairs("x-expected-headers", expected):
            got = headers.get(key)
            if got != value:
                raise Mismatch(f"unexpected header {key!r}: got {got!r}, expected {value!r}")
    if expected := headers.get("x-non-expected-request-headers"):
        for item in decode_b64_text("x-non-expected-request-headers", expected).split(","):
            key = item.strip()
            if key and key in headers:
                raise Mismatch(f"unexpected header {key!r} present with value {headers[key]!r}")
    if (expected := headers.get("x-expected-testupstream-id")) and expected != upstream_id:
        raise Mismatch(f"unexpected testupstream-id: received by {upstream_id!r} but expected {expected!r}")
    # raw_path is the request target as sent (still percent-encoded), so the check sees what Envoy wrote.
    path, _, query = request.raw_path.partition("?")
    if expected := headers.get("x-expected-path"):
        want = decode_b64_text("x-expected-path", expected)
        if path != want:
            raise Mismatch(f"unexpected path: got {path!r}, expected {want!r}")
    if (expected := headers.get("x-expected-raw-query")) and query != expected:
        raise Mismatch(f"unexpected raw query: got {query!r}, expected {expected!r}")


def check_body(request: web.Request, body: bytes) -> None:
    headers = request.headers
    # An endpoint picker in duplex mode streams the body back and Envoy drops Content-Length; everywhere else a
    # missing Content-Length means the gateway re-framed a body it should have passed through intact.
    if request.body_exists and "Content-Length" not in headers and ENDPOINT_PICKER_HEADER not in headers:
        raise Mismatch(f"no Content-Length header on a request with a body ({len(body)} bytes, chunked)")
    if expected := headers.get("x-expected-request-body"):
        want = decode_b64("x-expected-request-body", expected)
        if body != want:
            raise Mismatch(f"unexpected request body: got {body!r}, expected {want!r}")


# Response choices.


def response_status(headers: CIMultiDictProxy[str]) -> int:
    value = headers.get("x-response-status")
    if not value:
        return 200
    if not value.isdigit() or not 100 <= int(value) <= 599:
        raise Mismatch(f"x-response-status: {value!r} is not an HTTP status code")
    return int(value)


def response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    extra: CIMultiDict[str] = CIMultiDict()
    if value := headers.get("x-response-headers"):
        for key, val in parse_pairs("x-response-headers", value):
            extra[key] = val  # a repeated key keeps its last value, as the original's Header().Set does
    return extra


def sse_gap_seconds(headers: CIMultiDictProxy[str], default: float) -> float:
    value = headers.get("x-sse-gap-ms")
    if not value:
        return default
    try:
        gap_ms = float(value)
    except ValueError:
        gap_ms = -1.0
    if not 0 <= gap_ms <= 60_000:
        raise Mismatch(f"x-sse-gap-ms: {value!r} is not a number of milliseconds between 0 and 60000")
    return gap_ms / 1000


def sse_events(body: bytes) -> list[bytes]:
    """A body holding blank-line separated blocks is already SSE; otherwise every non-empty line is one event."""
    if b"\n\n" in body:
        return [block + b"\n\n" for block in body.split(b"\n\n") if block.strip()]
    return [b"data: " + line + b"\n\n" for line in body.split(b"\n") if line]


def json_object(body: bytes) -> JsonObject:
    """The request body as a JSON object, or {} when it is anything else (the canned answers ignore it then)."""
    if not body:
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def word_pieces(sentence: str) -> list[str]:
    """Stream deltas whose concatenation is the sentence again, the way tokenizers keep the leading space."""
    first, *rest = sentence.split(" ")
    return [first, *(" " + word for word in rest)]


def embedding_inputs(value: object) -> list[str]:
    """`input` as strings: a string, a list of strings, or token arrays (each array counts as one input)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return list(value)
        if all(isinstance(item, int) for item in value):
            return [" ".join(map(str, value))]
        if all(isinstance(item, list) and all(isinstance(t, int) for t in item) for item in value):
            return [" ".join(map(str, item)) for item in value]
    raise ApiError(
        400, "'input' must be a string, a list of strings or a list of token arrays", "invalid_request_error"
    )


def fake_chat_response(lines: int) -> bytes:
    body = openai.chat_completion(
        "chatcmpl-fake", DEFAULT_MODEL, FAKE_RESPONSE_LINE * lines, CANNED_PROMPT_TOKENS, CANNED_COMPLETION_TOKENS
    )
    return orjson.dumps(body)


def text_error(message: str) -> web.Response:
    return web.Response(status=400, text=message + "\n", headers={ERROR_HEADER: "true"})


def json_error(status: int, message: str, error_type: str) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(openai.error(message, error_type, status)), content_type="application/json"
    )


class Upstream:
    """The request handler; everything that does not depend on the request is built once here."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rng = random.Random()
        self.identity = {"x-inference-pod": settings.pod_name, "x-testupstream-id": settings.upstream_id}
        self.fake_responses = {size: fake_chat_response(lines) for size, lines in FAKE_RESPONSE_LINES.items()}
        self.models_body = orjson.dumps(openai.model_list(settings.models, owned_by=settings.upstream_id))
        self.non_llm_body = orjson.dumps({"message": "This is a non-LLM endpoint response"})
        self.canned: dict[str, Callable[[JsonObject], CannedAnswer]] = {
            "/v1/chat/completions": self.chat_completions,
            "/v1/completions": self.completions,
            "/v1/embeddings": self.embeddings,
            "/v1/models": lambda _: self.models_body,
            "/non-llm-route": lambda _: self.non_llm_body,
        }

    async def add_identity(self, _request: web.BaseRequest, response: web.StreamResponse) -> None:
        """on_response_prepare hook, so errors and /health name the pod too."""
        response.headers.update(self.identity)

    async def health(self, _request: web.Request) -> web.Response:
        return web.Response()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self.respond(request)
        except Mismatch as exc:
            log.warning("request check failed", path=request.path, reason=str(exc))
            return text_error(str(exc))
        except ApiError as exc:
            return json_error(exc.status, str(exc), exc.error_type)

    async def respond(self, request: web.Request) -> web.StreamResponse:
        headers = request.headers
        check_request_line(request, self.settings.upstream_id)
        body = await request.read()
        check_body(request, body)
        status = response_status(headers)
        extra = response_headers(headers)
        payload = json_object(body)
        if isinstance(model := payload.get("model"), str):
            extra["X-Model"] = model
        response_type = headers.get("x-response-type", "")
        if response_type in SSE_TYPES:
            events = sse_events(decode_b64("x-response-body", headers.get("x-response-body", "")))
            gap = sse_gap_seconds(headers, self.settings.sse_gap_seconds)
            return await stream(request, status, extra, events, response_type == "sse-gzip", gap)
        if response_type not in PLAIN_TYPES:
            raise Mismatch(f"x-response-type {response_type!r} is not supported (sse, sse-gzip, gzip or none)")
        answer = self.answer_body(request, payload)
        compress = response_type == "gzip"
        if isinstance(answer, list):
            gap = sse_gap_seconds(headers, self.settings.sse_gap_seconds)
            return await stream(request, status, extra, answer, compress, gap)
        if compress:
            answer = gzip.compress(answer)
            extra["Content-Encoding"] = "gzip"
        extra.setdefault("Content-Type", "application/json")
        return web.Response(status=status, body=answer, headers=extra)

    def answer_body(self, request: web.Request, payload: JsonObject) -> CannedAnswer:
        """x-response-body if given, else the x-fake-response size, else the canned answer for the path."""
        headers = request.headers
        if value := headers.get("x-response-body"):
            return decode_b64("x-response-body", value)
        if size := headers.get("x-fake-response"):
            if size not in self.fake_responses:
                raise Mismatch(f"x-fake-response {size!r} is not one of {', '.join(self.fake_responses)}")
            return self.fake_responses[size]
        canned = self.canned.get(request.path)
        if canned is None:
            raise ApiError(404, f"no canned response for {request.path}; send x-response-body", "not_found_error")
        return canned(payload)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{self.rng.getrandbits(64):016x}"

    def chat_completions(self, payload: JsonObject) -> CannedAnswer:
        model = model_name(payload)
        sentence = openai.random_sentence(self.rng)
        completion_id = self.new_id("chatcmpl")
        if payload.get("stream") is not True:
            body = openai.chat_completion(
                completion_id, model, sentence, CANNED_PROMPT_TOKENS, CANNED_COMPLETION_TOKENS
            )
            return orjson.dumps(body)
        # The usage chunk is sent whether or not stream_options.include_usage asks for it: gateways count
        # tokens from it, and clients skip a chunk without choices.
        chunks = [openai.chat_chunk(completion_id, model, piece) for piece in word_pieces(sentence)]
        chunks.append(openai.chat_chunk(completion_id, model, None, finish_reason="stop"))
        chunks.append(openai.chat_chunk(completion_id, model, None, chunk_usage=canned_usage()))
        return [*map(openai.sse_event, chunks), openai.SSE_DONE]

    def completions(self, payload: JsonObject) -> CannedAnswer:
        model = model_name(payload)
        sentence = openai.random_sentence(self.rng)
        completion_id = self.new_id("cmpl")
        if payload.get("stream") is not True:
            body = openai.text_completion(
                completion_id, model, sentence, CANNED_PROMPT_TOKENS, CANNED_COMPLETION_TOKENS
            )
            return orjson.dumps(body)
        # The shared completion chunk always has a choice, so usage rides on the finishing chunk.
        chunks = [openai.text_completion_chunk(completion_id, model, piece) for piece in word_pieces(sentence)]
        chunks.append(openai.text_completion_chunk(completion_id, model, "", "stop", chunk_usage=canned_usage()))
        return [*map(openai.sse_event, chunks), openai.SSE_DONE]

    def embeddings(self, payload: JsonObject) -> CannedAnswer:
        inputs = embedding_inputs(payload.get("input"))
        dimensions = payload.get("dimensions")
        if not isinstance(dimensions, int) or not 0 < dimensions <= MAX_EMBEDDING_DIMENSIONS:
            dimensions = EMBEDDING_DIMENSIONS
        return orjson.dumps(openai.embeddings(model_name(payload), inputs, dimensions, self.rng))


def model_name(payload: JsonObject) -> str:
    model = payload.get("model")
    return model if isinstance(model, str) else DEFAULT_MODEL


def canned_usage() -> JsonObject:
    return openai.usage(CANNED_PROMPT_TOKENS, CANNED_COMPLETION_TOKENS)


async def stream(
    request: web.Request,
    status: int,
    headers: CIMultiDict[str],
    events: list[bytes],
    compress: bool,
    gap_seconds: float,
) -> web.StreamResponse:
    """Write each event as its own HTTP chunk so clients (and Envoy) see them arrive one by one."""
    headers["Content-Type"] = "text/event-stream"
    if compress:
        headers["Content-Encoding"] = "gzip"
    response = web.StreamResponse(status=status, headers=headers)
    await response.prepare(request)
    # One gzip stream for the whole response, sync-flushed per event so each chunk decodes on arrival.
    encoder = zlib.compressobj(wbits=31) if compress else None
    for index, event in enumerate(events):
        if index and gap_seconds:
            await asyncio.sleep(gap_seconds)
        if encoder is not None:
            event = encoder.compress(event) + encoder.flush(zlib.Z_SYNC_FLUSH)
        await response.write(event)
    if encoder is not None:
        await response.write(encoder.flush())
    await response.write_eof()
    return response


def build_app(settings: Settings) -> web.Application:
    upstream = Upstream(settings)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.on_response_prepare.append(upstream.add_identity)
    app.router.add_get("/health", upstream.health)
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    return app


async def serve(settings: Settings, host: str, port: int) -> int:
    runner = web.AppRunner(
        build_app(settings),
        access_log=None,
        shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
        max_line_size=MAX_HEADER_BYTES,
        max_field_size=MAX_HEADER_BYTES,
        # The body must reach the x-expected-request-body check exactly as it was sent.
        auto_decompress=False,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        log.error("cannot listen", host=host, port=port, error=str(exc))
        await runner.cleanup()
        return 1
    bound_host, bound_port = runner.addresses[0][:2]
    log.info(f"testupstream {settings.upstream_id} listening on http://{bound_host}:{bound_port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()
    return 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="xds-server sim testupstream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help=f"port to listen on (default $LISTENER_PORT or {DEFAULT_PORT})")
    parser.add_argument("--id", help=f"id for x-expected-testupstream-id (default $TESTUPSTREAM_ID or {DEFAULT_ID})")
    parser.add_argument(
        "--sse-gap-ms",
        type=float,
        default=DEFAULT_SSE_GAP_MS,
        help="pause between SSE events; a request's x-sse-gap-ms overrides it (default 200)",
    )
    parser.add_argument("--model", action="append", default=[], help="a model id for /v1/models (repeatable)")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    upstream_id = args.id or os.environ.get("TESTUPSTREAM_ID") or DEFAULT_ID
    port = args.port if args.port is not None else int(os.environ.get("LISTENER_PORT") or DEFAULT_PORT)
    settings = Settings(
        upstream_id=upstream_id,
        # In a pod (a kubelet sets HOSTNAME to the pod's name) the pod, else the id: x-inference-pod names it.
        pod_name=os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or upstream_id,
        sse_gap_seconds=max(args.sse_gap_ms, 0.0) / 1000,
        models=tuple(args.model),
    )
    return asyncio.run(serve(settings, args.host, port))
