"""What every provider schema shares when it refuses an OpenAI request: `RequestRejected`, and the OpenAI fields no
provider but OpenAI can honour (`UNSUPPORTED`), checked by `check_fields`.

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
