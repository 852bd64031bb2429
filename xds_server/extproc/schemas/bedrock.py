"""OpenAI chat completions <-> Amazon Bedrock Converse (`POST /model/{modelId}/converse`) and ConverseStream
(`/converse-stream`, answered in the AWS event-stream binary framing, see `eventstream`).

`converse_path` is the path to send to, `chat_request` turns a `/v1/chat/completions` body into a ConverseRequest
body, or raises `RequestRejected` for what Converse cannot honour: a field a client relies on is never dropped
silently, and the few harmless ones that are dropped are listed in `DROPPED_FIELDS` with the reason. `chat_response`,
`ChatStream` and `error_response` turn the answers back: a ConverseResponse, the event stream of one, an error. Shapes
follow botocore's service model `bedrock-runtime` (2023-09-30) and `openai.types.chat`; the tests check both.

Decisions beyond a field-by-field mapping:
- `tool_choice: "none"`: Converse has no such choice. Without tools the model cannot call one, so the tools are left
  out. But Converse refuses a conversation holding tool calls or results unless tools are declared, and declared tools
  may be called: a request with both is rejected rather than answered with calls the client forbade.
- `parallel_tool_calls: false` with tools is rejected: Converse has no switch for it, and the model may call several.
- Images are sent as bytes, from base64 `data:` URIs. An http(s) URL is rejected (Converse does not fetch URLs), and
  so is an `s3://` one: Bedrock would read it with the gateway's own AWS credentials, not the client's.
- The answer's text blocks are all joined, and `guardrail_intervened` is `content_filter`, like `content_filtered`.
- A stream ends with the usage of the `metadata` event, which follows `messageStop`: the finish chunk waits for it.

Pure: no I/O, no clock, no randomness (the caller gives `created` and the request id), and no logging, so request
content never reaches a log.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final
from urllib.parse import quote

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
    stream_exception,
    structured_output,
)
from xds_server.extproc.schemas.common import RequestRejected as RequestRejected  # raised here, for the caller
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
from xds_server.extproc.schemas.eventstream import Decoder, Message, translate_messages
from xds_server.extproc.schemas.sse import DONE, ChunkWriter, error_event

# OpenAI fields dropped on purpose: none changes the answer the client gets, and none has a Converse counterpart.
DROPPED_FIELDS: Final[Mapping[str, str]] = {
    "stream_options": "include_usage is read by the caller (ChatStream's include_usage); include_obfuscation pads "
    "OpenAI's own chunks against a side channel, and Bedrock pads its events itself (their `p` field)",
    "store": "asks OpenAI to keep the completion for its dashboard and evals; nothing is stored here",
    "metadata": "tags for completions stored with `store`; Converse's requestMetadata tags the account owner's "
    "invocation logs instead, which the client does not read",
    "user": "identifies the end user to OpenAI's abuse monitoring; Converse has no such field",
    "safety_identifier": "identifies the end user to OpenAI's abuse monitoring; Converse has no such field",
    "prompt_cache_key": "a routing hint for OpenAI's cache; Bedrock caches exact prefixes at cachePoint blocks "
    "(mapped from parts' prompt_cache_breakpoint)",
    "prompt_cache_options": "OpenAI's cache mode and lifetime; caching never changes the answer",
    "prompt_cache_retention": "deprecated OpenAI cache lifetime; caching never changes the answer",
}
# Translated below; `model` and `stream` make the path (converse_path), not the body.
_MAPPED: Final = frozenset(
    ("model", "messages", "max_completion_tokens", "max_tokens", "temperature", "top_p", "stop", "stream", "tools")
) | {"tool_choice", "parallel_tool_calls", "response_format", "reasoning_effort", "service_tier"}
_KNOWN: Final = _MAPPED | DROPPED_FIELDS.keys() | UNSUPPORTED.keys()

_IMAGE_FORMATS: Final[Mapping[str, str]] = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",  # a common misspelling
    "image/gif": "gif",
    "image/webp": "webp",
}
_AUDIO_FORMATS: Final = ("wav", "mp3")  # OpenAI's input_audio formats, both Converse AudioFormat values
# OpenAI's service_tier -> Converse's serviceTier.type; "auto" (OpenAI's default) sends none: Bedrock's default.
_SERVICE_TIERS: Final[Mapping[str, str]] = {
    "default": "default",
    "flex": "flex",
    "priority": "priority",
    "fast": "priority",  # OpenAI's other name for priority
    "scale": "reserved",  # capacity reserved ahead, on both sides
}

Blocks = list[dict[str, Any]]


def converse_path(model: str, stream: bool) -> str:
    """`/model/{modelId}/converse`, or `/converse-stream`. The model id is percent-encoded as one path segment, as
    AWS expects it: an ARN's `/` becomes %2F, its `:` stays as is (the SigV4 signer encodes the path again)."""
    if not model:
        raise _fail("model", "must be a non-empty string")
    return f"/model/{quote(model, safe=':')}/{'converse-stream' if stream else 'converse'}"


# ---- request: OpenAI chat completion -> Converse


def chat_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI /v1/chat/completions request -> ConverseRequest body. The model id is not in it: it is in the path
    (converse_path), as is the choice of stream. Raises RequestRejected naming the field."""
    check_fields(body, _KNOWN, "Converse")
    if body.get("messages") is None:
        raise _fail("messages", "required", "missing_required_parameter")
    if body.get("stream") is not None:
        _bool(body["stream"], "stream")

    system, turns = _conversation(body["messages"])
    request: dict[str, Any] = {}
    if system:
        request["system"] = system
    request["messages"] = turns
    inference = _inference(body)
    if inference:
        request["inferenceConfig"] = inference
    tool_config = _tool_config(body, _history_has_tools(turns))
    if tool_config:
        request["toolConfig"] = tool_config
    output_config = _output_config(body)
    if output_config:
        request["outputConfig"] = output_config
    tier = body.get("service_tier")
    if tier is not None and tier != "auto":
        if not isinstance(tier, str) or tier not in _SERVICE_TIERS:
            raise _fail("service_tier", f"must be auto or one of {', '.join(_SERVICE_TIERS)}")
        request["serviceTier"] = {"type": _SERVICE_TIERS[tier]}
    return request


def _inference(body: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for name in ("max_completion_tokens", "max_tokens"):  # the first one wins: OpenAI deprecated max_tokens for it
        value = body.get(name)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise _fail(name, "must be an integer of at least 1")
            config["maxTokens"] = value
            break
    for name, key in (("temperature", "temperature"), ("top_p", "topP")):
        if body.get(name) is not None:
            value = _number(body[name], name)
            if value > 1:
                code = "unsupported_value" if name == "temperature" else "invalid_value"
                raise _fail(name, f"Converse's range is 0 to 1, not {value}", code)
            config[key] = value
    stop = body.get("stop")
    if stop:
        stops = [stop] if isinstance(stop, str) else _array(stop, "stop")
        config["stopSequences"] = [_name(s, f"stop[{k}]") for k, s in enumerate(stops)]
    return config


def _conversation(messages: Any) -> tuple[Blocks, Blocks]:
    """(system blocks, alternating turns): Converse has one system prompt, and no tool role."""
    return conversation(messages, "Converse", ("text", "image_url", "input_audio"), _parts, _assistant, _tool_result)


def _parts(content: Any, where: str, kinds: tuple[str, ...]) -> Blocks:
    """A message's content (a string or parts of the given kinds) -> content blocks, each followed by a cachePoint
    block where the part asks for a cache breakpoint. Empty text is left out: Converse rejects an empty text block."""
    if isinstance(content, str):
        return [{"text": content}] if content else []
    blocks: Blocks = []
    for j, raw in enumerate(_array(content, f"{where}.content")):
        here = f"{where}.content[{j}]"
        part = _object(raw, here)
        kind = part.get("type")
        if kind not in kinds:
            if kind == "file" and "image_url" in kinds:
                why = "file parts are not translated to Converse; send images as image_url data URIs"
                raise _fail(f"{here}.type", why, "unsupported_value")
            raise _fail(f"{here}.type", f"must be {' or '.join(kinds)} in this message")
        if kind == "image_url":
            block = _image(part, here)
        elif kind == "input_audio":
            block = _audio(part, here)
        elif kind == "refusal":  # an earlier answer's refusal: what the assistant said, kept as said
            block = {"text": _string(part.get("refusal"), f"{here}.refusal")}
        else:
            block = {"text": _string(part.get("text"), f"{here}.text")}
        if block.get("text") != "":
            blocks.append(block)
            # An explicit OpenAI cache breakpoint is a Converse cache point at the same place. The default lifetime
            # (5 minutes) keeps cache writes cheapest; OpenAI's lifetimes (30m, 12h) are not Bedrock's (5m, 1h).
            if part.get("prompt_cache_breakpoint") is not None:
                blocks.append(_cache_point())
    return blocks


def _cache_point() -> dict[str, Any]:
    return {"cachePoint": {"type": "default"}}


def _image(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    """An image_url part -> an image block of base64 bytes (Converse's JSON carries blobs in base64). `detail` is
    dropped: Bedrock sizes images itself and has no such hint."""
    param = f"{where}.image_url.url"
    url = _string(_object(part.get("image_url"), f"{where}.image_url").get("url"), param)
    if not url.startswith("data:"):
        why = "Converse takes images as bytes, not by URL: send a base64 data URI (data:image/png;base64,...)"
        raise _fail(param, why, "unsupported_value")
    header, comma, data = url[5:].partition(",")
    media_type, *options = header.lower().split(";")
    if not comma or "base64" not in options or not data:
        raise _fail(param, "a data URI must be base64 (data:<media type>;base64,<data>)")
    if media_type not in _IMAGE_FORMATS:
        why = f"Converse takes image/png, image/jpeg, image/gif or image/webp, not {media_type[:64]}"
        raise _fail(param, why, "unsupported_value")
    return {"image": {"format": _IMAGE_FORMATS[media_type], "source": {"bytes": data}}}


def _audio(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    audio = _object(part.get("input_audio"), f"{where}.input_audio")
    audio_format = audio.get("format")
    if audio_format not in _AUDIO_FORMATS:
        raise _fail(f"{where}.input_audio.format", "must be wav or mp3")
    data = _name(audio.get("data"), f"{where}.input_audio.data")
    return {"audio": {"format": audio_format, "source": {"bytes": data}}}


def _assistant(message: Mapping[str, Any], where: str) -> Blocks:
    for name in ("audio", "function_call"):
        if message.get(name) is not None:
            raise _fail(f"{where}.{name}", "has no Converse counterpart", "unsupported_parameter")
    blocks = [] if message.get("content") is None else _parts(message["content"], where, ("text", "refusal"))
    if message.get("refusal"):
        blocks.append({"text": _string(message["refusal"], f"{where}.refusal")})
    for k, raw in enumerate(_array(message.get("tool_calls") or [], f"{where}.tool_calls")):
        here = f"{where}.tool_calls[{k}]"
        call = _object(raw, here)
        if call.get("type", "function") != "function":
            raise _fail(f"{here}.type", "only function tool calls translate to Converse", "unsupported_value")
        function = _object(call.get("function"), f"{here}.function")
        tool_use = {
            "toolUseId": _name(call.get("id"), f"{here}.id"),
            "name": _name(function.get("name"), f"{here}.function.name"),
            "input": _arguments(function.get("arguments"), f"{here}.function.arguments"),
        }
        blocks.append({"toolUse": tool_use})
    return blocks


def _arguments(value: Any, param: str) -> dict[str, Any]:
    return arguments(value, param, "Converse needs the tool input as a JSON object")


def _tool_result(message: Mapping[str, Any], where: str) -> Blocks:
    """A tool message -> a toolResult block, and a cachePoint after it if a part asks for one (Converse takes none
    inside a result). No content at all is `content: []`: an empty text block is refused, and inventing text would
    change what the tool said."""
    tool_use_id = _name(message.get("tool_call_id"), f"{where}.tool_call_id")
    blocks = _parts(message.get("content"), where, ("text",))
    texts = [block for block in blocks if "text" in block]
    result: Blocks = [{"toolResult": {"toolUseId": tool_use_id, "content": texts}}]
    if len(texts) < len(blocks):
        result.append(_cache_point())
    return result


def _history_has_tools(turns: Blocks) -> bool:
    return any("toolUse" in block or "toolResult" in block for turn in turns for block in turn["content"])


def _tools(raw: Any) -> Blocks:
    tools = []
    for k, item in enumerate(_array(raw, "tools")):
        function = function_tool(item, k, "Converse")
        spec: dict[str, Any] = {"name": _name(function.get("name"), f"tools[{k}].function.name")}
        if function.get("description") is not None:
            description = _string(function["description"], f"tools[{k}].function.description")
            if description:  # Converse refuses an empty description; none at all says the same
                spec["description"] = description
        # A function without parameters takes none; Converse wants an object schema either way.
        parameters = function.get("parameters")
        schema = {"properties": {}} if parameters is None else _object(parameters, f"tools[{k}].function.parameters")
        spec["inputSchema"] = {"json": {"type": "object", **schema}}
        if function.get("strict") is not None:
            spec["strict"] = _bool(function["strict"], f"tools[{k}].function.strict")
        tools.append({"toolSpec": spec})
    return tools


def _tool_config(body: Mapping[str, Any], history_has_tools: bool) -> dict[str, Any]:
    """Converse's toolConfig (empty: none to send). See the module's docstring on `none` and parallel calls."""
    tools = _tools(body.get("tools") or [])
    value = body.get("tool_choice")
    choice: dict[str, Any] | None = None
    if value in ("auto", "none"):
        pass  # auto is what Converse does without a choice; none is handled below
    elif value == "required":
        choice = {"any": {}}
    elif isinstance(value, Mapping) and value.get("type") == "function":
        choice = {"tool": {"name": _function_name(value, "tool_choice")}}
    elif isinstance(value, Mapping) and value.get("type") == "allowed_tools":
        # Converse has no allowed subset of the tools: send only that subset, which the model sees the same way.
        names, required = allowed_tools(value, {tool["toolSpec"]["name"] for tool in tools})
        tools = [tool for tool in tools if tool["toolSpec"]["name"] in names]
        choice = {"any": {}} if required else None
    elif value is not None:
        raise bad_tool_choice()
    if not tools:
        if choice is not None:
            raise no_tools_to_call()
        return {}
    if value == "none":
        if history_has_tools:
            why = (
                "Converse has no none choice, and it needs the tools declared (so callable) once the conversation "
                "holds tool calls or results; use auto, or leave the tools out"
            )
            raise _fail("tool_choice", why, "unsupported_value")
        return {}  # without tools the model calls none
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not _bool(parallel, "parallel_tool_calls"):
        why = "Converse has no switch for parallel tool calls (the model may call several at once); only true is taken"
        raise _fail("parallel_tool_calls", why, "unsupported_value")
    config: dict[str, Any] = {"tools": tools}
    if choice is not None:
        config["toolChoice"] = choice
    return config


def _output_config(body: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if (structured := structured_output(body, "Converse")) is not None:
        json_schema, schema = structured
        definition: dict[str, Any] = {"schema": orjson.dumps(schema).decode()}  # Converse takes it as JSON text
        for name in ("name", "description"):
            if json_schema.get(name):
                definition[name] = _string(json_schema[name], f"response_format.json_schema.{name}")
        config["textFormat"] = {"type": "json_schema", "structure": {"jsonSchema": definition}}
    if (effort := reasoning_effort(body, "Converse")) is not None:
        config["effort"] = effort
    return config


# ---- answers: ConverseResponse, stream and errors -> OpenAI

_FINISH_REASONS: Final[Mapping[str, str]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "content_filtered": "content_filter",
    "guardrail_intervened": "content_filter",  # a guardrail blocked or masked the answer: filtered, in OpenAI's words
    # malformed_model_output and malformed_tool_use: the answer ended as it is; OpenAI has no reason for a bad one.
}


def _finish_reason(stop_reason: Any) -> str:
    return finish_reason(_FINISH_REASONS, stop_reason)


def chat_response(converse: Mapping[str, Any], model: str, created: int, request_id: str) -> dict[str, Any]:
    """ConverseResponse (non-streamed 200 body) -> OpenAI chat.completion. `model`: the model the client asked for
    (Converse does not say); `created`: unix seconds; `request_id`: the x-amzn-requestid header, the answer's id."""
    texts: list[str] = []
    reasoning: list[str] = []
    tool_calls: Blocks = []
    message = _mapping(_mapping(converse.get("output")).get("message"))
    for raw in message.get("content") or []:
        block = _mapping(raw)
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif "reasoningContent" in block:
            # redactedContent (encrypted reasoning) has no OpenAI field; the signature proves the text to a later turn.
            text = _mapping(_mapping(block["reasoningContent"]).get("reasoningText")).get("text")
            if isinstance(text, str):
                reasoning.append(text)
        elif "toolUse" in block:
            tool_use = _mapping(block["toolUse"])
            function = {"name": tool_use.get("name", ""), "arguments": _compact(tool_use.get("input"))}
            tool_calls.append({"id": tool_use.get("toolUseId", ""), "type": "function", "function": function})
        # Citations, images and server tools' results cannot come: the request asks for none of them.
    # Blocks are joined without separators, as a client of the stream joins their deltas.
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
    if reasoning:
        reply["reasoning_content"] = "".join(reasoning)  # vLLM's and DeepSeek's field for reasoning text
    if tool_calls:
        reply["tool_calls"] = tool_calls
    choice = {
        "index": 0,
        "message": reply,
        "logprobs": None,
        "finish_reason": _finish_reason(converse.get("stopReason")),
    }
    completion: dict[str, Any] = {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": _usage(_mapping(converse.get("usage"))),
    }
    tier = _mapping(converse.get("serviceTier")).get("type")
    if tier in ("default", "flex", "priority", "reserved"):
        completion["service_tier"] = "scale" if tier == "reserved" else tier
    return completion


def _usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI counts cached tokens inside prompt_tokens; Converse's inputTokens leaves out both cache reads and cache
    writes, so the three add up to the prompt. totalTokens is recomputed, so that the parts always add up."""
    cache_read = _count(usage.get("cacheReadInputTokens"))
    cache_write = _count(usage.get("cacheWriteInputTokens"))
    prompt = _count(usage.get("inputTokens")) + cache_read + cache_write
    completion = _count(usage.get("outputTokens"))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cache_read, "cache_write_tokens": cache_write},
    }


# Bedrock error type (the x-amzn-errortype header, or a stream exception's type) -> (OpenAI type, code). OpenAI's SDKs
# pick their exception by the HTTP status, which the caller keeps; clients that look further branch on `code`.
_ERRORS: Final[Mapping[str, tuple[str, str]]] = {
    "ValidationException": ("invalid_request_error", "invalid_request_error"),
    "ServiceQuotaExceededException": ("invalid_request_error", "quota_exceeded"),
    "AccessDeniedException": ("permission_error", "permission_denied"),
    # AWS's own authentication: the gateway's credentials, which is the key a client has given, as far as it knows.
    "UnrecognizedClientException": ("authentication_error", "invalid_api_key"),
    "InvalidSignatureException": ("authentication_error", "invalid_api_key"),
    "IncompleteSignatureException": ("authentication_error", "invalid_api_key"),
    "MissingAuthenticationTokenException": ("authentication_error", "invalid_api_key"),
    "ExpiredTokenException": ("authentication_error", "invalid_api_key"),
    "ResourceNotFoundException": ("invalid_request_error", "model_not_found"),  # the one resource of a Converse call
    "ModelTimeoutException": ("server_error", "timeout"),
    "ModelErrorException": ("server_error", "model_error"),
    "ModelStreamErrorException": ("server_error", "model_error"),
    "ThrottlingException": ("rate_limit_error", "rate_limit_exceeded"),
    "ModelNotReadyException": ("rate_limit_error", "model_not_ready"),  # 429: loading; come back shortly
    "InternalServerException": ("server_error", "internal_error"),
    "ServiceUnavailableException": ("server_error", "service_unavailable"),
}
# The type an answer without a known one stands for, by HTTP status (the status the service model gives each type).
_TYPE_OF_STATUS: Final[Mapping[int, str]] = {
    400: "ValidationException",
    401: "UnrecognizedClientException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}


def error_response(status: int, error_type: str | None, body: bytes) -> bytes:
    """A Bedrock error answer (any status >= 400; JSON `{"message": ...}`, or not JSON at all) with its
    x-amzn-errortype header (`ThrottlingException`, or `ThrottlingException:http://...`; None if absent) -> the OpenAI
    error envelope bytes `{"error":{"message","type","param","code"}}`. The HTTP status itself is kept by the caller."""
    kind = error_type.partition(":")[0].strip() if error_type else None
    try:
        error = _mapping(orjson.loads(body))
    except orjson.JSONDecodeError:
        error = {}
    if not kind and isinstance(error.get("__type"), str):  # AWS's JSON protocols name the type in the body
        kind = error["__type"].rpartition("#")[2].partition(":")[0]
    message = error.get("message", error.get("Message"))  # some AWS front ends capitalise it
    if isinstance(message, str) and message:
        return orjson.dumps(_envelope(kind, message, status))
    # Not Bedrock's shape (a proxy's HTML page, Envoy's "upstream connect error", ...): a bounded prefix of it.
    return orjson.dumps(_envelope(kind, raw_error_text(status, body), status))


def _envelope(kind: str | None, message: str, status: int) -> dict[str, Any]:
    if kind is None or kind not in _ERRORS:
        kind = _TYPE_OF_STATUS.get(status, "InternalServerException" if status >= 500 else "ValidationException")
    openai_type, code = _ERRORS[kind]
    return {"error": {"message": message, "type": openai_type, "param": None, "code": code}}


class ChatStream:
    """ConverseStream's event stream -> OpenAI chat.completion.chunk SSE stream, fed in arbitrary byte pieces.

    Converse's events: messageStart, then per content block an optional contentBlockStart (tool calls only),
    contentBlockDelta..., contentBlockStop, then messageStop (the stop reason) and metadata (the usage). An exception
    message (`:message-type` exception) may come instead of any event. A chunk goes out for each event that carries
    something, so the client sees text as soon as it comes; the finish chunk waits for the usage, right behind it.
    """

    def __init__(self, model: str, created: int, include_usage: bool, request_id: str) -> None:
        self._chunks = ChunkWriter(model, created, include_usage)
        self._chunks.id = request_id  # the x-amzn-requestid header: Converse's events name no id
        self._frames = Decoder()  # keeps a partial message between pieces
        self._closed = False  # [DONE] or an error event went out: nothing more does
        self._tool_calls: dict[int, int] = {}  # content block index -> OpenAI tool call index (0, 1, ... per call)
        self._stopped = False  # messageStop came
        self._stop_reason: Any = None
        self._usage: dict[str, Any] | None = None  # metadata's usage, translated

    def feed(self, data: bytes) -> bytes:
        """Some upstream bytes (a message may be split anywhere) -> the OpenAI SSE bytes ready so far (b"" if none)."""
        return b"" if self._closed else self._translate(self._frames.feed(data))

    def finish(self) -> bytes:
        """The upstream stream ended: whatever is still owed. After messageStop without the metadata event, the end
        of the answer without a usage chunk (it is unknown); before messageStop, an OpenAI-style error event and
        [DONE], so a client never takes a truncated answer as complete."""
        if self._closed:
            return b""
        self._closed = True
        if self._stopped:
            return self._chunks.finish(_finish_reason(self._stop_reason), None)
        why = "the upstream stream ended before the answer was complete"
        return error_event({"message": why, "type": "server_error", "param": None, "code": "incomplete_stream"}) + DONE

    def _translate(self, messages: Iterator[Message]) -> bytes:
        out, corrupt = translate_messages(messages, self._message, lambda: self._closed)
        self._closed = self._closed or corrupt
        return out

    def _message(self, message: Message) -> bytes:
        headers = message.headers
        kind = headers.get(":message-type")
        if kind == "event":
            try:
                event = _mapping(orjson.loads(message.payload))
            except orjson.JSONDecodeError:
                return b""  # nothing to make of it; should messageStop never come, finish() says so
            return self._event(headers.get(":event-type"), event)
        if kind in ("exception", "error"):
            self._closed = True
            error_type, text = stream_exception(headers, message.payload)  # named as the ConverseStreamOutput member
            return error_event(_envelope(error_type, text, 500)["error"])
        return b""  # message types added later are skipped

    def _event(self, kind: Any, event: Mapping[str, Any]) -> bytes:
        if kind == "messageStart":
            return self._chunks.start()
        if kind == "contentBlockStart":
            return self._block_start(_count(event.get("contentBlockIndex")), _mapping(event.get("start")))
        if kind == "contentBlockDelta":
            return self._block_delta(_count(event.get("contentBlockIndex")), _mapping(event.get("delta")))
        if kind == "messageStop":
            self._stopped = True
            self._stop_reason = event.get("stopReason")
        elif kind == "metadata":
            self._usage = _usage(_mapping(event.get("usage")))
        else:
            return b""  # contentBlockStop needs nothing; event types added later are skipped
        if self._stopped and self._usage is not None:
            self._closed = True
            return self._chunks.finish(_finish_reason(self._stop_reason), self._usage)
        return b""

    def _block_start(self, index: int, start: Mapping[str, Any]) -> bytes:
        if "toolUse" in start:
            tool_use = _mapping(start["toolUse"])
            self._tool_calls[index] = len(self._tool_calls)
            # id, type and name in the first delta of a call only, and arguments "" (the input follows in pieces).
            call = {
                "index": self._tool_calls[index],
                "id": tool_use.get("toolUseId", ""),
                "type": "function",
                "function": {"name": tool_use.get("name", ""), "arguments": ""},
            }
            return self._chunks.delta({"tool_calls": [call]})
        return self._chunks.start()  # toolResult and image blocks come of server tools and image output: none asked

    def _block_delta(self, index: int, delta: Mapping[str, Any]) -> bytes:
        if isinstance(delta.get("text"), str) and delta["text"]:
            return self._chunks.delta({"content": delta["text"]})
        if "toolUse" in delta and index in self._tool_calls:
            piece = _mapping(delta["toolUse"]).get("input")
            if isinstance(piece, str) and piece:
                call = {"index": self._tool_calls[index], "function": {"arguments": piece}}
                return self._chunks.delta({"tool_calls": [call]})
        if "reasoningContent" in delta:
            text = _mapping(delta["reasoningContent"]).get("text")
            if isinstance(text, str) and text:
                return self._chunks.delta({"reasoning_content": text})
        # A reasoning signature or redacted reasoning, and citations, have no OpenAI field.
        return self._chunks.start()
