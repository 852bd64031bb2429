"""A pod's volumes as files on this machine, written the way the kubelet writes them, and its downward-API fields.

ConfigMap, Secret, projected (service-account token, ConfigMap, Secret, downward API) and downwardAPI volumes are
rendered into a directory per volume with the kubelet's atomic layout: the files live in a timestamped `..<n>`
directory, `..data` is a symlink to it, and each top-level name is a symlink through `..data`. An update swaps
`..data` in one rename, so a reader (Envoy's file SDS watching the directory) never sees half a change. emptyDir is
an empty directory; hostPath is the host's own path. Anything else is refused with the reason.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testing.localnode.cache import CONFIG_MAP, SECRET, ObjectCache

DEFAULT_MODE = 0o644
TokenSource = Callable[[str, int], Awaitable[str]]  # (audience, expirationSeconds) -> a token bound to the pod


class VolumeNotReady(Exception):
    """What a volume needs is missing (a ConfigMap, a Secret, a key); the pod waits and says why."""


class UnsupportedVolume(Exception):
    """A volume type the local node cannot provide."""


@dataclass(frozen=True)
class File:
    data: bytes
    mode: int


@dataclass(frozen=True)
class HostPath:
    path: str


# Rendered files by relative path; None for an empty directory (emptyDir); HostPath for the host's own directory.
Rendered = dict[str, File] | HostPath | None


# --- downward API -------------------------------------------------------------------------------------------------


def _quoted(values: Mapping[str, Any]) -> str:
    return "\n".join(f"{key}={json.dumps(str(value))}" for key, value in sorted(values.items()))


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """A `fieldRef.fieldPath` of the pod, as the kubelet formats it."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(entry.get("ip", "") for entry in status.get("podIPs") or []),
        "status.hostIPs": ",".join(entry.get("ip", "") for entry in status.get("hostIPs") or []),
    }
    if path in simple:
        return str(simple[path] or "")
    for prefix, source in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
        values = meta.get(source) or {}
        if path == prefix:
            return _quoted(values)
        if path.startswith(prefix + "['") and path.endswith("']"):
            return str(values.get(path[len(prefix) + 2 : -2], ""))
    raise UnsupportedVolume(f"fieldRef {path!r} is not supported by the local node")


def resource_value(
    pod: Mapping[str, Any], container_name: str | None, resource: str, allocatable: Mapping[str, str]
) -> str:
    """A `resourceFieldRef`: the container's limit or request, else (limits) the node's allocatable, as Kubernetes
    does. Quantities are returned as written (no divisor arithmetic)."""
    containers = (pod.get("spec") or {}).get("containers") or []
    container = next((c for c in containers if c.get("name") == container_name), containers[0] if containers else {})
    section, _, name = resource.partition(".")
    value = ((container.get("resources") or {}).get(section) or {}).get(name)
    if value is None and section == "limits":
        value = allocatable.get(name)
    return str(value or "0")


# --- rendering ----------------------------------------------------------------------------------------------------


def decoded(obj: Mapping[str, Any], secret: bool) -> dict[str, bytes]:
    if secret:
        return {key: base64.b64decode(value) for key, value in (obj.get("data") or {}).items()}
    data = {key: str(value).encode() for key, value in (obj.get("data") or {}).items()}
    data.update({key: base64.b64decode(value) for key, value in (obj.get("binaryData") or {}).items()})
    return data


def _keyed(
    cache: ObjectCache, namespace: str, source: Mapping[str, Any], secret: bool, default_mode: int
) -> dict[str, File]:
    name = str(source.get("secretName" if secret and "secretName" in source else "name") or "")
    kind = SECRET if secret else CONFIG_MAP
    obj = cache.get(kind, namespace, name)
    optional = bool(source.get("optional"))
    if obj is None:
        if optional:
            return {}
        raise VolumeNotReady(f'{kind.kind} "{name}" not found')
    data = decoded(obj, secret)
    mode = int(source.get("defaultMode", default_mode))
    items = source.get("items")
    if not items:
        return {key: File(value, mode) for key, value in data.items()}
    files = {}
    for item in items:
        key = str(item.get("key"))
        if key not in data:
            if optional:
                continue
            raise VolumeNotReady(f'key "{key}" not found in {kind.kind} "{name}"')
        files[str(item.get("path") or key)] = File(data[key], int(item.get("mode", mode)))
    return files


def _downward(
    pod: Mapping[str, Any], items: list[Mapping[str, Any]], mode: int, allocatable: Mapping[str, str]
) -> dict[str, File]:
    files = {}
    for item in items:
        if "fieldRef" in item:
            value = field_value(pod, str(item["fieldRef"].get("fieldPath")))
        else:
            ref = item.get("resourceFieldRef") or {}
            value = resource_value(pod, ref.get("containerName"), str(ref.get("resource")), allocatable)
        files[str(item["path"])] = File(value.encode(), int(item.get("mode", mode)))
    return files


async def render(
    volume: Mapping[str, Any],
    pod: Mapping[str, Any],
    cache: ObjectCache,
    tokens: TokenSource,
    allocatable: Mapping[str, str],
) -> Rendered:
    namespace = str((pod.get("metadata") or {}).get("namespace") or "")
    if "emptyDir" in volume:
        return None
    if "hostPath" in volume:
        return HostPath(str(volume["hostPath"].get("path")))
    if "configMap" in volume:
        return _keyed(cache, namespace, volume["configMap"], False, DEFAULT_MODE)
    if "secret" in volume:
        return _keyed(cache, namespace, volume["secret"], True, DEFAULT_MODE)
    if "downwardAPI" in volume:
        source = volume["downwardAPI"]
        return _downward(pod, source.get("items") or [], int(source.get("defaultMode", DEFAULT_MODE)), allocatable)
    if "projected" in volume:
        projected = volume["projected"]
        mode = int(projected.get("defaultMode", DEFAULT_MODE))
        files: dict[str, File] = {}
        for source in projected.get("sources") or []:
            if "serviceAccountToken" in source:
                token = source["serviceAccountToken"]
                value = await tokens(str(token.get("audience") or ""), int(token.get("expirationSeconds", 3600)))
                files[str(token["path"])] = File(value.encode(), mode)
            elif "configMap" in source:
                files.update(_keyed(cache, namespace, {"defaultMode": mode, **source["configMap"]}, False, mode))
            elif "secret" in source:
                files.update(_keyed(cache, namespace, {"defaultMode": mode, **source["secret"]}, True, mode))
            elif "downwardAPI" in source:
                files.update(_downward(pod, source["downwardAPI"].get("items") or [], mode, allocatable))
            else:
                raise UnsupportedVolume(f"projected source {sorted(source)} is not supported by the local node")
        return files
    kinds = sorted(key for key in volume if key != "name")
    raise UnsupportedVolume(f"volume {volume.get('name')!r} of type {kinds} is not supported by the local node")


# --- writing ------------------------------------------------------------------------------------------------------


def digest(files: Mapping[str, File]) -> str:
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode() + b"\0" + files[path].data + b"\0" + str(files[path].mode).encode() + b"\0")
    return h.hexdigest()


def write_atomically(directory: Path, files: Mapping[str, File]) -> None:
    """The kubelet's layout: `..<stamp>/` with the files, `..data` -> it, top-level names -> `..data/<name>`."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.time_ns()}"
    stamp.mkdir()
    for relative, file in files.items():
        target = stamp / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.data)
        target.chmod(file.mode)
    staging = directory / "..data_tmp"
    staging.unlink(missing_ok=True)
    staging.symlink_to(stamp.name)
    os.replace(staging, directory / "..data")
    top = {relative.split("/", 1)[0] for relative in files}
    for name in top:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    for entry in directory.iterdir():
        if entry.name.startswith(".."):
            if entry.name not in ("..data", stamp.name) and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
        elif entry.name not in top and entry.is_symlink():
            entry.unlink()
