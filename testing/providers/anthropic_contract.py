"""What api.anthropic.com accepts on `POST /v1/messages`: the headers, the body's shape, and the value rules.

The body's shape is the official SDK's own request types (`MessageCreateParamsNonStreaming` and
`MessageCreateParamsStreaming`) made strict for pydantic, type by type:
- every TypedDict forbids unknown keys, as the real API does ("Extra inputs are not permitted"), where pydantic
  would ignore them; a TypedDict that the SDK marks `extra="allow"` (a tool's JSON schema) keeps allowing them;
- `Iterable` and `Sequence` become `list`: pydantic validates an Iterable lazily, that is not at all until read;
- unions of blocks are discriminated by `type` (messages by `role`), so an error names one kind of block with its
  tag in the path like the real API's (`messages.0.content.0.text.cache_contol: Extra inputs are not permitted`);
  `str | list` unions are told apart by the JSON kind of the value, which stays out of the path;
- values are checked strictly (`"max_tokens": "10"` is refused: a gateway must send numbers as numbers);
- what cannot arrive as JSON (the SDK's response models, which its Python types accept as input blocks, and file
  objects) is dropped.

SDK 2.17's types no longer list the sampling parameters `temperature`, `top_p` and `top_k`; the API takes them
and our gateway translates them from OpenAI's, so they are added with their documented ranges. The value rules
that no type expresses are in `check_rules`; a `system` role inside `messages` (which this SDK's types allow) is
refused there, because the gateway must hoist system prompts into the top-level `system`.
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from typing import Annotated, Any, Literal, NotRequired, Required, Union, get_args, get_origin

from anthropic.types.message_create_params import MessageCreateParamsNonStreaming, MessageCreateParamsStreaming
from pydantic import ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError
from typing_extensions import ReadOnly, TypedDict, get_type_hints, is_typeddict

# A dated version, the oldest being 2023-01-01; gateways send 2023-06-01, SDK 2.17 sends 2026-10-21.
API_VERSION = re.compile(r"^20[2-9]\d-[01]\d-[0-3]\d$")
OLDEST_API_VERSION = "2023-01-01"
INTERNAL_HEADER_PREFIXES = ("x-ai-eg-", "x-gateway-")
SAMPLING_PARAMETERS: dict[str, Any] = {"temperature": float, "top_p": float, "top_k": int}
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
MIN_THINKING_BUDGET = 1024

# Runtime type constructors: the strict types are built from values, which mypy cannot check as type expressions.
_ANNOTATED: Any = Annotated
_UNION: Any = Union
_LIST: Any = list
_DICT: Any = dict
_REQUIRED: Any = Required
_NOT_REQUIRED: Any = NotRequired
_TYPED_DICT: Any = TypedDict

# Union members told apart by the JSON kind of the value; these tags are left out of error paths.
_KINDS: tuple[tuple[type, str, str], ...] = (
    (bool, "<boolean>", "a valid boolean"),
    (str, "<string>", "a valid string"),
    (int, "<integer>", "a valid integer"),
    (float, "<number>", "a valid number"),
    (list, "<array>", "a valid list"),
    (dict, "<object>", "an object"),
)


class ApiError(Exception):
    """An answer in Anthropic's error envelope: `{"type": "error", "error": {"type": ..., "message": ...}}`."""

    def __init__(self, status: int, error_type: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"type": "error", "error": {"type": self.error_type, "message": self.message}}


def invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", message)


# Headers.


def check_headers(headers: Mapping[str, str], api_key: str) -> None:
    """Leaked gateway headers first (a bug whatever else is wrong), then framing, key, version, content type."""
    lowered = {name.lower(): value for name, value in headers.items()}
    for name in lowered:
        if name == "authorization" or name.startswith(INTERNAL_HEADER_PREFIXES):
            raise invalid(f"{name}: header must not reach the upstream (the gateway leaked it)")
    if "content-length" not in lowered:
        raise ApiError(411, "invalid_request_error", "content-length: header is required (chunked bodies are refused)")
    if lowered.get("x-api-key") != api_key:
        raise ApiError(401, "authentication_error", "invalid x-api-key")
    version = lowered.get("anthropic-version")
    if not version:
        raise invalid("anthropic-version: header is required")
    if not API_VERSION.match(version) or version < OLDEST_API_VERSION:
        raise invalid(f"anthropic-version: {version!r} is not a valid version")
    media_type = lowered.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise invalid(f"content-type: must be application/json, got {media_type or 'none'!r}")


# The body's shape.


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body once it passed the strict SDK types and the value rules; ApiError(400) otherwise."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise invalid(f"body: not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise invalid("body: Input should be an object")
    try:
        request_adapter(body.get("stream") is True).validate_json(raw, strict=True)
    except ValidationError as exc:
        raise invalid(describe(exc)) from None
    check_rules(body)
    return body


def check_rules(body: dict[str, Any]) -> None:
    """The documented value rules that the types do not express; `body` already has the types' shape."""
    if body["max_tokens"] < 1:
        raise invalid("max_tokens: Value must be greater than or equal to 1")
    for name, low, high in (("temperature", 0, 1), ("top_p", 0, 1), ("top_k", 0, None)):
        value = body.get(name)
        if value is not None and (value < low or (high is not None and value > high)):
            bounds = f"between {low} and {high}" if high is not None else f"greater than or equal to {low}"
            raise invalid(f"{name}: Value must be {bounds}, got {value}")
    if any(not stop.strip() for stop in body.get("stop_sequences", [])):
        raise invalid("stop_sequences: each stop sequence must contain non-whitespace")
    check_messages(body["messages"])
    check_tools(body)


def check_messages(messages: list[dict[str, Any]]) -> None:
    if not messages:
        raise invalid("messages: at least one message is required")
    if messages[0]["role"] != "user":
        raise invalid('messages: first message must use the "user" role')
    pending: list[str] = []  # tool_use ids of the previous assistant message
    for index, message in enumerate(messages):
        role, content = message["role"], message["content"]
        if (index and role == messages[index - 1]["role"]) or role not in ("user", "assistant"):
            raise invalid(
                f'messages.{index}.role: roles must alternate between "user" and "assistant", '
                f'but found "{role}" after "{messages[index - 1]["role"]}"'
            )
        last_assistant = role == "assistant" and index == len(messages) - 1
        if not content and not last_assistant:
            raise invalid(
                f"messages.{index}: all messages must have non-empty content except for the optional final "
                "assistant message"
            )
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        answered: set[str] = set()
        for number, block in enumerate(blocks):
            where = f"messages.{index}.content.{number}"
            if block["type"] == "text" and not block["text"].strip() and not last_assistant:
                raise invalid(f"{where}.text: text content blocks must contain non-whitespace text")
            if block["type"] == "tool_result":
                if block["tool_use_id"] not in pending:
                    raise invalid(
                        f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: {block['tool_use_id']}. "
                        "Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                    )
                answered.add(block["tool_use_id"])
        if missing := [tool_id for tool_id in pending if tool_id not in answered]:
            raise invalid(
                f"messages.{index}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                f"{', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` block in "
                "the next message."
            )
        pending = [block["id"] for block in blocks if block["type"] == "tool_use" and role == "assistant"]


def check_tools(body: dict[str, Any]) -> None:
    tools: list[dict[str, Any]] = body.get("tools", [])
    names = [tool["name"] for tool in tools]
    for index, tool in enumerate(tools):
        if tool.get("type") in (None, "custom") and not TOOL_NAME.match(tool["name"]):
            raise invalid(f"tools.{index}.custom.name: String should match pattern '{TOOL_NAME.pattern}'")
    if len(set(names)) < len(names):
        raise invalid("tools: Tool names must be unique.")
    choice = body.get("tool_choice")
    if choice is not None and not tools:
        raise invalid("tool_choice: tool_choice may only be specified while providing tools.")
    if choice is not None and choice["type"] == "tool" and choice["name"] not in names:
        raise invalid(f"tool_choice.name: {choice['name']!r} is not the name of one of the given tools")
    thinking = body.get("thinking") or {}
    if thinking.get("type") in ("enabled", "adaptive") and body.get("temperature", 1) != 1:
        raise invalid("temperature: `temperature` may only be set to 1 when thinking is enabled.")
    if thinking.get("type") == "enabled":
        if thinking["budget_tokens"] < MIN_THINKING_BUDGET:
            raise invalid(
                f"thinking.enabled.budget_tokens: Input should be greater than or equal to {MIN_THINKING_BUDGET}"
            )
        if body["max_tokens"] <= thinking["budget_tokens"]:
            raise invalid("max_tokens: `max_tokens` must be greater than `thinking.budget_tokens`")
        if choice is not None and choice["type"] in ("any", "tool"):
            raise invalid("tool_choice: Thinking may not be enabled when tool_choice forces tool use.")


@cache
def request_adapter(streaming: bool) -> TypeAdapter[Any]:
    params = MessageCreateParamsStreaming if streaming else MessageCreateParamsNonStreaming
    return TypeAdapter(_strict_typed_dict(params, SAMPLING_PARAMETERS))


def describe(error: ValidationError) -> str:
    """The first error as the real API words it: `<dotted path>: <reason>`."""
    first = error.errors(include_url=False)[0]
    path = ".".join(str(part) for part in first["loc"] if not (isinstance(part, str) and part.startswith("<")))
    return f"{path or 'body'}: {first['msg']}"


@cache
def _strict(tp: Any) -> Any:
    """The strict form of an SDK annotation, or None when no JSON value can have that type."""
    if is_typeddict(tp):
        return _strict_typed_dict(tp)
    origin = get_origin(tp)
    if origin is Annotated:  # the SDK's own metadata (aliases, discriminators) means nothing to pydantic
        return _strict(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return _strict_union(get_args(tp))
    if origin in (list, Iterable, Sequence):
        item = _strict(get_args(tp)[0])
        return None if item is None else _LIST[item]
    if origin is dict:
        key, value = get_args(tp)
        return _DICT[key, _strict(value)]
    if origin is Literal or tp in (str, int, float, bool, object, types.NoneType):
        return tp
    return None


def _strict_typed_dict(td: Any, added: Mapping[str, Any] | None = None) -> Any:
    fields: dict[str, Any] = {}
    for name, hint in get_type_hints(td, include_extras=True).items():
        # As pydantic reads them: the SDK's string annotations hide Required from __required_keys__.
        required = name in td.__required_keys__
        qualifier: Any = get_origin(hint)
        while qualifier in (Required, NotRequired, ReadOnly):
            required = {Required: True, NotRequired: False}.get(qualifier, required)
            hint = get_args(hint)[0]
            qualifier = get_origin(hint)
        if (strict := _strict(hint)) is not None:
            fields[name] = (_REQUIRED if required else _NOT_REQUIRED)[strict]
    fields.update({name: _NOT_REQUIRED[tp] for name, tp in (added or {}).items()})
    strict_td = _TYPED_DICT(td.__name__, fields, total=False)
    own = getattr(td, "__pydantic_config__", None) or {}
    strict_td.__pydantic_config__ = ConfigDict(extra=own.get("extra", "forbid"))
    return strict_td


def _strict_union(args: tuple[Any, ...]) -> Any:
    members: list[Any] = []
    for arg in args:
        strict = _strict(arg) if arg is not types.NoneType else None
        if strict is not None and strict not in members:
            members.append(strict)
    # A plain string or dict member takes whatever a literal or TypedDict member would: keep only the wider one.
    if str in members:
        members = [member for member in members if get_origin(member) is not Literal]
    if any(get_origin(member) is dict for member in members):
        members = [member for member in members if not is_typeddict(member)]
    if not members:
        return types.NoneType if types.NoneType in args else None
    union = members[0] if len(members) == 1 else _discriminated(members)
    return _UNION[union, None] if types.NoneType in args else union


def _discriminated(members: list[Any]) -> Any:
    for key in ("type", "role"):
        if (found := _literal_tags(members, key)) is None:
            continue
        tags, default = found
        if key == "type" and default is None:  # pydantic's own messages, as the real API words them
            return _ANNOTATED[_UNION[tuple(members)], Field(discriminator=key)]
        if key == "type":
            return _ANNOTATED[_UNION[tuple(_tagged(members, tags))], Discriminator(_tag_by_key(key, tags, default))]
        # The real API's paths name a block's type but never a message's role: hidden tags, a message of our own.
        expected = ", ".join(repr(value) for value in tags)
        hidden = {value: f"<{tag}>" for value, tag in tags.items()}
        discriminator = Discriminator(
            _tag_by_key(key, hidden, None),
            custom_error_type="invalid_role",
            custom_error_message=f"Input should have a '{key}' of {expected}",
        )
        return _ANNOTATED[_UNION[tuple(_tagged(members, hidden))], discriminator]
    kinds = [_kind(member) for member in members]
    if None in kinds or len(set(kinds)) < len(kinds):
        return _UNION[tuple(members)]  # pydantic's smart union; none is left in the SDK 2.17 types
    wanted = " or ".join(label for _, tag, label in _KINDS if tag in kinds)
    tagged = [_ANNOTATED[member, Tag(str(kind))] for member, kind in zip(members, kinds, strict=True)]
    discriminator = Discriminator(
        _kind_of, custom_error_type="union_kind", custom_error_message=f"Input should be {wanted}"
    )
    return _ANNOTATED[_UNION[tuple(tagged)], discriminator]


def _literal_tags(members: list[Any], key: str) -> tuple[dict[str, str], str | None] | None:
    """Each value of `key` mapped to its member's tag (its first value), and the tag of the one member that may
    leave `key` out; None when `key` does not tell the members apart."""
    tags: dict[str, str] = {}
    defaults: list[str] = []
    for member in members:
        if not is_typeddict(member) or key not in member.__annotations__:
            return None
        hint = get_args(member.__annotations__[key])[0]
        optional = get_origin(hint) in (Union, types.UnionType)
        values = get_args(get_args(hint)[0] if optional else hint)
        if not values or any(not isinstance(value, str) or value in tags for value in values):
            return None
        tags.update(dict.fromkeys(values, values[0]))
        if optional or get_origin(member.__annotations__[key]) is not Required:
            defaults.append(values[0])
    if len(defaults) > 1:
        return None
    return tags, (defaults[0] if defaults else None)


def _tagged(members: list[Any], tags: dict[str, str]) -> list[Any]:
    member_tags = dict.fromkeys(tags.values())  # one per member, in the members' order
    return [_ANNOTATED[member, Tag(tag)] for member, tag in zip(members, member_tags, strict=True)]


def _tag_by_key(key: str, tags: dict[str, str], default: str | None) -> Callable[[Any], str | None]:
    def tag(value: Any) -> str | None:
        if not isinstance(value, dict):
            return None
        found = value.get(key)
        found = default if found is None else found
        return tags.get(found, found) if isinstance(found, str) else None

    tag.__name__ = tag.__qualname__ = key  # pydantic's message: "Input tag 'x' found using type() ..."
    return tag


def _kind(member: Any) -> str | None:
    if is_typeddict(member) or get_origin(member) is dict:
        return "<object>"
    if get_origin(member) is list:
        return "<array>"
    if get_origin(member) is Literal and all(isinstance(value, str) for value in get_args(member)):
        return "<string>"
    return next((tag for kind, tag, _ in _KINDS if member is kind), None)


def _kind_of(value: Any) -> str | None:
    return next((tag for kind, tag, _ in _KINDS if isinstance(value, kind)), None)
