"""The golden cases of the provider schemas (xds_server/extproc/schemas), shared by tests/test_schema_*.py.

A provider's cases are the directories of testdata/providers/<provider>/; each holds input files and the outputs
translated from them (`Goldens`). `python -m pytest tests/test_schema_<provider>.py --update-golden` rewrites the
outputs. Also here: what those tests do alike with the translations (a stream fed in pieces, the openai SDK reading
an answer, a rejection's envelope).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx2
import openai
import orjson
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionChunk
from openai.types.shared import ErrorObject

from xds_server.extproc.schemas.common import RequestRejected

# (case, input file name) -> the translated text: of the one output, or of each output by file name.
Translate = Callable[[str, str], str | Mapping[str, str]]


class Goldens:
    """The cases below `directory`; `outputs`: input file name -> the output file names it is translated to."""

    def __init__(self, directory: Path, outputs: Mapping[str, str | Sequence[str]]) -> None:
        self.directory = directory
        self.outputs = {name: (out,) if isinstance(out, str) else tuple(out) for name, out in outputs.items()}

    def names(self, with_file: str | None = None) -> list[str]:
        """The cases, sorted; with `with_file`, only those holding that file."""
        names = sorted(p.name for p in self.directory.iterdir() if p.is_dir())
        return [n for n in names if with_file is None or (self.directory / n / with_file).exists()]

    def client_request(self, case: str) -> dict[str, Any]:
        """The case's openai-request.json ({} if it has none)."""
        path = self.directory / case / "openai-request.json"
        return dict(orjson.loads(path.read_bytes())) if path.exists() else {}

    def include_usage(self, case: str) -> bool:
        return include_usage(self.client_request(case))

    def check(self, case: str, translate: Translate, update: bool) -> None:
        """Every output of the case is what its input translates to (rewritten first when `update`)."""
        files = {p.name for p in (self.directory / case).iterdir()}
        known = set(self.outputs) | {output for outputs in self.outputs.values() for output in outputs}
        assert not files - known, f"{case}: unexpected files; a case holds only {self.outputs}"
        inputs = [name for name in self.outputs if name in files]
        assert inputs, f"{case} holds no input"
        orphans = files - set(inputs) - {output for name in inputs for output in self.outputs[name]}
        assert not orphans, f"{case}: {sorted(orphans)} without their input"
        for name in inputs:
            translated = translate(case, name)
            if isinstance(translated, str):
                translated = {self.outputs[name][0]: translated}
            for output_name, actual in translated.items():
                output = self.directory / case / output_name
                if update:
                    output.write_text(actual)
                assert output.exists(), f"{output} missing: run with --update-golden and review it"
                assert actual == output.read_text(), f"{case}: {output_name} changed; review and run --update-golden"


def include_usage(request: Mapping[str, Any]) -> bool:
    return bool((request.get("stream_options") or {}).get("include_usage"))


def rendered(document: Any) -> str:
    """A JSON golden's text."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def split(raw: bytes, cuts: list[int]) -> list[bytes]:
    """`raw` cut at `cuts` (any order; repeated cuts give empty pieces)."""
    cuts = sorted(cuts)
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]


def any_split(data: st.DataObject, raw: bytes) -> list[bytes]:
    """`raw` cut at up to 60 places drawn by hypothesis."""
    return split(raw, data.draw(st.lists(st.integers(0, len(raw)), max_size=60)))


def openai_client(status: int, body: bytes, content_type: str) -> openai.OpenAI:
    """An openai SDK client whose every request is answered with this status, body and content type."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, content=body, headers={"content-type": content_type})

    transport = httpx2.MockTransport(answer)
    return openai.OpenAI(
        api_key="test",
        base_url="http://gateway.invalid/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=transport),
    )


def check_rejected(rejected: RequestRejected, param: str, code: str) -> None:
    """A rejection names `param` first, says why, and answers 400 with OpenAI's error envelope."""
    assert (rejected.status, rejected.param, rejected.code) == (400, param, code)
    assert rejected.message.startswith(param) and len(rejected.message) > len(param) + 5
    envelope = orjson.loads(rejected.envelope())
    assert envelope == {
        "error": {"message": rejected.message, "type": "invalid_request_error", "param": param, "code": code}
    }


def check_error_object(error: Any) -> None:
    """`error` is an OpenAI error object, with exactly its four keys."""
    assert set(error) == {"message", "type", "param", "code"}
    ErrorObject.model_validate(error)


class Stream(Protocol):
    def feed(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


def feed(stream: Stream, pieces: Sequence[bytes]) -> bytes:
    """What `stream` gives for the upstream bytes in `pieces`, to its end."""
    return b"".join(stream.feed(piece) for piece in pieces) + stream.finish()


def check_stream_end(events: Sequence[bytes], chunks: Sequence[Mapping[str, Any]], errors: Sequence[Any]) -> None:
    """A translated stream's SSE events end as OpenAI's do: with [DONE]; or, after an error event (at most one, and no
    finish reason before it), with nothing but a truncation's [DONE]."""
    if errors:
        assert len(errors) == 1 and not any(c["choices"] and c["choices"][0]["finish_reason"] for c in chunks)
        after = events[[e.startswith(b'data: {"error"') for e in events].index(True) + 1 :]
        assert list(after) in ([], [b"data: [DONE]"])
    else:
        assert events[-1] == b"data: [DONE]"


# ---- the openai SDK reading a translated answer

ASK: Any = [{"role": "user", "content": "hi"}]


def sdk_stream(body: bytes, model: str, **create: Any) -> list[ChatCompletionChunk]:
    """The chunks the openai SDK reads from the SSE `body`."""
    client = openai_client(200, body, "text/event-stream")
    return list(client.chat.completions.create(model=model, messages=ASK, stream=True, **create))


def sdk_tool_calls(body: bytes, model: str) -> tuple[str, str | None, dict[int, dict[str, Any]]]:
    """(text, finish reason, tool calls by index: their id, name, arguments and extra keys joined) of a stream, as a
    client of the SDK assembles them."""
    calls: dict[int, dict[str, Any]] = {}
    text, finish = "", None
    for chunk in sdk_stream(body, model):
        delta = chunk.choices[0].delta
        text += delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": "", "extra": {}})
            entry["id"] += call.id or ""
            entry["name"] += (call.function and call.function.name) or ""
            entry["arguments"] += (call.function and call.function.arguments) or ""
            entry["extra"].update(call.model_extra or {})
    return text, finish, calls


def sdk_stream_error(body: bytes, model: str) -> openai.APIError:
    """The error the openai SDK raises reading the SSE `body` (which must make it raise)."""
    try:
        sdk_stream(body, model)
    except openai.APIError as error:
        return error
    raise AssertionError("the SDK read the stream without an error")


def reasoning_of(chunks: Sequence[ChatCompletionChunk]) -> str:
    """The reasoning_content of a stream's chunks, joined."""
    return "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content", "") for c in chunks if c.choices)


# ---- requests


FUNCTION = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
ASKED_F = {"role": "user", "content": "call f"}


class Requests:
    """OpenAI requests to `model` for rejection cases; `call_id`: the id of a tool call in their history."""

    def __init__(self, model: str, call_id: str) -> None:
        self.model = model
        self.call_id = call_id

    def body_with(self, **fields: Any) -> dict[str, Any]:
        return {"model": self.model, "messages": [{"role": "user", "content": "hi"}], **fields}

    def calls_f(self, arguments: Any, **call: Any) -> dict[str, Any]:
        """A request whose history holds a call of f with these arguments (and these keys of the call)."""
        function = {"name": "f", "arguments": arguments}
        function_call = {"id": self.call_id, "type": "function", "function": function, **call}
        return self.body_with(messages=[ASKED_F, {"role": "assistant", "tool_calls": [function_call]}])

    def part(self, content: Any, role: str = "user") -> dict[str, Any]:
        return self.body_with(messages=[{"role": role, "content": content}])

    def image(self, url: str) -> dict[str, Any]:
        return self.part([{"type": "image_url", "image_url": {"url": url}}])

    def rejected_by_all(self) -> list[tuple[str, dict[str, Any], str, str]]:
        """Rejection cases every provider's schema refuses alike: (id, request, the param named, the code)."""
        return [
            ("logit_bias", self.body_with(logit_bias={"50256": -100}), "logit_bias", "unsupported_parameter"),
            ("audio", self.body_with(audio={"voice": "alloy", "format": "mp3"}), "audio", "unsupported_parameter"),
            ("modalities", self.body_with(modalities=["text", "audio"]), "modalities", "unsupported_parameter"),
            (
                "prediction",
                self.body_with(prediction={"type": "content", "content": "x"}),
                "prediction",
                "unsupported_parameter",
            ),
            ("verbosity", self.body_with(verbosity="low"), "verbosity", "unsupported_parameter"),
            ("web_search", self.body_with(web_search_options={}), "web_search_options", "unsupported_parameter"),
            (
                "moderation",
                self.body_with(moderation={"model": "omni-moderation-latest"}),
                "moderation",
                "unsupported_parameter",
            ),
            ("functions", self.body_with(functions=[{"name": "f"}]), "functions", "unsupported_parameter"),
            ("function_call", self.body_with(function_call="auto"), "function_call", "unsupported_parameter"),
            ("unknown", self.body_with(top_k=5, thinking={"type": "enabled"}), "thinking", "unknown_parameter"),
            ("temperature<0", self.body_with(temperature=-0.1), "temperature", "invalid_value"),
            ("temperature type", self.body_with(temperature="hot"), "temperature", "invalid_value"),
            ("top_p type", self.body_with(top_p=True), "top_p", "invalid_value"),
            ("max_tokens", self.body_with(max_tokens=0), "max_tokens", "invalid_value"),
            (
                "max_completion_tokens",
                self.body_with(max_completion_tokens="many"),
                "max_completion_tokens",
                "invalid_value",
            ),
            ("stop item", self.body_with(stop=["a", 1]), "stop[1]", "invalid_value"),
            ("stream", self.body_with(stream="yes"), "stream", "invalid_value"),
            (
                "json_schema without schema",
                self.body_with(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
                "response_format.json_schema.schema",
                "invalid_value",
            ),
            ("no messages", {"model": "m"}, "messages", "missing_required_parameter"),
            ("empty messages", self.body_with(messages=[]), "messages", "invalid_value"),
            ("only system", self.body_with(messages=[{"role": "system", "content": "s"}]), "messages", "invalid_value"),
            (
                "function role",
                self.body_with(messages=[{"role": "function", "name": "f", "content": "1"}]),
                "messages[0].role",
                "unsupported_value",
            ),
            (
                "unknown role",
                self.body_with(messages=[{"role": "bot", "content": "x"}]),
                "messages[0].role",
                "invalid_value",
            ),
            (
                "video",
                self.part([{"type": "video_url", "video_url": "x"}]),
                "messages[0].content[0].type",
                "invalid_value",
            ),
            (
                "bad arguments",
                self.calls_f("{'city': 'Paris'"),
                "messages[1].tool_calls[0].function.arguments",
                "invalid_value",
            ),
            (
                "array arguments",
                self.calls_f("[1, 2]"),
                "messages[1].tool_calls[0].function.arguments",
                "invalid_value",
            ),
            ("no call id", self.calls_f("{}", id=None), "messages[1].tool_calls[0].id", "invalid_value"),
            ("custom call", self.calls_f("{}", type="custom"), "messages[1].tool_calls[0].type", "unsupported_value"),
            (
                "assistant audio",
                self.body_with(messages=[ASKED_F, {"role": "assistant", "audio": {"id": "audio_1"}}]),
                "messages[1].audio",
                "unsupported_parameter",
            ),
            (
                "no tool_call_id",
                self.body_with(messages=[ASKED_F, {"role": "tool", "content": "1"}]),
                "messages[1].tool_call_id",
                "invalid_value",
            ),
            (
                "custom tool",
                self.body_with(tools=[{"type": "custom", "custom": {"name": "g"}}]),
                "tools[0].type",
                "unsupported_value",
            ),
            (
                "tool name",
                self.body_with(tools=[{"type": "function", "function": {"description": "d"}}]),
                "tools[0].function.name",
                "invalid_value",
            ),
            ("required without tools", self.body_with(tool_choice="required"), "tool_choice", "invalid_value"),
            (
                "allowed unknown tool",
                self.body_with(
                    tools=[FUNCTION],
                    tool_choice={
                        "type": "allowed_tools",
                        "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": {"name": "g"}}]},
                    },
                ),
                "tool_choice.allowed_tools.tools",
                "invalid_value",
            ),
        ]
