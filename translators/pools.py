"""What an InferencePool's picker chooses from: its members (pod x active targetPort) and its objectives.

A pool's targetPorts are each an endpoint of every selected pod (data-parallel ranks of one model server). A pod
can narrow that down with the annotation `inference.networking.k8s.io/active-ports: "8000,8001"`, as the
Inference Extension's picker reads it; a value that does not parse leaves every targetPort active.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from translators.ir import ObjectiveIR, PoolMember
from translators.resources import InferenceObjective, InferencePool, Pod
from translators.resources.inference import INFERENCE_GROUP

ACTIVE_PORTS_ANNOTATION = "inference.networking.k8s.io/active-ports"
ENGINE_LABEL = "inference.networking.k8s.io/engine-type"
DEFAULT_ENGINE = "vllm"
_PORT = re.compile(r"^[0-9]{1,5}$")


def parse_active_ports(value: str) -> frozenset[int] | None:
    """`"8000, 8001"` -> {8000, 8001}; None when the value is not a comma list of port numbers."""
    ports: set[int] = set()
    for part in value.split(","):
        part = part.strip()
        if not _PORT.match(part) or not 1 <= int(part) <= 65535:
            return None
        ports.add(int(part))
    return frozenset(ports)


def active_ports(pod: Pod, target_ports: Sequence[int]) -> tuple[int, ...]:
    """The pool's targetPorts this pod serves, in targetPorts order."""
    annotation = pod.metadata.annotations.get(ACTIVE_PORTS_ANNOTATION)
    listed = parse_active_ports(annotation) if annotation is not None else None
    if listed is None:
        return tuple(target_ports)
    return tuple(port for port in target_ports if port in listed)


def pool_members(pool: InferencePool, pods: Iterable[Pod]) -> tuple[PoolMember, ...]:
    """`pods` are the Ready pods the pool selects; sorted by address, then port."""
    target_ports = [port.number for port in pool.spec.target_ports]
    members = {
        PoolMember(
            address=pod.status.pod_ip or "",
            port=port,
            pod=pod.name,
            engine=pod.metadata.labels.get(ENGINE_LABEL, DEFAULT_ENGINE),
        )
        for pod in pods
        for port in active_ports(pod, target_ports)
    }
    return tuple(sorted(members))


def pool_objectives(pool: InferencePool, objectives: Iterable[InferenceObjective]) -> tuple[ObjectiveIR, ...]:
    """The InferenceObjectives of the pool's namespace whose poolRef names it, sorted by name."""
    found = [
        ObjectiveIR(objective.name, objective.spec.priority or 0)
        for objective in objectives
        if objective.namespace == pool.namespace
        and (objective.spec.pool_ref.group, objective.spec.pool_ref.kind) == (INFERENCE_GROUP, "InferencePool")
        and objective.spec.pool_ref.name == pool.name
    ]
    return tuple(sorted(found, key=lambda o: o.name))
