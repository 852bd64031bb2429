"""The routes a virtual host that routes by model adds around its model routes, so the error contract of an
OpenAI-compatible endpoint holds with Envoy's native means only (no ext_proc on the request path).

A request starts with no model header (clients' are stripped), so it passes the model routes and lands on the entry
route, which turns on the model filter: Envoy reads the body, sets x-ai-eg-model (and the JSON-object marker) and
matches again. Then, in order:

- the model routes (the user's rules, each also requiring the JSON-object marker, so that a rule naming no model
  never takes a request before its body is read), and among them, before the first that could take it (a rule that
  is not one exact, valid model: a regex, another header only), a model with a control character or longer than the
  limit (TranslateOptions.max_model_length): 400 `invalid_model`, so no model route forwards it and no echo or log
  line carries it. The rules ahead of these two never match such a model, and a request naming theirs is routed
  without two regex matches (one of them RE2's program unrolled to the limit, bench.instructions: 3k instructions);
- `/v1/models`: this host's models, and a path other than the OpenAI ones: 404 `unsupported_path`, and a request
  declaring an empty body: 400 `missing_model`, all three answered before any body is read;
- a model that is not a JSON string (rendered as JSON text: a number, true/false, an array or object): 400
  `invalid_model` (Envoy renders the string "42" and the number 42 alike: an unknown model named like a number is
  refused as not a string rather than as not found);
- any other model: 404 `model_not_found`, naming it (at most ECHO_LIMIT characters of it, as every echo);
- a JSON object without a model (missing, null or ""): 400 `missing_model`;
- the entry routes themselves, where a request stays when its body is not one JSON object (malformed, another JSON
  type, a repeated key, or no body): 400 `invalid_json`. A request without Content-Length (a chunked body) starts on
  the first, which also has Envoy set Content-Length once it holds the body: many backends read only sized bodies.
"""

from __future__ import annotations

import json

from translators.ir import (
    AiRole,
    DirectAction,
    HeaderMatchIR,
    HeaderMatchKind,
    JsonReply,
    ModelIR,
    PathKind,
    PathMatchIR,
    RouteIR,
)
from translators.xds.names import (
    AI_PATHS,
    ECHO_LIMIT,
    HEADER_VALUE_FORBIDDEN,
    JSON_BODY_HEADER,
    MODEL_HEADER,
    MODELS_PATH,
    NOT_A_HEADER_VALUE,
)

OWNED_BY = "xds-server"
NOT_FOUND = "model_not_found"
EVERYTHING = PathMatchIR(PathKind.PREFIX, "/")
# A model Envoy rendered from a JSON value that is not a string (a whole-value match).
NOT_A_STRING = r"-?[0-9][0-9.eE+-]*|true|false|\[.*|\{.*"
# The OpenAI paths, with or without a query.
SERVED_PATHS = "(" + "|".join(AI_PATHS) + r")([?].*)?"


def _error(status: int, message: str, code: str) -> DirectAction:
    return DirectAction(status, message, "invalid_request_error", code)


def model_list(models: tuple[ModelIR, ...]) -> str:
    """`/v1/models` as OpenAI answers it."""
    data = [{"id": m.name, "object": "model", "created": m.created, "owned_by": OWNED_BY} for m in models]
    return json.dumps({"object": "list", "data": data}, separators=(",", ":"), ensure_ascii=False)


# One UTF-8 character, as Envoy's header matching sees it: bytes (a `.` there is one byte, so "é" would count twice).
# A character is a byte that is not a continuation byte, and the continuation bytes after it.
UTF8_CHARACTER = r"[\x00-\x7f\xc0-\xff][\x80-\xbf]*"


def too_long(max_length: int) -> str:
    """A whole-value RE2 pattern for a value of more than `max_length` UTF-8 characters. Its program grows with the
    limit (RE2 unrolls the count): Envoy's bootstrap raises the program size it accepts (xds_server.bootstrap)."""
    return f"(?:{UTF8_CHARACTER}){{{max_length + 1},}}"


def leading_routes(vhost_name: str, max_model_length: int) -> list[RouteIR]:
    return [
        RouteIR(
            name=f"{vhost_name}/model-not-a-header-value",
            path=EVERYTHING,
            headers=(HeaderMatchIR(MODEL_HEADER, f"(?s).*[{HEADER_VALUE_FORBIDDEN}].*", HeaderMatchKind.REGEX),),
            action=_error(400, "'model' must not contain control characters", "invalid_model"),
            ai=AiRole.REFUSAL,
        ),
        RouteIR(
            name=f"{vhost_name}/model-too-long",
            path=EVERYTHING,
            headers=(HeaderMatchIR(MODEL_HEADER, too_long(max_model_length), HeaderMatchKind.REGEX),),
            action=_error(400, f"'model' is longer than {max_model_length} characters", "invalid_model"),
            ai=AiRole.REFUSAL,
        ),
    ]


def names_one_valid_model(route: RouteIR, max_model_length: int) -> bool:
    """Whether the route takes only a model it names exactly, a model the leading routes never refuse."""
    return any(
        match.name.lower() == MODEL_HEADER
        and match.kind is HeaderMatchKind.EXACT
        and not match.invert
        and len(match.value) <= max_model_length  # characters, as too_long counts them
        and not NOT_A_HEADER_VALUE.search(match.value)
        for match in route.headers
    )


def guarded_routes(vhost_name: str, routes: list[RouteIR], max_model_length: int) -> list[RouteIR]:
    """The host's routes with the leading routes before the first that could take a model they refuse."""
    at = next((i for i, route in enumerate(routes) if not names_one_valid_model(route, max_model_length)), len(routes))
    return [*routes[:at], *leading_routes(vhost_name, max_model_length), *routes[at:]]


def trailing_routes(vhost_name: str, models: tuple[ModelIR, ...]) -> list[RouteIR]:
    model = f"%REQ({MODEL_HEADER}):{ECHO_LIMIT}%"  # a client's value, echoed bounded
    return [
        RouteIR(
            name=f"{vhost_name}/models",
            path=PathMatchIR(PathKind.EXACT, MODELS_PATH),
            headers=(),
            action=JsonReply(200, model_list(models)),
        ),
        RouteIR(
            name=f"{vhost_name}/unsupported-path",
            path=EVERYTHING,
            headers=(HeaderMatchIR(":path", SERVED_PATHS, HeaderMatchKind.REGEX, invert=True),),
            action=_error(404, f"unsupported path: %PATH(NQ):{ECHO_LIMIT}%", "unsupported_path"),
        ),
        RouteIR(
            name=f"{vhost_name}/no-body",
            path=EVERYTHING,
            headers=(HeaderMatchIR("content-length", "0"),),
            action=_error(400, "the request has no body: a JSON object with a 'model' is required", "missing_model"),
        ),
        RouteIR(
            name=f"{vhost_name}/model-not-a-string",
            path=EVERYTHING,
            headers=(HeaderMatchIR(MODEL_HEADER, NOT_A_STRING, HeaderMatchKind.REGEX),),
            action=_error(400, f"'model' must be a string, not {model}", "invalid_model"),
            ai=AiRole.REFUSAL,
        ),
        RouteIR(
            name=f"{vhost_name}/route-not-found",
            path=EVERYTHING,
            headers=(HeaderMatchIR(MODEL_HEADER, kind=HeaderMatchKind.PRESENT),),
            action=_error(
                404, f"model '{model}' is not served by this gateway: no route matches it", "model_not_found"
            ),
            ai=AiRole.REFUSAL,
        ),
        RouteIR(
            name=f"{vhost_name}/model-missing",
            path=EVERYTHING,
            headers=(HeaderMatchIR(JSON_BODY_HEADER, kind=HeaderMatchKind.PRESENT),),
            action=_error(400, "'model' is required: name the model to use", "missing_model"),
            ai=AiRole.REFUSAL,
        ),
        RouteIR(
            name=f"{vhost_name}/entry-unsized",
            path=EVERYTHING,
            headers=(HeaderMatchIR("content-length", kind=HeaderMatchKind.ABSENT),),
            action=_error(400, "the request body must be a JSON object with a string 'model'", "invalid_json"),
            ai=AiRole.ENTRY_UNSIZED,
        ),
        RouteIR(
            name=f"{vhost_name}/entry",
            path=EVERYTHING,
            headers=(),
            action=_error(400, "the request body must be a JSON object with a string 'model'", "invalid_json"),
            ai=AiRole.ENTRY,
        ),
    ]
