"""Loopback addresses for pods: 127.0.x.y (x >= 1, so never 127.0.0.1), one per pod, never reused within a run.

Linux routes all of 127.0.0.0/8 to the loopback interface, so each pod can listen on its manifest's container
port at its own address, like pods on a cluster network. The third octet starts at a random value per run, so two
runs side by side (parallel tests) rarely meet, and an address whose ports are taken is skipped.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Sequence

FIRST_HOST = 1
LAST_HOST = 254


# Ports this process has handed out: the kernel may hand the same free port out twice in a row (it was seen: an
# admin port equal to the ADS port picked just before it), and the second taker then fails to bind it.
_HANDED_OUT: set[tuple[str, int]] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just handed out on `host`, never one this process was given before. Another process could
    still take it before ours binds it; with ephemeral ports that is rare enough not to retry, and the startup error
    would show it."""
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if (host, port) not in _HANDED_OUT:
            _HANDED_OUT.add((host, port))
            return port


def port_free(address: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


class LoopbackAddresses:
    def __init__(self, rng: random.Random) -> None:
        self._subnet = rng.randint(1, 255)
        self._host = FIRST_HOST

    def _next(self) -> str:
        address = f"127.0.{self._subnet}.{self._host}"
        self._host += 1
        if self._host > LAST_HOST:
            self._host = FIRST_HOST
            self._subnet = self._subnet % 255 + 1
        return address

    def allocate(self, ports: Sequence[int]) -> str:
        """The next address on which every one of `ports` can be bound now."""
        for _ in range(255 * LAST_HOST):
            address = self._next()
            if all(port_free(address, port) for port in ports):
                return address
        raise RuntimeError(f"no loopback address 127.0.x.y has ports {list(ports)} free")
