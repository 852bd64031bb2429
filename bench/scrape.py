"""CPU of the picker's metrics scraper: N model servers scraped every INTERVAL for SECONDS.

python -m bench.scrape --endpoints 100 --seconds 10 --interval 0.05

The servers are tiny keep-alive HTTP servers on their own loopback addresses (127.0.x.y, as `up` gives pods), all
in one child process so their CPU is not counted; each answers with the captured simulator body in
tests/data/vllm_metrics.txt. CPU is the scraping process's time.process_time() over wall time, in % of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import timeit
from pathlib import Path

from xds_server.epp.metrics import parse_metrics
from xds_server.epp.scrape import Scraper, Target

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "data" / "vllm_metrics.txt"


# ---------------------------------------------------------------------------------------------------------------
# The child: N metrics servers


class _MetricsServer(asyncio.Protocol):
    """Answers every request on the connection with the same prebuilt response; requests have no body."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            self.buffer = self.buffer[end + 4 :]
            assert self.transport is not None
            self.transport.write(self.response)


async def serve(endpoints: int) -> None:
    body = FIXTURE.read_bytes()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {len(body)}\r\n\r\n"
    response = head.encode() + body
    loop = asyncio.get_running_loop()
    addresses: list[tuple[str, int]] = []
    for index in range(endpoints):
        host = f"127.0.{1 + index // 250}.{1 + index % 250}"  # never 127.0.0.1
        server = await loop.create_server(lambda: _MetricsServer(response), host, 0)
        addresses.append((host, server.sockets[0].getsockname()[1]))
    print(json.dumps(addresses), flush=True)
    # Runs until the parent closes stdin (or dies).
    await loop.run_in_executor(None, sys.stdin.read)


# ---------------------------------------------------------------------------------------------------------------
# The parent: the scraper under measurement


async def measure(addresses: list[tuple[str, int]], seconds: float, interval: float) -> dict[str, float]:
    scraper = Scraper(interval=interval, timeout=1.0)
    scraper.set_targets({f"{host}:{port}": Target(host, port) for host, port in addresses})
    try:
        await asyncio.sleep(max(0.5, 5 * interval))  # connections open and the first samples land
        missing = [key for key in (f"{h}:{p}" for h, p in addresses) if scraper.get(key) is None]
        assert not missing, f"no sample from {missing[:3]}: {scraper.errors(missing[0])}"
        ok, failed = scraper.counts.succeeded, scraper.counts.failed
        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.sleep(seconds)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return {
            "scrapes_per_s": (scraper.counts.succeeded - ok) / wall,
            "failures": scraper.counts.failed - failed,
            "cpu_percent": 100 * cpu / wall,
        }
    finally:
        await scraper.close()


def parse_cost_us() -> float:
    body = FIXTURE.read_bytes()
    number = 20_000
    return min(timeit.repeat(lambda: parse_metrics(body), number=number, repeat=3)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoints", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the child's mode
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(serve(args.serve))
        return
    command = [sys.executable, "-m", "bench.scrape", "--serve", str(args.endpoints)]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        addresses = [(str(host), int(port)) for host, port in json.loads(child.stdout.readline())]
        result = asyncio.run(measure(addresses, args.seconds, args.interval))
    finally:
        child.kill()
        child.wait()
    target = args.endpoints / args.interval
    print(f"| endpoints | interval | body | scrapes/s (target {target:,.0f}) | failures | scraper CPU | parse |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.endpoints} | {args.interval * 1000:g} ms | {FIXTURE.stat().st_size:,} B "
        f"| {result['scrapes_per_s']:,.0f} | {result['failures']:.0f} | {result['cpu_percent']:.1f}% of a core "
        f"| {parse_cost_us():.1f} µs |"
    )


if __name__ == "__main__":
    main()
