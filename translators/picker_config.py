"""Which EndpointPickerConfig an InferencePool's picker runs with, found where a cluster's picker would read it.

On a cluster the pool's endpointPickerRef Service selects a picker Deployment started with
`--config-file /config/default-plugins.yaml`, a file of a mounted ConfigMap (the tutorial sets it up so). The
embedded picker replaces that Deployment, so it follows the same chain to run with the same configuration:
Service -> its selector -> a Deployment whose pod template it selects -> the container's flag -> the volumeMount
holding the file -> the ConfigMap volume -> the ConfigMap key. `--config-text` gives the text inline.

A chain that ends before a flag means nothing configures the picker: the default profile. One that breaks after
a `--config-file` is an error, because the operator asked for a file that is not there.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from translators.ir import DEFAULT_PICKER_CONFIG, PickerConfigIR
from translators.loader import ResourceSet
from translators.resources import ConfigMap, Deployment, InferencePool, Service
from translators.resources.core import Container, PodSpec, Volume

CONFIG_FILE_FLAG = "config-file"
CONFIG_TEXT_FLAG = "config-text"


class _Broken(Exception):
    """The chain from a --config-file to its text breaks; the message says where."""


def config_flags(argv: Sequence[str]) -> dict[str, str]:
    """The picker's config flags on a command line, by name: Go flag syntax (`-f v`, `--f v`, `--f=v`).

    The last occurrence of a flag wins, as with Go's flag package. A flag without a value maps to "". When
    both flags are set, the file is used (`PickerConfigFinder`).
    """
    found: dict[str, str] = {}
    for index, arg in enumerate(argv):
        if not arg.startswith("-"):
            continue
        name, equals, value = arg.lstrip("-").partition("=")
        if name not in (CONFIG_FILE_FLAG, CONFIG_TEXT_FLAG):
            continue
        if not equals:
            value = argv[index + 1] if index + 1 < len(argv) else ""
        found[name] = value
    return found


def _default(why: str) -> PickerConfigIR:
    return PickerConfigIR(None, f"{DEFAULT_PICKER_CONFIG.origin} ({why})")


def _volume_file(spec: PodSpec, container: Container, path: str) -> tuple[Volume, str]:
    """The volume holding `path` in the container, and the file's path inside that volume."""
    path = posixpath.normpath(path)
    mounts = [(posixpath.normpath(m.mount_path), m) for m in container.volume_mounts]
    holding = [(len(mp), mp, m) for mp, m in mounts if mp == "/" or path == mp or path.startswith(mp + "/")]
    if not holding:
        raise _Broken(f"no volumeMount of container {container.name} contains {path}")
    _, mount_path, best = max(holding, key=lambda h: h[0])  # the innermost mount hides the outer ones
    relative = path[len(mount_path) :].lstrip("/")
    if best.sub_path:
        relative = posixpath.join(best.sub_path, relative) if relative else best.sub_path
    relative = posixpath.normpath(relative) if relative else ""
    if relative in ("", "."):
        raise _Broken(f"{path} is where volume {best.name} is mounted, a directory, not a file")
    volume = next((v for v in spec.volumes if v.name == best.name), None)
    if volume is None:
        raise _Broken(f"volume {best.name}, mounted at {best.mount_path}, is not declared in the pod template")
    return volume, relative


def _configmap_key(volume: Volume, relative: str) -> tuple[str, str]:
    """(ConfigMap name, key) of the file at `relative` inside a ConfigMap volume."""
    source = volume.config_map
    if source is None:
        raise _Broken(f"volume {volume.name} is not a ConfigMap volume")
    if source.items:  # only the listed keys are projected, each at its own path
        key = next((item.key for item in source.items if posixpath.normpath(item.path) == relative), None)
        if key is None:
            raise _Broken(f"volume {volume.name} (ConfigMap {source.name}) maps no key to path {relative}")
        return source.name, key
    if "/" in relative:  # every key is a file at the volume's root
        raise _Broken(f"volume {volume.name} (ConfigMap {source.name}) has no file {relative}: keys are top-level")
    return source.name, relative


class PickerConfigFinder:
    """Follows the chain for each pool of one ResourceSet."""

    def __init__(self, resources: ResourceSet) -> None:
        self._resources = resources
        self._deployments: dict[str, list[Deployment]] = {}
        for deployment in resources.of_kind(Deployment):  # in name order, so the first match is deterministic
            self._deployments.setdefault(deployment.namespace, []).append(deployment)

    def find(self, pool: InferencePool) -> PickerConfigIR:
        ref = pool.spec.endpoint_picker_ref
        if ref is None:
            return DEFAULT_PICKER_CONFIG
        namespace = pool.namespace
        if (ref.group, ref.kind) != ("", "Service"):
            return _default(f"endpointPickerRef is a {ref.kind}, not a Service")
        service = self._resources.get(Service, namespace, ref.name)
        if service is None:
            return _default(f"Service {namespace}/{ref.name} not found")
        selector = service.spec.selector
        if not selector:
            return _default(f"Service {namespace}/{ref.name} has no selector")
        selected = [
            d
            for d in self._deployments.get(namespace, [])
            if all(d.spec.template.metadata.labels.get(k) == v for k, v in selector.items())
        ]
        if not selected:
            return _default(f"no Deployment in {namespace} matches the selector of Service {namespace}/{ref.name}")
        for deployment in selected:
            for container in deployment.spec.template.spec.containers:
                flags = config_flags([*container.command, *container.args])
                if flags:
                    return self._from_flags(deployment, container, flags)
        names = ", ".join(f"{namespace}/{d.name}" for d in selected)
        return _default(f"Deployment {names} runs without --{CONFIG_FILE_FLAG} or --{CONFIG_TEXT_FLAG}")

    def _from_flags(self, deployment: Deployment, container: Container, flags: dict[str, str]) -> PickerConfigIR:
        where = f"Deployment {deployment.namespace}/{deployment.name}"
        path = flags.get(CONFIG_FILE_FLAG)
        if path is None:  # only --config-text
            return PickerConfigIR(flags[CONFIG_TEXT_FLAG], f"{where} --{CONFIG_TEXT_FLAG}")
        where = f"{where} --{CONFIG_FILE_FLAG} {path}"
        try:
            if not path:
                raise _Broken(f"--{CONFIG_FILE_FLAG} has no value")
            volume, relative = _volume_file(deployment.spec.template.spec, container, path)
            name, key = _configmap_key(volume, relative)
            configmap = self._resources.get(ConfigMap, deployment.namespace, name)
            if configmap is None:
                raise _Broken(f"ConfigMap {deployment.namespace}/{name} (volume {volume.name}) not found")
            if key not in configmap.data:
                raise _Broken(f"ConfigMap {deployment.namespace}/{name} has no key {key}")
        except _Broken as broken:
            return PickerConfigIR(None, where, error=str(broken))
        return PickerConfigIR(configmap.data[key], f"ConfigMap {deployment.namespace}/{name} key {key} ({where})")
