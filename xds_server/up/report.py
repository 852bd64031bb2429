"""What the person running `up` reads: a progress line while things start, event lines, warnings (each once),
and the status table (Gateways, routes with their conditions, backends and pools with their ready endpoints, pods
with their logs)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TextIO

from translators.ir import Condition, ConditionStatus, Discovery, EndpointHealth, ObjectStatus, Translation

ROUTE_KINDS = ("AIGatewayRoute", "HTTPRoute")


class Reporter:
    def __init__(self, out: TextIO, interactive: bool) -> None:
        self.out = out
        self.interactive = interactive  # a terminal: the progress line is rewritten in place
        self.warnings: list[str] = []  # said once each, listed under every table
        # What the manifests as they are now get wrong: replaced at every reload, so a fixed mistake leaves the table.
        self.manifest_warnings: list[str] = []
        self._progress = ""

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def info(self, text: str) -> None:
        if self.interactive and self._progress:
            self._write("\r\033[K" + text + "\n" + self._progress)
        else:
            self._write(text + "\n")

    def warn(self, text: str) -> None:
        """Reported once per distinct text, and listed again under the status table."""
        if text not in self.warnings:
            self.warnings.append(text)
            self.info(f"warning: {text}")

    def set_manifest_warnings(self, texts: Sequence[str]) -> None:
        """The current manifests' problems: each new one is said, and the table lists exactly these."""
        for text in texts:
            if text not in self.manifest_warnings:
                self.info(f"warning: {text}")
        self.manifest_warnings = list(dict.fromkeys(texts))

    def table_warnings(self) -> list[str]:
        return [*self.manifest_warnings, *self.warnings]

    def progress(self, text: str) -> None:
        if text == self._progress:
            return
        self._progress = text
        self._write(f"\r\033[K{text}" if self.interactive else text + "\n")

    def end_progress(self) -> None:
        if self.interactive and self._progress:
            self._write("\r\033[K")
        self._progress = ""


@dataclass(frozen=True)
class PodRow:
    name: str  # "<ns>/<name>"
    address: str
    ready: bool
    restarts: int
    logs: str


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    rows = [list(header), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def conditions_text(conditions: Iterable[Condition]) -> str:
    """`Accepted=True ResolvedRefs=True`, with the reason and message of anything not True."""
    parts: list[str] = []
    for condition in conditions:
        text = f"{condition.type}={condition.status}"
        if condition.status is not ConditionStatus.TRUE:
            text += f" ({condition.reason}: {condition.message})"
        if text not in parts:
            parts.append(text)
    return " ".join(parts) or "-"


def route_conditions(status: ObjectStatus) -> list[Condition]:
    """A route's conditions for its row: an AIGatewayRoute's own Accepted sums up its parents; an HTTPRoute's verdicts
    are per parent Gateway, each message naming it."""
    if status.ref.kind == "AIGatewayRoute":
        return list(status.conditions)
    per_parent = [
        replace(c, message=f"Gateway {p.parent.namespace}/{p.parent.name}: {c.message}")
        for p in status.parents
        for c in p.conditions
    ]
    return [*status.conditions, *per_parent]


def _endpoint_names(endpoints: Iterable[tuple[str, int]], pod_names: Mapping[str, str]) -> str:
    names = [pod_names.get(address, f"{address}:{port}") for address, port in endpoints]
    return ", ".join(names) or "-"


def status_table(
    translation: Translation,
    statuses: Sequence[ObjectStatus],
    gateway_urls: Mapping[str, Sequence[str]],
    pods: Sequence[PodRow],
    warnings: Sequence[str],
) -> str:
    pod_names = {pod.address: pod.name.partition("/")[2] for pod in pods}
    by_object = {(s.ref.kind, s.ref.namespace, s.ref.name): s for s in statuses}
    lines: list[str] = []
    gateway_rows = []
    for gateway in translation.gateways:
        status = by_object.get(("Gateway", gateway.namespace, gateway.name))
        urls = " ".join(gateway_urls.get(gateway.key, ())) or "-"
        gateway_rows.append([gateway.key, urls, conditions_text(status.conditions if status else ())])
    lines += table(["GATEWAY", "URL", "CONDITIONS"], gateway_rows)
    route_rows = [
        [f"{s.ref.kind} {s.ref.namespace}/{s.ref.name}", conditions_text(route_conditions(s))]
        for s in statuses
        if s.ref.kind in ROUTE_KINDS
    ]
    lines += ["", *table(["ROUTE", "CONDITIONS"], route_rows)]
    backend_rows = {}
    for gateway in translation.gateways:
        for cluster in gateway.clusters:
            # A pool's cluster also holds its not-Ready pods (for the picker's sake): they are not counted as ready.
            ready_endpoints = {
                g.backend: [(e.address, e.port) for e in g.endpoints if e.health is EndpointHealth.READY]
                for g in cluster.groups
            }
            count = sum(len(found) for found in ready_endpoints.values())
            ready = str(count) if cluster.discovery is not Discovery.STRICT_DNS else "DNS"
            if len(cluster.groups) == 1:
                shown = _endpoint_names(ready_endpoints[cluster.groups[0].backend], pod_names)
            else:  # a weighted rule: each backend with its weight (and priority, when it is a fallback)
                shown = "; ".join(
                    f"{g.backend} weight {g.weight}{f' priority {g.priority}' if g.priority else ''}: "
                    f"{_endpoint_names(ready_endpoints[g.backend], pod_names)}"
                    for g in cluster.groups
                )
            backend_rows[cluster.name] = [cluster.name, ready, shown]
    lines += ["", *table(["BACKEND", "READY", "ENDPOINTS"], [backend_rows[k] for k in sorted(backend_rows)])]
    pool_rows = []
    for pool in translation.pools:
        picker = pool.picker_config
        config = f"{picker.origin}: {picker.error}" if picker.error else picker.origin
        pool_rows.append(
            [
                f"{pool.namespace}/{pool.name}",
                str(len(pool.endpoints)),
                "FailOpen" if pool.fail_open else "FailClose",
                config,
            ]
        )
    if pool_rows:
        lines += ["", *table(["POOL", "READY", "FAILURE MODE", "PICKER CONFIG"], pool_rows)]
    pod_rows = [[p.name, p.address, "yes" if p.ready else "no", str(p.restarts), p.logs] for p in pods]
    if pod_rows:
        lines += ["", *table(["POD", "ADDRESS", "READY", "RESTARTS", "LOG"], pod_rows)]
    if warnings:
        lines += ["", *(f"warning: {w}" for w in warnings)]
    return "\n".join(lines) + "\n"
