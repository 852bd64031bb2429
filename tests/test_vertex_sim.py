"""The Vertex AI simulator (testing/providers/vertex_sim.py) as a subprocess on its own loopback address: Google's
token endpoint takes the JWT-bearer grant as Google does (assertions built and signed here, and google-auth's own),
google-genai's client and types take its Gemini answers, the Anthropic SDK (AnthropicVertex and its event types)
takes its Claude answers, and it refuses what Vertex refuses."""

from __future__ import annotations

import base64
import json
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import anthropic
import pytest
from anthropic.types import Message, MessageParam, RawMessageStreamEvent
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from google import genai
from google.genai import types
from google.oauth2 import service_account
from pydantic import TypeAdapter

from testing.ports import loopback_address
from testing.providers.vertex_sim import new_service_account
from testing.sims import SimProcess, start_vertex_sim
from testing.web import Response, request

PROJECT = "sim-project-7"
REGION = "us-east5"
GEMINI = "gemini-2.5-flash"
CLAUDE = "claude-sonnet-4-5@20250929"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
HELLO: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}
WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "OBJECT",
        "properties": {"city": {"type": "STRING"}, "days": {"type": "INTEGER"}},
        "required": ["city", "days"],
    },
}
CLAUDE_BODY: dict[str, Any] = {
    "anthropic_version": "vertex-2023-10-16",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hello there"}],
}
VERTEX_VERSION = {"anthropic_version": "vertex-2023-10-16"}
EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
Account = tuple[dict[str, str], str]


@pytest.fixture(scope="module")
def account() -> Account:
    return new_service_account("http://placeholder.invalid/token", PROJECT)


def started(
    tmp_path_factory: pytest.TempPathFactory, account: Account, token_lifetime: int | None = None
) -> SimProcess:
    info, public_pem = account
    host, _ = loopback_address()
    log = tmp_path_factory.mktemp("vertex-sim") / "log"
    return start_vertex_sim(host, log, PROJECT, REGION, public_pem, info["client_email"], token_lifetime=token_lifetime)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory, account: Account) -> Iterator[SimProcess]:
    process = started(tmp_path_factory, account)
    yield process
    process.kill()


@pytest.fixture(scope="module")
def key(sim: SimProcess, account: Account) -> dict[str, str]:
    """The service-account key JSON, its token_uri pointing at the simulator."""
    return {**account[0], "token_uri": f"{sim.url}/token"}


@pytest.fixture(scope="module")
def token(sim: SimProcess, key: dict[str, str]) -> str:
    answer = token_request(sim, assertion(key))
    assert answer.status_code == 200, answer.text
    access_token: str = answer.json()["access_token"]
    return access_token


def credentials(key: dict[str, str]) -> service_account.Credentials:
    made: service_account.Credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
        key, scopes=[CLOUD_PLATFORM]
    )
    return made


def gemini_client(sim: SimProcess, key: dict[str, str]) -> genai.Client:
    options = types.HttpOptions(base_url=sim.url, api_version="v1")
    return genai.Client(
        vertexai=True, project=PROJECT, location=REGION, credentials=credentials(key), http_options=options
    )


# The JWT-bearer grant.


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def assertion(
    key: dict[str, str],
    private_key: rsa.RSAPrivateKey | None = None,
    header: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A service account's assertion as google-auth builds it, signed RS256 with the key (or `private_key`); a claim
    given as None is left out."""
    now = int(time.time())
    body = {"iss": key["client_email"], "aud": key["token_uri"], "scope": CLOUD_PLATFORM, "iat": now, "exp": now + 3600}
    body = {name: value for name, value in (body | claims).items() if value is not None}
    head = header if header is not None else {"alg": "RS256", "typ": "JWT", "kid": key["private_key_id"]}
    signing = private_key
    if signing is None:
        loaded = serialization.load_pem_private_key(key["private_key"].encode(), password=None)
        assert isinstance(loaded, rsa.RSAPrivateKey)
        signing = loaded
    signed = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(body).encode())}"
    signature = signing.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signed}.{b64url(signature)}"


def tampered(signed: str, other: str) -> str:
    """`signed`'s header and signature around `other`'s claims."""
    header, _, signature = signed.split(".")
    return f"{header}.{other.split('.')[1]}.{signature}"


def token_request(
    sim: SimProcess, jwt: str | None, grant_type: str = "urn:ietf:params:oauth:grant-type:jwt-bearer"
) -> Response:
    form = {"grant_type": grant_type} | ({"assertion": jwt} if jwt is not None else {})
    headers = {"content-type": "application/x-www-form-urlencoded"}
    return request(sim.url, "POST", "/token", urlencode(form).encode(), headers)


def test_service_account_key(key: dict[str, str], account: Account) -> None:
    info, public_pem = account
    assert info["type"] == "service_account" and info["project_id"] == PROJECT
    assert info["private_key"].startswith("-----BEGIN PRIVATE KEY-----\n")  # PKCS8, as Google issues it
    assert len(info["private_key_id"]) == 40 and info["client_email"].endswith(f"@{PROJECT}.iam.gserviceaccount.com")
    assert {"client_id", "auth_uri", "token_uri", "auth_provider_x509_cert_url", "client_x509_cert_url"} <= set(info)
    private_key = serialization.load_pem_private_key(info["private_key"].encode(), password=None)
    assert isinstance(private_key, rsa.RSAPrivateKey) and private_key.key_size == 2048
    public = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert public.decode() == public_pem


def test_token_granted(sim: SimProcess, key: dict[str, str]) -> None:
    answer = token_request(sim, assertion(key))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["expires_in"], body["token_type"]) == (3599, "Bearer") and set(body) == {
        "access_token",
        "expires_in",
        "token_type",
    }
    assert body["access_token"] != token_request(sim, assertion(key)).json()["access_token"]  # opaque, fresh each time
    google_audience = assertion(key, aud="https://oauth2.googleapis.com/token")  # what google-auth always sends
    assert token_request(sim, google_audience).status_code == 200
    no_kid = assertion(key, header={"alg": "RS256", "typ": "JWT"})
    assert token_request(sim, no_kid).status_code == 200


@pytest.mark.parametrize(
    ("case", "error", "description"),
    [
        ("wrong key", "invalid_grant", "Invalid JWT Signature."),
        ("wrong kid", "invalid_grant", "Invalid JWT Signature."),
        ("tampered", "invalid_grant", "Invalid JWT Signature."),
        ("wrong aud", "invalid_grant", "Invalid JWT: Failed audience check. The right audience is http://"),
        ("wrong iss", "invalid_grant", "Invalid grant: account not found"),
        ("HS256", "invalid_grant", "Invalid JWT: the algorithm must be RS256, not 'HS256'"),
        ("expired", "invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes)"),
        ("longer than an hour", "invalid_grant", "Invalid JWT: Token must be a short-lived token"),
        ("issued in the future", "invalid_grant", "Invalid JWT: Token must be a short-lived token"),
        ("no exp", "invalid_grant", "Invalid JWT: Token must be a short-lived token"),
        ("missing scope", "invalid_scope", "Empty or missing scope not allowed."),
        ("other scope", "invalid_scope", "Invalid OAuth scope: 'https://www.googleapis.com/auth/userinfo.email'"),
        ("not a JWT", "invalid_grant", "Invalid JWT: the assertion is not three base64url segments"),
    ],
)
def test_token_refused(sim: SimProcess, key: dict[str, str], case: str, error: str, description: str) -> None:
    now = int(time.time())
    cases: dict[str, Callable[[], str]] = {
        "wrong key": lambda: assertion(key, rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "wrong kid": lambda: assertion(key, header={"alg": "RS256", "typ": "JWT", "kid": "0" * 40}),
        "tampered": lambda: tampered(assertion(key), assertion(key, exp=now + 3000)),
        "wrong aud": lambda: assertion(key, aud="http://example.com/token"),
        "wrong iss": lambda: assertion(key, iss="someone@other.iam.gserviceaccount.com"),
        "HS256": lambda: assertion(key, header={"alg": "HS256", "typ": "JWT"}),
        "expired": lambda: assertion(key, iat=now - 7200, exp=now - 3600),
        "longer than an hour": lambda: assertion(key, exp=now + 7200),
        "issued in the future": lambda: assertion(key, iat=now + 600, exp=now + 1200),
        "no exp": lambda: assertion(key, exp=None),
        "missing scope": lambda: assertion(key, scope=None),
        "other scope": lambda: assertion(key, scope="https://www.googleapis.com/auth/userinfo.email"),
        "not a JWT": lambda: "not-a-jwt",
    }
    jwt = cases[case]()
    answer = token_request(sim, jwt)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == error and answer.json()["error_description"].startswith(description), answer.text


def test_token_request_shape(sim: SimProcess, key: dict[str, str]) -> None:
    wrong_grant = token_request(sim, assertion(key), grant_type="client_credentials")
    assert (wrong_grant.status_code, wrong_grant.json()["error"]) == (400, "unsupported_grant_type")
    no_assertion = token_request(sim, None)
    assert no_assertion.json() == {
        "error": "invalid_request",
        "error_description": "Missing required parameter: assertion",
    }
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion(key)}
    as_json = request(sim.url, "POST", "/token", json.dumps(form).encode(), {"content-type": "application/json"})
    assert (as_json.status_code, as_json.json()["error"]) == (400, "invalid_request")


# google-genai's own client, with google-auth's service-account credentials.


def test_sdk_generate_content(sim: SimProcess, key: dict[str, str]) -> None:
    client = gemini_client(sim, key)
    answer = client.models.generate_content(
        model=GEMINI,
        contents="hello there",
        config=types.GenerateContentConfig(
            system_instruction="Be brief.",
            temperature=0.5,
            top_p=0.9,
            max_output_tokens=100,
            stop_sequences=["zzz"],
            safety_settings=[types.SafetySetting(category="HARM_CATEGORY_HATE_SPEECH", threshold="BLOCK_ONLY_HIGH")],
            labels={"team": "gateway"},
            response_mime_type="text/plain",
        ),
    )
    assert answer.text == "You said: hello there" and answer.model_version == GEMINI and answer.response_id
    assert answer.candidates is not None and answer.candidates[0].finish_reason == types.FinishReason.STOP
    usage = answer.usage_metadata
    assert usage is not None
    assert (usage.prompt_token_count, usage.candidates_token_count, usage.total_token_count) == (4, 4, 8)
    assert usage.thoughts_token_count is None


def test_sdk_tools_thinking_and_candidates(sim: SimProcess, key: dict[str, str]) -> None:
    client = gemini_client(sim, key)
    answer = client.models.generate_content(
        model=GEMINI,
        contents="what is the weather? call get_weather",
        config=types.GenerateContentConfig(
            tools=[types.Tool(function_declarations=[types.FunctionDeclaration.model_validate(WEATHER)])],
            thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_budget=1024),
            candidate_count=2,
        ),
    )
    assert answer.candidates is not None and [c.index for c in answer.candidates] == [0, 1]
    parts = answer.candidates[1].content.parts if answer.candidates[1].content else None
    assert parts is not None and parts[0].thought and parts[0].text
    call = parts[1].function_call
    assert call is not None and (call.name, call.args) == ("get_weather", {"city": "x", "days": 1})
    assert parts[1].thought_signature
    assert answer.usage_metadata is not None and answer.usage_metadata.thoughts_token_count == 20


def test_sdk_stream(sim: SimProcess, key: dict[str, str]) -> None:
    client = gemini_client(sim, key)
    text = "a fairly long sentence that the simulator streams in pieces"
    chunks = list(client.models.generate_content_stream(model=GEMINI, contents=text))
    assert len(chunks) > 3 and "".join(chunk.text or "" for chunk in chunks) == f"You said: {text}"
    *first, last = chunks
    assert all(
        chunk.usage_metadata is None and chunk.candidates and not chunk.candidates[0].finish_reason for chunk in first
    )
    assert last.candidates and last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata is not None and last.usage_metadata.candidates_token_count == 12


def test_sdk_refreshes_short_lived_tokens(tmp_path_factory: pytest.TempPathFactory, account: Account) -> None:
    short = started(tmp_path_factory, account, token_lifetime=1)
    try:
        key = {**account[0], "token_uri": f"{short.url}/token"}
        answer = token_request(short, assertion(key))
        assert answer.json()["expires_in"] == 1
        first = gemini(short, answer.json()["access_token"], HELLO)
        assert first.status_code == 200, first.text
        time.sleep(1.2)
        expired = gemini(short, answer.json()["access_token"], HELLO)
        assert expired.status_code == 401 and expired.json()["error"]["details"][0]["reason"] == "ACCESS_TOKEN_EXPIRED"
        assert expired.json()["error"]["status"] == "UNAUTHENTICATED"
        client = gemini_client(short, key)  # google-auth takes a fresh token when its own is (about to be) expired
        assert client.models.generate_content(model=GEMINI, contents="one").text == "You said: one"
        time.sleep(1.2)
        assert client.models.generate_content(model=GEMINI, contents="two").text == "You said: two"
    finally:
        short.kill()


# Raw requests, answers checked by google-genai's types strictly.


def gemini(
    sim: SimProcess,
    token: str | None,
    body: Any,
    model: str = GEMINI,
    method: str = "generateContent",
    query: str = "",
    project: str = PROJECT,
    region: str = REGION,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> Response:
    path = f"/v1/projects/{project}/locations/{region}/publishers/google/models/{model}:{method}{query}"
    sent = {"content-type": "application/json"} | ({"authorization": f"Bearer {token}"} if token else {})
    data = raw if raw is not None else json.dumps(body).encode()
    return request(sim.url, "POST", path, data, sent | (headers or {}))


def parsed(answer: Response) -> types.GenerateContentResponse:
    """The answer as google-genai's type, strictly: no unknown member (the types forbid them), no unknown enum value
    (google-genai only warns), and nothing coerced (the type dumps back the very JSON that arrived)."""
    assert answer.status_code == 200, answer.text
    return strictly(answer.json())


def strictly(data: dict[str, Any]) -> types.GenerateContentResponse:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        response = types.GenerateContentResponse.model_validate(data)
    assert canonical(response.model_dump(mode="json", by_alias=True, exclude_none=True)) == canonical(data)
    return response


def canonical(value: Any) -> Any:
    """`value` with bytes (thought signatures) decoded: pydantic writes URL-safe base64, Google the standard kind."""
    if isinstance(value, list):
        return [canonical(item) for item in value]
    if not isinstance(value, dict):
        return value
    return {
        key: base64.b64decode(item, altchars=b"-_" if "-" in item or "_" in item else None)
        if key == "thoughtSignature"
        else canonical(item)
        for key, item in value.items()
    }


def sse_chunks(answer: Response) -> list[dict[str, Any]]:
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
    events = answer.content.split(b"\r\n\r\n")
    assert events[-1] == b"" and all(event.startswith(b"data: ") and b"\n" not in event for event in events[:-1])
    return [json.loads(event.removeprefix(b"data: ")) for event in events[:-1]]


def text_of(response: types.GenerateContentResponse, candidate: int = 0) -> str:
    assert response.candidates is not None
    content = response.candidates[candidate].content
    assert content is not None and content.parts is not None
    return "".join(part.text or "" for part in content.parts if not part.thought)


def test_raw_answer_shape(sim: SimProcess, token: str) -> None:
    answer = gemini(sim, token, HELLO)
    data = answer.json()
    assert set(data) == {"candidates", "usageMetadata", "modelVersion", "createTime", "responseId"}
    assert data["candidates"] == [
        {"content": {"role": "model", "parts": [{"text": "You said: hello there"}]}, "finishReason": "STOP"}
    ]
    assert data["usageMetadata"]["promptTokensDetails"] == [{"modality": "TEXT", "tokenCount": 2}]
    assert parsed(answer).usage_metadata is not None


def test_max_tokens_stop_sequences_and_candidates(sim: SimProcess, token: str) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "one two three four five"}]}]}
    cut = parsed(gemini(sim, token, body | {"generationConfig": {"maxOutputTokens": 3}}))
    assert cut.candidates is not None and cut.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert text_of(cut) == "You said: one"
    stopped = parsed(gemini(sim, token, body | {"generationConfig": {"stopSequences": ["four", "three"]}}))
    assert stopped.candidates is not None and stopped.candidates[0].finish_reason == types.FinishReason.STOP
    assert text_of(stopped) == "You said: one two "
    three = parsed(gemini(sim, token, body | {"generationConfig": {"candidateCount": 3}}))
    assert [text_of(three, n) for n in range(3)] == [
        "You said: one two three four five",
        "You said: one two three four five #2",
        "You said: one two three four five #3",
    ]


def test_function_calling_modes(sim: SimProcess, token: str) -> None:
    tools = [{"functionDeclarations": [WEATHER, {"name": "get_time", "parametersJsonSchema": {"type": "object"}}]}]
    ask: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "tools": tools}

    def call_of(body: dict[str, Any]) -> types.FunctionCall | None:
        response = parsed(gemini(sim, token, body))
        assert response.candidates and response.candidates[0].content and response.candidates[0].content.parts
        return response.candidates[0].content.parts[0].function_call

    assert call_of(ask) is None
    forced = call_of(ask | {"toolConfig": {"functionCallingConfig": {"mode": "ANY"}}})
    assert forced is not None and (forced.name, forced.args) == ("get_weather", {"city": "x", "days": 1})
    allowed = {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_time"]}}
    named = call_of(ask | {"toolConfig": allowed})
    assert named is not None and (named.name, named.args) == ("get_time", {})
    said = ask | {"contents": [{"role": "user", "parts": [{"text": "please call get_time"}]}]}
    assert (call_of(said) or types.FunctionCall()).name == "get_time"
    assert call_of(said | {"toolConfig": {"functionCallingConfig": {"mode": "NONE"}}}) is None
    answered = said | {
        "contents": [
            *said["contents"],
            {"role": "model", "parts": [{"functionCall": {"name": "get_time", "args": {}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "get_time", "response": {"output": "noon"}}}]},
        ]
    }
    response = parsed(gemini(sim, token, answered))
    assert text_of(response) == 'The tool returned: {"output": "noon"}'


def test_thinking_and_cached_content(sim: SimProcess, token: str) -> None:
    hidden = parsed(gemini(sim, token, HELLO | {"generationConfig": {"thinkingConfig": {"thinkingBudget": 512}}}))
    assert hidden.usage_metadata is not None and hidden.usage_metadata.thoughts_token_count == 10
    assert text_of(hidden) == "You said: hello there"
    off = parsed(gemini(sim, token, HELLO | {"generationConfig": {"thinkingConfig": {"thinkingBudget": 0}}}))
    assert off.usage_metadata is not None and off.usage_metadata.thoughts_token_count is None
    cache = f"projects/{PROJECT}/locations/{REGION}/cachedContents/123"
    cached = parsed(gemini(sim, token, HELLO | {"cachedContent": cache}))
    assert cached.usage_metadata is not None
    assert (cached.usage_metadata.cached_content_token_count, cached.usage_metadata.prompt_token_count) == (16, 18)


def test_raw_stream(sim: SimProcess, token: str) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "stream me a few words please"}]}]}
    chunks = sse_chunks(gemini(sim, token, body, method="streamGenerateContent", query="?alt=sse"))
    responses = [strictly(chunk) for chunk in chunks]
    assert "".join(text_of(response) for response in responses) == "You said: stream me a few words please"
    assert all("usageMetadata" not in chunk and "finishReason" not in chunk["candidates"][0] for chunk in chunks[:-1])
    assert (
        chunks[-1]["candidates"][0]["finishReason"] == "STOP" and chunks[-1]["usageMetadata"]["totalTokenCount"] == 14
    )
    assert len({chunk["responseId"] for chunk in chunks}) == 1


def test_streamed_function_call(sim: SimProcess, token: str) -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": "call get_weather"}]}],
        "tools": TOOLS,
        "generationConfig": {"thinkingConfig": {"includeThoughts": True}},
    }
    whole = parsed(gemini(sim, token, body))
    chunks = sse_chunks(gemini(sim, token, body, method="streamGenerateContent", query="?alt=sse"))
    parts = [part for chunk in chunks for part in chunk["candidates"][0]["content"]["parts"]]
    assert all(part.get("thought") for part in parts[:-1]) and len(parts) > 2
    assert parts[-1]["functionCall"] == {"name": "get_weather", "args": {"city": "x", "days": 1}}
    assert whole.candidates and whole.candidates[0].content and whole.candidates[0].content.parts
    signature = whole.candidates[0].content.parts[-1].thought_signature
    assert signature and base64.b64decode(parts[-1]["thoughtSignature"]) == signature
    assert "".join(part["text"] for part in parts[:-1]) == whole.candidates[0].content.parts[0].text


def test_stream_needs_alt_sse(sim: SimProcess, token: str) -> None:
    answer = gemini(sim, token, HELLO, method="streamGenerateContent")
    assert answer.status_code == 400 and answer.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "alt=sse is required by this simulator" in answer.json()["error"]["message"]


def test_streamed_candidates(sim: SimProcess, token: str) -> None:
    body = HELLO | {"generationConfig": {"candidateCount": 2}}
    chunks = sse_chunks(gemini(sim, token, body, method="streamGenerateContent", query="?alt=sse"))
    texts = ["", ""]
    for chunk in chunks:
        for candidate in chunk["candidates"]:
            texts[candidate["index"]] += candidate["content"]["parts"][0]["text"]
    assert texts == ["You said: hello there", "You said: hello there #2"]
    assert [c["finishReason"] for c in chunks[-1]["candidates"]] == ["STOP", "STOP"]


# Auth, path and error hooks.


def test_authentication(sim: SimProcess, token: str) -> None:
    missing = gemini(sim, None, HELLO)
    error = missing.json()["error"]
    assert (missing.status_code, error["code"], error["status"]) == (401, 401, "UNAUTHENTICATED")
    assert error["message"].startswith("Request is missing required authentication credential")
    assert error["details"][0]["reason"] == "CREDENTIALS_MISSING"
    assert missing.headers["www-authenticate"].startswith("Bearer realm=")
    for authorization in ("Bearer ya29.not-issued-here", f"Basic {token}", "Bearer"):
        refused = gemini(sim, None, HELLO, headers={"authorization": authorization})
        assert refused.status_code == 401, authorization
        assert refused.json()["error"]["message"].startswith("Request had invalid authentication credentials.")
        assert refused.json()["error"]["details"][0]["reason"] == "ACCESS_TOKEN_TYPE_UNSUPPORTED"


def test_project_region_and_model(sim: SimProcess, token: str) -> None:
    other_project = gemini(sim, token, HELLO, project="someone-else")
    assert other_project.status_code == 403 and other_project.json()["error"]["status"] == "PERMISSION_DENIED"
    assert "projects/someone-else/" in other_project.json()["error"]["message"]
    assert f"serves project '{PROJECT}'" in other_project.json()["error"]["message"]
    other_region = gemini(sim, token, HELLO, region="europe-west4")
    assert other_region.status_code == 404 and other_region.json()["error"]["status"] == "NOT_FOUND"
    assert "locations/europe-west4/" in other_region.json()["error"]["message"]
    assert f"location '{REGION}'" in other_region.json()["error"]["message"]
    unknown = gemini(sim, token, HELLO, model="text-bison")
    assert unknown.status_code == 404 and unknown.json()["error"]["message"].startswith(
        f"Publisher Model `projects/{PROJECT}/locations/{REGION}/publishers/google/models/text-bison` was not found"
    )
    wrong_method = gemini(sim, token, HELLO, method="rawPredict")
    assert wrong_method.status_code == 400 and "generateContent" in wrong_method.json()["error"]["message"]
    nowhere = request(sim.url, "POST", "/v1/models/gemini:generateContent", b"{}", {"authorization": f"Bearer {token}"})
    assert nowhere.status_code == 404 and nowhere.headers["content-type"].startswith("text/html")


def test_leaked_headers(sim: SimProcess, token: str) -> None:
    for name in ("x-ai-eg-model", "x-gateway-destination-endpoint", "x-api-key"):
        answer = gemini(sim, token, HELLO, headers={name: "leaked"})
        assert answer.status_code == 400 and answer.json()["error"]["message"].startswith(name), name


def test_error_hooks(sim: SimProcess, token: str) -> None:
    quota = gemini(sim, token, HELLO, model="gemini-quota")
    assert quota.status_code == 429 and quota.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert quota.json()["error"]["code"] == 429
    whole = gemini(sim, token, HELLO, model="gemini-stream-error")
    assert text_of(parsed(whole)) == "You said: hello there"
    long = {"contents": [{"role": "user", "parts": [{"text": "many words to cut the stream somewhere in the middle"}]}]}
    streamed = gemini(sim, token, long, model="gemini-stream-error", method="streamGenerateContent", query="?alt=sse")
    chunks = sse_chunks(streamed)
    assert len(chunks) > 2 and all("candidates" in chunk for chunk in chunks[:-1])
    assert chunks[-1] == {"error": {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"}}
    assert not any("finishReason" in c for chunk in chunks[:-1] for c in chunk["candidates"])


# The body's contract.


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "parts": list(parts)}


def model_turn(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "model", "parts": list(parts)}


CALL = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
RESPONSE = {"functionResponse": {"name": "get_weather", "response": {"output": "sunny"}}}
TOOLS = [{"functionDeclarations": [WEATHER]}]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            HELLO | {"generationConfig": {"foo": 1}},
            "Invalid JSON payload received. Unknown name \"foo\" at 'generation_config': Cannot find field.",
        ),
        (HELLO | {"model": "gemini"}, 'Invalid JSON payload received. Unknown name "model": Cannot find field.'),
        (
            {"contents": [user({"text": "hi", "cacheControl": {}})]},
            "Unknown name \"cacheControl\" at 'contents[0].parts[0]': Cannot find field.",
        ),
        (
            {"contents": [user({"toolCall": {}})]},
            "Unknown name \"toolCall\" at 'contents[0].parts[0]': Cannot find field.",
        ),
        (
            HELLO | {"generationConfig": {"enableEnhancedCivicAnswers": True}},
            "Unknown name \"enableEnhancedCivicAnswers\" at 'generation_config'",
        ),
        (
            HELLO | {"generationConfig": {"modelSelectionConfig": {}}},
            "Unknown name \"modelSelectionConfig\" at 'generation_config'",
        ),
        (
            HELLO | {"tools": [{"functionDeclarations": [{"name": "f", "parameters": {"type": "object"}}]}]},
            "Invalid value at 'tools[0].function_declarations[0].parameters.type' (Type), \"object\"",
        ),
        (
            HELLO | {"toolConfig": {"functionCallingConfig": {"mode": "SOMETIMES"}}, "tools": TOOLS},
            "Invalid value at 'tool_config.function_calling_config.mode' (FunctionCallingConfigMode), \"SOMETIMES\"",
        ),
        (
            HELLO | {"generationConfig": {"maxOutputTokens": "10"}},
            "Invalid value at 'generation_config.max_output_tokens' (TYPE_INT32), \"10\"",
        ),
        (HELLO | {"generationConfig": {"temperature": "hot"}}, "Invalid value at 'generation_config.temperature'"),
        ({"contents": []}, "must include at least one contents field"),
        ({}, "must include at least one contents field"),
        ({"contents": [{"role": "assistant", "parts": [{"text": "hi"}]}]}, "Please use a valid role: user, model."),
        ({"contents": [{"parts": [{"text": "hi"}]}]}, "Please use a valid role: user, model."),
        ({"contents": [user()]}, "must include at least one parts field"),
        ({"contents": [user({"text": ""})]}, "it has an empty text parameter"),
        ({"contents": [user({"thought": True})]}, "contents[0].parts[0] has no data"),
        (
            {"contents": [user({"text": "hi", "inlineData": {"mimeType": "image/png", "data": "aGk="}})]},
            "Oneof field 'data' is already set. Cannot set 'inline_data'",
        ),
        (
            {"contents": [user({"text": "hi"}), model_turn({"text": "hello"}), user(RESPONSE)], "tools": TOOLS},
            "Please ensure that function response turn comes immediately after a function call turn.",
        ),
        (
            {"contents": [user({"text": "hi"}), model_turn(CALL), user({"text": "ignored the call"})], "tools": TOOLS},
            "Please ensure that the number of function response parts is equal to the number of function call parts",
        ),
        (
            {
                "contents": [
                    user({"text": "hi"}),
                    model_turn(CALL),
                    user({"functionResponse": {"name": "get_time", "response": {}}}),
                ],
                "tools": TOOLS,
            },
            "Please ensure that the function response names (get_time) match the function call names",
        ),
        ({"contents": [user(CALL)], "tools": TOOLS}, "only a model turn may call a function"),
        ({"contents": [model_turn(CALL)], "tools": TOOLS}, "function call turn comes immediately after a user turn"),
        ({"contents": [user({"text": "hi"}), model_turn(RESPONSE)]}, "only a user turn may answer a call"),
        (HELLO | {"tools": [{"functionDeclarations": [{"name": "9lives"}]}]}, "Invalid function name."),
        (HELLO | {"tools": [{"functionDeclarations": [WEATHER, WEATHER]}]}, "Duplicate function declaration found"),
        (
            HELLO
            | {"tools": TOOLS, "toolConfig": {"functionCallingConfig": {"allowedFunctionNames": ["get_weather"]}}},
            "allowed_function_names may only be set when mode is ANY",
        ),
        (
            HELLO
            | {"tools": TOOLS, "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["x"]}}},
            "'x' is not a declared function",
        ),
        (
            HELLO | {"toolConfig": {"functionCallingConfig": {"mode": "ANY"}}},
            "Function calling config is set without function_declarations.",
        ),
        (
            HELLO | {"generationConfig": {"temperature": 3}},
            "it has a temperature value of 3.0 but the supported range is from 0 (inclusive) to 2.0001 (exclusive)",
        ),
        (HELLO | {"generationConfig": {"candidateCount": 9}}, "candidateCount value of 9"),
        (HELLO | {"generationConfig": {"maxOutputTokens": 0}}, "max_output_tokens must be positive"),
        (HELLO | {"generationConfig": {"stopSequences": list("abcdef")}}, "at most 5 stop sequences"),
        (HELLO | {"generationConfig": {"responseMimeType": "text/html"}}, "response_mime_type must be one of"),
        (
            HELLO | {"generationConfig": {"responseSchema": {"type": "STRING"}}},
            "response_mime_type must be application/json or text/x.enum when a response schema is set.",
        ),
        (
            HELLO | {"generationConfig": {"thinkingConfig": {"thinkingBudget": 10, "thinkingLevel": "LOW"}}},
            "thinking_budget and thinking_level must not both be set.",
        ),
        (
            HELLO | {"systemInstruction": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "aGk="}}]}},
            "System instruction only supports text parts.",
        ),
        (HELLO | {"safetySettings": [{"threshold": "BLOCK_NONE"}]}, "a safety setting has no category"),
        (HELLO | {"labels": {"Team": "x"}}, "Label key 'Team' is invalid"),
        ([HELLO], "Expected an object at the top level"),
    ],
)
def test_gemini_contract(sim: SimProcess, token: str, body: Any, message: str) -> None:
    answer = gemini(sim, token, body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert message in error["message"], error["message"]


def test_gemini_contract_accepts(sim: SimProcess, token: str) -> None:
    """What Vertex parses and google-genai's classes would not say: snake_case names, `modelConfig`, a whole
    function-calling exchange, media parts, JSON output with a schema, null members."""
    body = {
        "contents": [
            user({"text": "look"}, {"inline_data": {"mime_type": "image/png", "data": "aGk="}}),
            model_turn({"text": "nice"}),
            user(
                {"text": "call get_weather"}, {"fileData": {"fileUri": "gs://b/o.pdf", "mimeType": "application/pdf"}}
            ),
            model_turn(CALL, {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}}),
            user(RESPONSE, RESPONSE),
        ],
        "systemInstruction": {"role": "system", "parts": [{"text": "Be brief."}]},
        "tools": TOOLS,
        "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
        "generationConfig": {
            "modelConfig": {"featureSelectionPreference": "BALANCED"},
            "responseMimeType": "application/json",
            "responseSchema": {"type": "OBJECT", "properties": {"a": {"type": "STRING"}}},
            "thinking_config": {"include_thoughts": True, "thinking_level": "LOW"},
            "seed": 7,
            "topK": 40,
            "presencePenalty": -1.5,
        },
        "labels": {"team": "gw"},
        "cachedContent": None,
    }
    response = parsed(gemini(sim, token, body))
    assert text_of(response) == 'The tool returned: {"output": "sunny"}; {"output": "sunny"}'


def test_invalid_json(sim: SimProcess, token: str) -> None:
    answer = gemini(sim, token, None, raw=b'{"contents": ')
    assert answer.status_code == 400 and answer.json()["error"]["message"].startswith("Invalid JSON payload received.")


# Claude on Vertex.


def claude(sim: SimProcess, token: str, body: Any, model: str = CLAUDE, method: str = "rawPredict") -> Response:
    path = f"/v1/projects/{PROJECT}/locations/{REGION}/publishers/anthropic/models/{model}:{method}"
    headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
    return request(sim.url, "POST", path, json.dumps(body).encode(), headers)


def anthropic_events(answer: Response) -> list[Any]:
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream"), answer.text
    events = []
    for block in answer.content.decode().split("\n\n"):
        if block.strip():
            name, data = block.split("\n")
            if name != "event: ping":
                events.append(EVENT.validate_python(json.loads(data.removeprefix("data: "))))
    return events


def test_claude_with_the_anthropic_vertex_sdk(sim: SimProcess, key: dict[str, str], token: str) -> None:
    """AnthropicVertex (SDK 2.17) drops `model` and picks the method; it sends its own API version (2026-10-21) unless
    the body names one, so Vertex's is given through extra_body."""
    client = anthropic.AnthropicVertex(region=REGION, project_id=PROJECT, access_token=token, base_url=f"{sim.url}/v1")
    hello: list[MessageParam] = [{"role": "user", "content": "hello there"}]
    with pytest.raises(anthropic.BadRequestError, match="anthropic_version: Input should be 'vertex-2023-10-16'"):
        client.messages.create(model=CLAUDE, max_tokens=64, messages=hello)
    message = client.messages.create(model=CLAUDE, max_tokens=64, messages=hello, extra_body=VERTEX_VERSION)
    assert message.content[0].type == "text" and message.content[0].text == "You said: hello there"
    assert (message.model, message.stop_reason) == (CLAUDE, "end_turn")
    words: list[MessageParam] = [{"role": "user", "content": "a b c d e f"}]
    with client.messages.stream(model=CLAUDE, max_tokens=64, messages=words, extra_body=VERTEX_VERSION) as stream:
        pieces = list(stream.text_stream)
    assert len(pieces) > 2 and "".join(pieces) == "You said: a b c d e f"
    recorded = json.loads(request(sim.url, "GET", "/debug/requests").content)
    sent = recorded[-1]
    assert sent["path"].endswith(f"/publishers/anthropic/models/{CLAUDE}:streamRawPredict")
    assert sent["body"]["stream"] is True and "model" not in sent["body"]
    assert sent["body"]["anthropic_version"] == "vertex-2023-10-16"
    with_google_auth = anthropic.AnthropicVertex(
        region=REGION, project_id=PROJECT, credentials=credentials(key), base_url=f"{sim.url}/v1"
    )
    answer = with_google_auth.messages.create(model=CLAUDE, max_tokens=8, messages=hello, extra_body=VERTEX_VERSION)
    assert answer.content[0].type == "text" and answer.content[0].text == "You said: hello there"


def test_claude_raw_predict(sim: SimProcess, token: str) -> None:
    message = Message.model_validate_json(claude(sim, token, CLAUDE_BODY).content)
    assert message.content[0].type == "text" and message.content[0].text == "You said: hello there"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (2, 4)
    events = anthropic_events(claude(sim, token, CLAUDE_BODY | {"stream": True}, method="streamRawPredict"))
    assert [event.type for event in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 2,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[-2].delta.stop_reason == "end_turn" and events[0].message.model == CLAUDE


@pytest.mark.parametrize(
    ("body", "method", "message"),
    [
        (CLAUDE_BODY | {"model": CLAUDE}, "rawPredict", "model: Extra inputs are not permitted"),
        (
            {k: v for k, v in CLAUDE_BODY.items() if k != "anthropic_version"},
            "rawPredict",
            "anthropic_version: Field required",
        ),
        (CLAUDE_BODY | {"anthropic_version": "2023-06-01"}, "rawPredict", "anthropic_version: Input should be"),
        (CLAUDE_BODY, "streamRawPredict", 'streamRawPredict requires "stream": true'),
        (CLAUDE_BODY | {"stream": True}, "rawPredict", "rawPredict does not stream"),
        ({k: v for k, v in CLAUDE_BODY.items() if k != "max_tokens"}, "rawPredict", "max_tokens: Field required"),
        (CLAUDE_BODY | {"max_tokens": "10"}, "rawPredict", "max_tokens: Input should be a valid integer"),
        (
            CLAUDE_BODY | {"messages": [{"role": "assistant", "content": "hi"}]},
            "rawPredict",
            'first message must use the "user" role',
        ),
    ],
)
def test_claude_contract(sim: SimProcess, token: str, body: dict[str, Any], method: str, message: str) -> None:
    answer = claude(sim, token, body, method=method)
    assert answer.status_code == 400, answer.text
    assert answer.json()["type"] == "error" and answer.json()["error"]["type"] == "invalid_request_error"
    assert message in answer.json()["error"]["message"], answer.text


def test_claude_hooks_and_models(sim: SimProcess, token: str) -> None:
    overloaded = claude(sim, token, CLAUDE_BODY, model="claude-overloaded")
    assert overloaded.status_code == 529 and overloaded.json()["error"]["type"] == "overloaded_error"
    unknown = claude(sim, token, CLAUDE_BODY, model="gemini-2.5-flash")
    assert unknown.status_code == 404 and unknown.json()["error"]["status"] == "NOT_FOUND"
    assert "publishers/anthropic/models/gemini-2.5-flash` was not found" in unknown.json()["error"]["message"]
    wrong_method = claude(sim, token, CLAUDE_BODY, method="generateContent")
    assert wrong_method.status_code == 400 and wrong_method.json()["error"]["status"] == "INVALID_ARGUMENT"
    long = CLAUDE_BODY | {"stream": True, "messages": [{"role": "user", "content": "several words to stream out"}]}
    answer = claude(sim, token, long, model="claude-midstream-error", method="streamRawPredict")
    assert answer.status_code == 200 and b'"type":"overloaded_error"' in answer.content
    assert b"message_stop" not in answer.content
    unauthenticated = request(
        sim.url,
        "POST",
        f"/v1/projects/{PROJECT}/locations/{REGION}/publishers/anthropic/models/{CLAUDE}:rawPredict",
        json.dumps(CLAUDE_BODY).encode(),
        {"content-type": "application/json"},
    )
    assert unauthenticated.status_code == 401 and unauthenticated.json()["error"]["status"] == "UNAUTHENTICATED"


# The record of requests.


def test_debug_requests_redacted(sim: SimProcess, key: dict[str, str]) -> None:
    assert request(sim.url, "DELETE", "/debug/requests").status_code == 204
    jwt = assertion(key)
    fresh = token_request(sim, jwt).json()["access_token"]
    assert gemini(sim, fresh, HELLO).status_code == 200
    recorded = json.loads(request(sim.url, "GET", "/debug/requests").content)
    assert [entry["status"] for entry in recorded] == [200, 200]
    token_entry, gemini_entry = recorded
    assert token_entry["body"]["assertion"] == jwt.rsplit(".", 1)[0] + ".REDACTED"
    assert gemini_entry["headers"]["authorization"] == "Bearer REDACTED" and gemini_entry["body"] == HELLO
    assert fresh not in json.dumps(recorded) and jwt not in json.dumps(recorded)
