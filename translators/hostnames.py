"""Gateway API hostname rules: which requests a listener and a route share."""

from __future__ import annotations


def intersect(listener_hostname: str | None, route_hostname: str) -> str | None:
    """The hostname both accept, the more specific of the two, or None when they share no request."""
    if listener_hostname is None or listener_hostname == route_hostname:
        return route_hostname
    if listener_hostname.startswith("*."):
        if route_hostname.endswith(listener_hostname[1:]):
            return route_hostname
        if route_hostname.startswith("*.") and listener_hostname.endswith(route_hostname[1:]):
            return listener_hostname
        return None
    if route_hostname.startswith("*.") and listener_hostname.endswith(route_hostname[1:]):
        return listener_hostname
    return None


def effective_hostnames(listener_hostname: str | None, route_hostnames: list[str]) -> list[str]:
    """Virtual-host domains a route gets on a listener; empty means the route does not attach to it."""
    if not route_hostnames:
        return [listener_hostname or "*"]
    found = (intersect(listener_hostname, h) for h in route_hostnames)
    return sorted({h for h in found if h is not None})
