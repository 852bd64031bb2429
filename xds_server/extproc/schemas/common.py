"""What every provider schema shares: `RequestRejected`, the OpenAI fields no provider but OpenAI can honour
(`UNSUPPORTED`, checked by `check_fields`), the readers of request values that reject a wrong one by naming its
param, the OpenAI tool pieces every provider reads the same way, and the lenient readers of provider answers.

Pure, like the schemas: a rejection never quotes request content, only field names and the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set
from typing import Any, Final

import orjson


class RequestRejected(Exception):
    """A request this provider cannot honour: answered 400 with the OpenAI error envelope, never sent upstream."""

    def __init__(self, message: str, param: str | None, code: str) -> None:
        super().__init__(message)
        self.status = 400
        self.message = message  # names the field and why, e.g. "n: Anthropic returns one choice; n must be 1"
        self.param = param  # the field path, e.g. "messages[2].content[0].type"
        self.code = code  # unknown_parameter, unsupported_parameter, unsupported_value, invalid_value, ...

    def envelope(self) -> bytes:
        """The OpenAI error body to answer with."""
        error = {"message": self.message, "type": "invalid_request_error", "param": self.param, "code": self.code}
        return orjson.dumps({"error": error})


def fail(param: str, why: str, code: str = "invalid_value") -> RequestRejected:
    return RequestRejected(f"{param}: {why}", param, code)


def _never(_: Any) -> bool:
    return False


def _zero(value: Any) -> bool:
    return value == 0 and not isinstance(value, bool)


# OpenAI fields a client relies on when set, with no counterpart at the providers translated to: rejected, unless the
# value asks for OpenAI's default (which is what the provider does anyway). `null` is always fine.
# name -> (accepted value?, why, with {provider} for the provider's name).
UNSUPPORTED: Final[Mapping[str, tuple[Callable[[Any], bool], str]]] = {
    "n": (lambda v: v == 1 and not isinstance(v, bool), "{provider} returns one choice; n must be 1"),
    "logprobs": (lambda v: v is False, "{provider} returns no log probabilities"),
    "top_logprobs": (_zero, "{provider} returns no log probabilities"),
    "logit_bias": (lambda v: v == {}, "{provider} has no token biasing"),
    "presence_penalty": (_zero, "{provider} has no presence penalty"),
    "frequency_penalty": (_zero, "{provider} has no frequency penalty"),
    "seed": (_never, "{provider} has no seeded sampling"),
    "audio": (_never, "{provider} answers in text only"),
    "modalities": (lambda v: v == ["text"], '{provider} answers in text only; modalities must be ["text"]'),
    "prediction": (_never, "{provider} has no predicted outputs"),
    "verbosity": (lambda v: v == "medium", '{provider} has no verbosity setting; only the default "medium" is taken'),
    "web_search_options": (_never, "web search is not translated to {provider}'s server tool"),
    "moderation": (_never, "{provider} does not run OpenAI's moderation"),
    "functions": (_never, "the deprecated functions API is not translated; use tools"),
    "function_call": (_never, "the deprecated functions API is not translated; use tool_choice"),
}


def check_fields(body: Mapping[str, Any], known: Set[str], provider: str) -> None:
    """Raises RequestRejected for a field of `body` that is not in `known` (all of them named), or for one of
    UNSUPPORTED set to a value the provider cannot honour. `known` holds the UNSUPPORTED names the schema rejects."""
    unknown = sorted(set(body) - known)
    if unknown:
        why = f"unknown parameter{'s' if len(unknown) > 1 else ''}"
        raise RequestRejected(f"{', '.join(unknown)}: {why}", unknown[0], "unknown_parameter")
    for name, (accepted, why) in UNSUPPORTED.items():
        if body.get(name) is not None and not accepted(body[name]):
            raise fail(name, why.format(provider=provider), "unsupported_parameter")


# ---- request values: each raises RequestRejected naming `param`


def string(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise fail(param, "must be a string")
    return value


def name(value: Any, param: str) -> str:
    if not isinstance(value, str) or not value:
        raise fail(param, "must be a non-empty string")
    return value


def number(value: Any, param: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise fail(param, "must be a number of at least 0")
    return value


def boolean(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise fail(param, "must be true or false")
    return value


def obj(value: Any, param: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise fail(param, "must be an object")
    return value


def array(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise fail(param, "must be an array")
    return value


# ---- OpenAI messages


# OpenAI's reasoning_effort values that Anthropic and Converse have too, on the same scale under the same names.
EFFORTS: Final = ("low", "medium", "high", "xhigh", "max")


def reasoning_effort(body: Mapping[str, Any], provider: str) -> str | None:
    """`reasoning_effort` for a provider whose effort has EFFORTS (how much the model may spend on reasoning and
    answering); None when not given."""
    effort = body.get("reasoning_effort")
    if effort is None:
        return None
    if effort not in EFFORTS:
        code = "unsupported_value" if effort in ("none", "minimal") else "invalid_value"
        raise fail("reasoning_effort", f"{provider}'s effort is one of {', '.join(EFFORTS)}", code)
    return str(effort)


def structured_output(body: Mapping[str, Any], provider: str) -> tuple[Mapping[str, Any], Mapping[str, Any]] | None:
    """(`response_format.json_schema`, its `schema`) for a provider whose structured output always holds to the
    schema (OpenAI's `strict`); None for plain text or no format. JSON mode without a schema is refused."""
    if body.get("response_format") is None:
        return None
    response_format = obj(body["response_format"], "response_format")
    kind = response_format.get("type")
    if kind == "json_schema":
        json_schema = obj(response_format.get("json_schema"), "response_format.json_schema")
        return json_schema, obj(json_schema.get("schema"), "response_format.json_schema.schema")
    if kind == "json_object":
        raise fail(
            "response_format.type",
            f"{provider} has no JSON mode without a schema; use json_schema",
            "unsupported_value",
        )
    if kind != "text":
        raise fail("response_format.type", "must be text, json_schema or json_object")
    return None


Items = list[dict[str, Any]]
PartsReader = Callable[[Any, str, tuple[str, ...]], Items]  # (content, where, the part kinds allowed) -> items
MessageReader = Callable[[Mapping[str, Any], str], Items]  # (message, where) -> items


def conversation(
    messages: Any,
    provider: str,
    user_kinds: tuple[str, ...],
    parts: PartsReader,
    assistant: MessageReader,
    tool_result: MessageReader,
    model_role: str = "assistant",
    key: str = "content",
) -> tuple[Items, Items]:
    """(system items, alternating turns) of OpenAI's messages, for a provider with one system prompt before the
    conversation and no tool role: system and developer messages anywhere are hoisted in order, tool results are
    user content, and neighbours of one role merge into one turn (add_turn). A message's `name` (a participant's
    label) has no counterpart at any provider: the content says who speaks."""
    system: Items = []
    turns: Items = []
    for i, raw in enumerate(array(messages, "messages")):
        where = f"messages[{i}]"
        message = obj(raw, where)
        role = message.get("role")
        if role in ("system", "developer"):
            system += parts(message.get("content"), where, ("text",))
        elif role == "user":
            add_turn(turns, "user", parts(message.get("content"), where, user_kinds), key)
        elif role == "assistant":
            add_turn(turns, model_role, assistant(message, where), key)
        elif role == "tool":
            add_turn(turns, "user", tool_result(message, where), key)
        else:
            raise bad_role(role, where)
    if not turns:
        raise no_turns(provider)
    return system, turns


def add_turn(turns: list[dict[str, Any]], role: str, items: list[dict[str, Any]], key: str = "content") -> None:
    """Appends a turn of `role` holding `items` (under `key`). The providers reject empty turns and want roles to
    alternate: an empty turn goes, and a turn of the same role as the last merges into it."""
    if not items:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1][key] += items
    else:
        turns.append({"role": role, key: items})


def bad_role(role: Any, where: str) -> RequestRejected:
    """For messages[i] (`where`) of a role no provider takes."""
    if role == "function":
        why = "the deprecated functions API is not translated; use tool"
        return fail(f"{where}.role", why, "unsupported_value")
    return fail(f"{where}.role", "must be system, developer, user, assistant or tool")


def no_turns(provider: str) -> RequestRejected:
    return fail("messages", f"{provider} needs at least one user or assistant message with content")


# ---- OpenAI tools and tool calls


def arguments(value: Any, param: str, needs: str) -> dict[str, Any]:
    """A tool call's `arguments` (JSON text) -> the object. `needs`: the provider's wording of what it needs, e.g.
    "Anthropic needs the tool input as a JSON object"."""
    text = string(value, param)
    if not text.strip():  # some clients keep a call without arguments as ""
        return {}
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        # The message does not quote the text: it is request content.
        raise fail(param, f"is not valid JSON; {needs}") from None
    if not isinstance(parsed, dict):
        raise fail(param, "must be a JSON object")
    return parsed


def function_tool(item: Any, k: int, provider: str) -> Mapping[str, Any]:
    """`tools[k]`, which must be a function tool -> its `function` object."""
    tool = obj(item, f"tools[{k}]")
    if tool.get("type") != "function":
        raise fail(f"tools[{k}].type", f"only function tools translate to {provider}", "unsupported_value")
    return obj(tool.get("function"), f"tools[{k}].function")


def function_name(value: Any, where: str) -> str:
    function = obj(obj(value, where).get("function"), f"{where}.function")
    return name(function.get("name"), f"{where}.function.name")


def allowed_tools(choice: Mapping[str, Any], declared: Set[str]) -> tuple[set[str], bool]:
    """An `allowed_tools` tool_choice -> (the names of the allowed functions, all in `declared`; whether the model
    must call one: mode required)."""
    allowed = obj(choice.get("allowed_tools"), "tool_choice.allowed_tools")
    if allowed.get("mode") not in ("auto", "required"):
        raise fail("tool_choice.allowed_tools.mode", "must be auto or required")
    listed = array(allowed.get("tools"), "tool_choice.allowed_tools.tools")
    names = {function_name(t, f"tool_choice.allowed_tools.tools[{k}]") for k, t in enumerate(listed)}
    if names - declared:
        raise fail("tool_choice.allowed_tools.tools", "names a function that is not in tools")
    return names, allowed["mode"] == "required"


def bad_tool_choice() -> RequestRejected:
    return fail("tool_choice", "must be none, auto, required, a function or allowed_tools", "unsupported_value")


def no_tools_to_call() -> RequestRejected:
    return fail("tool_choice", "asks for a tool call but the request has no tools")


# ---- answers: lenient readers (an answer never fails on a shape it did not expect)


def compact(value: Any) -> str:
    return orjson.dumps(value if value is not None else {}).decode()


def count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def finish_reason(reasons: Mapping[str, str], reason: Any) -> str:
    # A stop reason newer than the table still ends an answer: never fail on it.
    return reasons.get(reason, "stop") if isinstance(reason, str) else "stop"


RAW_TEXT_LIMIT: Final = 256  # characters of an error body that is not the provider's envelope kept in the message


def raw_error_text(status: int, body: bytes) -> str:
    """An error body that is not the provider's envelope (a proxy's HTML page, Envoy's "upstream connect error", ...)
    -> a bounded prefix of its text, or what the status says when it is empty."""
    text = body.decode("utf-8", "replace").strip()
    if len(text) > RAW_TEXT_LIMIT:
        text = text[: RAW_TEXT_LIMIT - 3] + "..."
    return text or f"the upstream answered HTTP {status} with an empty body"


def stream_exception(headers: Mapping[str, Any], payload: bytes) -> tuple[str, str]:
    """An AWS event-stream exception or error message -> (the error type, as the x-amzn-errortype header names it;
    its message, or a general one). An exception names its type in lowerCamelCase, as the stream member
    (throttlingException); an event-stream error carries its code and message in headers."""
    text: Any
    if headers.get(":message-type") == "exception":
        exception = str(headers.get(":exception-type", ""))
        error_type = exception[:1].upper() + exception[1:]
        try:
            text = mapping(orjson.loads(payload)).get("message")
        except orjson.JSONDecodeError:
            text = None
    else:
        error_type, text = str(headers.get(":error-code", "")), headers.get(":error-message")
    return error_type, text if isinstance(text, str) and text else "the upstream reported an error mid-stream"
