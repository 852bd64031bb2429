"""OpenAI chat completions <-> Anthropic Messages, for the first-party API (`POST api.anthropic.com/v1/messages`).

`chat_request` turns a `/v1/chat/completions` body into a `/v1/messages` body, or raises `RequestRejected` for what
Anthropic cannot honour: a field a client relies on is never dropped silently, and the few harmless ones that are
dropped are listed in `DROPPED_FIELDS` with the reason. `chat_response`, `ChatStream` and `error_response` turn the
answers back: a Message, the SSE stream of one, an error body. Field names and shapes follow the SDKs' own types
(`anthropic.types`, `openai.types.chat`).

Pure: no I/O, no clock, no randomness (the caller gives `created`), and no logging, so request content never reaches
a log.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from xds_server.extproc.schemas.common import (
    UNSUPPORTED,
    allowed_tools,
    arguments,
    bad_tool_choice,
    check_fields,
    conversation,
    finish_reason,
    function_tool,
    no_tools_to_call,
    raw_error_text,
    reasoning_effort,
    structured_output,
)
from xds_server.extproc.schemas.common import RequestRejected as RequestRejected  # re-exported: callers import it here
from xds_server.extproc.schemas.common import array as _array
from xds_server.extproc.schemas.common import boolean as _bool
from xds_server.extproc.schemas.common import compact as _compact
from xds_server.extproc.schemas.common import count as _count
from xds_server.extproc.schemas.common import fail as _fail
from xds_server.extproc.schemas.common import function_name as _function_name
from xds_server.extproc.schemas.common import mapping as _mapping
from xds_server.extproc.schemas.common import name as _name
from xds_server.extproc.schemas.common import number as _number
from xds_server.extproc.schemas.common import obj as _object
from xds_server.extproc.schemas.common import string as _string
from xds_server.extproc.schemas.sse import DONE, PING, ChunkWriter, error_event
from xds_server.extproc.sse import SseParser

ANTHROPIC_VERSION: Final = "2023-06-01"  # the `anthropic-version` header value to send
DEFAULT_MAX_TOKENS: Final = 4096  # Anthropic requires max_tokens; OpenAI clients often leave it out

# Sent although the installed SDK's MessageCreateParams no longer declares them: SDK 1.0 dropped the sampling
# keywords, while the API still takes them on the models that support sampling (the others answer 400 with a clear
# message, which error_response passes on). Tests check every other key against the SDK type.
SAMPLING_FIELDS: Final = ("temperature", "top_p")

# OpenAI fields dropped on purpose: none changes the answer the client gets, and none has an Anthropic counterpart.
DROPPED_FIELDS: Final[Mapping[str, str]] = {
    "stream_options": "include_usage is read by the caller (ChatStream's include_usage); include_obfuscation pads "
    "OpenAI's own chunks against a side channel, and these carry no padding field",
    "store": "asks OpenAI to keep the completion for its dashboard and evals; nothing is stored here",
    "metadata": "tags for completions stored with `store`, not Anthropic's metadata.user_id (that is `user`)",
    "service_tier": "OpenAI's capacity and billing tier; Anthropic's tier is the account's, the answer is the same",
    "prompt_cache_key": "a routing hint for OpenAI's cache; Anthropic caches exact prefixes at cache_control marks "
    "(mapped from parts' prompt_cache_breakpoint)",
    "prompt_cache_options": "OpenAI's cache mode and lifetime; caching never changes the answer",
    "prompt_cache_retention": "deprecated OpenAI cache lifetime; caching never changes the answer",
}


# Translated below; `model` is replaced by the caller's (after any modelNameOverride).
_MAPPED: Final = frozenset(
    ("model", "messages", "max_completion_tokens", "max_tokens", *SAMPLING_FIELDS, "stop", "stream", "user")
) | {"safety_identifier", "tools", "tool_choice", "parallel_tool_calls", "response_format", "reasoning_effort"}
_KNOWN: Final = _MAPPED | DROPPED_FIELDS.keys() | UNSUPPORTED.keys()

_IMAGE_TYPES: Final = ("image/jpeg", "image/png", "image/gif", "image/webp")

Blocks = list[dict[str, Any]]


# ---- request: OpenAI chat completion -> Anthropic Messages


def chat_request(body: Mapping[str, Any], model: str, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> dict[str, Any]:
    """OpenAI /v1/chat/completions request -> Anthropic /v1/messages request. `model` is the model to send (the
    caller has applied any modelNameOverride). Raises RequestRejected."""
    check_fields(body, _KNOWN, "Anthropic")
    if body.get("messages") is None:
        raise _fail("messages", "required", "missing_required_parameter")

    system, turns = _conversation(body["messages"])
    request: dict[str, Any] = {"model": model, "max_tokens": _max_tokens(body, default_max_tokens)}
    if system:
        request["system"] = system
    request["messages"] = turns
    stop = body.get("stop")
    if stop:
        stops = [stop] if isinstance(stop, str) else _array(stop, "stop")
        request["stop_sequences"] = [_string(s, f"stop[{k}]") for k, s in enumerate(stops)]
    if body.get("temperature") is not None:
        temperature = _number(body["temperature"], "temperature")
        if temperature > 1:
            raise _fail("temperature", f"Anthropic's range is 0 to 1, not {temperature}", "unsupported_value")
        request["temperature"] = temperature
    if body.get("top_p") is not None:
        request["top_p"] = _number(body["top_p"], "top_p")
    # safety_identifier replaces `user` in OpenAI's API: both identify the end user for abuse detection, which is
    # what Anthropic's metadata.user_id is for.
    user = next((name for name in ("safety_identifier", "user") if body.get(name)), None)
    if user:
        request["metadata"] = {"user_id": _string(body[user], user)}
    tools, choice = _tool_choice(body, _tools(body.get("tools") or []))
    if tools:
        request["tools"] = tools
    if choice:
        request["tool_choice"] = choice
    output_config = _output_config(body)
    if output_config:
        request["output_config"] = output_config
    if body.get("stream") is not None and _bool(body["stream"], "stream"):
        request["stream"] = True
    return request


def _max_tokens(body: Mapping[str, Any], default: int) -> int:
    for name in ("max_completion_tokens", "max_tokens"):  # the first one wins: OpenAI deprecated max_tokens for it
        value = body.get(name)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise _fail(name, "must be an integer of at least 1")
            return value
    return default


def _conversation(messages: Any) -> tuple[Blocks, Blocks]:
    """(system blocks, alternating turns): Anthropic has one system prompt, and tool results are user content."""
    return conversation(
        messages, "Anthropic", ("text", "image_url"), _parts, _assistant, lambda m, w: [_tool_result(m, w)]
    )


def _parts(content: Any, where: str, kinds: tuple[str, ...]) -> Blocks:
    """A message's content (a string or parts of the given kinds) -> blocks, one per part so that a cache
    breakpoint stays on its part. Empty text is left out: Anthropic rejects an empty text block."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: Blocks = []
    for j, raw in enumerate(_array(content, f"{where}.content")):
        here = f"{where}.content[{j}]"
        part = _object(raw, here)
        kind = part.get("type")
        if kind not in kinds:
            if kind in ("input_audio", "file") and "image_url" in kinds:
                why = "Anthropic takes no audio" if kind == "input_audio" else "send a PDF as a data: image_url"
                raise _fail(f"{here}.type", f"{kind} parts are not translated: {why}", "unsupported_value")
            raise _fail(f"{here}.type", f"must be {' or '.join(kinds)} in this message")
        if kind == "image_url":
            block = _image(part, here)
        elif kind == "refusal":  # an earlier answer's refusal: what the assistant said, kept as said
            block = {"type": "text", "text": _string(part.get("refusal"), f"{here}.refusal")}
        else:
            block = {"type": "text", "text": _string(part.get("text"), f"{here}.text")}
        if block.get("text") != "":
            blocks.append(_cached(part, block))
    return blocks


def _cached(part: Mapping[str, Any], block: dict[str, Any]) -> dict[str, Any]:
    # An explicit OpenAI cache breakpoint is Anthropic's cache_control mark at the same place. Anthropic's lifetimes
    # (5m, 1h) are not OpenAI's (30m, 12h): the default one keeps cache writes cheapest.
    if part.get("prompt_cache_breakpoint") is not None:
        block["cache_control"] = {"type": "ephemeral"}
    return block


def _image(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    """An image_url part -> an image block, or a document block for a PDF (Anthropic reads PDFs as documents).
    `detail` is dropped: Anthropic sizes images itself and has no such hint."""
    param = f"{where}.image_url.url"
    url = _string(_object(part.get("image_url"), f"{where}.image_url").get("url"), param)
    if url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        media_type, *options = header.lower().split(";")
        if not comma or "base64" not in options:
            raise _fail(param, "a data URI must be base64 (data:<media type>;base64,<data>)")
        media_type = "image/jpeg" if media_type == "image/jpg" else media_type  # a common misspelling
        if media_type != "application/pdf" and media_type not in _IMAGE_TYPES:
            why = f"Anthropic takes {', '.join(_IMAGE_TYPES)} or application/pdf, not {media_type[:64]}"
            raise _fail(param, why, "unsupported_value")
        kind = "document" if media_type == "application/pdf" else "image"
        return {"type": kind, "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url[:8].lower().startswith(("https://", "http://")):
        # Anthropic fetches the URL itself but must be told a PDF from an image; the path is all there is to go by.
        kind = "document" if urlsplit(url).path.lower().endswith(".pdf") else "image"
        return {"type": kind, "source": {"type": "url", "url": url}}
    raise _fail(param, "must be an http(s) URL or a base64 data URI", "unsupported_value")


def _assistant(message: Mapping[str, Any], where: str) -> Blocks:
    for name in ("audio", "function_call"):
        if message.get(name) is not None:
            raise _fail(f"{where}.{name}", "has no Anthropic counterpart", "unsupported_parameter")
    blocks = [] if message.get("content") is None else _parts(message["content"], where, ("text", "refusal"))
    if message.get("refusal"):
        blocks.append({"type": "text", "text": _string(message["refusal"], f"{where}.refusal")})
    for k, raw in enumerate(_array(message.get("tool_calls") or [], f"{where}.tool_calls")):
        here = f"{where}.tool_calls[{k}]"
        call = _object(raw, here)
        if call.get("type", "function") != "function":
            raise _fail(f"{here}.type", "only function tool calls translate to Anthropic", "unsupported_value")
        function = _object(call.get("function"), f"{here}.function")
        name = _name(function.get("name"), f"{here}.function.name")
        arguments = _arguments(function.get("arguments"), f"{here}.function.arguments")
        blocks.append({"type": "tool_use", "id": _name(call.get("id"), f"{here}.id"), "name": name, "input": arguments})
    return blocks


def _arguments(value: Any, param: str) -> dict[str, Any]:
    return arguments(value, param, "Anthropic needs the tool input as a JSON object")


def _tool_result(message: Mapping[str, Any], where: str) -> dict[str, Any]:
    tool_use_id = _name(message.get("tool_call_id"), f"{where}.tool_call_id")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id}
    content = message.get("content")
    texts = _parts(content, where, ("text",))
    if texts:  # a string stays a string; no content at all beats an empty text block, which Anthropic rejects
        block["content"] = content if isinstance(content, str) else texts
    return block


def _tools(raw: Any) -> Blocks:
    tools = []
    for k, item in enumerate(_array(raw, "tools")):
        function = function_tool(item, k, "Anthropic")
        out: dict[str, Any] = {"name": _name(function.get("name"), f"tools[{k}].function.name")}
        if function.get("description") is not None:
            out["description"] = _string(function["description"], f"tools[{k}].function.description")
        # A function without parameters takes none; Anthropic requires an object schema either way.
        parameters = function.get("parameters")
        schema = {"properties": {}} if parameters is None else _object(parameters, f"tools[{k}].function.parameters")
        out["input_schema"] = {"type": "object", **schema}
        if function.get("strict") is not None:
            out["strict"] = _bool(function["strict"], f"tools[{k}].function.strict")
        tools.append(out)
    return tools


def _tool_choice(body: Mapping[str, Any], tools: Blocks) -> tuple[Blocks, dict[str, Any] | None]:
    """(the tools to send, Anthropic's tool_choice or None)."""
    value = body.get("tool_choice")
    choice: dict[str, Any] | None = None
    if value in ("auto", "none", "required"):
        choice = {"type": "any" if value == "required" else value}
    elif isinstance(value, Mapping) and value.get("type") == "function":
        choice = {"type": "tool", "name": _function_name(value, "tool_choice")}
    elif isinstance(value, Mapping) and value.get("type") == "allowed_tools":
        # Anthropic has no allowed subset of the tools: send only that subset, which the model sees the same way.
        names, required = allowed_tools(value, {tool["name"] for tool in tools})
        tools = [tool for tool in tools if tool["name"] in names]
        choice = {"type": "any" if required else "auto"}
    elif value is not None:
        raise bad_tool_choice()
    if not tools:
        # Without tools only "none" and "auto" mean anything, and they mean what Anthropic does then.
        if choice is not None and choice["type"] not in ("none", "auto"):
            raise no_tools_to_call()
        return [], None
    parallel = body.get("parallel_tool_calls")
    # Anthropic's "none" takes no such flag, nor needs one.
    if parallel is not None and not _bool(parallel, "parallel_tool_calls") and (choice or {}).get("type") != "none":
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    return tools, choice


def _output_config(body: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if (structured := structured_output(body, "Anthropic")) is not None:
        config["format"] = {"type": "json_schema", "schema": structured[1]}  # `name` is only a label
    if (effort := reasoning_effort(body, "Anthropic")) is not None:
        config["effort"] = effort
    return config


# ---- answers: Anthropic Message, stream and errors -> OpenAI

_FINISH_REASONS: Final[Mapping[str, str]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",  # a server tool's long turn paused; we send no server tools, and what came is whole
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def _finish_reason(stop_reason: Any) -> str:
    return finish_reason(_FINISH_REASONS, stop_reason)


def chat_response(message: Mapping[str, Any], model: str, created: int) -> dict[str, Any]:
    """Anthropic Message (non-streamed 200 body) -> OpenAI chat.completion. `model`: the model the client asked for
    (the response reports it); `created`: unix seconds (given by the caller)."""
    texts: list[str] = []
    thinking: list[str] = []
    tool_calls: Blocks = []
    for block in message.get("content") or []:
        kind = _mapping(block).get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "thinking":
            thinking.append(str(block.get("thinking", "")))
        elif kind == "tool_use":
            function = {"name": block.get("name", ""), "arguments": _compact(block.get("input"))}
            tool_calls.append({"id": block.get("id", ""), "type": "function", "function": function})
        # redacted_thinking is encrypted, and server tools' blocks cannot come: the request names no server tool.
    # Blocks are joined without separators, as a client of the stream joins their deltas.
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
    if thinking:
        reply["reasoning_content"] = "".join(thinking)  # vLLM's and DeepSeek's field for reasoning text
    if tool_calls:
        reply["tool_calls"] = tool_calls
    choice = {
        "index": 0,
        "message": reply,
        "logprobs": None,
        "finish_reason": _finish_reason(message.get("stop_reason")),
    }
    return {
        "id": message.get("id", ""),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": _usage(_mapping(message.get("usage"))),
    }


def _usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI counts cached tokens inside prompt_tokens; Anthropic's input_tokens leaves out both cache reads and
    cache writes, so the three add up to the prompt."""
    cache_read = _count(usage.get("cache_read_input_tokens"))
    cache_write = _count(usage.get("cache_creation_input_tokens"))
    prompt = _count(usage.get("input_tokens")) + cache_read + cache_write
    completion = _count(usage.get("output_tokens"))
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cache_read, "cache_write_tokens": cache_write},
    }
    details = _mapping(usage.get("output_tokens_details"))
    if "thinking_tokens" in details:
        out["completion_tokens_details"] = {"reasoning_tokens": _count(details["thinking_tokens"])}
    return out


# Anthropic error type -> (OpenAI type, code). OpenAI's SDKs pick their exception by the HTTP status, which the
# caller keeps; clients that look further branch on `code`.
_ERRORS: Final[Mapping[str, tuple[str, str]]] = {
    "invalid_request_error": ("invalid_request_error", "invalid_request_error"),
    "authentication_error": ("authentication_error", "invalid_api_key"),
    "billing_error": ("insufficient_quota", "insufficient_quota"),  # OpenAI's name for an account out of credit
    "permission_error": ("permission_error", "permission_denied"),
    "not_found_error": ("invalid_request_error", "not_found"),  # model_not_found when about the model
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit_error": ("rate_limit_error", "rate_limit_exceeded"),
    "timeout_error": ("server_error", "timeout"),
    "api_error": ("server_error", "internal_error"),
    "overloaded_error": ("server_error", "overloaded"),
}
# The type a body without a known one stands for, by HTTP status (the status Anthropic documents for each type).
_TYPE_OF_STATUS: Final[Mapping[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_response(status: int, body: bytes) -> bytes:
    """An Anthropic error answer (any status >= 400; JSON `{"type":"error","error":{"type","message"}}` or not JSON at
    all) -> the OpenAI error envelope bytes `{"error":{"message","type","param","code"}}`. The HTTP status itself is
    kept by the caller."""
    try:
        error = _mapping(_mapping(orjson.loads(body)).get("error"))
    except orjson.JSONDecodeError:
        error = {}
    if isinstance(error.get("message"), str):
        return orjson.dumps(_envelope(error.get("type"), error["message"], status))
    # Not Anthropic's envelope (a proxy's HTML page, Envoy's "upstream connect error", ...): a bounded prefix of it.
    return orjson.dumps(_envelope(None, raw_error_text(status, body), status))


def _envelope(kind: Any, message: str, status: int) -> dict[str, Any]:
    if kind not in _ERRORS:
        kind = _TYPE_OF_STATUS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    openai_type, code = _ERRORS[kind]
    if kind == "not_found_error" and "model" in message.lower():
        code = "model_not_found"  # what OpenAI clients look for when a model name is wrong
    return {"error": {"message": message, "type": openai_type, "param": None, "code": code}}


class ChatStream:
    """Anthropic SSE response stream -> OpenAI chat.completion.chunk SSE stream, fed in arbitrary byte pieces.

    Anthropic's events: message_start, then per content block content_block_start, content_block_delta...,
    content_block_stop, then message_delta (stop reason, cumulative usage) and message_stop; ping and error may come
    anywhere. A chunk goes out for each event that carries something, so the client sees text as soon as it comes.
    """

    def __init__(self, model: str, created: int, include_usage: bool) -> None:
        self._chunks = ChunkWriter(model, created, include_usage)
        self._events = SseParser()  # keeps a partial line (even a split \r\n or UTF-8 character) between pieces
        self._closed = False  # [DONE] or an error event went out: nothing more does
        self._tool_calls: dict[int, int] = {}  # content block index -> OpenAI tool call index (0, 1, ... per call)
        self._stop_reason: Any = None
        self._usage: dict[str, Any] = {}

    def feed(self, data: bytes) -> bytes:
        """Some upstream bytes (an event may be split anywhere, even inside a UTF-8 character or between \\r and
        \\n) -> the OpenAI SSE bytes ready so far (b"" if none)."""
        return b"" if self._closed else self._translate(self._events.feed(data))

    def finish(self) -> bytes:
        """The upstream stream ended: whatever is still owed (a `data: [DONE]\\n\\n` if not sent yet; if the upstream
        ended before message_stop, an OpenAI-style error event first, so a client never takes a truncated answer as
        complete)."""
        if self._closed:
            return b""
        out = self._translate(self._events.finish())  # a last event whose blank line never came still counts
        if not self._closed:
            self._closed = True
            why = "the upstream stream ended before the answer was complete"
            out += error_event({"message": why, "type": "server_error", "param": None, "code": "incomplete_stream"})
            out += DONE
        return out

    def _translate(self, events: list[bytes]) -> bytes:
        out: list[bytes] = []  # joined once: a whole answer may come in one piece
        for data in events:
            if self._closed:
                break
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue  # nothing to make of it; should message_stop never come, finish() says so
            out.append(self._event(_mapping(event)))
        return b"".join(out)

    def _event(self, event: Mapping[str, Any]) -> bytes:
        kind = event.get("type")
        if kind == "message_start":
            message = _mapping(event.get("message"))
            self._chunks.id = str(message.get("id", ""))
            self._usage = dict(_mapping(message.get("usage")))
            return self._chunks.start()
        if kind == "content_block_start":
            return self._block_start(_count(event.get("index")), _mapping(event.get("content_block")))
        if kind == "content_block_delta":
            return self._block_delta(_count(event.get("index")), _mapping(event.get("delta")))
        if kind == "message_delta":
            self._stop_reason = _mapping(event.get("delta")).get("stop_reason") or self._stop_reason
            # Cumulative counts: the last output count is the total; input and cache counts, when given, correct
            # message_start's.
            self._usage.update((name, n) for name, n in _mapping(event.get("usage")).items() if n is not None)
            return b""
        if kind == "message_stop":
            self._closed = True
            return self._chunks.finish(_finish_reason(self._stop_reason), _usage(self._usage))
        if kind == "ping":
            return PING
        if kind == "error":
            self._closed = True
            error = _mapping(event.get("error"))
            text = error.get("message")
            text = text if isinstance(text, str) and text else "the upstream reported an error mid-stream"
            return error_event(_envelope(error.get("type"), text, 200)["error"])
        return b""  # content_block_stop needs nothing; event types added later are skipped, as Anthropic asks

    def _block_start(self, index: int, block: Mapping[str, Any]) -> bytes:
        kind = block.get("type")
        if kind == "tool_use":
            call = self._tool_calls[index] = len(self._tool_calls)
            # id, type and name in the first delta of a call only, and arguments "" (not "{}", which a client would
            # prepend to the input_json_delta pieces that follow).
            arguments = _compact(block["input"]) if block.get("input") else ""
            function = {"name": block.get("name", ""), "arguments": arguments}
            return self._chunks.delta(
                {"tool_calls": [{"index": call, "id": block.get("id", ""), "type": "function", "function": function}]}
            )
        if kind == "text" and block.get("text"):
            return self._chunks.delta({"content": block["text"]})
        if kind == "thinking" and block.get("thinking"):
            return self._chunks.delta({"reasoning_content": block["thinking"]})
        return self._chunks.start()

    def _block_delta(self, index: int, delta: Mapping[str, Any]) -> bytes:
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return self._chunks.delta({"content": delta["text"]})
        if kind == "thinking_delta" and delta.get("thinking"):
            return self._chunks.delta({"reasoning_content": delta["thinking"]})
        if kind == "input_json_delta" and delta.get("partial_json") and index in self._tool_calls:
            # (A server tool's input has no entry: it is no call of the client's.)
            call = {"index": self._tool_calls[index], "function": {"arguments": delta["partial_json"]}}
            return self._chunks.delta({"tool_calls": [call]})
        # signature_delta (proof of the thinking, for a later turn) and citations_delta have no OpenAI field.
        return self._chunks.start()
