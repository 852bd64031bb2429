"""Deployments -> pods as a cluster would make them: names, labels, environment, and the Pod objects translation reads.

Pure functions and frozen plans; starting processes is `workloads`' job.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import random
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from translators.loader import ObjectKey, Origin, ResourceSet, object_key
from translators.resources import ConfigMap, Deployment, Pod, Secret
from translators.resources.base import ObjectMeta
from translators.resources.core import Container, PodCondition, PodStatus
from xds_server.up.images import Runtime, recognise

# Kubernetes' "safe" alphabet for generated name parts: no vowels (no words), no look-alike characters.
NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
TEMPLATE_HASH_LABEL = "pod-template-hash"
_VARIABLE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_LABEL_FIELD = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


@dataclass(frozen=True)
class ContainerPlan:
    container: Container
    runtime: Runtime

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(port.container_port for port in self.container.ports if port.protocol == "TCP")


@dataclass(frozen=True)
class DeploymentPlan:
    """What `up` does with one Deployment: run `replicas` pods of `containers`, or nothing, and why."""

    deployment: Deployment
    template_hash: str
    containers: tuple[ContainerPlan, ...]
    unrecognised: tuple[str, ...] = ()  # images no local program stands in for: no pod of it exists
    picker: bool = False  # an Endpoint Picker Deployment: its pool is served by the embedded picker

    @property
    def key(self) -> ObjectKey:
        return object_key(self.deployment)

    @property
    def replicas(self) -> int:
        return 0 if self.unrecognised or self.picker else self.deployment.spec.replicas


def _safe_encode(digest: bytes, length: int) -> str:
    number = int.from_bytes(digest, "big")
    chars = []
    for _ in range(length):
        number, index = divmod(number, len(NAME_ALPHABET))
        chars.append(NAME_ALPHABET[index])
    return "".join(chars)


def template_hash(deployment: Deployment) -> str:
    """Like Kubernetes' pod-template-hash: changes with the pod template, not with replicas."""
    template = deployment.spec.template.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return _safe_encode(hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest(), 10)


def pod_name(plan: DeploymentPlan, rng: random.Random) -> str:
    """`<deployment>-<template hash>-<5 random characters>`, as a ReplicaSet names its pods."""
    suffix = "".join(rng.choice(NAME_ALPHABET) for _ in range(5))
    return f"{plan.deployment.name}-{plan.template_hash}-{suffix}"


def plan_deployment(deployment: Deployment) -> DeploymentPlan:
    containers = deployment.spec.template.spec.containers
    recognised = [(c, recognise(c.image)) for c in containers]
    unrecognised = tuple(c.image or f"(container {c.name} has no image)" for c, r in recognised if r is None)
    planned = tuple(ContainerPlan(c, r) for c, r in recognised if r is not None)
    return DeploymentPlan(
        deployment,
        template_hash(deployment),
        tuple(p for p in planned if p.runtime is not Runtime.PICKER),
        unrecognised,
        picker=any(p.runtime is Runtime.PICKER for p in planned),
    )


@dataclass(frozen=True)
class PodIdentity:
    name: str
    namespace: str
    address: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    service_account: str


def pod_identity(plan: DeploymentPlan, name: str, address: str) -> PodIdentity:
    template = plan.deployment.spec.template
    labels = {**template.metadata.labels, TEMPLATE_HASH_LABEL: plan.template_hash}
    return PodIdentity(name, plan.deployment.namespace, address, labels, template.metadata.annotations, "default")


def _field_value(path: str, pod: PodIdentity) -> str | None:
    """The downward API fields a local pod has: what a `fieldRef` may name."""
    simple = {
        "metadata.name": pod.name,
        "metadata.namespace": pod.namespace,
        "status.podIP": pod.address,
        "status.podIPs": pod.address,
        "status.hostIP": "127.0.0.1",
        "status.hostIPs": "127.0.0.1",
        "spec.nodeName": socket.gethostname(),
        "spec.serviceAccountName": pod.service_account,
    }
    if path in simple:
        return simple[path]
    match = _LABEL_FIELD.match(path)
    if match:
        source = pod.labels if match.group(1) == "labels" else pod.annotations
        return source.get(match.group(2), "")
    return None


def _key_ref(kind: str, ref: Mapping[str, Any], namespace: str, resources: ResourceSet) -> str | None:
    name, key = str(ref.get("name", "")), str(ref.get("key", ""))
    if kind == "configMapKeyRef":
        configmap = resources.get(ConfigMap, namespace, name)
        return None if configmap is None else configmap.data.get(key)
    secret = resources.get(Secret, namespace, name)
    if secret is None:
        return None
    if key in secret.string_data:
        return secret.string_data[key]
    if key not in secret.data:
        return None
    try:
        return base64.b64decode(secret.data[key]).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` references to variables defined before; `$$` escapes, unknown ones stay as written."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VARIABLE.sub(substitute, value)


def container_env(container: Container, pod: PodIdentity, resources: ResourceSet) -> tuple[dict[str, str], list[str]]:
    """The container's environment from its manifest (value, fieldRef, configMapKeyRef, secretKeyRef) and the
    problems found (a variable that cannot be resolved is left out, as an optional one would be)."""
    env: dict[str, str] = {}
    problems: list[str] = []
    for item in container.env:
        name = str(item.get("name", ""))
        if "value" in item:
            env[name] = expand(str(item["value"]), env)
            continue
        source = item.get("valueFrom") or {}
        value: str | None = None
        if "fieldRef" in source:
            path = str(source["fieldRef"].get("fieldPath", ""))
            value = _field_value(path, pod)
            if value is None:
                problems.append(f"env {name}: fieldRef {path} is not available locally")
        elif "configMapKeyRef" in source or "secretKeyRef" in source:
            kind = "configMapKeyRef" if "configMapKeyRef" in source else "secretKeyRef"
            value = _key_ref(kind, source[kind], pod.namespace, resources)
            if value is None and not source[kind].get("optional"):
                problems.append(f"env {name}: {kind} {source[kind].get('name')}/{source[kind].get('key')} not found")
        elif source:
            problems.append(f"env {name}: {', '.join(source)} is not supported locally")
        else:
            value = ""
        if value is not None:
            env[name] = value
    return env, problems


def pod_object(
    plan: DeploymentPlan, pod: PodIdentity, ready: bool, terminating: bool, since: str
) -> tuple[ObjectKey, Pod, Origin]:
    """The Pod as an API server would show it: translation selects it by labels and routes to its ready address."""
    obj = Pod(
        metadata=ObjectMeta(
            name=pod.name,
            namespace=pod.namespace,
            labels=dict(pod.labels),
            annotations=dict(pod.annotations),
            creation_timestamp=since,
            deletion_timestamp=since if terminating else None,  # leaves endpoints at once, like a deleted pod
        ),
        spec=plan.deployment.spec.template.spec,
        status=PodStatus(
            phase="Running",
            pod_ip=pod.address,
            conditions=[PodCondition(type="Ready", status="True" if ready else "False")],
        ),
    )
    origin = Origin(f"xds-server up: Deployment {plan.deployment.namespace}/{plan.deployment.name}", 0)
    return object_key(obj), obj, origin


def with_pods(resources: ResourceSet, pods: Mapping[ObjectKey, tuple[Pod, Origin]]) -> ResourceSet:
    """The loaded manifests plus the pods `up` runs: one ResourceSet, as a cluster's API server would hold them."""
    if not pods:
        return resources
    objects = {**resources.objects, **{key: pod for key, (pod, _) in pods.items()}}
    origins = {**resources.origins, **{key: origin for key, (_, origin) in pods.items()}}
    return ResourceSet(objects, origins, resources.unknown, resources.errors, warnings=resources.warnings)
