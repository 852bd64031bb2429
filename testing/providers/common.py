"""What the provider simulators (anthropic_sim, bedrock_sim, vertex_sim) share: recording what arrived for
`GET /debug/requests` (secrets redacted; `DELETE` forgets it), `/health`, serving until SIGTERM or SIGINT, the command
line's common options, and the deterministic answer's small pieces.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Sequence
from typing import Any

from aiohttp import web

# A stream being written when SIGTERM arrives gets this long to finish before the process exits.
SHUTDOWN_GRACE_SECONDS = 2.0
REDACTED = "REDACTED"

Json = dict[str, Any]


class Recorder:
    """The requests a simulator has seen, in `requests` (the list its settings keep). A subclass says what to
    redact (`redact`), and may read a body (`recorded_body`) or name the path (`recorded_path`) its own way."""

    def __init__(self, requests: list[Json]) -> None:
        self.requests = requests

    def redact(self, name: str, value: str) -> str:
        """The value of header `name` (lower case) as recorded."""
        return value

    def recorded_path(self, request: web.Request) -> str:
        return request.path_qs

    def recorded_body(self, request: web.Request, raw: bytes) -> Any:
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode(errors="replace")

    def record(self, request: web.Request, raw: bytes) -> Json:
        """The entry of this request (headers repeated are joined, as one header with a list), added to requests;
        the caller adds its `status`."""
        headers: Json = {}
        for name, value in request.headers.items():
            name = name.lower()
            value = self.redact(name, value)
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        body = self.recorded_body(request, raw)
        entry: Json = {"method": request.method, "path": self.recorded_path(request), "headers": headers, "body": body}
        self.requests.append(entry)
        return entry

    async def list_requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.requests)

    async def clear_requests(self, request: web.Request) -> web.Response:
        self.requests.clear()
        return web.Response(status=204)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    def add_routes(self, app: web.Application) -> None:
        """/health and /debug/requests; the simulator's own routes come after."""
        app.router.add_get("/health", self.health)
        app.router.add_get("/debug/requests", self.list_requests)
        app.router.add_delete("/debug/requests", self.clear_requests)


async def serve_app(app: web.Application, host: str, port: int, log: Any, name: str, **fields: Any) -> int:
    """Serves `app` until SIGTERM or SIGINT: 0, or 1 if it cannot listen. `name` and `fields` go in the log line
    that says where it listens."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        log.error("cannot listen", host=host, port=port, error=str(exc))
        await runner.cleanup()
        return 1
    log.info(f"{name} simulator listening on http://{host}:{port}", **fields)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()
    return 0


async def send_stream(
    request: web.Request, headers: dict[str, str], items: Sequence[bytes], gap_seconds: float, cut: bool = False
) -> web.StreamResponse:
    """A streamed answer: each item (an event, a frame) in two writes split at varying places, `gap_seconds` after
    each write; with `cut`, the connection dropped after them."""
    stream = web.StreamResponse(headers=headers)
    await stream.prepare(request)
    for number, data in enumerate(items):
        at = len(data) * (number % 4 + 1) // 5
        for piece in (data[:at], data[at:]):
            await stream.write(piece)
            if gap_seconds:
                await asyncio.sleep(gap_seconds)
    if cut and request.transport is not None:
        request.transport.abort()  # no final chunk: the client sees a connection that ended mid-body
        return stream
    await stream.write_eof()
    return stream


def arg_parser(module: str, doc: str, default_port: int) -> argparse.ArgumentParser:
    """The command line of `python -m testing.providers.<module>`, with --host and --port; the simulator adds its
    own options, then parses with `parse_args`."""
    parser = argparse.ArgumentParser(prog=f"python -m testing.providers.{module}", description=doc.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=default_port, help=f"port to listen on (default {default_port})")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Adds --gap-ms (read as `gap_seconds`), the last option of every simulator, and parses."""
    parser.add_argument("--gap-ms", type=float, default=0.0, help="pause between writes of a stream (default 0)")
    args = parser.parse_args(argv)
    args.gap_seconds = max(args.gap_ms, 0.0) / 1000
    return args


# The answer.


def words(text: str) -> list[str]:
    return text.split()


def sample_value(schema: Any) -> Any:
    """A value that fits a JSON schema: "x" for strings, 1 for numbers, the first enum value, required keys only."""
    if not isinstance(schema, dict):
        return "x"
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: sample_value(properties.get(name)) for name in schema.get("required", [])}
    return {"integer": 1, "number": 1, "boolean": True, "array": [], "null": None}.get(kind, "x")


def tool_named_in(tools: list[Json], text: str) -> Json | None:
    """The first of `tools` that `text` asks for by "call <its name>" (in any case), if any."""
    text = text.lower()
    return next((tool for tool in tools if f"call {tool['name']}".lower() in text), None)
