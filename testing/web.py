"""HTTP from tests: a tiny upstream server, plain requests with the standard library, polling until something is
true, and reading Prometheus text."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SECONDS = 20.0  # how long anything may take to become true on a loaded machine; never a timing assertion


def upstream(host: str, answer: str, port: int = 0) -> Iterator[int]:
    """A tiny threaded HTTP server on `host` (and `port`, or any free one) that answers every GET with `answer`;
    yields its port."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = answer.encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """(status, body); status 0 with the error text when the connection fails."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


async def wait_for(url: str, want: tuple[int, str], seconds: float = 15.0) -> tuple[int, str]:
    """Polls `url` every 50 ms until it answers `want`; returns the last answer (compare it to `want`)."""
    last: tuple[int, str] = (0, "")
    for _ in range(int(seconds / 0.05)):
        last = await asyncio.to_thread(http_get, url)
        if last == want:
            return last
        await asyncio.sleep(0.05)
    return last


@dataclass
class Response:
    status_code: int
    headers: Message
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


def request(
    url: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> Response:
    """One HTTP/1.1 request with the standard library (no client-side retries, no added headers but Host)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=SECONDS)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        answer = connection.getresponse()
        return Response(answer.status, answer.headers, answer.read())
    finally:
        connection.close()


def eventually(check: Callable[[], Any], what: str, seconds: float = SECONDS) -> Any:
    """Polls `check()` until it returns something truthy, and returns that (typed Any: checks are often
    `lambda: cond and value`); the failure names the last value."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached: {what} (still {result!r} after {seconds:g} s)")
        time.sleep(0.05)


async def eventually_async(probe: Callable[[], Any], what: str, seconds: float = SECONDS) -> Any:
    """`eventually` for async tests whose probe blocks (an API call, an HTTP request): `probe` runs in a thread every
    0.2 s until it returns something truthy, which is returned; the failure names the last value."""
    deadline = time.monotonic() + seconds
    last: Any = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(probe)
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: still {last!r} after {seconds} s")


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text `text`, 0 when absent."""
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = dict(pair.split("=", 1) for pair in line[len(name) + 1 : line.rindex("}")].split(","))
            if all(found.get(k) == json.dumps(v) for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0
