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
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
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
from xds_server.extproc.protocol import PASS_THROUGH, Mode, ProcessingResponse, error, immediate_json, set_header
from xds_server.extproc.schemas import anthropic, bedrock
from xds_server.extproc.schemas.errors import RequestRejected
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
    set_headers = [set_header("content-length", str(len(body)).encode())]
    set_headers += [set_header(name, value.encode()) for name, value in headers]
    common = ext_proc_pb2.CommonResponse(
        header_mutation=ext_proc_pb2.HeaderMutation(set_headers=set_headers),
        body_mutation=ext_proc_pb2.BodyMutation(body=body),
    )
    return ProcessingResponse(**{phase: ext_proc_pb2.BodyResponse(response=common)})


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
    mutation = ext_proc_pb2.BodyMutation(body=out)
    return ProcessingResponse(
        response_body=ext_proc_pb2.BodyResponse(response=ext_proc_pb2.CommonResponse(body_mutation=mutation))
    )


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


class _TranslatedAttempt(ProviderAttempt):
    """An attempt whose body and answer are translated: what the request was, for the answer."""

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

    def _read(self, body: bytes) -> dict[str, object] | None:
        """The client's request (None for a body the router would have refused: never guessed at)."""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(payload, dict):
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
    def __init__(
        self, settings: BackendSettingsIR, mutation: ext_proc_pb2.HeaderMutation, tokens: TokenLookup = no_tokens
    ) -> None:
        super().__init__(settings, mutation, tokens)
        self._stream: anthropic.ChatStream | None = None

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

    def request_body(self, body: bytes) -> ProcessingResponse:
        """The Anthropic request, with its Content-Length; a field Anthropic cannot honour is the client's 400."""
        payload = self._read(body)
        if payload is None:
            return PASS_THROUGH["request_body"]
        try:
            translated = anthropic.chat_request(payload, self._model)
        except RequestRejected as rejected:
            return _rejected(rejected)
        return _body_reply("request_body", orjson.dumps(translated), _JSON)

    def response_headers(self, response: ext_proc_pb2.HttpHeaders) -> ProcessingResponse:
        status = _headers(response).get(":status", "0")
        self._status = int(status) if status.isdigit() else 0
        if self._status == 200 and self._stream_asked:
            self._stream = anthropic.ChatStream(self._client_model, self._created, self._include_usage)
            return _streamed_headers()
        return PASS_THROUGH["response_headers"]  # buffered: the body's reply sets the headers

    def response_body(self, body: ext_proc_pb2.HttpBody) -> ProcessingResponse:
        if self._stream is not None:
            out = self._stream.feed(body.body)
            return _streamed_body(out + self._stream.finish() if body.end_of_stream else out)
        if self._status == 200:  # BUFFERED: the whole answer at once
            message = _json_object(body.body)
            if message is not None:
                completion = anthropic.chat_response(message, self._client_model, self._created)
                return _body_reply("response_body", orjson.dumps(completion), _JSON)
            translated = anthropic.error_response(502, body.body)  # a 200 that is no Message: said, not passed on
        else:
            translated = anthropic.error_response(self._status, body.body)
        return _body_reply("response_body", translated, _JSON)


class BedrockAttempt(_TranslatedAttempt):
    def __init__(
        self, settings: BackendSettingsIR, mutation: ext_proc_pb2.HeaderMutation, tokens: TokenLookup = no_tokens
    ) -> None:
        super().__init__(settings, mutation, tokens)
        assert settings.aws is not None  # a Bedrock backend without credentials is refused before any attempt
        aws = settings.aws
        self._credentials = AwsCredentials(aws.access_key_id, aws.secret_access_key, aws.session_token)
        self._host = ""
        self._method = "POST"
        self._stream: bedrock.ChatStream | None = None
        self._request_id = ""
        self._error_type: str | None = None

    def request_headers(self, request: ext_proc_pb2.HttpHeaders) -> ProcessingResponse:
        headers = _headers(request)
        path = headers.get(":path", "")
        if path.partition("?")[0] != CHAT_COMPLETIONS:
            return _unsupported_operation(path, self.schema)
        self._host = headers.get(":authority", "")
        self._method = headers.get(":method", "POST")
        # The path and the signature come with the body: both depend on it (the model, the stream flag, the hash).
        return _headers_reply(self._base_mutation(headers))

    def request_body(self, body: bytes) -> ProcessingResponse:
        payload = self._read(body)
        if payload is None:
            return PASS_THROUGH["request_body"]
        try:
            translated = orjson.dumps(bedrock.chat_request(payload))
            path = bedrock.converse_path(self._model, self._stream_asked)
        except RequestRejected as rejected:
            return _rejected(rejected)
        aws = self.settings.aws
        assert aws is not None
        # Signed last, over the final method, host, path and body: nothing after this may change them.
        signed = sign(
            self._credentials,
            aws.region,
            aws.service,
            self._method,
            self._host,
            path,
            "",
            translated,
            datetime.now(UTC),
        )
        return _body_reply("request_body", translated, [*_JSON, (":path", path), *signed])

    def response_headers(self, response: ext_proc_pb2.HttpHeaders) -> ProcessingResponse:
        headers = _headers(response)
        status = headers.get(":status", "0")
        self._status = int(status) if status.isdigit() else 0
        self._request_id = headers.get("x-amzn-requestid", "")
        self._error_type = headers.get("x-amzn-errortype")
        if self._status == 200 and self._stream_asked:
            include = self._include_usage
            self._stream = bedrock.ChatStream(self._client_model, self._created, include, self._request_id)
            return _streamed_headers()
        return PASS_THROUGH["response_headers"]

    def response_body(self, body: ext_proc_pb2.HttpBody) -> ProcessingResponse:
        if self._stream is not None:
            out = self._stream.feed(body.body)
            return _streamed_body(out + self._stream.finish() if body.end_of_stream else out)
        if self._status == 200:
            converse = _json_object(body.body)
            if converse is not None:
                completion = bedrock.chat_response(converse, self._client_model, self._created, self._request_id)
                return _body_reply("response_body", orjson.dumps(completion), _JSON)
            translated = bedrock.error_response(502, None, body.body)
        else:
            translated = bedrock.error_response(self._status, self._error_type, body.body)
        return _body_reply("response_body", translated, _JSON)


def _json_object(body: bytes) -> dict[str, object] | None:
    try:
        found = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return found if isinstance(found, dict) else None


_ATTEMPTS: dict[ApiSchema, type[ProviderAttempt]] = {
    ApiSchema.AZURE_OPENAI: AzureAttempt,
    ApiSchema.ANTHROPIC: AnthropicAttempt,
    ApiSchema.AWS_BEDROCK: BedrockAttempt,
}


def attempt(
    settings: BackendSettingsIR, mutation: ext_proc_pb2.HeaderMutation, tokens: TokenLookup = no_tokens
) -> ProviderAttempt | None:
    """The attempt's own state when the backend speaks another API, or takes a minted token (None otherwise)."""
    kind = _ATTEMPTS.get(settings.schema.name)
    if kind is None and settings.token is not None:
        kind = AzureOpenAiCompatibleAttempt  # an OpenAI-schema backend (Azure's v1 API) with an Entra token
    return kind(settings, mutation, tokens) if kind is not None else None
