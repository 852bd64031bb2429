"""OpenAI chat completions <-> Gemini on Vertex AI: `generateContent`, and `streamGenerateContent?alt=sse` (server-sent
events, each `data:` a whole GenerateContentResponse chunk).

`model_path` is the path after `/v1/projects/{project}/locations/{region}/`, `chat_request` turns a
`/v1/chat/completions` body into a GenerateContentRequest body (camelCase, as the REST API takes it), or raises
`RequestRejected` for what Gemini cannot honour: a field a client relies on is never dropped silently, and the few
harmless ones that are dropped are listed in `DROPPED_FIELDS` with the reason. `chat_response`, `ChatStream` and
`error_response` turn the answers back: a GenerateContentResponse, the SSE stream of one, Google's error envelope.
Shapes follow `google.genai.types` and `openai.types.chat`; the tests check both.

Decisions beyond a field-by-field mapping:
- Gemini honours fields the other providers cannot: `n` (candidateCount; the answer has one choice per candidate,
  streamed too), `seed`, `presence_penalty` and `frequency_penalty` (left out when 0: some models refuse any penalty,
  and 0 is no penalty), `logprobs` and `top_logprobs` (responseLogprobs and logprobs; a candidate's logprobsResult is
  the choice's `logprobs.content`, its chosen tokens with their top alternatives).
- `reasoning_effort` is a `thinkingBudget`, because every Gemini thinking model takes one (Gemini 3 as well, for
  compatibility), while `thinkingLevel` is refused by Gemini 2.5: none 0 (no thinking), minimal 512, low 1024, medium
  8192, high 24576, the smallest and largest budgets all 2.5 models take. `xhigh` and `max` are more than that and are
  rejected; a model that cannot stop thinking (2.5 Pro, Gemini 3) refuses `none` itself, and error_response passes
  that on. The thoughts are asked for (`includeThoughts`) and come back as `reasoning_content`.
- Gemini names no tool call. A call's id is made of the answer's responseId, the choice and the call's position
  (`call_<responseId>_<choice>_<n>`), and a tool message's functionResponse takes its name from the earlier call with
  that id (an unknown id is rejected: Gemini needs the name).
- Thought signatures: Gemini 3 refuses a conversation whose function calls lost theirs. A call's signature goes to the
  client as `extra_content.google.thought_signature` of the tool call (the field of Google's own OpenAI-compatible
  API), and comes back from it into the functionCall part. When a client keeps none, the first call of the turn gets
  the placeholder Google documents for histories without signatures (`skip_thought_signature_validator`). Signatures
  on text parts are dropped: Gemini does not require them back.
- `parallel_tool_calls: false` with tools is rejected: Gemini has no such switch, and the model may call several.
- Images: `data:` URIs are inlineData; http(s) URLs are fileData, the type told by the path's extension (Gemini must
  be told it). A `gs://` URL is rejected unless the caller allows it (`gcs_uris`): Vertex reads it with the gateway's
  own service account, not the client's, so any client could have the model read the operator's objects. `detail` is
  dropped: Gemini sizes images itself.
- A prompt Gemini blocks (promptFeedback.blockReason, no candidates) is one empty choice with `content_filter`.
- usageMetadata.trafficType tells the capacity that served the answer: OpenAI's `service_tier` (ON_DEMAND default,
  ON_DEMAND_FLEX flex, ON_DEMAND_PRIORITY priority, PROVISIONED_THROUGHPUT scale).
- Recitation, blocklists, SPII, Model Armor and unsupported languages end an answer as `content_filter`; a malformed
  or unexpected function call, and reasons newer than this table, as `stop`.
- A stream ends when the upstream's does: the finish chunk of a choice goes out with its finishReason, the usage
  chunk (from the last usageMetadata) and [DONE] at the end of the stream, once every choice has finished.

Pure: no I/O, no clock, no randomness (the caller gives `created`), and no logging, so request content never reaches
a log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, urlsplit

import orjson

from xds_server.extproc.schemas.common import (
    UNSUPPORTED,
    allowed_tools,
    arguments,
    bad_tool_choice,
    check_fields,
    conversation,
    function_tool,
    no_tools_to_call,
    raw_error_text,
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
from xds_server.extproc.schemas.sse import DONE, error_event, event
from xds_server.extproc.sse import SseParser

# OpenAI fields dropped on purpose: none changes the answer the client gets, and none has a Gemini counterpart.
DROPPED_FIELDS: Final[Mapping[str, str]] = {
    "stream_options": "include_usage is read by the caller (ChatStream's include_usage); include_obfuscation pads "
    "OpenAI's own chunks against a side channel, and these carry no padding field",
    "store": "asks OpenAI to keep the completion for its dashboard and evals; nothing is stored here",
    "metadata": "tags for completions stored with `store`; Vertex's labels tag the account owner's billing instead, "
    "which the client does not read",
    "user": "identifies the end user to OpenAI's abuse monitoring; Gemini has no such field",
    "safety_identifier": "identifies the end user to OpenAI's abuse monitoring; Gemini has no such field",
    "service_tier": "OpenAI's capacity and billing tier; Vertex's is chosen by headers and the project's provisioned "
    "throughput, and the answer is the same",
    "prompt_cache_key": "a routing hint for OpenAI's cache; Gemini caches repeated prefixes by itself",
    "prompt_cache_options": "OpenAI's cache mode and lifetime; caching never changes the answer",
    "prompt_cache_retention": "deprecated OpenAI cache lifetime; caching never changes the answer",
}
# UNSUPPORTED's fields that Gemini honours (the shared table rejects them for the providers that cannot).
_HONOURED: Final = frozenset(("n", "seed", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs"))
# Translated below; `model` and `stream` make the path (model_path), not the body.
_MAPPED: Final = frozenset(
    ("model", "messages", "max_completion_tokens", "max_tokens", "temperature", "top_p", "stop", "stream", "tools")
) | {"tool_choice", "parallel_tool_calls", "response_format", "reasoning_effort"}
_KNOWN: Final = _MAPPED | DROPPED_FIELDS.keys() | UNSUPPORTED.keys()

_IMAGE_TYPES: Final = ("image/png", "image/jpeg", "image/webp", "image/heic", "image/heif")
_DOCUMENT_TYPES: Final = ("application/pdf", "text/plain")
# A fetched file's type, by the extension of its URL's path: Gemini must be told it. Our own table, so that the
# answer does not depend on the host's mime.types.
_TYPE_OF_EXTENSION: Final[Mapping[str, str]] = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "heic": "image/heic",
    "heif": "image/heif",
    "pdf": "application/pdf",
}
_AUDIO_TYPES: Final[Mapping[str, str]] = {"wav": "audio/wav", "mp3": "audio/mp3"}  # OpenAI's input_audio formats
# reasoning_effort -> thinkingBudget (see the module's docstring).
_BUDGETS: Final[Mapping[str, int]] = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576}
SKIP_SIGNATURE: Final = "skip_thought_signature_validator"  # Google's placeholder for a call without its signature
_INT32: Final = 2**31  # Gemini's seed is a 32-bit integer

Parts = list[dict[str, Any]]


def model_path(model: str, stream: bool) -> str:
    """The path suffix after /v1/projects/{project}/locations/{region}/: `publishers/google/models/{model}:
    generateContent`, or `:streamGenerateContent?alt=sse` (server-sent events, not a JSON array). The model is
    percent-encoded as one path segment: a `/` or `:` in it cannot reach another resource or method."""
    if not model:
        raise _fail("model", "must be a non-empty string")
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"publishers/google/models/{quote(model, safe='')}:{method}"


# ---- request: OpenAI chat completion -> GenerateContentRequest


def chat_request(body: Mapping[str, Any], *, gcs_uris: bool = False) -> dict[str, Any]:
    """OpenAI /v1/chat/completions request -> GenerateContentRequest body. The model is not in it: it is in the path
    (model_path), as is the choice of stream. `gcs_uris`: whether image URLs may be gs:// objects, which Vertex reads
    with the gateway's credentials (see the module's docstring). Raises RequestRejected naming the field."""
    check_fields({name: value for name, value in body.items() if name not in _HONOURED}, _KNOWN, "Gemini")
    if body.get("messages") is None:
        raise _fail("messages", "required", "missing_required_parameter")
    if body.get("stream") is not None:
        _bool(body["stream"], "stream")

    system, contents = _conversation(body["messages"], gcs_uris)
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}
    request.update(_tool_config(body))
    generation = _generation_config(body)
    if generation:
        request["generationConfig"] = generation
    return request


def _generation_config(body: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if body.get("temperature") is not None:
        temperature = _number(body["temperature"], "temperature")
        if temperature > 2:
            raise _fail("temperature", f"must be at most 2, not {temperature}")
        config["temperature"] = temperature
    if body.get("top_p") is not None:
        top_p = _number(body["top_p"], "top_p")
        if top_p > 1:
            raise _fail("top_p", f"must be at most 1, not {top_p}")
        config["topP"] = top_p
    if body.get("n") is not None:
        n = _count_of(body["n"], "n", 1)
        if n > 1:
            config["candidateCount"] = n
    for name in ("max_completion_tokens", "max_tokens"):  # the first one wins: OpenAI deprecated max_tokens for it
        if body.get(name) is not None:
            config["maxOutputTokens"] = _count_of(body[name], name, 1)
            break
    stop = body.get("stop")
    if stop:
        stops = [stop] if isinstance(stop, str) else _array(stop, "stop")
        config["stopSequences"] = [_name(s, f"stop[{k}]") for k, s in enumerate(stops)]
    if body.get("seed") is not None:
        seed = body["seed"]
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise _fail("seed", "must be an integer")
        if not -_INT32 <= seed < _INT32:
            raise _fail("seed", "Gemini's seed is a 32-bit integer", "unsupported_value")
        config["seed"] = seed
    for name, key in (("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty")):
        if body.get(name) is not None:
            penalty = body[name]
            if not isinstance(penalty, int | float) or isinstance(penalty, bool) or not -2 <= penalty <= 2:
                raise _fail(name, "must be a number from -2 to 2")
            if penalty != 0:
                config[key] = penalty
    config.update(_logprobs_config(body))
    config.update(_output_config(body))
    return config


def _logprobs_config(body: Mapping[str, Any]) -> dict[str, Any]:
    logprobs = body.get("logprobs") is not None and _bool(body["logprobs"], "logprobs")
    top = 0 if body.get("top_logprobs") is None else _count_of(body["top_logprobs"], "top_logprobs", 0)
    if top > 20:
        raise _fail("top_logprobs", "must be at most 20")
    if top and not logprobs:
        raise _fail("top_logprobs", "needs logprobs: true")
    if not logprobs:
        return {}
    return {"responseLogprobs": True, "logprobs": top} if top else {"responseLogprobs": True}


def _output_config(body: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if body.get("response_format") is not None:
        response_format = _object(body["response_format"], "response_format")
        kind = response_format.get("type")
        if kind == "json_schema":
            # Gemini's structured output always holds to the schema (OpenAI's `strict`); `name` is only a label.
            json_schema = _object(response_format.get("json_schema"), "response_format.json_schema")
            schema = _object(json_schema.get("schema"), "response_format.json_schema.schema")
            config["responseMimeType"] = "application/json"
            config["responseJsonSchema"] = schema
        elif kind == "json_object":
            config["responseMimeType"] = "application/json"
        elif kind != "text":
            raise _fail("response_format.type", "must be text, json_schema or json_object")
    effort = body.get("reasoning_effort")
    if effort is not None:
        if not isinstance(effort, str) or effort not in _BUDGETS:
            code = "unsupported_value" if effort in ("xhigh", "max") else "invalid_value"
            why = f"Gemini's thinking budgets are for {', '.join(_BUDGETS)}"
            raise _fail("reasoning_effort", why, code)
        thinking: dict[str, Any] = {"thinkingBudget": _BUDGETS[effort]}
        if _BUDGETS[effort]:
            thinking["includeThoughts"] = True
        config["thinkingConfig"] = thinking
    return config


def _conversation(messages: Any, gcs_uris: bool) -> tuple[Parts, Parts]:
    """(system instruction parts, contents): Gemini has one system instruction, no tool role, and calls the
    assistant `model`. Tool results name their function, looked up by call id from the assistant messages so far."""
    names: dict[str, str] = {}  # tool call id -> function name
    return conversation(
        messages,
        "Gemini",
        ("text", "image_url", "input_audio", "file"),
        lambda content, where, kinds: _parts(content, where, kinds, gcs_uris),
        lambda message, where: _assistant(message, where, names),
        lambda message, where: [_tool_result(message, where, names)],
        model_role="model",
        key="parts",
    )


def _parts(content: Any, where: str, kinds: tuple[str, ...], gcs_uris: bool) -> Parts:
    """A message's content (a string or parts of the given kinds) -> Gemini parts. Empty text is left out: Gemini
    rejects an empty text part. A part's prompt_cache_breakpoint is dropped: Gemini caches repeated prefixes itself."""
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: Parts = []
    for j, raw in enumerate(_array(content, f"{where}.content")):
        here = f"{where}.content[{j}]"
        part = _object(raw, here)
        kind = part.get("type")
        if kind not in kinds:
            raise _fail(f"{here}.type", f"must be {' or '.join(kinds)} in this message")
        if kind == "image_url":
            parts.append(_image(part, here, gcs_uris))
        elif kind == "input_audio":
            parts.append(_audio(part, here))
        elif kind == "file":
            parts.append(_file(part, here))
        else:  # text, or an earlier answer's refusal: what the assistant said, kept as said
            field = "refusal" if kind == "refusal" else "text"
            text = _string(part.get(field), f"{here}.{field}")
            if text:
                parts.append({"text": text})
    return parts


def _data_uri(url: str, param: str, types: tuple[str, ...]) -> dict[str, Any]:
    header, comma, data = url[5:].partition(",")
    media_type, *options = header.lower().split(";")
    if not comma or "base64" not in options or not data:
        raise _fail(param, "a data URI must be base64 (data:<media type>;base64,<data>)")
    media_type = "image/jpeg" if media_type == "image/jpg" else media_type  # a common misspelling
    if media_type not in types:
        raise _fail(param, f"Gemini takes {', '.join(types)} here, not {media_type[:64]}", "unsupported_value")
    return {"inlineData": {"mimeType": media_type, "data": data}}


def _image(part: Mapping[str, Any], where: str, gcs_uris: bool) -> dict[str, Any]:
    param = f"{where}.image_url.url"
    url = _string(_object(part.get("image_url"), f"{where}.image_url").get("url"), param)
    if url.startswith("data:"):
        return _data_uri(url, param, (*_IMAGE_TYPES, "application/pdf"))
    scheme = url.partition("://")[0].lower()
    if scheme in ("https", "http") or (scheme == "gs" and gcs_uris):
        extension = urlsplit(url).path.rpartition("/")[2].rpartition(".")[2].lower()
        if extension not in _TYPE_OF_EXTENSION:
            why = f"Gemini must be told the file's type: the URL's path must end in .{', .'.join(_TYPE_OF_EXTENSION)}"
            raise _fail(param, why, "unsupported_value")
        return {"fileData": {"mimeType": _TYPE_OF_EXTENSION[extension], "fileUri": url}}
    if scheme == "gs":
        why = "gs:// objects are not taken: Vertex would read them with the gateway's credentials, not the client's"
        raise _fail(param, why, "unsupported_value")
    raise _fail(param, "must be an http(s) URL or a base64 data URI", "unsupported_value")


def _audio(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    audio = _object(part.get("input_audio"), f"{where}.input_audio")
    audio_format = audio.get("format")
    if not isinstance(audio_format, str) or audio_format not in _AUDIO_TYPES:
        raise _fail(f"{where}.input_audio.format", "must be wav or mp3")
    data = _name(audio.get("data"), f"{where}.input_audio.data")
    return {"inlineData": {"mimeType": _AUDIO_TYPES[audio_format], "data": data}}


def _file(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    file = _object(part.get("file"), f"{where}.file")
    if file.get("file_data") is None:
        why = "only file_data is translated: file_id names a file in OpenAI's own store"
        raise _fail(f"{where}.file.file_data", why, "unsupported_value")
    param = f"{where}.file.file_data"
    data = _string(file["file_data"], param)
    if not data.startswith("data:"):
        raise _fail(param, "must be a base64 data URI (data:application/pdf;base64,...)")
    return _data_uri(data, param, _DOCUMENT_TYPES)


def _assistant(message: Mapping[str, Any], where: str, names: dict[str, str]) -> Parts:
    for name in ("audio", "function_call"):
        if message.get(name) is not None:
            raise _fail(f"{where}.{name}", "has no Gemini counterpart", "unsupported_parameter")
    parts = [] if message.get("content") is None else _parts(message["content"], where, ("text", "refusal"), False)
    if message.get("refusal"):
        parts.append({"text": _string(message["refusal"], f"{where}.refusal")})
    calls: Parts = []
    for k, raw in enumerate(_array(message.get("tool_calls") or [], f"{where}.tool_calls")):
        here = f"{where}.tool_calls[{k}]"
        call = _object(raw, here)
        if call.get("type", "function") != "function":
            raise _fail(f"{here}.type", "only function tool calls translate to Gemini", "unsupported_value")
        function = _object(call.get("function"), f"{here}.function")
        name = _name(function.get("name"), f"{here}.function.name")
        arguments = _arguments(function.get("arguments"), f"{here}.function.arguments")
        names[_name(call.get("id"), f"{here}.id")] = name
        part: dict[str, Any] = {"functionCall": {"name": name, "args": arguments}}
        signature = _signature(call, here)
        if signature:
            part["thoughtSignature"] = signature
        calls.append(part)
    if calls and not any("thoughtSignature" in part for part in calls):
        calls[0]["thoughtSignature"] = SKIP_SIGNATURE
    return parts + calls


def _signature(call: Mapping[str, Any], where: str) -> str | None:
    """The thought signature Gemini gave this call, as the tool call carried it to the client (None if it did not)."""
    extra = call.get("extra_content")
    if extra is None:
        return None
    google = _object(extra, f"{where}.extra_content").get("google")
    if google is None:
        return None
    signature = _object(google, f"{where}.extra_content.google").get("thought_signature")
    return None if signature is None else _name(signature, f"{where}.extra_content.google.thought_signature")


def _arguments(value: Any, param: str) -> dict[str, Any]:
    return arguments(value, param, "Gemini needs the call's arguments as a JSON object")


def _tool_result(message: Mapping[str, Any], where: str, names: Mapping[str, str]) -> dict[str, Any]:
    """A tool message -> a functionResponse part: Gemini matches it to its call by the function's name, which the
    tool message does not say: it is the name of the earlier call with that id."""
    tool_call_id = _name(message.get("tool_call_id"), f"{where}.tool_call_id")
    if tool_call_id not in names:
        why = "names no tool call of an earlier assistant message; Gemini needs the function's name"
        raise _fail(f"{where}.tool_call_id", why)
    text = "".join(part["text"] for part in _parts(message.get("content"), where, ("text",), False))
    return {"functionResponse": {"name": names[tool_call_id], "response": {"output": text}}}


def _tools(raw: Any) -> Parts:
    declarations = []
    for k, item in enumerate(_array(raw, "tools")):
        function = function_tool(item, k, "Gemini")
        declaration: dict[str, Any] = {"name": _name(function.get("name"), f"tools[{k}].function.name")}
        if function.get("description") is not None:
            description = _string(function["description"], f"tools[{k}].function.description")
            if description:
                declaration["description"] = description
        # Without parameters the function takes none, which is what Gemini reads from a declaration without them.
        # `strict` is dropped: Gemini has no such flag, and checks the arguments against the schema all the same.
        if function.get("parameters") is not None:
            parameters = _object(function["parameters"], f"tools[{k}].function.parameters")
            declaration["parametersJsonSchema"] = parameters
        if function.get("strict") is not None:
            _bool(function["strict"], f"tools[{k}].function.strict")
        declarations.append(declaration)
    return declarations


def _tool_config(body: Mapping[str, Any]) -> dict[str, Any]:
    """`tools` and `toolConfig` of the request (empty: none to send)."""
    declarations = _tools(body.get("tools") or [])
    declared = {declaration["name"] for declaration in declarations}
    value = body.get("tool_choice")
    config: dict[str, Any] | None = None
    if value in ("auto", "none", "required"):
        config = {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[value]}
    elif isinstance(value, Mapping) and value.get("type") == "function":
        name = _function_name(value, "tool_choice")
        if declarations and name not in declared:
            raise _fail("tool_choice.function.name", "names a function that is not in tools")
        config = {"mode": "ANY", "allowedFunctionNames": [name]}
    elif isinstance(value, Mapping) and value.get("type") == "allowed_tools":
        # Send only the allowed subset of the tools, which the model sees the same way.
        names, required = allowed_tools(value, declared)
        declarations = [declaration for declaration in declarations if declaration["name"] in names]
        config = {"mode": "ANY" if required else "AUTO"}
    elif value is not None:
        raise bad_tool_choice()
    if not declarations:
        # Without tools only "none" and "auto" mean anything, and they mean what Gemini does then.
        if config is not None and config["mode"] == "ANY":
            raise no_tools_to_call()
        return {}
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not _bool(parallel, "parallel_tool_calls") and (config or {}).get("mode") != "NONE":
        why = "Gemini has no switch for parallel tool calls (the model may call several at once); only true is taken"
        raise _fail("parallel_tool_calls", why, "unsupported_value")
    request: dict[str, Any] = {"tools": [{"functionDeclarations": declarations}]}
    if config is not None:
        request["toolConfig"] = {"functionCallingConfig": config}
    return request


def _count_of(value: Any, param: str, least: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise _fail(param, f"must be an integer of at least {least}")
    return value


# ---- answers: GenerateContentResponse, stream and errors -> OpenAI

_FINISH_REASONS: Final[Mapping[str, str]] = {
    "STOP": "stop",  # tool_calls when the candidate called a function
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",  # stopped for reciting a source: omitted content, in OpenAI's words
    "LANGUAGE": "content_filter",  # a language Gemini does not answer in: stopped by a filter, not complete
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",  # sensitive personal information
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
    "MODEL_ARMOR": "content_filter",  # the project's Model Armor template blocked the answer
    # The answer ended as it is; OpenAI has no reason for a bad one, nor for these:
    "MALFORMED_FUNCTION_CALL": "stop",
    "UNEXPECTED_TOOL_CALL": "stop",
    "TOO_MANY_TOOL_CALLS": "stop",
    "MISSING_THOUGHT_SIGNATURE": "stop",
    "MALFORMED_RESPONSE": "stop",
    "FINISH_REASON_UNSPECIFIED": "stop",
    "OTHER": "stop",
    "IMAGE_OTHER": "stop",
    "NO_IMAGE": "stop",
    "ESCALATION": "stop",
    "PUP_LIMITED_DISABLED": "stop",
    "CONTINUATION": "stop",
}


# usageMetadata.trafficType -> OpenAI's service_tier: the capacity that served the answer.
_SERVICE_TIERS: Final[Mapping[str, str]] = {
    "ON_DEMAND": "default",
    "ON_DEMAND_PRIORITY": "priority",
    "ON_DEMAND_FLEX": "flex",
    "PROVISIONED_THROUGHPUT": "scale",  # capacity reserved ahead, on both sides
}


def _finish_reason(reason: Any, called: bool) -> str:
    # A reason newer than this table still ends an answer: never fail on it.
    finish = _FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"
    return "tool_calls" if reason == "STOP" and called else finish


def _call_id(response_id: str, choice: int, call: int) -> str:
    """A tool call's id, the same for the same answer (the module is pure): Gemini names no call."""
    return f"call_{response_id}_{choice}_{call}" if response_id else f"call_{choice}_{call}"


@dataclass
class _Content:
    """What a candidate's parts say, in OpenAI's terms."""

    text: str | None = None
    reasoning: str | None = None
    tool_calls: Parts | None = None


def _content(candidate: Mapping[str, Any], response_id: str, choice: int, calls_before: int) -> _Content:
    texts: list[str] = []
    thoughts: list[str] = []
    tool_calls: Parts = []
    for raw in _list(_mapping(candidate.get("content")).get("parts")):
        part = _mapping(raw)
        if "functionCall" in part:
            function_call = _mapping(part["functionCall"])
            call: dict[str, Any] = {
                "id": _call_id(response_id, choice, calls_before + len(tool_calls)),
                "type": "function",
                "function": {
                    "name": str(function_call.get("name", "")),
                    "arguments": _compact(function_call.get("args")),
                },
            }
            if isinstance(part.get("thoughtSignature"), str) and part["thoughtSignature"]:
                call["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
            tool_calls.append(call)
        elif isinstance(part.get("text"), str):
            (thoughts if part.get("thought") is True else texts).append(part["text"])
        # Images, code and its results cannot come: the request asks for none of them.
    # Parts are joined without separators, as a client of the stream joins their deltas.
    return _Content("".join(texts) if texts else None, "".join(thoughts) if thoughts else None, tool_calls or None)


def _logprobs(candidate: Mapping[str, Any]) -> dict[str, Any] | None:
    """A candidate's logprobsResult -> OpenAI's choice logprobs: each chosen token, with the top alternatives at its
    step (topCandidates comes only when top_logprobs asked for some)."""
    if not isinstance(candidate.get("logprobsResult"), Mapping):
        return None
    result = candidate["logprobsResult"]
    tops = _list(result.get("topCandidates"))
    content = []
    for step, chosen in enumerate(_list(result.get("chosenCandidates"))):
        alternatives = _list(_mapping(tops[step]).get("candidates")) if step < len(tops) else []
        entry = _token_logprob(_mapping(chosen))
        entry["top_logprobs"] = [_token_logprob(_mapping(alternative)) for alternative in alternatives]
        content.append(entry)
    return {"content": content, "refusal": None}


def _token_logprob(candidate: Mapping[str, Any]) -> dict[str, Any]:
    token = candidate["token"] if isinstance(candidate.get("token"), str) else ""
    logprob = candidate.get("logProbability")
    logprob = logprob if isinstance(logprob, int | float) and not isinstance(logprob, bool) else 0.0
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def _candidates(response: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    """(choice index, candidate) of a response or chunk. A candidate's index is left out when 0 (proto3's JSON)."""
    out = []
    for raw in _list(response.get("candidates")):
        candidate = _mapping(raw)
        index = candidate.get("index", 0)
        out.append((index if isinstance(index, int) and not isinstance(index, bool) and index >= 0 else 0, candidate))
    return out


def _blocked(response: Mapping[str, Any]) -> bool:
    return bool(_mapping(response.get("promptFeedback")).get("blockReason"))


def chat_response(response: Mapping[str, Any], model: str, created: int) -> dict[str, Any]:
    """GenerateContentResponse (non-streamed 200 body) -> OpenAI chat.completion, one choice per candidate. `model`:
    the model the client asked for; `created`: unix seconds (given by the caller)."""
    response_id = str(response.get("responseId", ""))
    choices = []
    for index, candidate in _candidates(response):
        content = _content(candidate, response_id, index, 0)
        reply: dict[str, Any] = {"role": "assistant", "content": content.text, "refusal": None}
        if content.reasoning is not None:
            reply["reasoning_content"] = content.reasoning  # vLLM's and DeepSeek's field for reasoning text
        if content.tool_calls:
            reply["tool_calls"] = content.tool_calls
        finish = _finish_reason(candidate.get("finishReason"), bool(content.tool_calls))
        choices.append({"index": index, "message": reply, "logprobs": _logprobs(candidate), "finish_reason": finish})
    if not choices:
        # The prompt was blocked (promptFeedback says why): an answer with nothing in it, filtered.
        finish = "content_filter" if _blocked(response) else "stop"
        reply = {"role": "assistant", "content": None, "refusal": None}
        choices.append({"index": 0, "message": reply, "logprobs": None, "finish_reason": finish})
    usage = _mapping(response.get("usageMetadata"))
    completion: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": sorted(choices, key=lambda choice: int(choice["index"])),
        "usage": _usage(usage),
    }
    tier = usage.get("trafficType")
    if isinstance(tier, str) and tier in _SERVICE_TIERS:
        completion["service_tier"] = _SERVICE_TIERS[tier]
    return completion


def _usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Thinking is output in OpenAI's count (reasoning_tokens are part of completion_tokens), not in Gemini's
    candidatesTokenCount. promptTokenCount includes the cached tokens, as OpenAI's prompt_tokens does; the prompts of
    Gemini's own tools count as prompt too, so that the parts add up to totalTokenCount."""
    prompt = _count(usage.get("promptTokenCount")) + _count(usage.get("toolUsePromptTokenCount"))
    thoughts = _count(usage.get("thoughtsTokenCount"))
    completion = _count(usage.get("candidatesTokenCount")) + thoughts
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": _count(usage.get("totalTokenCount")) or prompt + completion,
        "prompt_tokens_details": {"cached_tokens": _count(usage.get("cachedContentTokenCount"))},
    }
    if "thoughtsTokenCount" in usage:
        out["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    return out


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# Google's canonical error status (google.rpc.Code) -> (OpenAI type, code). OpenAI's SDKs pick their exception by the
# HTTP status, which the caller keeps; clients that look further branch on `code`.
_ERRORS: Final[Mapping[str, tuple[str, str]]] = {
    "INVALID_ARGUMENT": ("invalid_request_error", "invalid_request_error"),
    "FAILED_PRECONDITION": ("invalid_request_error", "failed_precondition"),  # e.g. billing off, region not served
    "OUT_OF_RANGE": ("invalid_request_error", "invalid_request_error"),
    "UNAUTHENTICATED": ("authentication_error", "invalid_api_key"),  # the gateway's token: the client's key, to it
    "PERMISSION_DENIED": ("permission_error", "permission_denied"),
    "NOT_FOUND": ("invalid_request_error", "not_found"),  # model_not_found when about the model
    "ALREADY_EXISTS": ("invalid_request_error", "conflict"),
    "ABORTED": ("invalid_request_error", "aborted"),  # a conflict (409), which a retry may clear
    "RESOURCE_EXHAUSTED": ("rate_limit_error", "rate_limit_exceeded"),  # Vertex's quota and shared capacity
    "CANCELLED": ("server_error", "cancelled"),
    "DEADLINE_EXCEEDED": ("server_error", "timeout"),
    "UNIMPLEMENTED": ("invalid_request_error", "unsupported"),
    "INTERNAL": ("server_error", "internal_error"),
    "UNKNOWN": ("server_error", "internal_error"),
    "DATA_LOSS": ("server_error", "internal_error"),
    "UNAVAILABLE": ("server_error", "service_unavailable"),
}
# The status an answer without a known one stands for, by HTTP status (google.rpc.Code's HTTP mapping).
_STATUS_OF_HTTP: Final[Mapping[int, str]] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_response(status: int, body: bytes) -> bytes:
    """A Google error answer (any status >= 400; JSON `{"error":{"code","message","status","details"}}`, the same in
    a one-element array as streamGenerateContent without alt=sse answers, or not JSON at all) -> the OpenAI error
    envelope bytes `{"error":{"message","type","param","code"}}`. `details` (typed google.rpc payloads: ErrorInfo,
    BadRequest, RetryInfo, ...) have no OpenAI field; the message says what they say. The HTTP status itself is kept by
    the caller."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, list) and len(document) == 1:
        document = document[0]
    error = _mapping(_mapping(document).get("error"))
    if isinstance(error.get("message"), str) and error["message"]:
        return orjson.dumps(_envelope(error.get("status"), error["message"], status, told=True))
    # Not Google's envelope (a proxy's HTML page, Envoy's "upstream connect error", ...): a bounded prefix of it.
    return orjson.dumps(_envelope(None, raw_error_text(status, body), status, told=False))


def _envelope(kind: Any, message: str, status: int, told: bool) -> dict[str, Any]:
    """`told`: the message is Google's own (not a proxy's page, which a wrong host answers with a 404)."""
    if not isinstance(kind, str) or kind not in _ERRORS:
        kind = _STATUS_OF_HTTP.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")
    openai_type, code = _ERRORS[kind]
    if kind == "NOT_FOUND" and told and "model" in message.lower():
        code = "model_not_found"  # what OpenAI clients look for when a model name is wrong
    return {"error": {"message": message, "type": openai_type, "param": None, "code": code}}


@dataclass
class _Choice:
    """The stream of one choice (candidate)."""

    started: bool = False  # its role chunk went out
    calls: int = 0  # tool calls so far
    finished: bool = False  # its finish chunk went out


class ChatStream:
    """streamGenerateContent's server-sent events (alt=sse) -> OpenAI chat.completion.chunk SSE stream, fed in
    arbitrary byte pieces.

    Every event is a GenerateContentResponse holding the next parts of each candidate (several with candidateCount);
    a candidate's last chunk carries its finishReason, usageMetadata the counts so far (the last one is the total).
    Gemini sends a function call whole, in one part: it becomes one tool_calls delta with id, name and arguments. An
    error after the 200 comes as an event `{"error": {...}}`. A chunk goes out for each candidate an event carries
    something for, so the client sees text as soon as it comes.
    """

    def __init__(self, model: str, created: int, include_usage: bool) -> None:
        self._model = model
        self._created = created
        self._include_usage = include_usage
        self._events = SseParser()  # keeps a partial line (even a split \r\n or UTF-8 character) between pieces
        self._id: str | None = None  # the first responseId: every chunk carries the same id
        self._choices: dict[int, _Choice] = {}
        self._usage: dict[str, Any] | None = None  # the last usageMetadata, translated
        self._closed = False  # [DONE] or an error event went out: nothing more does

    def feed(self, data: bytes) -> bytes:
        """Some upstream bytes (an event may be split anywhere, even inside a UTF-8 character or between \\r and
        \\n) -> the OpenAI SSE bytes ready so far (b"" if none)."""
        return b"" if self._closed else self._translate(self._events.feed(data))

    def finish(self) -> bytes:
        """The upstream stream ended: whatever is still owed. Once every choice has finished, the usage chunk (if asked
        for and told) and [DONE]; else an OpenAI-style error event and [DONE], so a client never takes a truncated
        answer as complete."""
        if self._closed:
            return b""
        out = self._translate(self._events.finish())  # a last event whose blank line never came still counts
        if self._closed:
            return out
        self._closed = True
        if self._choices and all(choice.finished for choice in self._choices.values()):
            if self._include_usage and self._usage is not None:
                out += event({**self._header(), "choices": [], "usage": self._usage})
            return out + DONE
        why = "the upstream stream ended before the answer was complete"
        return (
            out
            + error_event({"message": why, "type": "server_error", "param": None, "code": "incomplete_stream"})
            + DONE
        )

    def _translate(self, events: list[bytes]) -> bytes:
        out: list[bytes] = []  # joined once: a whole answer may come in one piece
        for data in events:
            if self._closed:
                break
            try:
                document = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue  # nothing to make of it; should a finishReason never come, finish() says so
            out.append(self._event(_mapping(document)))
        return b"".join(out)

    def _event(self, response: Mapping[str, Any]) -> bytes:
        if "error" in response:
            self._closed = True
            error = _mapping(response["error"])
            text = error.get("message")
            text = text if isinstance(text, str) and text else "the upstream reported an error mid-stream"
            code = error.get("code")
            status = code if isinstance(code, int) and not isinstance(code, bool) else 500
            return error_event(_envelope(error.get("status"), text, status, told=True)["error"])
        if self._id is None and isinstance(response.get("responseId"), str):
            self._id = response["responseId"]
        if isinstance(response.get("usageMetadata"), Mapping):
            self._usage = _usage(response["usageMetadata"])
        out: list[bytes] = []
        candidates = _candidates(response)
        if not candidates and _blocked(response) and not self._choices:
            # The prompt was blocked: one choice, with nothing in it, filtered.
            self._choices[0] = _Choice(started=True, finished=True)
            out.append(self._chunk(0, {"role": "assistant", "content": ""}, None))
            out.append(self._chunk(0, {}, "content_filter"))
            return b"".join(out)
        for index, candidate in candidates:
            choice = self._choices.setdefault(index, _Choice())
            if choice.finished:
                continue  # nothing follows a finish reason but counts
            if not choice.started:
                choice.started = True
                out.append(self._chunk(index, {"role": "assistant", "content": ""}, None))
            content = _content(candidate, self._id or "", index, choice.calls)
            delta: dict[str, Any] = {}
            if content.reasoning:
                delta["reasoning_content"] = content.reasoning
            if content.text:
                delta["content"] = content.text
            if content.tool_calls:
                delta["tool_calls"] = [{"index": choice.calls + k, **call} for k, call in enumerate(content.tool_calls)]
                choice.calls += len(content.tool_calls)
            logprobs = _logprobs(candidate)
            if delta or (logprobs and logprobs["content"]):
                out.append(self._chunk(index, delta, None, logprobs))
            if candidate.get("finishReason"):
                choice.finished = True
                out.append(self._chunk(index, {}, _finish_reason(candidate["finishReason"], choice.calls > 0)))
        return b"".join(out)

    def _header(self) -> dict[str, Any]:
        if self._id is None:
            self._id = ""  # no responseId before the first chunk: none for the whole stream, which names one id
        return {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model}

    def _chunk(self, index: int, delta: Mapping[str, Any], finish_reason: str | None, logprobs: Any = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        chunk: dict[str, Any] = {**self._header(), "choices": [choice]}
        if self._include_usage:
            chunk["usage"] = None
        return event(chunk)
