"""`python -m testing.providers.bedrock_sim`: Amazon Bedrock Runtime's Converse API on a loopback address, for tests.

`POST /model/{modelId}/converse` and `POST /model/{modelId}/converse-stream` refuse what AWS refuses, so a signing or
translation bug in the gateway fails the test that sent it:
- SigV4, checked as AWS checks it: botocore's own `SigV4Auth` recomputes the signature over the request as received
  (method, Host header, raw path, query, the headers the Authorization header lists, the body) with the one key the
  simulator knows, for service `bedrock` in its region. Errors are AWS's: 403 with `x-amzn-errortype`
  MissingAuthenticationTokenException (no Authorization header), IncompleteSignatureException (a malformed one),
  UnrecognizedClientException (an unknown access key, a missing or wrong session token), InvalidSignatureException
  (a signature that does not match, a credential scoped to another region or service, a time more than 5 minutes
  off: "Signature expired").
- The body, against botocore's service model: the operation's input shape (modelId from the path), unknown keys
  refused, blobs (base64 in JSON) decoded before their length is checked, lengths, ranges, enums, patterns and
  unions (exactly one member) as the model states them (patterns match whole values, as AWS's do); then the rules
  the model does not state (a conversation that starts with the user and alternates, non-empty contents and texts,
  each toolResult answering a toolUse of the previous assistant message, toolUse only from the assistant, images and
  documents only from the user, unique tool names, a toolChoice naming a given tool). A refusal is 400
  ValidationException whose message names the field (`messages.1.content.0.toolResult.toolUseId`). JSON `null` is
  taken as an absent member.
- The gateway's internal headers (`x-ai-eg-*`, `x-gateway-*`) must not arrive: 400 naming the header.

It answers like Bedrock, deterministically: a `ConverseResponse` (header `x-amzn-requestid`), or its event stream
(`application/vnd.amazon.eventstream`: messageStart, per block contentBlockStart (tool use only, as Bedrock does),
contentBlockDelta..., contentBlockStop, then messageStop and metadata; each payload carries Bedrock's `p` padding
key; each frame is written in two pieces so frames split across reads). The answer is
- an echo, "You said: <last user text>", cut at a stop sequence or at `maxTokens` words;
- one toolUse block when toolChoice is `any` or `tool`, or the last user text says "call <tool name>";
- a text naming the results when the last message carries toolResult blocks;
- a reasoningContent block first when `additionalModelRequestFields.thinking.type` is "enabled";
- usage in words; with a cachePoint in the request, cache reads (the system prompt says "cache") or writes.

Models that choose a failure, once the request passed the checks: `throttled` (429 ThrottlingException) and, when
streamed (otherwise they answer as usual), `stream-exception` (some events, then a modelStreamErrorException frame)
and `stream-cut` (the connection drops before messageStop). Any other model id (an ARN's resource part) not starting
with `anthropic.`, `amazon.`, `meta.`, `mistral.`, `us.` or `eu.` is 404 ResourceNotFoundException.

Claude through InvokeModel: `POST /model/{modelId}/invoke` and `/invoke-with-response-stream`, for model ids holding
`anthropic.` (any other is a 400 ValidationException, the answer for a body its model cannot read). Signed as above;
the body is Anthropic's Messages request as Bedrock takes it: `anthropic_version` "bedrock-2023-05-31" (required), an
optional `anthropic_beta` list, no `model` and no `stream` (Bedrock refuses both as extraneous keys: the model and the
choice of stream are in the path); the rest must pass testing/providers/anthropic_contract.py, as on api.anthropic.com
(its refusal's message becomes the ValidationException's). The answer is the Anthropic simulator's
(testing/providers/anthropic_sim.py) for the model the id names (`claude-3-5-sonnet-20241022` for
`anthropic.claude-3-5-sonnet-20241022-v2:0`), with Bedrock's `msg_bdrk_` ids: the Message JSON (and Bedrock's
`x-amzn-bedrock-*-token-count` headers), or an event stream of `chunk` events whose payload is `{"bytes": <base64 of
one Anthropic stream event>, "p": <padding>}`, pings left out, `amazon-bedrock-invocationMetrics` in message_stop.
The failures are chosen by `anthropic.throttled`, `anthropic.stream-exception` and `anthropic.stream-cut`, as above.

`GET /debug/requests` lists what arrived (the signature and the session token redacted); `DELETE` forgets it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import re
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any
from urllib.parse import unquote

import botocore.session  # type: ignore[import-untyped]
import structlog
from aiohttp import web
from anthropic.types import Message
from botocore.auth import SigV4Auth  # type: ignore[import-untyped]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.credentials import Credentials  # type: ignore[import-untyped]
from multidict import CIMultiDictProxy

from testing.providers import anthropic_contract, anthropic_sim, common
from testing.providers.common import (
    REDACTED,
    Json,
    Recorder,
    arg_parser,
    sample_value,
    send_stream,
    serve_app,
    tool_named_in,
    words,
)
from xds_server.extproc.schemas.eventstream import encode

DEFAULT_PORT = 8092
SERVICE = "bedrock"  # the service model's signingName; the host says bedrock-runtime
ALGORITHM = "AWS4-HMAC-SHA256"
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
CLOCK_SKEW = timedelta(minutes=5)
MODEL_PREFIXES = ("anthropic.", "amazon.", "meta.", "mistral.", "us.", "eu.")
OPERATIONS = {"converse": "Converse", "converse-stream": "ConverseStream"}
INTERNAL_HEADER_PREFIXES = ("x-ai-eg-", "x-gateway-")
USER_ONLY_BLOCKS = ("image", "document", "video", "audio", "toolResult")
DEFAULT_MAX_TOKENS = 4096
WORDS_PER_TEXT_DELTA = 2
JSON_DELTAS = 3
PADDING = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key "
    "and signing method. Consult the service documentation for details."
)
INVALID_TOKEN = "The security token included in the request is invalid."
INVOKE_OPERATIONS = {"invoke": "InvokeModel", "invoke-with-response-stream": "InvokeModelWithResponseStream"}
BEDROCK_ANTHROPIC_VERSION = "bedrock-2023-05-31"
CLAUDE_HOOKS = ("throttled", "stream-exception", "stream-cut")  # after `anthropic.`

log = structlog.get_logger("bedrock-sim")


@dataclass
class Settings:
    access_key_id: str
    secret_access_key: str
    session_token: str | None
    region: str
    gap_seconds: float = 0.0
    requests: list[Json] = field(default_factory=list)


class AwsError(Exception):
    """An answer in AWS's rest-json error form: the type in `x-amzn-errortype`, `{"message": ...}` as the body."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message

    def response(self) -> web.Response:
        headers = {"x-amzn-errortype": self.error_type, "x-amzn-requestid": str(uuid.uuid4())}
        return web.json_response({"message": self.message}, status=self.status, headers=headers)


def invalid(message: str) -> AwsError:
    return AwsError(400, "ValidationException", message)


def constraint(path: str, rule: str, value: Any = None) -> AwsError:
    """AWS's wording for a value the model refuses; the value is shown only when it is a number."""
    shown = f"Value '{value}' " if isinstance(value, int | float) and not isinstance(value, bool) else "Value "
    return invalid(f"1 validation error detected: {shown}at '{path}' failed to satisfy constraint: {rule}")


# SigV4, as AWS checks it: botocore's signer recomputes the signature of the request as received.


def verify_signature(
    settings: Settings, method: str, raw_target: str, headers: CIMultiDictProxy[str], body: bytes, now: datetime
) -> None:
    """Raises the AwsError AWS would answer with for a request received at `now` (`raw_target`: path and query as
    they arrived)."""
    authorization = headers.get("authorization")
    if authorization is None:
        raise AwsError(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
    algorithm, _, rest = authorization.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise AwsError(403, "IncompleteSignatureException", f"Unsupported authorization type: {algorithm[:40]!r}")
    parts = {key.strip(): value.strip() for key, _, value in (item.partition("=") for item in rest.split(","))}
    for name in ("Credential", "SignedHeaders", "Signature"):
        if not parts.get(name):
            raise AwsError(403, "IncompleteSignatureException", f"Authorization header requires '{name}' parameter.")
    scope = parts["Credential"].split("/")
    if len(scope) != 5:
        raise AwsError(
            403,
            "IncompleteSignatureException",
            "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got "
            f"'{parts['Credential']}'",
        )
    key_id, scope_date, region, service, terminator = scope
    if terminator != "aws4_request":
        raise AwsError(
            403,
            "InvalidSignatureException",
            f"Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'.",
        )
    if service != SERVICE:
        raise AwsError(
            403, "InvalidSignatureException", f"Credential should be scoped to correct service: '{SERVICE}'."
        )
    if region != settings.region:
        raise AwsError(
            403, "InvalidSignatureException", f"Credential should be scoped to a valid region, not '{region}'."
        )
    if key_id != settings.access_key_id:
        raise AwsError(403, "UnrecognizedClientException", INVALID_TOKEN)
    if headers.get("x-amz-security-token") != settings.session_token:
        raise AwsError(403, "UnrecognizedClientException", INVALID_TOKEN)
    signed = parts["SignedHeaders"].split(";")
    if "host" not in signed:
        raise AwsError(
            403,
            "IncompleteSignatureException",
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        )
    stamp = headers.get("x-amz-date")
    if stamp is None or "x-amz-date" not in signed:
        raise AwsError(
            403,
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header, signed.",
        )
    try:
        when = datetime.strptime(stamp, TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise AwsError(
            403, "IncompleteSignatureException", f"X-Amz-Date: '{stamp}' is not YYYYMMDD'T'HHMMSS'Z'"
        ) from None
    if scope_date != stamp[:8]:
        raise AwsError(
            403,
            "InvalidSignatureException",
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{scope_date}' != '{stamp[:8]}', from '{stamp}'.",
        )
    if when < now - CLOCK_SKEW:
        earliest = (now - CLOCK_SKEW).strftime(TIMESTAMP_FORMAT)
        raise AwsError(
            403,
            "InvalidSignatureException",
            f"Signature expired: {stamp} is now earlier than {earliest} ({now.strftime(TIMESTAMP_FORMAT)} - 5 min.)",
        )
    if when > now + CLOCK_SKEW:
        latest = (now + CLOCK_SKEW).strftime(TIMESTAMP_FORMAT)
        raise AwsError(
            403,
            "InvalidSignatureException",
            f"Signature not yet current: {stamp} is still later than {latest} ({now.strftime(TIMESTAMP_FORMAT)} "
            "+ 5 min.)",
        )
    claimed_hash = headers.get("x-amz-content-sha256")
    if claimed_hash is not None and claimed_hash != hashlib.sha256(body).hexdigest():
        raise AwsError(
            403,
            "InvalidSignatureException",
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        )
    expected = botocore_signature(settings, method, raw_target, signed, headers, body, stamp)
    if expected is None or not hmac.compare_digest(expected.encode(), parts["Signature"].encode()):
        raise AwsError(403, "InvalidSignatureException", MISMATCH)


def botocore_signature(
    settings: Settings,
    method: str,
    raw_target: str,
    signed: list[str],
    headers: CIMultiDictProxy[str],
    body: bytes,
    stamp: str,
) -> str | None:
    """What botocore signs for the request as received (None when a signed header did not arrive). The query is
    given as the parameters it decodes to, which botocore encodes canonically, as AWS does with what it receives."""
    path, _, query = raw_target.partition("?")
    request = AWSRequest(method=method, url=f"https://{headers.get('host', '')}{path}", data=body)
    request.params = [tuple(unquote(part) for part in item.partition("=")[::2]) for item in query.split("&") if query]
    for name in signed:
        values = headers.getall(name, [])
        if not values:
            return None
        for value in values:
            request.headers[name] = value  # each assignment adds a value: repeated headers are signed joined by ','
    request.context["timestamp"] = stamp
    auth = SigV4Auth(
        Credentials(settings.access_key_id, settings.secret_access_key, settings.session_token),
        SERVICE,
        settings.region,
    )
    if auth.signed_headers(auth.headers_to_sign(request)) != ";".join(signed):
        return None  # a header botocore never signs (user-agent, expect...) was listed, or the list is not sorted
    canonical = auth.canonical_request(request)
    signature: str = auth.signature(auth.string_to_sign(request, canonical), request)
    return signature


def redacted_authorization(value: str) -> str:
    head, found, _ = value.partition("Signature=")
    return f"{head}Signature={REDACTED}" if found else REDACTED


# The body, against botocore's service model.


@cache
def operation_model(operation: str) -> Any:
    return botocore.session.get_session().get_service_model("bedrock-runtime").operation_model(operation)


@cache
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def check_shape(value: Any, shape: Any, path: str) -> Any:
    """`value` (decoded JSON) without its null members, once it has `shape`; raises the ValidationException naming
    the first field that does not."""
    kind = shape.type_name
    meta = shape.metadata
    if kind == "structure" and shape.is_document_type:
        return value  # any JSON value, nulls included
    if kind == "structure":
        if not isinstance(value, dict):
            raise constraint(path, f"Member must be an object ({shape.name})")
        members = {name: member for name, member in shape.members.items() if "location" not in member.serialization}
        for key in value:
            if key not in members:
                where = f"{path}.{key}" if path else key
                raise constraint(where, f"extraneous key [{key}] is not permitted (not a member of {shape.name})")
        present = [name for name, member in members.items() if value.get(name) is not None]
        for name in meta.get("required", []):
            if name in members and name not in present:
                raise constraint(f"{path}.{name}" if path else name, "Member must not be null")
        if shape.is_tagged_union and len(present) != 1:
            names = ", ".join(members)
            raise constraint(path, f"Member must have exactly one of [{names}] set, found {len(present)}")
        return {name: check_shape(value[name], members[name], f"{path}.{name}" if path else name) for name in present}
    if kind == "list":
        if not isinstance(value, list):
            raise constraint(path, "Member must be a list")
        check_length(len(value), meta, path)
        if None in value:
            raise constraint(f"{path}.{value.index(None)}", "Member must not be null")
        return [check_shape(item, shape.member, f"{path}.{index}") for index, item in enumerate(value)]
    if kind == "map":
        if not isinstance(value, dict):
            raise constraint(path, "Member must be a map")
        check_length(len(value), meta, path)
        return {
            check_shape(key, shape.key, f"{path}.{key}"): check_shape(item, shape.value, f"{path}.{key}")
            for key, item in value.items()
        }
    if kind == "string":
        if not isinstance(value, str):
            raise constraint(path, "Member must be a string")
        check_length(len(value), meta, path)
        if shape.enum and value not in shape.enum:
            raise constraint(path, f"Member must satisfy enum value set: [{', '.join(shape.enum)}]")
        if "pattern" in meta and not _pattern(meta["pattern"]).fullmatch(value):
            raise constraint(path, f"Member must satisfy regular expression pattern: {meta['pattern']}")
        return value
    if kind == "blob":
        try:
            decoded = base64.b64decode(value, validate=True) if isinstance(value, str) else None
        except (binascii.Error, ValueError):
            decoded = None
        if decoded is None:
            raise constraint(path, "Member must be a base64-encoded blob")
        check_length(len(decoded), meta, path)
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise constraint(path, "Member must be a boolean")
        return value
    if kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise constraint(path, "Member must be an integer")
    elif kind in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise constraint(path, "Member must be a number")
    elif kind == "timestamp":
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise constraint(path, "Member must be a timestamp")
        return value
    else:
        raise constraint(path, f"Member has a type the simulator does not know: {kind}")
    if "min" in meta and value < meta["min"]:
        raise constraint(path, f"Member must have value greater than or equal to {meta['min']}", value)
    if "max" in meta and value > meta["max"]:
        raise constraint(path, f"Member must have value less than or equal to {meta['max']}", value)
    return value


def check_length(length: int, meta: Mapping[str, Any], path: str) -> None:
    if "min" in meta and length < meta["min"]:
        raise constraint(path, f"Member must have length greater than or equal to {meta['min']}")
    if "max" in meta and length > meta["max"]:
        raise constraint(path, f"Member must have length less than or equal to {meta['max']}")


def parse_body(raw: bytes, model_id: str, operation: str) -> Json:
    """The request body (without null members) once it passed the operation's input shape and the value rules;
    AwsError(400) otherwise."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise invalid(f"Malformed input request: the body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise invalid("Malformed input request: the body must be a JSON object")
    shape = operation_model(operation).input_shape
    check_shape(model_id, shape.members["modelId"], "modelId")
    checked: Json = check_shape(body, shape, "")
    check_rules(checked)
    return checked


def check_rules(body: Json) -> None:
    """The value rules the service model does not state; `body` already has the input shape."""
    messages: list[Json] = body.get("messages") or []
    if not messages:
        raise invalid(
            "A conversation must start with a user message. Try again with a conversation that starts "
            "with a user message."
        )
    pending: list[str] = []  # toolUse ids of the previous assistant message
    for index, message in enumerate(messages):
        role = message["role"]
        if role not in ("user", "assistant"):
            raise invalid(f"messages.{index}.role: the role of a message must be user or assistant, not {role}")
        if index == 0 and role != "user":
            raise invalid(
                "A conversation must start with a user message. Try again with a conversation that starts "
                "with a user message."
            )
        if index and role == messages[index - 1]["role"]:
            raise invalid(
                f"messages.{index}.role: A conversation must alternate between user and assistant roles. "
                "Make sure the conversation alternates between user and assistant roles and try again."
            )
        content: list[Json] = message["content"]
        if not content:
            raise invalid(
                f"The content field in the Message object at messages.{index} is empty. Add a ContentBlock "
                "object to the content field and try again."
            )
        answered: list[str] = []
        for number, block in enumerate(content):
            where = f"messages.{index}.content.{number}"
            if "text" in block and not block["text"].strip():
                raise invalid(
                    f"The text field in the ContentBlock object at {where} is blank. Add text to the text "
                    "field, and try again."
                )
            if role == "assistant" and (kind := next((k for k in USER_ONLY_BLOCKS if k in block), None)):
                raise invalid(f"{where}.{kind}: only a user message may carry {kind} blocks")
            if role == "user" and "toolUse" in block:
                raise invalid(f"{where}.toolUse: only an assistant message may carry toolUse blocks")
            if "toolResult" in block:
                tool_use_id = block["toolResult"]["toolUseId"]
                if tool_use_id not in pending:
                    raise invalid(
                        f"{where}.toolResult.toolUseId: {tool_use_id} answers no toolUse block of the "
                        "previous assistant message"
                    )
                answered.append(tool_use_id)
        if pending and (missing := [tool_id for tool_id in pending if tool_id not in answered]):
            raise invalid(
                f"Expected toolResult blocks at messages.{index}.content for the following Ids: {', '.join(missing)}"
            )
        pending = [block["toolUse"]["toolUseId"] for block in content if "toolUse" in block]
    check_tools(body)


def check_tools(body: Json) -> None:
    tool_config: Json = body.get("toolConfig") or {}
    names = [tool["toolSpec"]["name"] for tool in tool_config.get("tools", []) if "toolSpec" in tool]
    if len(set(names)) < len(names):
        raise invalid("toolConfig.tools: The tool names must be unique.")
    choice: Json = tool_config.get("toolChoice") or {}
    if "tool" in choice and choice["tool"]["name"] not in names:
        raise invalid(f"toolConfig.toolChoice.tool.name: {choice['tool']['name']} is not the name of a given tool")
    blocks = [block for message in body["messages"] for block in message["content"]]
    if not tool_config and any("toolUse" in block or "toolResult" in block for block in blocks):
        raise invalid(
            "toolConfig: The toolConfig field must be defined when using toolUse and toolResult content blocks."
        )


# The answer.


def pieces(text: str, size: int) -> list[str]:
    """`text` in pieces of `size` words, spaces kept, so that the pieces add up to the text."""
    tokens = re.findall(r"\s*\S+\s*", text)
    return ["".join(tokens[i : i + size]) for i in range(0, len(tokens), size)] or [text]


def block_texts(blocks: list[Json]) -> list[str]:
    """The texts a model reads in content blocks: text blocks and tool results' texts and JSON."""
    texts: list[str] = []
    for block in blocks:
        if "text" in block:
            texts.append(block["text"])
        elif "json" in block:
            texts.append(json.dumps(block["json"], sort_keys=True))
        elif "toolResult" in block:
            texts.extend(block_texts(block["toolResult"]["content"]))
    return texts


def last_user_text(messages: list[Json]) -> str:
    user = next(message for message in reversed(messages) if message["role"] == "user")
    return " ".join(block["text"] for block in user["content"] if "text" in block)


def tool_results(message: Json) -> list[str]:
    if message["role"] != "user":
        return []
    return [" ".join(block_texts(b["toolResult"]["content"])) for b in message["content"] if "toolResult" in b]


def chosen_tool(body: Json) -> Json | None:
    tool_config: Json = body.get("toolConfig") or {}
    tools: list[Json] = [tool["toolSpec"] for tool in tool_config.get("tools", []) if "toolSpec" in tool]
    choice: Json = tool_config.get("toolChoice") or {"auto": {}}
    if not tools:
        return None
    if "tool" in choice:
        return next((tool for tool in tools if tool["name"] == choice["tool"]["name"]), None)
    if "any" in choice:
        return tools[0]
    if tool_results(body["messages"][-1]):
        return None
    return tool_named_in(tools, last_user_text(body["messages"]))


def system_text(body: Json) -> str:
    return " ".join(block["text"] for block in body.get("system", []) if "text" in block)


def reply_text(body: Json) -> tuple[str, str, str | None]:
    """(text, stopReason, the stop sequence met) of a text answer."""
    results = tool_results(body["messages"][-1])
    if results:
        text = "The tool returned: " + "; ".join(results)
    else:
        text = "You said: " + " ".join(words(last_user_text(body["messages"])))
    inference: Json = body.get("inferenceConfig") or {}
    stop_reason, stop_sequence = "end_turn", None
    found = sorted((text.find(stop), stop) for stop in inference.get("stopSequences", []) if stop and stop in text)
    if found:
        position, stop_sequence = found[0]
        text, stop_reason = text[:position], "stop_sequence"
    max_tokens = inference.get("maxTokens", DEFAULT_MAX_TOKENS)
    if len(words(text)) > max_tokens:
        text, stop_reason, stop_sequence = " ".join(words(text)[:max_tokens]), "max_tokens", None
    return text, stop_reason, stop_sequence


def has_cache_point(body: Json) -> bool:
    blocks = [*body.get("system", []), *(body.get("toolConfig") or {}).get("tools", [])]
    blocks += [block for message in body["messages"] for block in message["content"]]
    return any("cachePoint" in block for block in blocks)


def answer(body: Json, model_id: str) -> Json:
    """The ConverseResponse, checked against the service model's output shape."""
    digest = hashlib.sha256(json.dumps([model_id, body], sort_keys=True).encode()).hexdigest()
    content: list[Json] = []
    thinking = (body.get("additionalModelRequestFields") or {}).get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        thought = f"The user wrote {len(words(last_user_text(body['messages'])))} words. A short answer will do."
        content.append({"reasoningContent": {"reasoningText": {"text": thought, "signature": "sig" + digest[:40]}}})
    additional: Json = {}
    tool = chosen_tool(body)
    if tool is not None:
        tool_input = sample_value((tool["inputSchema"].get("json") or {}) | {"type": "object"})
        content.append({"toolUse": {"toolUseId": "tooluse_" + digest[:22], "name": tool["name"], "input": tool_input}})
        stop_reason = "tool_use"
    else:
        text, stop_reason, stop_sequence = reply_text(body)
        content.append({"text": text})
        if "/stop_sequence" in body.get("additionalModelResponseFieldPaths", []):
            additional["stop_sequence"] = stop_sequence
    system = system_text(body)
    prompt = [system, *(text for message in body["messages"] for text in block_texts(message["content"]))]
    said = [
        json.dumps(b["toolUse"]["input"])
        if "toolUse" in b
        else b.get("text", "") + b.get("reasoningContent", {}).get("reasoningText", {}).get("text", "")
        for b in content
    ]
    usage: Json = {
        "inputTokens": max(len(words(" ".join(prompt))), 1),
        "outputTokens": max(len(words(" ".join(said))), 1),
    }
    if has_cache_point(body):
        cached = len(words(system))
        usage["inputTokens"] = max(usage["inputTokens"] - cached, 1)
        usage["cacheReadInputTokens"] = cached if "cache" in system.lower() else 0
        usage["cacheWriteInputTokens"] = 0 if "cache" in system.lower() else cached
    usage["totalTokens"] = sum(usage.values())
    response: Json = {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop_reason,
        "usage": usage,
        "metrics": {"latencyMs": 5 + usage["outputTokens"]},
    }
    if additional:
        response["additionalModelResponseFields"] = additional
    check_shape(response, operation_model("Converse").output_shape, "")
    return response


# The stream: AWS event-stream frames (encoded by the gateway's own encoder, checked by botocore's decoder in the
# tests).


def padded(payload: Json, number: int) -> bytes:
    """The event's JSON with Bedrock's `p` key, padding of a varying length that clients must ignore."""
    return json.dumps({**payload, "p": PADDING[: 8 + number * 7 % len(PADDING)]}, separators=(",", ":")).encode()


def event_frame(event_type: str, payload: Json, number: int) -> bytes:
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return encode(headers, padded(payload, number))


def exception_frame(exception_type: str, payload: Json) -> bytes:
    headers = {":exception-type": exception_type, ":content-type": "application/json", ":message-type": "exception"}
    return encode(headers, json.dumps(payload, separators=(",", ":")).encode())


def block_events(index: int, block: Json) -> list[tuple[str, Json]]:
    deltas: list[Json]
    events: list[tuple[str, Json]] = []
    if "toolUse" in block:
        tool_use = block["toolUse"]
        start = {"toolUse": {"toolUseId": tool_use["toolUseId"], "name": tool_use["name"]}}
        events.append(("contentBlockStart", {"start": start, "contentBlockIndex": index}))
        arguments = json.dumps(tool_use["input"])
        step = -(-len(arguments) // JSON_DELTAS)  # the JSON cut mid-token, as Bedrock does
        deltas = [{"toolUse": {"input": arguments[i : i + step]}} for i in range(0, len(arguments), step)]
    elif "reasoningContent" in block:
        reasoning = block["reasoningContent"]["reasoningText"]
        deltas = [{"reasoningContent": {"text": piece}} for piece in pieces(reasoning["text"], 4)]
        deltas.append({"reasoningContent": {"signature": reasoning["signature"]}})
    else:
        deltas = [{"text": piece} for piece in pieces(block["text"], WORDS_PER_TEXT_DELTA)]
    events.extend(("contentBlockDelta", {"delta": delta, "contentBlockIndex": index}) for delta in deltas)
    events.append(("contentBlockStop", {"contentBlockIndex": index}))
    return events


def stream_events(response: Json) -> list[tuple[str, Json]]:
    """The ConverseStream events of an answer, each checked against its member of ConverseStreamOutput."""
    events: list[tuple[str, Json]] = [("messageStart", {"role": "assistant"})]
    for index, block in enumerate(response["output"]["message"]["content"]):
        events.extend(block_events(index, block))
    stop: Json = {"stopReason": response["stopReason"]}
    if "additionalModelResponseFields" in response:
        stop["additionalModelResponseFields"] = response["additionalModelResponseFields"]
    events.append(("messageStop", stop))
    events.append(("metadata", {"usage": response["usage"], "metrics": response["metrics"]}))
    stream_shape = operation_model("ConverseStream").output_shape.members["stream"]
    for event_type, payload in events:
        check_shape(payload, stream_shape.members[event_type], event_type)
    return events


# Claude through InvokeModel: Anthropic's body, answered by the Anthropic simulator's builders.


def malformed(detail: str) -> AwsError:
    """Bedrock's wording for an InvokeModel body its model cannot read."""
    return invalid(f"Malformed input request: {detail}, please reformat your input and try again.")


def invoke_route(raw_target: str) -> tuple[str, str] | None:
    """(modelId decoded, operation) of `/model/{modelId}/invoke[-with-response-stream]`, the id one path segment."""
    segments = raw_target.partition("?")[0].split("/")
    if len(segments) != 4 or segments[:2] != ["", "model"] or segments[3] not in INVOKE_OPERATIONS or not segments[2]:
        return None
    return unquote(segments[2]), INVOKE_OPERATIONS[segments[3]]


def claude_resource(model_id: str) -> str:
    """The Claude model an id names (an ARN's resource part), or the 400 Bedrock answers when the model is not one
    that reads Anthropic's body."""
    resource = model_id.rsplit("/", 1)[-1] if model_id.startswith("arn:") else model_id
    if "anthropic." not in resource:
        raise malformed(f"#: the model {resource[:80]!r} does not take the Anthropic Messages body")
    return resource


def claude_model_name(resource: str) -> str:
    """What the answer's `model` says: Anthropic's name, without Bedrock's prefixes and `-v2:0` suffix."""
    name = resource.partition("anthropic.")[2]
    return re.sub(r"-v\d+(:\d+)?$", "", name) or name


def parse_claude_body(raw: bytes, model: str) -> Json:
    """The InvokeModel body for Claude once it passed Bedrock's rules and Anthropic's contract, as the Messages
    request it stands for (with `model`, for the answer); AwsError(400) otherwise."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise malformed(f"the body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise malformed("#: expected type: JSONObject")
    for key in ("model", "stream"):
        if key in body:
            raise malformed(f"#: extraneous key [{key}] is not permitted")
    if "anthropic_version" not in body:
        raise malformed("#: required key [anthropic_version] not found")
    if body["anthropic_version"] != BEDROCK_ANTHROPIC_VERSION:
        raise malformed(f"#/anthropic_version: {BEDROCK_ANTHROPIC_VERSION} is the only version taken")
    betas = body.get("anthropic_beta")
    if betas is not None and (not isinstance(betas, list) or not all(isinstance(beta, str) for beta in betas)):
        raise malformed("#/anthropic_beta: expected type: JSONArray of strings")
    request = {key: value for key, value in body.items() if key not in ("anthropic_version", "anthropic_beta")}
    try:
        checked: Json = anthropic_contract.parse_body(json.dumps({**request, "model": model}).encode())
    except anthropic_contract.ApiError as exc:
        raise invalid(exc.message) from None
    return checked


def claude_answer(body: Json) -> Json:
    """The Anthropic simulator's Message for the request, with Bedrock's message id."""
    message = anthropic_sim.answer(body).model_dump(mode="json", exclude_unset=True)
    message["id"] = "msg_bdrk_" + message["id"].removeprefix("msg_")
    return message


def invocation_metrics(message: Json) -> Json:
    usage = message["usage"]
    return {
        "inputTokenCount": usage["input_tokens"],
        "outputTokenCount": usage["output_tokens"],
        "invocationLatency": 5 + usage["output_tokens"],
        "firstByteLatency": 5,
    }


def chunk_frame(event: Json, number: int) -> bytes:
    """One Anthropic stream event as InvokeModelWithResponseStream sends it: a `chunk` event, base64 in `bytes`."""
    data = base64.b64encode(json.dumps(event, separators=(",", ":")).encode()).decode()
    headers = {":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"}
    return encode(headers, padded({"bytes": data}, number))


def claude_frames(message: Json, hook: str | None) -> list[bytes]:
    """The event stream of a Message: the Anthropic simulator's events (checked by the SDK's types) without pings,
    Bedrock's invocation metrics in message_stop; cut short as the hook asks."""
    events = [
        event for event in anthropic_sim.stream_events(Message.model_validate(message)) if event["type"] != "ping"
    ]
    events[-1] = {**events[-1], "amazon-bedrock-invocationMetrics": invocation_metrics(message)}
    frames = [chunk_frame(event, number) for number, event in enumerate(events)]
    if hook == "stream-exception":
        first_stop = next(i for i, event in enumerate(events) if event["type"] == "content_block_stop")
        error = {
            "message": "The model had an error while streaming.",
            "originalStatusCode": 500,
            "originalMessage": "Internal server error",
        }
        frames = [*frames[:first_stop], exception_frame("modelStreamErrorException", error)]
    elif hook == "stream-cut":
        frames = frames[: next(i for i, event in enumerate(events) if event["type"] == "message_delta")]
    return frames


# The server.


def model_route(raw_target: str) -> tuple[str, str] | None:
    """(modelId decoded, operation) of `/model/{modelId}/converse[-stream]`, the id one path segment (an ARN's `/`
    arrives as %2F)."""
    segments = raw_target.partition("?")[0].split("/")
    if len(segments) != 4 or segments[:2] != ["", "model"] or segments[3] not in OPERATIONS or not segments[2]:
        return None
    return unquote(segments[2]), OPERATIONS[segments[3]]


def check_model(model_id: str, streaming: bool) -> str | None:
    """The error hook the model id chooses (None for an ordinary answer); raises for throttling and unknown models."""
    if model_id == "throttled":
        raise AwsError(429, "ThrottlingException", "Too many requests, please wait before trying again.")
    if model_id in ("stream-exception", "stream-cut"):
        return model_id if streaming else None
    resource = model_id.rsplit("/", 1)[-1] if model_id.startswith("arn:") else model_id
    if not resource.startswith(MODEL_PREFIXES):
        raise AwsError(
            404,
            "ResourceNotFoundException",
            "Could not resolve the foundation model from the provided model identifier.",
        )
    return None


class Simulator(Recorder):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.requests)
        self.settings = settings

    def redact(self, name: str, value: str) -> str:
        if name == "authorization":
            return redacted_authorization(value)
        return REDACTED if name == "x-amz-security-token" else value

    def recorded_path(self, request: web.Request) -> str:
        return request.raw_path

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        entry = self.record(request, raw)
        try:
            for name in request.headers:
                if name.lower().startswith(INTERNAL_HEADER_PREFIXES):
                    raise invalid(f"{name.lower()}: header must not reach the upstream (the gateway leaked it)")
            verify_signature(self.settings, request.method, request.raw_path, request.headers, raw, datetime.now(UTC))
            if request.method == "POST" and (invoke := invoke_route(request.raw_path)) is not None:
                return await self.invoke(request, entry, raw, *invoke)
            route = model_route(request.raw_path) if request.method == "POST" else None
            if route is None:
                raise AwsError(404, "UnknownOperationException", f"Unknown operation {request.method} {request.path}")
            model_id, operation = route
            entry["modelId"], entry["operation"] = model_id, operation
            body = parse_body(raw, model_id, operation)
            hook = check_model(model_id, operation == "ConverseStream")
        except AwsError as exc:
            entry["status"] = exc.status
            log.info("refused", path=request.raw_path, status=exc.status, type=exc.error_type, message=exc.message)
            return exc.response()
        entry["status"] = 200
        response = answer(body, model_id)
        request_id = str(uuid.uuid4())
        if operation == "Converse":
            return web.json_response(response, headers={"x-amzn-requestid": request_id})
        return await self.stream(request, hook, response, request_id)

    async def stream(
        self, request: web.Request, hook: str | None, response: Json, request_id: str
    ) -> web.StreamResponse:
        events = stream_events(response)
        frames = [event_frame(event_type, payload, number) for number, (event_type, payload) in enumerate(events)]
        if hook == "stream-exception":
            first_stop = next(i for i, (event_type, _) in enumerate(events) if event_type == "contentBlockStop")
            error = {
                "message": "The model had an error while streaming.",
                "originalStatusCode": 500,
                "originalMessage": "Internal server error",
            }
            frames = [*frames[:first_stop], exception_frame("modelStreamErrorException", error)]
        elif hook == "stream-cut":
            frames = frames[: next(i for i, (event_type, _) in enumerate(events) if event_type == "messageStop")]
        headers = {"Content-Type": "application/vnd.amazon.eventstream", "x-amzn-requestid": request_id}
        return await self.send_frames(request, frames, headers, hook == "stream-cut")

    async def invoke(
        self, request: web.Request, entry: Json, raw: bytes, model_id: str, operation: str
    ) -> web.StreamResponse:
        """InvokeModel and InvokeModelWithResponseStream, for Claude; the signature is checked already."""
        entry["modelId"], entry["operation"] = model_id, operation
        streaming = operation == "InvokeModelWithResponseStream"
        try:
            check_shape(model_id, operation_model(operation).input_shape.members["modelId"], "modelId")
            resource = claude_resource(model_id)
            body = parse_claude_body(raw, claude_model_name(resource))
            hook_name = resource.partition("anthropic.")[2]
            hook = check_model(hook_name, streaming) if hook_name in CLAUDE_HOOKS else None
        except AwsError as exc:
            entry["status"] = exc.status
            log.info("refused", path=request.raw_path, status=exc.status, type=exc.error_type, message=exc.message)
            return exc.response()
        entry["status"] = 200
        message = claude_answer(body)
        request_id = str(uuid.uuid4())
        if not streaming:
            metrics = invocation_metrics(message)
            headers = {
                "Content-Type": "application/json",  # as Bedrock says it: no charset parameter
                "x-amzn-requestid": request_id,
                "x-amzn-bedrock-invocation-latency": str(metrics["invocationLatency"]),
                "x-amzn-bedrock-input-token-count": str(metrics["inputTokenCount"]),
                "x-amzn-bedrock-output-token-count": str(metrics["outputTokenCount"]),
            }
            return web.Response(body=json.dumps(message).encode(), headers=headers)
        headers = {
            "Content-Type": "application/vnd.amazon.eventstream",
            "x-amzn-requestid": request_id,
            "X-Amzn-Bedrock-Content-Type": "application/json",
        }
        return await self.send_frames(request, claude_frames(message, hook), headers, hook == "stream-cut")

    async def send_frames(
        self, request: web.Request, frames: list[bytes], headers: dict[str, str], cut: bool
    ) -> web.StreamResponse:
        """The frames, each in two writes split at varying places; with `cut`, the connection dropped after them."""
        return await send_stream(request, headers, frames, self.settings.gap_seconds, cut)


def build_app(settings: Settings) -> web.Application:
    simulator = Simulator(settings)
    app = web.Application()
    simulator.add_routes(app)
    app.router.add_route("*", "/{tail:.*}", simulator.handle)
    return app


async def serve(settings: Settings, host: str, port: int) -> int:
    for operation in OPERATIONS.values():  # the service model loaded before /health answers, not on a request
        operation_model(operation)
    for operation in INVOKE_OPERATIONS.values():
        operation_model(operation)
    anthropic_contract.request_adapter(False)  # the Anthropic contract's types too
    return await serve_app(build_app(settings), host, port, log, "bedrock", region=settings.region)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = arg_parser("bedrock_sim", __doc__, DEFAULT_PORT)
    parser.add_argument("--access-key-id", required=True, help="the only access key accepted")
    parser.add_argument("--secret-access-key", required=True, help="its secret")
    parser.add_argument("--session-token", help="the session token requests must carry (temporary credentials)")
    parser.add_argument("--region", default="us-east-1", help="the region credentials must be scoped to")
    return common.parse_args(parser, argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    settings = Settings(
        access_key_id=args.access_key_id,
        secret_access_key=args.secret_access_key,
        session_token=args.session_token,
        region=args.region,
        gap_seconds=args.gap_seconds,
    )
    return asyncio.run(serve(settings, args.host, args.port))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
