"""OpenAI chat completions <-> Claude on the clouds: Google Vertex AI (`rawPredict` / `streamRawPredict`) and Amazon
Bedrock's InvokeModel (`invoke` / `invoke-with-response-stream`), both taking an Anthropic Messages body.

The Messages mapping is `anthropic`'s; what differs on the clouds is added here:
- The model is in the path, never in the body, and the body names the API version in `anthropic_version`
  (`vertex-2023-10-16`, `bedrock-2023-05-31` unless the caller gives another).
- Vertex takes `stream: true` in the body (and the `streamRawPredict` method); Bedrock chooses by path alone and
  refuses a `stream` key ("extraneous key [stream] is not permitted").
- Neither cloud fetches URLs: an http(s) image or PDF is rejected here, naming the part, rather than sent to fail
  upstream. Send it as a base64 `data:` URI.
- Non-streamed answers are Anthropic Messages on both clouds (`anthropic.chat_response`), and Vertex streams plain
  Anthropic SSE (`anthropic.ChatStream`). Bedrock streams AWS event-stream messages whose JSON payload is
  `{"bytes": "<base64 of one Anthropic stream event>"}` (`:event-type` chunk): `BedrockClaudeStream` re-creates the
  Anthropic SSE from them and feeds `anthropic.ChatStream`.
- Errors: Vertex answers with Anthropic's envelope (the model's own errors) or Google's (`{"error": {"code",
  "message", "status"}}`, sometimes inside a one-item array: quotas, permissions, unknown models):
  `vertex_error_response` reads both. Bedrock's are AWS's, as for Converse: `bedrock.error_response`.

Pure: no I/O, no clock, no randomness (the caller gives `created`), and no logging, so request content never reaches
a log.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Mapping
from typing import Any, Final
from urllib.parse import quote

import orjson

from xds_server.extproc.schemas import anthropic, bedrock
from xds_server.extproc.schemas.common import RequestRejected as RequestRejected  # raised here, for the caller
from xds_server.extproc.schemas.common import fail as _fail
from xds_server.extproc.schemas.common import mapping as _mapping
from xds_server.extproc.schemas.common import raw_error_text, stream_exception
from xds_server.extproc.schemas.eventstream import Decoder, Message, translate_messages
from xds_server.extproc.schemas.sse import error_event

VERTEX_ANTHROPIC_VERSION: Final = "vertex-2023-10-16"
BEDROCK_ANTHROPIC_VERSION: Final = "bedrock-2023-05-31"


# ---- paths


def vertex_path(model: str, stream: bool) -> str:
    """`publishers/anthropic/models/{model}:rawPredict` (or `:streamRawPredict`): the part after
    `/v1/projects/{project}/locations/{region}/`, which the GCP credentials add. The model is one path segment:
    Vertex's ids (`claude-sonnet-4-5@20250929`) keep their `@` literal, as Google's own examples and Anthropic's
    Vertex SDK send it (RFC 3986 allows `@` in a segment); `/`, `:` (the method separator) and the rest are
    percent-encoded."""
    if not model or model in (".", ".."):
        raise _fail("model", "must be a non-empty string that is not . or ..")
    return f"publishers/anthropic/models/{quote(model, safe='@')}:{'streamRawPredict' if stream else 'rawPredict'}"


def bedrock_invoke_path(model: str, stream: bool) -> str:
    """`/model/{modelId}/invoke`, or `/invoke-with-response-stream`. The model id is encoded as `bedrock.converse_path`
    encodes it (an ARN's `/` becomes %2F, `:` stays as is)."""
    if model in (".", ".."):  # a dot segment: a proxy would normalise /model/../invoke to /invoke
        raise _fail("model", "must not be . or ..")
    prefix = bedrock.converse_path(model, False).removesuffix("/converse")
    return f"{prefix}/{'invoke-with-response-stream' if stream else 'invoke'}"


# ---- requests


def vertex_request(
    body: Mapping[str, Any], version: str | None, *, default_max_tokens: int = anthropic.DEFAULT_MAX_TOKENS
) -> dict[str, Any]:
    """OpenAI /v1/chat/completions request -> the rawPredict / streamRawPredict body: `anthropic.chat_request`'s
    without `model` (it is in the path, see vertex_path), with `anthropic_version` (`version`, or
    VERTEX_ANTHROPIC_VERSION when None or empty), and `stream: true` when the client streams. Raises
    RequestRejected."""
    return _cloud_request(body, version or VERTEX_ANTHROPIC_VERSION, default_max_tokens, keep_stream=True)


def bedrock_request(
    body: Mapping[str, Any], version: str | None, *, default_max_tokens: int = anthropic.DEFAULT_MAX_TOKENS
) -> dict[str, Any]:
    """OpenAI /v1/chat/completions request -> the InvokeModel / InvokeModelWithResponseStream body:
    `anthropic.chat_request`'s without `model` and without `stream` (both are in the path, see bedrock_invoke_path),
    with `anthropic_version` (`version`, or BEDROCK_ANTHROPIC_VERSION when None or empty). Raises RequestRejected."""
    return _cloud_request(body, version or BEDROCK_ANTHROPIC_VERSION, default_max_tokens, keep_stream=False)


def _cloud_request(body: Mapping[str, Any], version: str, default_max_tokens: int, keep_stream: bool) -> dict[str, Any]:
    request = anthropic.chat_request(body, "", default_max_tokens)  # validates everything, and the model is not sent
    _refuse_urls(body)
    del request["model"]
    if not keep_stream:
        request.pop("stream", None)
    return {"anthropic_version": version, **request}


def _refuse_urls(body: Mapping[str, Any]) -> None:
    """Neither cloud fetches an image or a PDF by URL (Anthropic's API does). `body` has passed chat_request, so its
    shape is known: only user messages carry image_url parts."""
    for i, message in enumerate(body["messages"]):
        content = message.get("content")
        if message.get("role") != "user" or not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if part.get("type") == "image_url" and not part["image_url"]["url"].startswith("data:"):
                why = (
                    "Claude on Vertex AI and Bedrock takes images and PDFs as bytes, not by URL: send a base64 data URI"
                )
                raise _fail(f"messages[{i}].content[{j}].image_url.url", why, "unsupported_value")


# ---- errors


# Google's canonical error status -> (OpenAI type, code). OpenAI's SDKs pick their exception by the HTTP status, which
# the caller keeps; clients that look further branch on `code`.
_GOOGLE_ERRORS: Final[Mapping[str, tuple[str, str]]] = {
    "INVALID_ARGUMENT": ("invalid_request_error", "invalid_request_error"),
    "OUT_OF_RANGE": ("invalid_request_error", "invalid_request_error"),
    # A project not allowed to use the model, an API not enabled, billing off: the request cannot work as it is.
    "FAILED_PRECONDITION": ("invalid_request_error", "failed_precondition"),
    "UNAUTHENTICATED": ("authentication_error", "invalid_api_key"),
    "PERMISSION_DENIED": ("permission_error", "permission_denied"),
    "NOT_FOUND": ("invalid_request_error", "not_found"),  # model_not_found when about the model
    "ALREADY_EXISTS": ("invalid_request_error", "conflict"),
    "ABORTED": ("invalid_request_error", "conflict"),
    # Vertex's per-minute quotas ("Quota exceeded for ... online_prediction_requests_per_base_model"): a rate limit,
    # not OpenAI's insufficient_quota (an account out of credit).
    "RESOURCE_EXHAUSTED": ("rate_limit_error", "rate_limit_exceeded"),
    "CANCELLED": ("server_error", "cancelled"),
    "DEADLINE_EXCEEDED": ("server_error", "timeout"),
    "UNIMPLEMENTED": ("invalid_request_error", "not_implemented"),
    "UNAVAILABLE": ("server_error", "service_unavailable"),
    "INTERNAL": ("server_error", "internal_error"),
    "UNKNOWN": ("server_error", "internal_error"),
    "DATA_LOSS": ("server_error", "internal_error"),
}
# The status a Google error without a known one stands for, by HTTP status (Google's own mapping).
_GOOGLE_STATUS_OF_HTTP: Final[Mapping[int, str]] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def vertex_error_response(status: int, body: bytes) -> bytes:
    """A Vertex AI error answer for Claude (any status >= 400) -> the OpenAI error envelope bytes
    `{"error":{"message","type","param","code"}}`. Google's envelope (`{"error":{"code","message","status"}}`, bare
    or in a one-item array) is read by its status; Anthropic's (`{"type":"error","error":{"type","message"}}`) as
    `anthropic.error_response` reads it; anything else (Google's front end answers a path it does not serve with an
    HTML page) is kept as a bounded prefix of its text, typed by the HTTP status. The HTTP status itself is kept by
    the caller."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, list) and len(document) == 1:
        document = document[0]
    error = _mapping(_mapping(document).get("error"))
    message = error.get("message")
    if isinstance(message, str) and message and isinstance(error.get("status"), str) and "type" not in error:
        return _google_envelope(error["status"], message, status, about_model="model" in message.lower())
    if isinstance(message, str):
        return anthropic.error_response(status, orjson.dumps(document))
    # Not an answer about the request (its text may well name the model: it is in the path): no model_not_found.
    return _google_envelope(None, raw_error_text(status, body), status, about_model=False)


def _google_envelope(google_status: Any, message: str, status: int, about_model: bool) -> bytes:
    if google_status not in _GOOGLE_ERRORS:
        google_status = _GOOGLE_STATUS_OF_HTTP.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")
    openai_type, code = _GOOGLE_ERRORS[google_status]
    if google_status == "NOT_FOUND" and about_model:
        code = "model_not_found"  # what OpenAI clients look for when a model name is wrong
    return orjson.dumps({"error": {"message": message, "type": openai_type, "param": None, "code": code}})


# ---- the Bedrock stream


class BedrockClaudeStream:
    """InvokeModelWithResponseStream's event stream for Claude -> OpenAI chat.completion.chunk SSE stream, fed in
    arbitrary byte pieces.

    Each `chunk` event carries one Anthropic stream event (base64 in `bytes`): it is written back as the Anthropic SSE
    event it was and fed to `anthropic.ChatStream`, which makes the chunks. Bedrock's extra keys (the `p` padding of
    the payload, `amazon-bedrock-invocationMetrics` in message_stop) are left aside: the usage is Anthropic's own, in
    message_start and message_delta. An exception message (`:message-type` exception: modelStreamErrorException,
    throttlingException, ...) or a corrupt frame (a CRC that does not match) ends the answer with an OpenAI-style
    error event and no [DONE]; a stream that ends before message_stop gets ChatStream's incomplete_stream error and
    [DONE].
    """

    def __init__(self, model: str, created: int, include_usage: bool) -> None:
        self._claude = anthropic.ChatStream(model, created, include_usage)
        self._frames = Decoder()  # keeps a partial message between pieces
        self._closed = False  # [DONE] or an error event went out: nothing more does

    def feed(self, data: bytes) -> bytes:
        """Some upstream bytes (a message may be split anywhere) -> the OpenAI SSE bytes ready so far (b"" if none)."""
        return b"" if self._closed else self._translate(self._frames.feed(data))

    def finish(self) -> bytes:
        """The upstream stream ended: whatever is still owed (see anthropic.ChatStream.finish)."""
        if self._closed:
            return b""
        self._closed = True
        return self._claude.finish()

    def _translate(self, messages: Iterator[Message]) -> bytes:
        out, corrupt = translate_messages(messages, self._message, lambda: self._closed)
        self._closed = self._closed or corrupt
        return out

    def _message(self, message: Message) -> bytes:
        headers = message.headers
        kind = headers.get(":message-type")
        if kind == "event":
            if headers.get(":event-type") != "chunk":
                return b""  # event types added later are skipped
            event = _chunk_event(message.payload)
            if event is None:
                return b""  # nothing to make of it; should message_stop never come, finish() says so
            event_type = event.get("type")
            if event_type in ("message_stop", "error"):
                self._closed = True  # ChatStream ends the answer there: nothing that follows may add to it
            name = event_type.encode() if isinstance(event_type, str) and event_type.isprintable() else b"message"
            return self._claude.feed(b"event: " + name + b"\ndata: " + orjson.dumps(event) + b"\n\n")
        if kind in ("exception", "error"):
            self._closed = True
            error_type, text = stream_exception(headers, message.payload)  # named as the ResponseStream member
            envelope = orjson.loads(bedrock.error_response(500, error_type, orjson.dumps({"message": text})))
            return error_event(envelope["error"])
        return b""  # message types added later are skipped


def _chunk_event(payload: bytes) -> dict[str, Any] | None:
    """The Anthropic event a chunk carries (its JSON object), or None if there is none to read."""
    try:
        part = orjson.loads(payload)
        raw = _mapping(part).get("bytes")
        event = orjson.loads(base64.b64decode(raw, validate=True)) if isinstance(raw, str) else None
    except (orjson.JSONDecodeError, binascii.Error, ValueError):
        return None
    return event if isinstance(event, dict) else None
