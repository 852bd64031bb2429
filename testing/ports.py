"""Free ports and loopback addresses for the processes a test starts (the free-port helpers are the product's)."""

from __future__ import annotations

import random

from xds_server.up.addresses import free_port, port_free

__all__ = ["free_port", "loopback_address", "port_free_on"]


def loopback_address() -> tuple[str, int]:
    """A random 127.x.y.z of the kind `up` gives pods (never 127.0.0.1), and a port free on it."""
    host = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
    return host, free_port(host)


def port_free_on(hosts: list[str]) -> int:
    """One port that is free on every host (pods of a pool share their targetPort)."""
    while True:
        port = free_port(hosts[0])
        if all(port_free(host, port) for host in hosts[1:]):
            return port
