"""What the store keeps of an API object, and which changes of it are worth a new translation.

`managedFields` (server-side apply bookkeeping, often half an object's bytes) is dropped from every kind. Pods are
the most numerous objects in a cluster and carry a lot the translator never reads (volumes, env, tolerations,
container statuses): a Pod keeps what `translators.resources.core.Pod`, pool membership and endpoint selection read,
namely labels, annotations (the active-ports annotation), its containers' names and ports, phase, IPs and the Ready
condition. A PUT of a Pod's status is not something this project does, so nothing needs the rest. An object of a
report-only kind (a SecurityPolicy, a GRPCRoute, ...) keeps its metadata, the references its spec makes and its status
(the status writer merges into the stored status, keeping other controllers' entries): a PUT of `/status` ignores
everything but the status, so the trimmed spec is never written back.
"""

from __future__ import annotations

from typing import Any

from translators.loader import REFERENCE_FIELDS
from xds_server.sources.kubernetes.kinds import Kind

POD_METADATA = ("name", "namespace", "labels", "annotations", "generation", "resourceVersion", "deletionTimestamp")
POD_STATUS = ("phase", "podIP", "podIPs")


def strip(kind: Kind, raw: dict[str, Any]) -> dict[str, Any]:
    """The object as stored (a new dict; `raw` is left alone). Idempotent. A LIST leaves `apiVersion` and `kind`
    out of its items; they are set from the kind as listed."""
    metadata = raw.get("metadata")
    metadata = dict(metadata) if isinstance(metadata, dict) else {}
    metadata.pop("managedFields", None)
    kept = {**raw, "apiVersion": kind.api_version, "kind": kind.kind, "metadata": metadata}
    if kind.trimmed and kind.group == "" and kind.kind == "Pod":
        return _pod(kept)
    if kind.report_only:
        return _report_only(kept)
    return kept


REPORTED_METADATA = ("name", "namespace", "uid", "labels", "generation", "resourceVersion", "deletionTimestamp")


def _report_only(raw: dict[str, Any]) -> dict[str, Any]:
    metadata = raw["metadata"]
    spec = _mapping(raw.get("spec"))
    kept = {
        "apiVersion": raw["apiVersion"],
        "kind": raw["kind"],
        "metadata": {key: metadata[key] for key in REPORTED_METADATA if key in metadata},
        "spec": {key: spec[key] for key in REFERENCE_FIELDS if key in spec},
    }
    if isinstance(raw.get("status"), dict):
        kept["status"] = raw["status"]
    return kept


def _pod(raw: dict[str, Any]) -> dict[str, Any]:
    metadata = raw["metadata"]
    spec = _mapping(raw.get("spec"))
    status = _mapping(raw.get("status"))
    containers = [
        {key: container[key] for key in ("name", "ports") if key in container}
        for container in spec.get("containers") or []
        if isinstance(container, dict)
    ]
    kept_status = {key: status[key] for key in POD_STATUS if key in status}
    ready = [
        {"type": "Ready", "status": condition.get("status")}
        for condition in status.get("conditions") or []
        if isinstance(condition, dict) and condition.get("type") == "Ready"
    ]
    if ready:
        kept_status["conditions"] = ready
    return {
        "apiVersion": raw["apiVersion"],
        "kind": raw["kind"],
        "metadata": {key: metadata[key] for key in POD_METADATA if key in metadata},
        "spec": {"containers": containers},
        "status": kept_status,
    }


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def metadata(raw: dict[str, Any]) -> dict[str, Any]:
    return _mapping(raw.get("metadata"))


def resource_version(raw: dict[str, Any]) -> str:
    return str(metadata(raw).get("resourceVersion") or "")


def is_newer(candidate: str, stored: str) -> bool:
    """Whether `candidate` is a later version than `stored`. Resource versions are etcd revisions in every API
    server in use; should one not be a number, any different version counts as newer."""
    try:
        return int(candidate) > int(stored)
    except ValueError:
        return candidate != stored


def _spec_signature(raw: dict[str, Any]) -> tuple[Any, ...]:
    meta = metadata(raw)
    return (meta.get("generation"), meta.get("labels"), meta.get("annotations"), meta.get("deletionTimestamp"))


def _report_signature(raw: dict[str, Any]) -> tuple[Any, ...]:
    meta = metadata(raw)
    return (meta.get("generation"), meta.get("labels"), meta.get("deletionTimestamp"), raw.get("spec"))


def _without_version(raw: dict[str, Any]) -> dict[str, Any]:
    return {**raw, "metadata": {**metadata(raw), "resourceVersion": None}}


def translation_input_changed(kind: Kind, old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether a new version of a stored object (both as stored) can change what translation makes of it.

    A report-only kind: its generation, labels, references and deletion, never its status (ours to write).
    With a status subresource, every spec change bumps `metadata.generation` and the models read no status: only
    generation, labels, annotations and deletion matter. Other kinds (Pods, Services, Secrets, ...) change
    whenever what is stored of them changes, resourceVersion aside (for a Pod, a container restart or a kubelet
    heartbeat touches only fields that were stripped).
    """
    if kind.report_only:  # what the translator reads of it: its generation, labels and references
        return _report_signature(old) != _report_signature(new)
    if kind.status_subresource:
        return _spec_signature(old) != _spec_signature(new)
    return _without_version(old) != _without_version(new)
