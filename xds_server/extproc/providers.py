"""One attempt to a backend that speaks another API than OpenAI's, inside the upstream-settings service.

Clients speak OpenAI's API; the attempt makes each request what the provider expects and, where the provider
answers in its own format, makes the answer OpenAI's again. Envoy opens one ext_proc stream per attempt (a retry on
another backend is another stream), so an attempt holds what it learned of its request (streamed or not, the
client's model) for its answer.

- Azure OpenAI takes OpenAI's bodies on a deployment's path with an `api-version`: only the request headers change,
  and the answer passes untouched (its phase is turned off).
- Anthropic: `/v1/messages` with `anthropic-version`; the body is translated (schemas.anthropic), and the answer
  whole (JSON, errors) or event by event (a 200 event stream, switched to STREAMED so tokens reach the client as they
  come). Anthropic's own Messages API from an Anthropic client passes as it is.
- AWS Bedrock: Converse or ConverseStream (schemas.bedrock), the path naming the model; the request is signed with
  SigV4 last, over its final path and body (any change after would void the signature); streams come back in AWS's
  binary event-stream framing.

Either way the request loses what must not reach a provider: the client's `authorization` (the backend's credential,
if any, comes from its security policy), the gateway's internal headers, client-sent `x-amz-*` headers, and
`accept-encoding` (answers to translate must come uncompressed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb2

from translators.ir import ApiSchema, BackendSettingsIR
from translators.xds.names import (
    DESTINATION_HEADER,
    MODEL_HEADER,
    UPSTREAM_HEADERS_ONLY_MODE,
    UPSTREAM_SETTINGS_MODE,
    UPSTREAM_TRANSLATION_MODE,
)
from xds_server.extproc.protocol import (
    PASS_THROUGH,
    Mode,
    ProcessingResponse,
    error,
    immediate_json,
    replaced_body,
    set_header,
)
from xds_server.extproc.schemas import anthropic, bedrock, claude_clouds, gemini
from xds_server.extproc.schemas.common import RequestRejected
from xds_server.extproc.sigv4 import AwsCredentials, sign

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
_NEVER_FORWARDED = ("authorization", "accept-encoding", "x-ai-eg-", "x-amz-", DESTINATION_HEADER)
# A 200 event stream: each chunk translated as it comes.
_STREAMED_ANSWER = Mode()
_STREAMED_ANSWER.CopyFrom(UPSTREAM_TRANSLATION_MODE)
_STREAMED_ANSWER.response_body_mode = Mode.STREAMED


def _headers(request: ext_proc_pb2.HttpHeaders) -> dict[str, str]:
    return {h.key: (h.raw_value or h.value.encode()).decode("latin-1") for h in request.headers.headers}


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
    message = f"{route} is not available for this model (its backend speaks {schema})"
    return error(404, message, "unsupported_operation", "upstream_settings")


def _rejected(rejected: RequestRejected) -> ProcessingResponse:
    return immediate_json(rejected.status, rejected.envelope(), f"upstream_settings_{rejected.code}")


def _headers_reply(mutation: ext_proc_pb2.HeaderMutation, mode: Mode | None = None) -> ProcessingResponse:
    reply = ext_proc_pb2.HeadersResponse(response=ext_proc_pb2.CommonResponse(header_mutation=mutation))
    if mode is None:
        return ProcessingResponse(request_headers=reply)
    return ProcessingResponse(request_headers=reply, mode_override=mode)


def _body_reply(phase: str, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> ProcessingResponse:
    """A whole new body (BUFFERED: Envoy holds the headers, so Content-Length, and any header, can follow it)."""
    return replaced_body(phase, body, [set_header(name, value.encode()) for name, value in headers])


_JSON = (("content-type", "application/json"),)
# A minted token by its policy: (the token, "") or (None, why there is none). See xds_server.tokens.
TokenLookup = Callable[[str], tuple[str | None, str]]


def no_tokens(_: str) -> tuple[str | None, str]:
    return None, "no token is minted by this process"


def _streamed_headers() -> ProcessingResponse:
    mutation = ext_proc_pb2.HeaderMutation(
        set_headers=[set_header("content-type", b"text/event-stream")], remove_headers=["content-length"]
    )
    reply = ext_proc_pb2.HeadersResponse(response=ext_proc_pb2.CommonResponse(header_mutation=mutation))
    return ProcessingResponse(response_headers=reply, mode_override=_STREAMED_ANSWER)


def _streamed_body(out: bytes) -> ProcessingResponse:
    return replaced_body("response_body", out, content_length=False)  # a chunk of the stream


class ProviderAttempt:
    """One attempt's request (and answer, where `translates`). `mutation`: what the plan sets and removes on every
    attempt (its credential among them)."""

    def __init__(
        self, settings: BackendSettingsIR, mutation: ext_proc_pb2.HeaderMutation, tokens: TokenLookup = no_tokens
    ) -> None:
        self.settings = settings
        self._mutation = mutation
        self._tokens = tokens
        self.translates = False  # the body and the answer come to this attempt (else the plan's body reply, if any)

    @property
    def schema(self) -> ApiSchema:
        return self.settings.schema.name

    def _base_mutation(self, headers: dict[str, str]) -> ext_proc_pb2.HeaderMutation:
        """The plan's headers, and the removal of what a provider never gets (but never of what the plan sets: its
        credential may be `authorization`)."""
        mutation = ext_proc_pb2.HeaderMutation()
        mutation.CopyFrom(self._mutation)
        plan_sets = {option.header.key for option in mutation.set_headers}
        forbidden = sorted({n for n in headers if n.startswith(_NEVER_FORWARDED) and n not in plan_sets})
        mutation.remove_headers.extend(forbidden)
        return mutation

    def _bearer(self, mutation: ext_proc_pb2.HeaderMutation) -> ProcessingResponse | None:
        """The minted token as `authorization: Bearer`, or the 503 that refuses the request without one."""
        source = self.settings.token
        if source is None:
            return None
        token, why = self._tokens(source.key)
        if token is None:
            return error(503, f"{self.settings.backend}: {why}", "backend_credentials_unavailable", "upstream_settings")
        mutation.set_headers.append(set_header("authorization", f"Bearer {token}".encode()))
        # The client's own `authorization` is removed above; ours is set, never removed with it.
        kept = [name for name in mutation.remove_headers if name != "authorization"]
        del mutation.remove_headers[:]
        mutation.remove_headers.extend(kept)
        return None

    def request_headers(self, request: ext_proc_pb2.HttpHeaders) -> ProcessingResponse:
        raise NotImplementedError

    def request_body(self, body: bytes) -> ProcessingResponse:
        return PASS_THROUGH["request_body"]

    def response_headers(self, response: ext_proc_pb2.HttpHeaders) -> ProcessingResponse:
        return PASS_THROUGH["response_headers"]

    def response_body(self, body: ext_proc_pb2.HttpBody) -> ProcessingResponse:
        return PASS_THROUGH["response_body"]


class AzureAttempt(ProviderAttempt):
    def request_headers(self, request: ext_proc_pb2.HttpHeaders) -> ProcessingResponse:
        headers = _headers(request)
        path = headers.get(":path", "")
        deployment = self.settings.model_name_override or headers.get(MODEL_HEADER, "")
        azure = azure_path(path, deployment, self.settings.schema.version or AZURE_DEFAULT_API_VERSION)
        if azure is None or not deployment:
            return _unsupported_operation(path, self.schema)
        mutation = self._base_mutation(headers)
        if (refused := self._bearer(mutation)) is not None:
            return refused
        mutation.set_headers.append(set_header(":path", azure.encode()))
        # Azure answers in OpenAI's format: the answer's phase off; the body only if the plan changes it.
        mode = UPSTREAM_SETTINGS_MODE if self.settings.changes_body else UPSTREAM_HEADERS_ONLY_MODE
        return _headers_reply(mutation, mode)


class AzureOpenAiCompatibleAttempt(ProviderAttempt):
    """OpenAI's API as it is (Azure's OpenAI-compatible v1 endpoint), with a minted Entra ID token."""

    def request_headers(self, request: ext_proc_pb2.HttpHeaders) -> ProcessingResponse:
        mutation = self._base_mutation(_headers(request))
        if (refused := self._bearer(mutation)) is not None:
            return refused
        mode = UPSTREAM_SETTINGS_MODE if self.settings.changes_body else UPSTREAM_HEADERS_ONLY_MODE
        return _headers_reply(mutation, mode)


class _Stream(Protocol):
    """A provider's answer stream translated to OpenAI's SSE, fed as it comes (schemas.*.ChatStream)."""

    def feed(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class _TranslatedAttempt(ProviderAttempt):
    """An attempt whose body and answer are translated. The request headers are checked (and a bearer token
    added) first; the path, the new body and any signature come with the body (they depend on it); the answer is
    translated whole when buffered, or chunk by chunk for a 200 event stream. A provider fills in the hooks."""

    def __init__(
        self, settings: BackendSettingsIR, mutation: ext_proc_pb2.HeaderMutation, tokens: TokenLookup = no_tokens
    ) -> None:
        super().__init__(settings, mutation, tokens)
        self.translates = True
        self._client_model = ""
        self._created = 0
        self._stream_asked = False
        self._include_usage = False
        self._status = 0
        self._answer_headers: dict[str, str] = {}
        self._stream: _Stream | None = None
        self._host = ""
        self._method = "POST"

    # --- the provider's hooks

    def _request(self, payload: Mapping[str, Any]) -> tuple[str, bytes]:
        """The path and body to send (raises RequestRejected)."""
        raise NotImplementedError

    def _signed(self, path: str, body: bytes) -> list[tuple[str, str]]:
        """Headers signing the final request (none unless the provider signs)."""
        return []

    def _answer_stream(self) -> _Stream:
        raise NotImplementedError

    def _answer(self, document: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _error(self, status: int, body: bytes) -> bytes:
        raise NotImplementedError

    # --- the phases

    def request_headers(self, request: ext_proc_pb2.HttpHeaders) -> ProcessingResponse:
        headers = _headers(request)
        path = headers.get(":path", "")
        if path.partition("?")[0] != CHAT_COMPLETIONS:
            return _unsupported_operation(path, self.schema)
        self._host = headers.get(":authority", "")
        self._method = headers.get(":method", "POST")
        mutation = self._base_mutation(headers)
        if (refused := self._bearer(mutation)) is not None:
            return refused
        return _headers_reply(mutation)

    def request_body(self, body: bytes) -> ProcessingResponse:
        payload = self._read(body)
        if payload is None:
            return PASS_THROUGH["request_body"]
        try:
            path, translated = self._request(payload)
        except RequestRejected as rejected:
            return _rejected(rejected)
        # Signed last, over the final method, host, path and body: nothing after this may change them.
        return _body_reply("request_body", translated, [*_JSON, (":path", path), *self._signed(path, translated)])

    def response_headers(self, response: ext_proc_pb2.HttpHeaders) -> ProcessingResponse:
        self._answer_headers = _headers(response)
        status = self._answer_headers.get(":status", "0")
        self._status = int(status) if status.isdigit() else 0
        if self._status == 200 and self._stream_asked:
            self._stream = self._answer_stream()
            return _streamed_headers()
        return PASS_THROUGH["response_headers"]  # buffered: the body's reply sets the headers

    def response_body(self, body: ext_proc_pb2.HttpBody) -> ProcessingResponse:
        if self._stream is not None:
            out = self._stream.feed(body.body)
            return _streamed_body(out + self._stream.finish() if body.end_of_stream else out)
        if self._status == 200:  # BUFFERED: the whole answer at once
            document = _json_object(body.body)
            if document is not None:
                return _body_reply("response_body", orjson.dumps(self._answer(document)), _JSON)
            translated = self._error(502, body.body)  # a 200 that is no answer: said, not passed on
        else:
            translated = self._error(self._status, body.body)
        return _body_reply("response_body", translated, _JSON)

    def _read(self, body: bytes) -> dict[str, Any] | None:
        """The client's request (None for a body the router would have refused: never guessed at)."""
        payload = _json_object(body)
        if payload is None:
            return None
        self._client_model = str(payload.get("model", ""))
        self._created = int(time.time())
        self._stream_asked = payload.get("stream") is True
        options = payload.get("stream_options")
        self._include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return payload

    @property
    def _model(self) -> str:
        return self.settings.model_name_override or self._client_model


class AnthropicAttempt(_TranslatedAttempt):
    def request_headers(self, request: ext_proc_pb2.HttpHeaders) -> ProcessingResponse:
        headers = _headers(request)
        path = headers.get(":path", "")
        route = path.partition("?")[0]
        if route not in (CHAT_COMPLETIONS, MESSAGES):
            return _unsupported_operation(path, self.schema)
        mutation = self._base_mutation(headers)
        mutation.set_headers.append(set_header(":path", f"/{self.settings.schema.prefix or 'v1'}/messages".encode()))
        version = self.settings.schema.version or anthropic.ANTHROPIC_VERSION
        if route == MESSAGES:
            # Anthropic's own API from an Anthropic client: passed on as it is (the client's anthropic-version and
            # anthropic-beta kept), with the backend's credential; the answer needs nothing either.
            self.translates = False
            if "anthropic-version" not in headers:
                mutation.set_headers.append(set_header("anthropic-version", version.encode()))
            mode = UPSTREAM_SETTINGS_MODE if self.settings.changes_body else UPSTREAM_HEADERS_ONLY_MODE
            return _headers_reply(mutation, mode)
        # OpenAI's chat completions: the body comes next (the filter's mode), then the answer, both translated.
        mutation.set_headers.append(set_header("anthropic-version", version.encode()))
        return _headers_reply(mutation)

    def _request(self, payload: Mapping[str, Any]) -> tuple[str, bytes]:
        path = f"/{self.settings.schema.prefix or 'v1'}/messages"
        return path, orjson.dumps(anthropic.chat_request(payload, self._model))

    def _answer_stream(self) -> _Stream:
        return anthropic.ChatStream(self._client_model, self._created, self._include_usage)

    def _answer(self, document: Mapping[str, Any]) -> dict[str, Any]:
        return anthropic.chat_response(document, self._client_model, self._created)

    def _error(self, status: int, body: bytes) -> bytes:
        return anthropic.error_response(status, body)


class _AwsSignedAttempt(_TranslatedAttempt):
    """Bedrock: signed with SigV4 over the final request (the credentials come with the settings)."""

    def __init__(
        self, settings: BackendSettingsIR, mutation: ext_proc_pb2.HeaderMutation, tokens: TokenLookup = no_tokens
    ) -> None:
        super().__init__(settings, mutation, tokens)
        assert settings.aws is not None  # a Bedrock backend without credentials is refused before any attempt
        self._aws = settings.aws
        self._credentials = AwsCredentials(
            settings.aws.access_key_id, settings.aws.secret_access_key, settings.aws.session_token
        )

    def _signed(self, path: str, body: bytes) -> list[tuple[str, str]]:
        aws, now = self._aws, datetime.now(UTC)
        return sign(self._credentials, aws.region, aws.service, self._method, self._host, path, "", body, now)

    def _error(self, status: int, body: bytes) -> bytes:
        return bedrock.error_response(status, self._answer_headers.get("x-amzn-errortype"), body)


class BedrockAttempt(_AwsSignedAttempt):
    """Converse and ConverseStream."""

    def _request(self, payload: Mapping[str, Any]) -> tuple[str, bytes]:
        translated = orjson.dumps(bedrock.chat_request(payload))
        return bedrock.converse_path(self._model, self._stream_asked), translated

    def _answer_stream(self) -> _Stream:
        request_id = self._answer_headers.get("x-amzn-requestid", "")
        return bedrock.ChatStream(self._client_model, self._created, self._include_usage, request_id)

    def _answer(self, document: Mapping[str, Any]) -> dict[str, Any]:
        request_id = self._answer_headers.get("x-amzn-requestid", "")
        return bedrock.chat_response(document, self._client_model, self._created, request_id)


class BedrockClaudeAttempt(_AwsSignedAttempt):
    """Claude on Bedrock: InvokeModel with Anthropic's Messages body, streamed in AWS's framing."""

    def _request(self, payload: Mapping[str, Any]) -> tuple[str, bytes]:
        translated = orjson.dumps(claude_clouds.bedrock_request(payload, self.settings.schema.version))
        return claude_clouds.bedrock_invoke_path(self._model, self._stream_asked), translated

    def _answer_stream(self) -> _Stream:
        return claude_clouds.BedrockClaudeStream(self._client_model, self._created, self._include_usage)

    def _answer(self, document: Mapping[str, Any]) -> dict[str, Any]:
        return anthropic.chat_response(document, self._client_model, self._created)


class _VertexAttempt(_TranslatedAttempt):
    """Vertex AI: /v1/projects/{project}/locations/{region}/ + the publisher's model path, with a Google token."""

    def _location(self) -> str:
        gcp = self.settings.gcp
        assert gcp is not None  # a Vertex backend without GCPCredentials is refused before any attempt
        return f"/v1/projects/{gcp.project}/locations/{gcp.region}/"


class GeminiAttempt(_VertexAttempt):
    def _request(self, payload: Mapping[str, Any]) -> tuple[str, bytes]:
        translated = orjson.dumps(gemini.chat_request(payload))
        return self._location() + gemini.model_path(self._model, self._stream_asked), translated

    def _answer_stream(self) -> _Stream:
        return gemini.ChatStream(self._client_model, self._created, self._include_usage)

    def _answer(self, document: Mapping[str, Any]) -> dict[str, Any]:
        return gemini.chat_response(document, self._client_model, self._created)

    def _error(self, status: int, body: bytes) -> bytes:
        return gemini.error_response(status, body)


class VertexClaudeAttempt(_VertexAttempt):
    def _request(self, payload: Mapping[str, Any]) -> tuple[str, bytes]:
        translated = orjson.dumps(claude_clouds.vertex_request(payload, self.settings.schema.version))
        return self._location() + claude_clouds.vertex_path(self._model, self._stream_asked), translated

    def _answer_stream(self) -> _Stream:
        return anthropic.ChatStream(self._client_model, self._created, self._include_usage)

    def _answer(self, document: Mapping[str, Any]) -> dict[str, Any]:
        return anthropic.chat_response(document, self._client_model, self._created)

    def _error(self, status: int, body: bytes) -> bytes:
        return claude_clouds.vertex_error_response(status, body)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        found = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return found if isinstance(found, dict) else None


_ATTEMPTS: dict[ApiSchema, type[ProviderAttempt]] = {
    ApiSchema.AZURE_OPENAI: AzureAttempt,
    ApiSchema.ANTHROPIC: AnthropicAttempt,
    ApiSchema.AWS_BEDROCK: BedrockAttempt,
    ApiSchema.AWS_ANTHROPIC: BedrockClaudeAttempt,
    ApiSchema.GCP_VERTEX_AI: GeminiAttempt,
    ApiSchema.GCP_ANTHROPIC: VertexClaudeAttempt,
}


def attempt(
    settings: BackendSettingsIR, mutation: ext_proc_pb2.HeaderMutation, tokens: TokenLookup = no_tokens
) -> ProviderAttempt | None:
    """The attempt's own state when the backend speaks another API, or takes a minted token (None otherwise)."""
    kind = _ATTEMPTS.get(settings.schema.name)
    if kind is None and settings.token is not None:
        kind = AzureOpenAiCompatibleAttempt  # an OpenAI-schema backend (Azure's v1 API) with an Entra token
    return kind(settings, mutation, tokens) if kind is not None else None
