"""The picker's scraper against real sockets: `xds-server sim vllm` processes, and small servers written here for
the misbehaviours a simulator does not show (silence, chunked bodies, errors, closing after every answer)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from testing.ports import loopback_address
from testing.sims import SimProcess, start_sim
from xds_server.epp.metrics import EndpointMetrics
from xds_server.epp.scrape import Scraper, Target

FIXTURE = (Path(__file__).parent / "data" / "vllm_metrics.txt").read_bytes()


def start_vllm(log: Path, *args: str) -> SimProcess:
    host, port = loopback_address()
    return start_sim("vllm", ["--host", host, "--port", str(port), "--model", "m", *args], host, port, log)


def target_of(sim: SimProcess) -> tuple[str, Target]:
    return f"{sim.host}:{sim.port}", Target(sim.host, sim.port)


@pytest.fixture(scope="module")
def slow_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    # Decoding so slow that no request finishes during a test: what is running stays running.
    sim = start_vllm(
        tmp_path_factory.mktemp("epp-scrape") / "log", "--max-num-seqs", "2", "--inter-token-latency", "10s"
    )
    yield sim
    sim.kill()


@pytest.fixture
async def scraper() -> AsyncIterator[Scraper]:
    scraper = Scraper(interval=0.05, timeout=0.3)
    yield scraper
    await scraper.close()


async def wait_until(condition: Callable[[], object], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def answer(body: bytes = FIXTURE, status: str = "200 OK", headers: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


class FakePod(asyncio.Protocol):
    """One connection of a test server that writes `server.response` for every request (None: stays silent)."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections += 1
        self.server.open += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.open -= 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            self.buffer = self.buffer[end + 4 :]
            self.server.requests += 1
            if self.server.response is not None and self.transport is not None:
                self.server.response(self.transport)


class FakeServer:
    def __init__(self) -> None:
        self.response: Callable[[asyncio.Transport], None] | None = None
        self.requests = 0
        self.connections = 0
        self.open = 0
        self.key = ""
        self.target = Target("127.0.0.1", 0)
        self.server: asyncio.Server | None = None

    def answer_with(self, raw: bytes, close: bool = False) -> None:
        def respond(transport: asyncio.Transport) -> None:
            transport.write(raw)
            if close:
                transport.close()

        self.response = respond

    def answer_in_pieces(self, raw: bytes, size: int) -> None:
        """Writes `raw` in pieces of `size` bytes 1 ms apart, so the client reads an answer in many parts."""

        def respond(transport: asyncio.Transport) -> None:
            loop = asyncio.get_running_loop()
            for index, start in enumerate(range(0, len(raw), size)):
                loop.call_later(index * 0.001, transport.write, raw[start : start + size])

        self.response = respond

    async def start(self) -> FakeServer:
        host = loopback_address()[0]
        self.server = await asyncio.get_running_loop().create_server(lambda: FakePod(self), host, 0)
        port = self.server.sockets[0].getsockname()[1]
        self.key, self.target = f"{host}:{port}", Target(host, port)
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    server = await FakeServer().start()
    yield server
    server.close()


async def test_samples_arrive_and_follow_the_load(slow_sim: SimProcess, scraper: Scraper) -> None:
    key, target = target_of(slow_sim)
    scraper.set_targets({key: target})
    await wait_until(lambda: scraper.get(key) is not None)
    idle = scraper.get(key)
    assert idle is not None and (idle.running, idle.waiting, idle.kv_usage) == (0, 0, 0.0)
    assert (idle.block_size, idle.num_gpu_blocks) == (16, 1024)
    assert scraper.errors(key) is None
    body = {"model": "m", "prompt": "a slow request " * 20, "max_tokens": 100}
    async with aiohttp.ClientSession() as session:
        url = f"{slow_sim.url}/v1/completions"
        in_flight = [asyncio.create_task(session.post(url, json=body)) for _ in range(3)]
        try:
            await wait_until(lambda: _current(scraper, key).running == 2 and _current(scraper, key).waiting == 1)
            loaded = _current(scraper, key)
            assert loaded.kv_usage > 0 and loaded.updated > idle.updated
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
    await wait_until(lambda: _current(scraper, key).running == 0)  # the sim aborts what disconnected clients left


def _current(scraper: Scraper, key: str) -> EndpointMetrics:
    sample = scraper.get(key)
    assert sample is not None
    return sample


async def test_a_silent_pod_does_not_delay_a_healthy_one(
    slow_sim: SimProcess, scraper: Scraper, fake: FakeServer
) -> None:
    # `fake` accepts connections and reads requests but never answers.
    key, target = target_of(slow_sim)
    added = time.monotonic()
    scraper.set_targets({key: target, fake.key: fake.target})
    await wait_until(lambda: scraper.get(key) is not None)
    seen: set[float] = set()
    started = time.monotonic()
    while time.monotonic() - started < 1.0:
        seen.add(_current(scraper, key).updated)
        await asyncio.sleep(0.01)
    assert len(seen) >= 8  # about 20 at a 50 ms interval; a shared wait on the silent pod would give 3 or 4
    assert scraper.get(fake.key) is None
    assert scraper.errors(fake.key) == "no answer within 0.3 s"
    assert scraper.errors(key) is None
    # One request per timeout, never one per tick: a silent pod is not hammered.
    assert 2 <= fake.requests <= (time.monotonic() - added) / 0.3 + 1


async def test_removing_a_target_stops_its_scrapes(scraper: Scraper, fake: FakeServer) -> None:
    fake.answer_with(answer())
    scraper.set_targets({fake.key: fake.target})
    await wait_until(lambda: fake.requests >= 3)
    assert _current(scraper, fake.key).running == 2
    scraper.set_targets({})
    await wait_until(lambda: fake.open == 0)
    requests = fake.requests
    await asyncio.sleep(0.2)
    assert fake.requests == requests
    assert scraper.get(fake.key) is None and scraper.errors(fake.key) is None
    assert fake.connections == 1  # one kept-alive connection served every scrape


async def test_a_killed_pod_keeps_its_last_sample_with_an_error(tmp_path: Path, scraper: Scraper) -> None:
    sim = start_vllm(tmp_path / "log")
    try:
        key, target = target_of(sim)
        scraper.set_targets({key: target})
        await wait_until(lambda: scraper.get(key) is not None)
    finally:
        sim.kill()
    await wait_until(lambda: scraper.errors(key) is not None)
    last = _current(scraper, key)
    await asyncio.sleep(0.2)
    assert scraper.get(key) is last
    assert time.monotonic() - last.updated >= 0.2  # the sample ages; the picker sees it is stale
    assert "connect" in (scraper.errors(key) or "")


async def test_chunked_bodies_and_servers_that_close_after_each_answer(scraper: Scraper, fake: FakeServer) -> None:
    half = len(FIXTURE) // 2
    chunks = f"{half:x};ext=1\r\n".encode() + FIXTURE[:half] + b"\r\n"
    chunks += f"{len(FIXTURE) - half:X}\r\n".encode() + FIXTURE[half:] + b"\r\n0\r\nX-Trailer: 1\r\n\r\n"
    fake.answer_with(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
    scraper.set_targets({fake.key: fake.target})
    await wait_until(lambda: fake.requests >= 3)
    assert _current(scraper, fake.key).waiting == 1
    assert fake.connections == 1 and scraper.errors(fake.key) is None
    fake.answer_with(answer(headers="Connection: close\r\n"), close=True)
    await wait_until(lambda: fake.connections >= 4)
    assert scraper.errors(fake.key) is None


async def test_answers_read_in_many_parts(scraper: Scraper, fake: FakeServer) -> None:
    fake.answer_in_pieces(answer(), 400)
    scraper.set_targets({fake.key: fake.target})
    await wait_until(lambda: scraper.get(fake.key) is not None)
    assert _current(scraper, fake.key).running == 2
    chunked = (
        b"a0\r\n" + FIXTURE[:160] + b"\r\n" + f"{len(FIXTURE) - 160:x}\r\n".encode() + FIXTURE[160:] + b"\r\n0\r\n\r\n"
    )
    fake.answer_in_pieces(b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n" + chunked, 61)
    requests = fake.requests
    await wait_until(lambda: fake.requests >= requests + 2)
    assert scraper.errors(fake.key) is None and fake.connections == 1


async def test_failing_and_recovering_are_logged_once_each(
    scraper: Scraper, fake: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="xds_server.epp.scrape")
    fake.answer_with(answer(b"oops", status="503 Service Unavailable"))
    scraper.set_targets({fake.key: fake.target})
    await wait_until(lambda: fake.requests >= 4)
    assert scraper.errors(fake.key) == "HTTP status 503" and scraper.get(fake.key) is None
    fake.answer_with(b"HTTP/1.1 200 OK\r\nContent-Length: nonsense\r\n\r\n")
    await wait_until(lambda: (scraper.errors(fake.key) or "").startswith("bad HTTP answer"))
    fake.answer_with(answer())
    await wait_until(lambda: scraper.get(fake.key) is not None)
    assert scraper.errors(fake.key) is None
    await wait_until(lambda: scraper.counts.succeeded >= 3)
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        f"metrics scrape of {fake.key} failing: HTTP status 503",
        f"metrics scrape of {fake.key} recovered",
    ]


async def test_unknown_engine_is_refused_before_anything_changes(scraper: Scraper, fake: FakeServer) -> None:
    fake.answer_with(answer())
    scraper.set_targets({fake.key: fake.target})
    bad = Target("127.0.0.1", 1, engine="triton-tensorrt-llm")
    with pytest.raises(ValueError, match="triton-tensorrt-llm"):
        scraper.set_targets({"127.0.0.1:1": bad})
    await wait_until(lambda: scraper.get(fake.key) is not None)
