"""`python -m testing.providers.vertex_sim`: Vertex AI (Gemini and Claude) and Google's OAuth token endpoint on a
loopback address, for tests.

`POST /token` is the token URL of a service-account key (`new_service_account`): the JWT-bearer grant, the assertion
checked as Google checks it (vertex_contract.py), answered with an opaque access token valid `--token-lifetime`
seconds. The model endpoints, `/v1/projects/{project}/locations/{region}/publishers/...`, refuse what Vertex refuses:
- `Authorization: Bearer <token>`: a token /token issued, not expired; else 401 UNAUTHENTICATED (Google's words,
  an ErrorInfo reason CREDENTIALS_MISSING, ACCESS_TOKEN_TYPE_UNSUPPORTED or ACCESS_TOKEN_EXPIRED);
- the project and region of the path: another project is 403 PERMISSION_DENIED, another region 404 NOT_FOUND;
- the gateway's internal headers (`x-ai-eg-*`, `x-gateway-*`) and a client's `x-api-key` must not arrive: 400
  naming the header;
- `publishers/google/models/{model}:generateContent` and `:streamGenerateContent?alt=sse` (without alt=sse Vertex
  streams a JSON array, which this simulator does not: 400): the body against google-genai's types and Vertex's
  rules (vertex_contract.py), 400 INVALID_ARGUMENT naming the field;
- `publishers/anthropic/models/{model}:rawPredict` and `:streamRawPredict`: an Anthropic Messages body without
  `model` and with `"anthropic_version": "vertex-2023-10-16"`, then anthropic_contract.py; `stream` must be true for
  streamRawPredict and absent or false for rawPredict. Body errors are Anthropic's envelope, as Vertex relays them.

Gemini answers are `GenerateContentResponse`s built through google-genai's model, deterministically: "You said:
<last user text>" (each further candidate of `candidateCount` adds " #<n>"), cut at a stop sequence (STOP) or at
`maxOutputTokens` words (MAX_TOKENS); a `functionCall` part when the function calling mode is ANY or the last user
text says "call <name>"; "The tool returned: ..." after function responses; a thought (`thoughtsTokenCount`, and a
`thought` part with includeThoughts) when thinkingConfig asks for thinking; `cachedContentTokenCount` with
cachedContent. Streamed: `data: <chunk>\\r\\n\\r\\n` events, each written in two pieces, text in pieces of two words,
the last chunk carrying finishReason and usageMetadata. Claude answers and streams are anthropic_sim.py's own.

Models that choose a failure, once the request passed the checks: `gemini-quota` (429 RESOURCE_EXHAUSTED) and, when
streamed, `gemini-stream-error` (some chunks, then `data: {"error": ...}`); the Claude hooks of anthropic_sim.py
(`claude-overloaded`, `claude-rate-limited`, `claude-midstream-error`, `claude-cut`). A google model not starting
with `gemini-` or an anthropic one not starting with `claude-` is 404 NOT_FOUND "Publisher Model ... was not found".

`GET /debug/requests` lists what arrived (bearer tokens and assertion signatures redacted); `DELETE` forgets it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import re
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote

import structlog
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.genai import types

from testing.providers import anthropic_sim, common
from testing.providers.anthropic_contract import ApiError, parse_body, request_adapter
from testing.providers.common import REDACTED, Json, Recorder, arg_parser, sample_value, send_stream, serve_app, words
from testing.providers.vertex_contract import (
    GenerateContentRequest,
    GoogleError,
    OAuthError,
    error_info,
    invalid,
    key_id,
    load_public_key,
    parse_gemini,
    verify_assertion,
)

DEFAULT_PORT = 8093
DEFAULT_TOKEN_LIFETIME = 3599
VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
INTERNAL_HEADER_PREFIXES = ("x-ai-eg-", "x-gateway-")
WORDS_PER_TEXT_DELTA = 2
CACHED_TOKENS = 16
ROUTE = re.compile(
    r"^/v1/projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)/publishers/(?P<publisher>[^/]+)/models/"
    r"(?P<model>[^/:]+):(?P<method>[A-Za-z]+)$"
)
METHODS = {"google": ("generateContent", "streamGenerateContent"), "anthropic": ("rawPredict", "streamRawPredict")}
MODEL_PREFIXES = {"google": "gemini-", "anthropic": "claude-"}
MISSING_CREDENTIALS = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other "
    "valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
INVALID_CREDENTIALS = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid "
    "authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
NOT_FOUND_HTML = (
    "<!DOCTYPE html>\n<html lang=en><meta charset=utf-8><title>Error 404 (Not Found)!!1</title>"
    "<p><b>404.</b> <ins>That\u2019s an error.</ins><p>The requested URL <code>{path}</code> was not found on this "
    "server. <ins>That\u2019s all we know.</ins>\n"
)

log = structlog.get_logger("vertex-sim")


@dataclass
class Settings:
    host: str
    port: int
    project: str
    region: str
    client_email: str
    public_key: rsa.RSAPublicKey
    token_lifetime: int = DEFAULT_TOKEN_LIFETIME
    gap_seconds: float = 0.0
    tokens: dict[str, float] = field(default_factory=dict)  # access token -> expiry (epoch seconds)
    requests: list[Json] = field(default_factory=list)

    @property
    def token_url(self) -> str:
        return f"http://{self.host}:{self.port}/token"


def new_service_account(token_uri: str, project: str) -> tuple[dict[str, str], str]:
    """(a service-account key JSON as Google issues it, its public key PEM): a fresh 2048-bit RSA key. The sim's port
    is known only once it started, with this public key: pass a placeholder and set `token_uri` afterwards."""
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    email = f"vertex-sim@{project}.iam.gserviceaccount.com"
    info = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": key_id(private_key.public_key()),
        "private_key": private_pem,
        "client_email": email,
        "client_id": str(10**20 + secrets.randbelow(9 * 10**20)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{quote(email)}",
        "universe_domain": "googleapis.com",
    }
    return info, public_pem


# The Gemini answer.


def part_texts(content: types.Content) -> list[str]:
    """What a model reads in a content: texts (thoughts left out) and function responses as JSON."""
    texts: list[str] = []
    for part in content.parts or []:
        if part.text is not None and not part.thought:
            texts.append(part.text)
        elif part.function_response is not None:
            texts.append(json.dumps(part.function_response.response or {}, sort_keys=True))
    return texts


def function_responses(content: types.Content) -> list[str]:
    return [
        json.dumps(part.function_response.response or {}, sort_keys=True)
        for part in content.parts or []
        if part.function_response is not None
    ]


def last_user_text(contents: list[types.Content]) -> str:
    user = next((content for content in reversed(contents) if content.role == "user"), contents[-1])
    return " ".join(part.text for part in user.parts or [] if part.text is not None and not part.thought)


def lowered_types(schema: Any) -> Any:
    """A Gemini (OpenAPI) schema with JSON schema's lowercase type names, for `sample_value`."""
    if isinstance(schema, list):
        return [lowered_types(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        key: value.lower() if key == "type" and isinstance(value, str) else lowered_types(value)
        for key, value in schema.items()
    }


def chosen_function(request: GenerateContentRequest) -> types.FunctionDeclaration | None:
    declarations = [d for tool in request.tools or [] for d in tool.function_declarations or []]
    config = request.tool_config.function_calling_config if request.tool_config is not None else None
    mode = config.mode if config is not None and config.mode is not None else types.FunctionCallingConfigMode.AUTO
    contents = request.contents or []
    if not declarations or mode == types.FunctionCallingConfigMode.NONE:
        return None
    if mode == types.FunctionCallingConfigMode.ANY:  # forced, even right after function responses
        allowed = config.allowed_function_names if config is not None else None
        return next(d for d in declarations if not allowed or d.name == allowed[0])
    if function_responses(contents[-1]):
        return None
    text = last_user_text(contents).lower()
    return next((d for d in declarations if f"call {d.name}".lower() in text), None)


def function_args(declaration: types.FunctionDeclaration) -> Json:
    if declaration.parameters_json_schema is not None:
        schema = declaration.parameters_json_schema
    elif declaration.parameters is not None:
        schema = lowered_types(declaration.parameters.model_dump(mode="json", by_alias=True, exclude_none=True))
    else:
        return {}
    value = sample_value(schema | {"type": "object"} if isinstance(schema, dict) else schema)
    return value if isinstance(value, dict) else {}


def reply_text(request: GenerateContentRequest, candidate: int) -> tuple[str, str]:
    """(text, finishReason) of candidate number `candidate`."""
    contents = request.contents or []
    results = function_responses(contents[-1])
    text = (
        "The tool returned: " + "; ".join(results)
        if results
        else "You said: " + " ".join(words(last_user_text(contents)))
    )
    if candidate:
        text += f" #{candidate + 1}"
    config = request.generation_config or types.GenerationConfig()
    found = sorted(text.find(stop) for stop in config.stop_sequences or [] if stop and stop in text)
    if found:
        text = text[: found[0]]
    if config.max_output_tokens is not None and len(words(text)) > config.max_output_tokens:
        return " ".join(words(text)[: config.max_output_tokens]), "MAX_TOKENS"
    return text, "STOP"


def thinking_asked(request: GenerateContentRequest) -> types.ThinkingConfig | None:
    config = request.generation_config.thinking_config if request.generation_config is not None else None
    if config is None or config.thinking_budget == 0:
        return None
    return config


def answer(request: GenerateContentRequest, model: str) -> types.GenerateContentResponse:
    """The response, validated by google-genai's own model so that it is what Vertex could send."""
    digest = hashlib.sha256(json.dumps([model, request.model_dump(mode="json")], sort_keys=True).encode()).hexdigest()
    contents = request.contents or []
    config = request.generation_config or types.GenerationConfig()
    count = config.candidate_count or 1
    thinking = thinking_asked(request)
    thought = f"The user wrote {len(words(last_user_text(contents)))} words. A short answer will do."
    function = chosen_function(request)
    candidates: list[Json] = []
    output = 0
    for index in range(count):
        parts: list[Json] = []
        if thinking is not None and thinking.include_thoughts:
            parts.append({"text": thought, "thought": True})
        if function is not None:
            call = {"name": function.name, "args": function_args(function)}
            part: Json = {"functionCall": call}
            if thinking is not None:
                part["thoughtSignature"] = hashlib.sha256(f"{digest}{index}".encode()).digest()[:24]
            parts.append(part)
            finish = "STOP"
            output += len(words(json.dumps(call["args"])))
        else:
            text, finish = reply_text(request, index)
            parts.append({"text": text})
            output += len(words(text))
        candidate: Json = {"content": {"role": "model", "parts": parts}, "finishReason": finish}
        if count > 1:
            candidate["index"] = index
        candidates.append(candidate)
    system = part_texts(request.system_instruction) if request.system_instruction is not None else []
    prompt = max(len(words(" ".join(system + [t for content in contents for t in part_texts(content)]))), 1)
    usage: Json = {"promptTokenCount": prompt, "candidatesTokenCount": max(output, 1)}
    if request.cached_content is not None:
        usage["cachedContentTokenCount"] = CACHED_TOKENS
        usage["promptTokenCount"] += CACHED_TOKENS
    if thinking is not None:
        usage["thoughtsTokenCount"] = len(words(thought)) * count
    usage["totalTokenCount"] = sum(usage[key] for key in ("promptTokenCount", "candidatesTokenCount")) + usage.get(
        "thoughtsTokenCount", 0
    )
    usage["trafficType"] = "ON_DEMAND"
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": usage["promptTokenCount"]}]
    usage["candidatesTokensDetails"] = [{"modality": "TEXT", "tokenCount": usage["candidatesTokenCount"]}]
    return types.GenerateContentResponse.model_validate(
        {
            "candidates": candidates,
            "usageMetadata": usage,
            "modelVersion": model,
            "createTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "responseId": digest[:24],
        }
    )


def dumped(response: types.GenerateContentResponse) -> Json:
    """The response's JSON, bytes in standard base64 as Google writes them (pydantic writes the URL-safe kind)."""
    data: Json = response.model_dump(mode="json", by_alias=True, exclude_none=True)
    for candidate in data.get("candidates", []):
        for part in candidate.get("content", {}).get("parts", []):
            if "thoughtSignature" in part:
                part["thoughtSignature"] = base64.b64encode(base64.urlsafe_b64decode(part["thoughtSignature"])).decode()
    return data


# The Gemini stream.


def part_pieces(part: Json) -> list[Json]:
    """A part as the parts of successive chunks: texts (and thoughts) in pieces, a function call whole."""
    if "text" not in part:
        return [part]
    return [{**part, "text": piece} for piece in anthropic_sim.pieces(part["text"], WORDS_PER_TEXT_DELTA)] or [part]


def stream_chunks(response: types.GenerateContentResponse) -> list[Json]:
    """The chunks of a streamed answer, each a GenerateContentResponse (validated by the SDK's model): every
    candidate's parts in pieces, its last piece with finishReason in the last chunk, which alone has usageMetadata."""
    data = dumped(response)
    common = {key: data[key] for key in ("modelVersion", "createTime", "responseId")}
    per_candidate: list[list[Json]] = []
    for candidate in data["candidates"]:
        per_candidate.append([piece for part in candidate["content"]["parts"] for piece in part_pieces(part)])
    steps = max(len(pieces) for pieces in per_candidate) - 1
    chunks: list[Json] = []
    for step in range(steps):
        candidates = [
            {"content": {"role": "model", "parts": [pieces[step]]}, **_index(data["candidates"][number])}
            for number, pieces in enumerate(per_candidate)
            if step < len(pieces) - 1
        ]
        chunks.append({"candidates": candidates, **common})
    last = [
        {
            "content": {"role": "model", "parts": [pieces[-1]]},
            "finishReason": data["candidates"][number]["finishReason"],
            **_index(data["candidates"][number]),
        }
        for number, pieces in enumerate(per_candidate)
    ]
    chunks.append({"candidates": last, "usageMetadata": data["usageMetadata"], **common})
    # From JSON, where bytes are base64 (from Python they would be the text's own bytes).
    return [dumped(types.GenerateContentResponse.model_validate_json(json.dumps(chunk))) for chunk in chunks]


def _index(candidate: Json) -> Json:
    return {"index": candidate["index"]} if "index" in candidate else {}


def sse(chunk: Json) -> bytes:
    return f"data: {json.dumps(chunk, separators=(',', ':'))}\r\n\r\n".encode()


# The server.


class Simulator(Recorder):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.requests)
        self.settings = settings
        self.claude = anthropic_sim.Simulator(anthropic_sim.Settings(api_key="", gap_seconds=settings.gap_seconds))

    def redact(self, name: str, value: str) -> str:
        if name != "authorization":
            return value
        scheme, _, credential = value.partition(" ")
        return f"{scheme} {REDACTED}" if credential else REDACTED

    def recorded_body(self, request: web.Request, raw: bytes) -> Any:
        if request.path != "/token":
            return super().recorded_body(request, raw)
        form = {key: values[-1] for key, values in parse_qs(raw.decode(errors="replace")).items()}
        if "assertion" in form:
            form["assertion"] = ".".join([*form["assertion"].split(".")[:2], REDACTED])
        return form

    async def token(self, request: web.Request) -> web.Response:
        raw = await request.read()
        entry = self.record(request, raw)
        try:
            media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type != "application/x-www-form-urlencoded":
                raise OAuthError("invalid_request", f"Bad Request: the body must be a form, not {media_type!r}")
            form = parse_qs(raw.decode(errors="replace"))
            grant_type = form.get("grant_type", [""])[-1]
            if grant_type != "urn:ietf:params:oauth:grant-type:jwt-bearer":
                raise OAuthError("unsupported_grant_type", f"Invalid grant_type: {grant_type}")
            assertion = form.get("assertion", [""])[-1]
            if not assertion:
                raise OAuthError("invalid_request", "Missing required parameter: assertion")
            settings = self.settings
            verify_assertion(assertion, settings.public_key, settings.client_email, settings.token_url, time.time())
        except OAuthError as exc:
            entry["status"] = 400
            log.info("token refused", error=exc.error, description=exc.description)
            return web.json_response(exc.body(), status=400, headers={"Cache-Control": "no-store"})
        entry["status"] = 200
        token = "ya29.sim-" + secrets.token_urlsafe(48)
        self.settings.tokens[token] = time.time() + self.settings.token_lifetime
        body = {"access_token": token, "expires_in": self.settings.token_lifetime, "token_type": "Bearer"}
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    def check_request(self, request: web.Request, route: re.Match[str]) -> None:
        """Leaked headers, the bearer token, then the path's project, region, method and model."""
        for name in request.headers:
            if name.lower().startswith(INTERNAL_HEADER_PREFIXES) or name.lower() == "x-api-key":
                raise invalid(f"{name.lower()}: header must not reach the upstream (the gateway leaked it)")
        project, region, publisher, model, method = route.group("project", "region", "publisher", "model", "method")
        rpc = f"google.cloud.aiplatform.v1.PredictionService.{method[0].upper()}{method[1:]}"
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if not scheme:
            raise unauthenticated(
                MISSING_CREDENTIALS, "CREDENTIALS_MISSING", rpc, 'Bearer realm="https://accounts.google.com/"'
            )
        expiry = self.settings.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if expiry is None or expiry <= time.time():
            reason = "ACCESS_TOKEN_TYPE_UNSUPPORTED" if expiry is None else "ACCESS_TOKEN_EXPIRED"
            challenge = 'Bearer realm="https://accounts.google.com/", error="invalid_token"'
            raise unauthenticated(INVALID_CREDENTIALS, reason, rpc, challenge)
        resource = f"projects/{project}/locations/{region}/publishers/{publisher}/models/{model}"
        served = f"This simulator serves project '{self.settings.project}', location '{self.settings.region}'."
        if project != self.settings.project:
            raise GoogleError(
                403,
                "PERMISSION_DENIED",
                "Permission 'aiplatform.endpoints.predict' denied on resource "
                f"'//aiplatform.googleapis.com/{resource}' (or it may not exist). {served}",
                error_info("IAM_PERMISSION_DENIED", rpc),
            )
        if (
            region != self.settings.region
            or publisher not in METHODS
            or not model.startswith(MODEL_PREFIXES[publisher])
        ):
            extra = f" {served}" if region != self.settings.region else ""
            raise GoogleError(
                404,
                "NOT_FOUND",
                f"Publisher Model `{resource}` was not found or your project does not have access to it. Please "
                "ensure you are using a valid model version. For more information, see: "
                f"https://cloud.google.com/vertex-ai/generative-ai/docs/learn/model-versions{extra}",
            )
        if method not in METHODS[publisher]:
            raise invalid(f"{publisher} models support {' and '.join(METHODS[publisher])}, not {method}.")

    async def predict(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        route = ROUTE.match(request.path)
        if route is None or request.method != "POST":
            return await self.not_found(request, raw)
        entry = self.record(request, raw)
        publisher, model, method = route.group("publisher", "model", "method")
        try:
            self.check_request(request, route)
            if publisher == "anthropic":
                return await self.claude_answer(request, entry, raw, model, method == "streamRawPredict")
            streaming = method == "streamGenerateContent"
            if streaming and request.query.get("alt") != "sse":
                raise invalid(
                    "alt=sse is required by this simulator: without it Vertex streams a JSON array, which the "
                    "simulator does not produce."
                )
            gemini = parse_gemini(raw)
            if model == "gemini-quota":
                raise GoogleError(
                    429,
                    "RESOURCE_EXHAUSTED",
                    "Resource exhausted. Please try again later. Please refer to "
                    "https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details.",
                )
        except GoogleError as exc:
            entry["status"] = exc.code
            log.info("refused", path=request.path, status=exc.code, message=exc.message)
            return web.json_response(exc.body(), status=exc.code, headers=exc.headers)
        entry["status"] = 200
        response = answer(gemini, model)
        if not streaming:
            return web.json_response(dumped(response))
        return await self.gemini_stream(request, model, response)

    async def claude_answer(
        self, request: web.Request, entry: Json, raw: bytes, model: str, streaming: bool
    ) -> web.StreamResponse:
        try:
            body = parse_claude(raw, streaming)
            anthropic_sim.check_model(model)
        except ApiError as exc:
            entry["status"] = exc.status
            log.info("refused", path=request.path, status=exc.status, message=exc.message)
            return web.json_response(exc.body(), status=exc.status, headers=exc.headers)
        entry["status"] = 200
        message = anthropic_sim.answer({**body, "model": model})
        headers = {"request-id": "req_vrtx_" + message.id.removeprefix("msg_")}
        if not streaming:
            return web.json_response(message.model_dump(mode="json", exclude_unset=True), headers=headers)
        return await self.claude.stream(request, model, message, headers)

    async def gemini_stream(
        self, request: web.Request, model: str, response: types.GenerateContentResponse
    ) -> web.StreamResponse:
        events = [sse(chunk) for chunk in stream_chunks(response)]
        if model == "gemini-stream-error":
            error = GoogleError(500, "INTERNAL", "Internal error encountered.")
            events = [*events[: max(len(events) // 2, 1)], sse(error.body())]
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        return await send_stream(request, headers, events, self.settings.gap_seconds)

    async def not_found(self, request: web.Request, raw: bytes) -> web.Response:
        """Google's HTML 404 for a URL no API serves."""
        entry = self.record(request, raw)
        entry["status"] = 404
        return web.Response(status=404, text=NOT_FOUND_HTML.format(path=request.path), content_type="text/html")


def unauthenticated(message: str, reason: str, rpc: str, challenge: str) -> GoogleError:
    return GoogleError(401, "UNAUTHENTICATED", message, error_info(reason, rpc), {"WWW-Authenticate": challenge})


def parse_claude(raw: bytes, streaming: bool) -> Json:
    """A Claude-on-Vertex body: no `model`, Vertex's anthropic_version, `stream` matching the method, then the
    Messages API's own contract; ApiError(400) otherwise."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "invalid_request_error", f"body: not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request_error", "body: Input should be an object")
    if "model" in body:
        raise ApiError(400, "invalid_request_error", "model: Extra inputs are not permitted (the model is in the URL)")
    if "anthropic_version" not in body:
        raise ApiError(400, "invalid_request_error", "anthropic_version: Field required")
    if body["anthropic_version"] != VERTEX_ANTHROPIC_VERSION:
        raise ApiError(400, "invalid_request_error", f"anthropic_version: Input should be '{VERTEX_ANTHROPIC_VERSION}'")
    if streaming and body.get("stream") is not True:
        raise ApiError(400, "invalid_request_error", 'stream: streamRawPredict requires "stream": true')
    if not streaming and body.get("stream") is True:
        raise ApiError(400, "invalid_request_error", "stream: rawPredict does not stream: use streamRawPredict")
    messages = {key: value for key, value in body.items() if key != "anthropic_version"}
    # The Messages contract wants a model: the one of the URL, which cannot be wrong there.
    return parse_body(json.dumps({"model": "claude-from-the-url", **messages}).encode())


def build_app(settings: Settings) -> web.Application:
    simulator = Simulator(settings)
    app = web.Application()
    simulator.add_routes(app)
    app.router.add_post("/token", simulator.token)
    app.router.add_route("*", "/{tail:.*}", simulator.predict)
    return app


def warm_up() -> None:
    """The validators built before /health answers, not on the first request (google-genai defers them)."""
    for streaming in (False, True):
        request_adapter(streaming)
    request = parse_gemini(b'{"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}')
    stream_chunks(answer(request, "gemini-warm-up"))


async def serve(settings: Settings) -> int:
    warm_up()
    app = build_app(settings)
    return await serve_app(
        app, settings.host, settings.port, log, "vertex", project=settings.project, region=settings.region
    )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = arg_parser("vertex_sim", __doc__, DEFAULT_PORT)
    parser.add_argument("--project", required=True, help="the only project the model paths may name")
    parser.add_argument("--region", required=True, help="the only location the model paths may name")
    parser.add_argument("--client-email", required=True, help="the service account's email: the assertions' iss")
    parser.add_argument("--public-key-file", required=True, help="the service account's public key (PEM)")
    parser.add_argument(
        "--token-lifetime",
        type=int,
        default=DEFAULT_TOKEN_LIFETIME,
        help=f"seconds an access token is valid (default {DEFAULT_TOKEN_LIFETIME})",
    )
    return common.parse_args(parser, argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    with open(args.public_key_file) as key_file:
        public_key = load_public_key(key_file.read())
    settings = Settings(
        host=args.host,
        port=args.port,
        project=args.project,
        region=args.region,
        client_email=args.client_email,
        public_key=public_key,
        token_lifetime=max(args.token_lifetime, 1),
        gap_seconds=args.gap_seconds,
    )
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
