"""What Vertex AI and Google's OAuth token endpoint accept: the JWT-bearer grant, the error envelopes, and the body
of `generateContent` checked against google-genai's own types.

The token endpoint's rules are Google's for a service account's self-signed assertion: RS256 signed with the
account's key (`kid`, when sent, names that key), `iss` the account's email, `aud` the token URL (the simulator's
own, or Google's, which google-auth always sends whatever the key's token_uri), the cloud-platform `scope`, and
`iat`/`exp` at most an hour apart around now. Errors are OAuth's `{"error", "error_description"}` with Google's words.

The Gemini body is the REST form of `GenerateContentRequest`: each top-level member is the google-genai type the SDK
builds it from (camelCase through the types' aliases; the proto's own snake_case names are accepted too, as Google's
JSON parser does), with three corrections so that it is what Vertex parses rather than what the SDK accepts:
- a member the SDK refuses to send to Vertex (it raises "only supported in Gemini Developer API mode") is unknown;
- `GenerationConfig.model_selection_config` travels as `modelConfig`;
- enum values are exact: google-genai's enums take any case and even unknown values (with a warning), proto JSON
  takes neither, e.g. `"type": "object"` in a function's parameters is refused as Vertex refuses it.
Values are then validated strictly (`"maxOutputTokens": "10"` is refused: a gateway must send numbers as numbers),
and `check_rules` adds the value rules no type expresses. Errors are Google's `{"error": {"code", "message",
"status"}}` naming the field in Google's snake_case path form (`contents[1].parts[0].function_response`).
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
import types as pytypes
from collections.abc import Mapping
from functools import cache
from typing import Any, Union, get_args, get_origin

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from google.genai import types
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel, to_snake

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
# What google-auth (Python) always puts in `aud`, whatever the key's token_uri: Google's own token URL.
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_ASSERTION_SECONDS = 3600
CLOCK_SKEW_SECONDS = 300
SHORT_LIVED = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and "
    "exp values in the JWT claim."
)
BAD_SIGNATURE = "Invalid JWT Signature."
FUNCTION_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}$")
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
MIME_TYPES = ("text/plain", "application/json", "application/xml", "application/yaml", "text/x.enum")
DATA_FIELDS = (
    "text",
    "inline_data",
    "file_data",
    "function_call",
    "function_response",
    "executable_code",
    "code_execution_result",
)
# SDK members its Vertex converters refuse to send (models.py `_*_to_vertex`), and one it renames on the way.
NOT_ON_VERTEX: dict[type[BaseModel], frozenset[str]] = {
    types.Part: frozenset({"tool_call", "tool_response", "part_metadata"}),
    types.Tool: frozenset({"file_search"}),
    types.ToolConfig: frozenset({"include_server_side_tool_invocations"}),
    types.GenerationConfig: frozenset({"enable_enhanced_civic_answers"}),
    types.FunctionResponse: frozenset({"will_continue"}),
    types.FunctionResponsePart: frozenset({"media_processing"}),
}
RENAMED: dict[type[BaseModel], dict[str, str]] = {types.GenerationConfig: {"model_selection_config": "modelConfig"}}
# Ranges as Vertex states them: the low bound inclusive, the high one exclusive.
RANGES: tuple[tuple[str, float, float], ...] = (
    ("temperature", 0, 2.0001),
    ("top_p", 0, 1.0001),
    ("candidate_count", 1, 9),
    ("presence_penalty", -2, 2),
    ("frequency_penalty", -2, 2),
)


class GoogleError(Exception):
    """An answer in Google's error envelope: `{"error": {"code", "message", "status"[, "details"]}}`."""

    def __init__(
        self,
        code: int,
        status: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message
        self.details = details or []
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message, "status": self.status}
        if self.details:
            error["details"] = self.details
        return {"error": error}


def invalid(message: str, field: str | None = None) -> GoogleError:
    details = None
    if field is not None:
        violation = {"field": field, "description": message}
        details = [{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [violation]}]
    return GoogleError(400, "INVALID_ARGUMENT", message, details)


def error_info(reason: str, method: str) -> list[dict[str, Any]]:
    metadata = {"service": "aiplatform.googleapis.com", "method": method}
    return [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": reason,
            "domain": "googleapis.com",
            "metadata": metadata,
        }
    ]


class OAuthError(Exception):
    """A refusal of the token endpoint: 400 `{"error": ..., "error_description": ...}`."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


# The JWT-bearer grant.


def load_public_key(public_key_pem: str) -> rsa.RSAPublicKey:
    public_key = serialization.load_pem_public_key(public_key_pem.encode())
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise ValueError("a service account's key is RSA")
    return public_key


def key_id(public_key: rsa.RSAPublicKey) -> str:
    """The id Google gives a key (`private_key_id`, the JWT's `kid`): here the SHA-1 of the public key, 40 hex."""
    digest = hashes.Hash(hashes.SHA1())
    digest.update(public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    return digest.finalize().hex()


def b64url_decode(segment: str) -> bytes:
    return base64.b64decode(segment + "=" * (-len(segment) % 4), altchars=b"-_", validate=True)


def verify_assertion(
    assertion: str, public_key: rsa.RSAPublicKey, client_email: str, audience: str, now: float
) -> dict[str, Any]:
    """The claims of a service account's assertion once Google would take it; OAuthError otherwise."""
    segments = assertion.split(".")
    if len(segments) != 3:
        raise OAuthError("invalid_grant", "Invalid JWT: the assertion is not three base64url segments")
    try:
        header = json.loads(b64url_decode(segments[0]))
        claims = json.loads(b64url_decode(segments[1]))
        signature = b64url_decode(segments[2])
    except (binascii.Error, ValueError):
        raise OAuthError("invalid_grant", "Invalid JWT: a segment is not base64url-encoded JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise OAuthError("invalid_grant", "Invalid JWT: the header and the claims must be JSON objects")
    if header.get("alg") != "RS256":
        raise OAuthError("invalid_grant", f"Invalid JWT: the algorithm must be RS256, not {header.get('alg')!r}")
    if claims.get("iss") != client_email:
        raise OAuthError("invalid_grant", "Invalid grant: account not found")
    if "kid" in header and header["kid"] != key_id(public_key):
        raise OAuthError("invalid_grant", BAD_SIGNATURE)
    try:
        signed = f"{segments[0]}.{segments[1]}".encode()
        public_key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise OAuthError("invalid_grant", BAD_SIGNATURE) from None
    if claims.get("aud") not in (audience, GOOGLE_TOKEN_URL):
        raise OAuthError("invalid_grant", f"Invalid JWT: Failed audience check. The right audience is {audience}")
    issued, expires = claims.get("iat"), claims.get("exp")
    if not all(isinstance(value, int | float) and not isinstance(value, bool) for value in (issued, expires)):
        raise OAuthError("invalid_grant", SHORT_LIVED)
    assert isinstance(issued, int | float) and isinstance(expires, int | float)
    if expires - issued > MAX_ASSERTION_SECONDS or expires <= now or issued > now + CLOCK_SKEW_SECONDS:
        raise OAuthError("invalid_grant", SHORT_LIVED)
    scope = claims.get("scope")
    if not isinstance(scope, str) or not scope.strip():
        raise OAuthError("invalid_scope", "Empty or missing scope not allowed.")
    if CLOUD_PLATFORM not in scope.split():
        raise OAuthError("invalid_scope", f"Invalid OAuth scope: {scope!r} does not include {CLOUD_PLATFORM}.")
    return claims


# The Gemini body's shape.


class GenerateContentRequest(BaseModel):
    """The body of `generateContent` / `streamGenerateContent` (the model is in the path)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    contents: list[types.Content] | None = None
    system_instruction: types.Content | None = None
    tools: list[types.Tool] | None = None
    tool_config: types.ToolConfig | None = None
    generation_config: types.GenerationConfig | None = None
    safety_settings: list[types.SafetySetting] | None = None
    cached_content: str | None = None
    labels: dict[str, str] | None = None
    model_armor_config: types.ModelArmorConfig | None = None


def parse_gemini(raw: bytes) -> GenerateContentRequest:
    """The body once Vertex would take it; GoogleError(400) otherwise."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise invalid(f"Invalid JSON payload received. {exc}.") from None
    if not isinstance(body, dict):
        raise invalid("Invalid JSON payload received. Expected an object at the top level.")
    normalized = normalize(body, GenerateContentRequest, "")
    try:
        request = GenerateContentRequest.model_validate_json(json.dumps(normalized), strict=True)
    except ValidationError as exc:
        raise describe(exc) from None
    check_rules(request)
    return request


def unknown_name(key: str, path: str) -> GoogleError:
    where = f" at '{path}'" if path else ""
    return invalid(f'Invalid JSON payload received. Unknown name "{key}"{where}: Cannot find field.', path or None)


@cache
def json_keys(model: type[BaseModel]) -> dict[str, str]:
    """The JSON names Vertex parses for `model`'s members (camelCase and snake_case) -> the member's name."""
    keys: dict[str, str] = {}
    renamed = RENAMED.get(model, {})
    for name, info in model.model_fields.items():
        if name in NOT_ON_VERTEX.get(model, frozenset()):
            continue
        if name in renamed:
            keys.update({renamed[name]: name, to_snake(renamed[name]): name})
            continue
        keys.update({name: name, info.alias or to_camel(name): name})
    return keys


def _unwrap(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, pytypes.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not pytypes.NoneType]
        return _unwrap(members[0]) if len(members) == 1 else annotation
    return annotation


def normalize(value: Any, annotation: Any, path: str) -> Any:
    """`value` with its members under their Python names; raises for an unknown member or enum value."""
    kind = _unwrap(annotation)
    origin = get_origin(kind)
    if isinstance(kind, type) and issubclass(kind, BaseModel) and isinstance(value, dict):
        keys = json_keys(kind)
        normalized: dict[str, Any] = {}
        for key, item in value.items():
            name = keys.get(key)
            if name is None:
                raise unknown_name(key, path)
            where = f"{path}.{name}" if path else name
            normalized[name] = normalize(item, kind.model_fields[name].annotation, where)
        return normalized
    if origin is list and isinstance(value, list):
        return [normalize(item, get_args(kind)[0], f"{path}[{index}]") for index, item in enumerate(value)]
    if origin is dict and isinstance(value, dict):
        return {key: normalize(item, get_args(kind)[1], f"{path}[{key}]") for key, item in value.items()}
    enumerated = isinstance(kind, type) and issubclass(kind, enum.Enum) and isinstance(value, str)
    if enumerated and value not in {member.value for member in kind}:
        raise invalid(f"Invalid value at '{path}' ({kind.__name__}), {json.dumps(value)}", path)
    return value


PROTO_TYPES = {
    "int_type": "TYPE_INT32",
    "int_from_float": "TYPE_INT32",
    "float_type": "TYPE_FLOAT",
    "string_type": "TYPE_STRING",
    "bool_type": "TYPE_BOOL",
    "bytes_type": "TYPE_BYTES",
}


def describe(error: ValidationError) -> GoogleError:
    first = error.errors(include_url=False)[0]
    path = ""
    for part in first["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{to_snake(part)}" if path else to_snake(part))
    if first["type"] == "extra_forbidden":
        parent = path.rpartition(".")[0]
        return unknown_name(str(first["loc"][-1]), parent)
    shown = json.dumps(first.get("input"), default=str)
    if first["type"] in PROTO_TYPES:
        return invalid(f"Invalid value at '{path}' ({PROTO_TYPES[first['type']]}), {shown}", path)
    return invalid(f"Invalid JSON payload received. Invalid value at '{path}': {first['msg']}, {shown}", path)


# The value rules.


def check_rules(request: GenerateContentRequest) -> None:
    check_contents(request.contents or [])
    if request.system_instruction is not None:
        for number, part in enumerate(request.system_instruction.parts or []):
            if part.text is None or set_data_fields(part) != ["text"]:
                raise invalid("System instruction only supports text parts.", f"system_instruction.parts[{number}]")
    declared = check_tools(request.tools or [])
    check_tool_config(request.tool_config, declared)
    check_generation_config(request.generation_config or types.GenerationConfig())
    for number, setting in enumerate(request.safety_settings or []):
        if setting.category in (None, types.HarmCategory.HARM_CATEGORY_UNSPECIFIED):
            raise invalid(
                "Unable to submit request because a safety setting has no category.", f"safety_settings[{number}]"
            )
    for key in request.labels or {}:
        if not LABEL_KEY.match(key):
            raise invalid(f"Label key {key!r} is invalid: lowercase letters, digits, '_' and '-', 1 to 63.", "labels")


def set_data_fields(part: types.Part) -> list[str]:
    return [name for name in DATA_FIELDS if getattr(part, name) is not None]


def check_contents(contents: list[types.Content]) -> None:
    if not contents:
        raise invalid("Unable to submit request because it must include at least one contents field.", "contents")
    calls: list[str] = []  # names of the previous content's function calls
    for index, content in enumerate(contents):
        where = f"contents[{index}]"
        if content.role not in ("user", "model"):
            raise invalid("Please use a valid role: user, model.", f"{where}.role")
        if not content.parts:
            raise invalid(
                "Unable to submit request because it must include at least one parts field, which describes the "
                "prompt input.",
                f"{where}.parts",
            )
        responses: list[str] = []
        for number, part in enumerate(content.parts):
            at = f"{where}.parts[{number}]"
            present = set_data_fields(part)
            if not present:
                raise invalid(
                    f"Unable to submit request because {at} has no data: set one of {', '.join(DATA_FIELDS)}.", at
                )
            if len(present) > 1:
                raise invalid(
                    f"Invalid JSON payload received. Oneof field 'data' is already set. Cannot set '{present[1]}' "
                    f"at '{at}'.",
                    at,
                )
            if part.text == "":
                raise invalid(
                    "Unable to submit request because it has an empty text parameter. Add a value to the parameter "
                    "and try again.",
                    f"{at}.text",
                )
            if part.function_call is not None and (content.role != "model" or not part.function_call.name):
                raise invalid(
                    f"{at}.function_call: only a model turn may call a function, and a call needs a name.", at
                )
            if part.function_response is not None:
                if content.role != "user" or not part.function_response.name:
                    raise invalid(f"{at}.function_response: only a user turn may answer a call, by its name.", at)
                responses.append(part.function_response.name)
        if responses and not calls:
            raise invalid(
                "Please ensure that function response turn comes immediately after a function call turn.", where
            )
        if calls and len(responses) != len(calls):
            raise invalid(
                "Please ensure that the number of function response parts is equal to the number of function call "
                f"parts of the function call turn (calls: {', '.join(calls)}; responses: {len(responses)}).",
                where,
            )
        if sorted(responses) != sorted(calls):
            raise invalid(
                f"Please ensure that the function response names ({', '.join(responses)}) match the function call "
                f"names of the function call turn ({', '.join(calls)}).",
                where,
            )
        own_calls = [part.function_call.name or "" for part in content.parts if part.function_call is not None]
        if own_calls and (index == 0 or contents[index - 1].role != "user"):
            raise invalid(
                "Please ensure that function call turn comes immediately after a user turn or after a function "
                "response turn.",
                where,
            )
        calls = own_calls


def check_tools(tools: list[types.Tool]) -> list[str]:
    """The declared function names."""
    names: list[str] = []
    for index, tool in enumerate(tools):
        for number, declaration in enumerate(tool.function_declarations or []):
            at = f"tools[{index}].function_declarations[{number}]"
            if not declaration.name or not FUNCTION_NAME.match(declaration.name):
                raise invalid(
                    "Invalid function name. Must start with a letter or an underscore. Must be alphameric (a-z, A-Z, "
                    "0-9), underscores (_), dots (.), colons (:), or dashes (-), with a maximum length of 64.",
                    f"{at}.name",
                )
            if declaration.name in names:
                raise invalid(f"Duplicate function declaration found: {declaration.name}", f"{at}.name")
            if declaration.parameters is not None and declaration.parameters_json_schema is not None:
                raise invalid(f"{at}: parameters and parameters_json_schema must not both be set.", at)
            names.append(declaration.name)
    return names


def check_tool_config(tool_config: types.ToolConfig | None, declared: list[str]) -> None:
    config = tool_config.function_calling_config if tool_config is not None else None
    if config is None:
        return
    where = "tool_config.function_calling_config"
    if config.mode in (types.FunctionCallingConfigMode.ANY, types.FunctionCallingConfigMode.VALIDATED) and not declared:
        raise invalid("Function calling config is set without function_declarations.", where)
    allowed = config.allowed_function_names or []
    if allowed and config.mode not in (types.FunctionCallingConfigMode.ANY, types.FunctionCallingConfigMode.VALIDATED):
        raise invalid(f"{where}.allowed_function_names may only be set when mode is ANY or VALIDATED.", where)
    for name in allowed:
        if name not in declared:
            raise invalid(f"{where}.allowed_function_names: {name!r} is not a declared function.", where)


def check_generation_config(config: types.GenerationConfig) -> None:
    where = "generation_config"
    for name, low, high in RANGES:
        value = getattr(config, name)
        if value is not None and not low <= value < high:
            raise invalid(
                f"Unable to submit request because it has a {to_camel(name)} value of {value} but the supported "
                f"range is from {low} (inclusive) to {high} (exclusive). Update the value and try again.",
                f"{where}.{name}",
            )
    if config.max_output_tokens is not None and config.max_output_tokens < 1:
        raise invalid(
            f"max_output_tokens must be positive, got {config.max_output_tokens}.", f"{where}.max_output_tokens"
        )
    if config.top_k is not None and config.top_k < 1:
        raise invalid(f"top_k must be positive, got {config.top_k}.", f"{where}.top_k")
    if len(config.stop_sequences or []) > 5:
        raise invalid("stop_sequences: at most 5 stop sequences are allowed.", f"{where}.stop_sequences")
    mime = config.response_mime_type
    if mime is not None and mime not in MIME_TYPES:
        raise invalid(
            f"response_mime_type must be one of {', '.join(MIME_TYPES)}; got {mime!r}.", f"{where}.response_mime_type"
        )
    if config.response_schema is not None and config.response_json_schema is not None:
        raise invalid("response_schema and response_json_schema must not both be set.", where)
    if (config.response_schema is not None or config.response_json_schema is not None) and mime not in (
        "application/json",
        "text/x.enum",
    ):
        raise invalid(
            "response_mime_type must be application/json or text/x.enum when a response schema is set.",
            f"{where}.response_mime_type",
        )
    thinking = config.thinking_config
    if thinking is not None and thinking.thinking_budget is not None and thinking.thinking_level is not None:
        raise invalid("thinking_budget and thinking_level must not both be set.", f"{where}.thinking_config")
