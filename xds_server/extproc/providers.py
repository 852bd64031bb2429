"""One attempt to a backend that speaks another API than OpenAI's, inside the upstream-settings service.

Clients speak OpenAI's API; the attempt makes each request what the provider expects and, for Anthropic, makes the
answer OpenAI's again. Envoy opens one ext_proc stream per attempt (a retry on another backend is another stream), so
an attempt holds what it learned of its request (streamed or not, the client's model) for its answer.

- Azure OpenAI takes OpenAI's bodies on a deployment's path with an `api-version`: only the request headers change,
  and the answer passes untouched (its phase is turned off).
- Anthropic: the path is `/v1/messages`, `anthropic-version` is set, the body is translated (schemas.anthropic); the
  answer is translated whole (JSON, errors) or event by event (a 200 event stream, switched to STREAMED so tokens
  reach the client as they come).

Either way the request loses what must not reach a provider: the client's `authorization` (the backend's credential,
if any, comes from its security policy), the gateway's internal headers, and `accept-encoding` (answers to translate
must come uncompressed).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from urllib.parse import quote, urlencode

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb2

from translators.ir import ApiSchema, SchemaIR
from translators.xds.names import (
    DESTINATION_HEADER,
    MODEL_HEADER,
    UPSTREAM_HEADERS_ONLY_MODE,
    UPSTREAM_SETTINGS_MODE,
    UPSTREAM_TRANSLATION_MODE,
)
from xds_server.extproc.protocol import PASS_THROUGH, Mode, ProcessingResponse, error, immediate_json, set_header
from xds_server.extproc.schemas import anthropic

# Azure OpenAI's generally available API version, used when the backend's schema names none.
AZURE_DEFAULT_API_VERSION = "2024-10-21"
# The OpenAI operations an Azure deployment has, by the client's path.
_AZURE_OPERATIONS = {
    "/v1/chat/completions": "chat/completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}
CHAT_COMPLETIONS = "/v1/chat/completions"
MESSAGES = "/v1/messages"  # Anthropic's Messages API, which Anthropic backends take as it is
# Request headers a provider never gets (compared lowercase; prefixes end with "-").
_NEVER_FORWARDED = ("authorization", "accept-encoding", "x-ai-eg-", DESTINATION_HEADER)

# A 200 event stream: each chunk translated as it comes.
_STREAMED_ANSWER = Mode()
_STREAMED_ANSWER.CopyFrom(UPSTREAM_TRANSLATION_MODE)
_STREAMED_ANSWER.response_body_mode = Mode.STREAMED


def _headers(request: ext_proc_pb2.HttpHeaders) -> dict[str, str]:
    return {h.key: (h.raw_value or h.value.encode()).decode("latin-1") for h in request.headers.headers}


def _never_forwarded(names: Iterable[str]) -> list[str]:
    return sorted({name for name in names if name.startswith(_NEVER_FORWARDED)})


def azure_path(path: str, deployment: str, api_version: str) -> str | None:
    """The Azure OpenAI path of a client's OpenAI path, or None for an operation deployments do not have. The
    client's own query parameters follow the api-version."""
    route, _, query = path.partition("?")
    operation = _AZURE_OPERATIONS.get(route)
    if operation is None:
        return None
    version = urlencode({"api-version": api_version})
    return f"/openai/deployments/{quote(deployment, safe='')}/{operation}?{version}" + (f"&{query}" if query else "")


def _unsupported_operation(path: str, schema: ApiSchema) -> ProcessingResponse:
    route = path.partition("?")[0][:256]
    return error(
        404,
        f"{route} is not available for this model (its backend speaks {schema})",
        "unsupported_operation",
        "upstream_settings",
    )


class ProviderAttempt:
    """One attempt's request and answer. `headers_mutation`: what the plan sets and removes on every attempt (its
    credential among them); `model_override`: the backend's modelNameOverride for this rule."""

    def __init__(
        self, schema: SchemaIR, headers_mutation: ext_proc_pb2.HeaderMutation, model_override: str | None
    ) -> None:
        self.schema = schema
        self._mutation = headers_mutation
        self._model_override = model_override
        self._stream: anthropic.ChatStream | None = None
        self._streamed = False
        self._client_model = ""
        self._status = 0
        self.passthrough = False  # the request is in the backend's own API already: the plan's settings only

    @property
    def translates(self) -> bool:
        """This attempt's body and answer go through the translation (Anthropic, from OpenAI's chat completions)."""
        return self.schema.name is ApiSchema.ANTHROPIC and not self.passthrough

    def request_headers(self, request: ext_proc_pb2.HttpHeaders, changes_body: bool) -> ProcessingResponse:
        headers = _headers(request)
        path = headers.get(":path", "")
        mutation = ext_proc_pb2.HeaderMutation()
        mutation.CopyFrom(self._mutation)
        plan_sets = {option.header.key for option in mutation.set_headers}  # the credential may be `authorization`
        mutation.remove_headers.extend(name for name in _never_forwarded(headers) if name not in plan_sets)
        if self.schema.name is ApiSchema.AZURE_OPENAI:
            deployment = self._model_override or headers.get(MODEL_HEADER, "")
            azure = azure_path(path, deployment, self.schema.version or AZURE_DEFAULT_API_VERSION)
            if azure is None or not deployment:
                return _unsupported_operation(path, self.schema.name)
            mutation.set_headers.append(set_header(":path", azure.encode()))
            reply = ext_proc_pb2.HeadersResponse(response=ext_proc_pb2.CommonResponse(header_mutation=mutation))
            # Azure answers in OpenAI's format: the answer's phase off; the body only if the plan changes it.
            mode = UPSTREAM_SETTINGS_MODE if changes_body else UPSTREAM_HEADERS_ONLY_MODE
            return ProcessingResponse(request_headers=reply, mode_override=mode)
        route = path.partition("?")[0]
        if route not in (CHAT_COMPLETIONS, MESSAGES):
            return _unsupported_operation(path, self.schema.name)
        mutation.set_headers.append(set_header(":path", f"/{self.schema.prefix or 'v1'}/messages".encode()))
        if route == MESSAGES:
            # Anthropic's own API from an Anthropic client: passed on as it is (the client's anthropic-version and
            # anthropic-beta kept), with the backend's credential; the answer needs nothing either.
            if "anthropic-version" not in headers:
                version = self.schema.version or anthropic.ANTHROPIC_VERSION
                mutation.set_headers.append(set_header("anthropic-version", version.encode()))
            reply = ext_proc_pb2.HeadersResponse(response=ext_proc_pb2.CommonResponse(header_mutation=mutation))
            mode = UPSTREAM_SETTINGS_MODE if changes_body else UPSTREAM_HEADERS_ONLY_MODE
            self.passthrough = True
            return ProcessingResponse(request_headers=reply, mode_override=mode)
        # OpenAI's chat completions: the body comes next (the filter's mode), then the answer, both translated.
        version = self.schema.version or anthropic.ANTHROPIC_VERSION
        mutation.set_headers.append(set_header("anthropic-version", version.encode()))
        return ProcessingResponse(
            request_headers=ext_proc_pb2.HeadersResponse(response=ext_proc_pb2.CommonResponse(header_mutation=mutation))
        )

    def request_body(self, body: bytes) -> ProcessingResponse:
        """The Anthropic request, with its Content-Length; a field Anthropic cannot honour is the client's 400."""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return PASS_THROUGH["request_body"]  # the router has answered such a request already; never guess
        if not isinstance(payload, dict):
            return PASS_THROUGH["request_body"]
        self._client_model = str(payload.get("model", ""))
        try:
            translated = anthropic.chat_request(payload, self._model_override or self._client_model)
        except anthropic.RequestRejected as rejected:
            return immediate_json(rejected.status, rejected.envelope(), f"upstream_settings_{rejected.code}")
        if translated.get("stream") is True:
            options = payload.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            self._stream = anthropic.ChatStream(self._client_model, int(time.time()), include_usage)
        rewritten = orjson.dumps(translated)
        return _body_reply("request_body", rewritten, b"application/json")

    def response_headers(self, response: ext_proc_pb2.HttpHeaders) -> ProcessingResponse:
        status = _headers(response).get(":status", "0")
        self._status = int(status) if status.isdigit() else 0
        if self._status == 200 and self._stream is not None:
            self._streamed = True
            mutation = ext_proc_pb2.HeaderMutation(
                set_headers=[set_header("content-type", b"text/event-stream")], remove_headers=["content-length"]
            )
            reply = ext_proc_pb2.HeadersResponse(response=ext_proc_pb2.CommonResponse(header_mutation=mutation))
            return ProcessingResponse(response_headers=reply, mode_override=_STREAMED_ANSWER)
        return PASS_THROUGH["response_headers"]  # buffered: the body's reply sets the headers

    def response_body(self, body: ext_proc_pb2.HttpBody) -> ProcessingResponse:
        if self._streamed and self._stream is not None:
            out = self._stream.feed(body.body)
            if body.end_of_stream:
                out += self._stream.finish()
            mutation = ext_proc_pb2.BodyMutation(body=out)
            return ProcessingResponse(
                response_body=ext_proc_pb2.BodyResponse(response=ext_proc_pb2.CommonResponse(body_mutation=mutation))
            )
        # BUFFERED: the whole answer at once.
        if self._status == 200:
            try:
                message = orjson.loads(body.body)
            except orjson.JSONDecodeError:
                message = None
            if isinstance(message, dict):
                completion = anthropic.chat_response(message, self._client_model, int(time.time()))
                return _body_reply("response_body", orjson.dumps(completion), b"application/json")
            translated = anthropic.error_response(502, body.body)  # a 200 that is no Message: said, not passed on
        else:
            translated = anthropic.error_response(self._status, body.body)
        return _body_reply("response_body", translated, b"application/json")


def _body_reply(phase: str, body: bytes, content_type: bytes) -> ProcessingResponse:
    """A whole new body (BUFFERED: Envoy holds the headers, so Content-Length can follow it)."""
    common = ext_proc_pb2.CommonResponse(
        header_mutation=ext_proc_pb2.HeaderMutation(
            set_headers=[
                set_header("content-length", str(len(body)).encode()),
                set_header("content-type", content_type),
            ]
        ),
        body_mutation=ext_proc_pb2.BodyMutation(body=body),
    )
    return ProcessingResponse(**{phase: ext_proc_pb2.BodyResponse(response=common)})
