"""EndpointPickerConfig (the Inference Extension's picker config format) -> the plugins one pool schedules with.

Defaults follow the Inference Extension: a plugin's name defaults to its type; with no scheduling profile, one
`default` profile uses every filter, scorer and picker listed; a profile without a picker gets
`max-score-picker`; a scorer without a weight weighs 1. With no config at all, a pool uses the shipped default:
queue 2, kv-cache 2, prefix 3, max-score picker. A config the picker cannot run raises `PickerConfigError` naming
the plugin and parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from xds_server.epp.plugins.base import Filter, Picker, PickerConfigError, Plugin, ResponsePlugin, Scorer
from xds_server.epp.plugins.max_score_picker import MaxScorePicker
from xds_server.epp.plugins.registry import build_plugin
from xds_server.epp.plugins.single_profile_handler import SingleProfileHandler
from xds_server.epp.plugins.utilization_detector import SaturationDetector, UtilizationDetector

API_VERSION = "inference.networking.x-k8s.io/v1alpha1"
KIND = "EndpointPickerConfig"
DEFAULT_PROFILE_TEXT = f"""
apiVersion: {API_VERSION}
kind: {KIND}
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
  - pluginRef: max-score-picker
"""
# Accepted and meaningless here: gates of the Go implementation's internals.
_IGNORED_KEYS = {"apiVersion", "kind", "featureGates"}
_KNOWN_KEYS = _IGNORED_KEYS | {"plugins", "schedulingProfiles", "saturationDetector"}


@dataclass
class Profile:
    name: str
    filters: list[Filter]
    scorers: list[tuple[Scorer, float]]
    picker: Picker


@dataclass
class PickerConfig:
    profile: Profile
    saturation: SaturationDetector
    response_plugins: list[ResponsePlugin]
    origin: str
    plugins: dict[str, Plugin] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """For /debug: what the pool schedules with."""
        return {
            "origin": self.origin,
            "profile": self.profile.name,
            "filters": [f.name for f in self.profile.filters],
            "scorers": {scorer.name: weight for scorer, weight in self.profile.scorers},
            "picker": {"name": self.profile.picker.name, "maxNumOfEndpoints": self.profile.picker.max_endpoints},
            "saturation": {
                "queueDepthThreshold": self.saturation.queue_depth,
                "kvCacheUtilThreshold": self.saturation.kv_usage,
                "metricsStalenessThreshold": f"{self.saturation.staleness * 1000:g}ms",
            },
            "responsePlugins": [p.name for p in self.response_plugins],
        }


def load_config(text: str | None, origin: str) -> PickerConfig:
    """Parses and builds a config; `None` gives the default profile. Raises PickerConfigError."""
    if text is None:
        return load_config(DEFAULT_PROFILE_TEXT, origin)
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PickerConfigError(f"not YAML: {error}") from None
    if not isinstance(document, dict):
        raise PickerConfigError(f"expected a {KIND} mapping")
    if document.get("kind", KIND) != KIND:
        raise PickerConfigError(f"kind must be {KIND}, got {document.get('kind')!r}")
    unknown = sorted(set(document) - _KNOWN_KEYS)
    if unknown:
        raise PickerConfigError(f"{unknown[0]} is not supported by the embedded picker")
    plugins = _plugins(document.get("plugins"))
    profile = _profile(document.get("schedulingProfiles"), plugins)
    return PickerConfig(
        profile=profile,
        saturation=_saturation(document.get("saturationDetector"), plugins),
        response_plugins=[p for p in plugins.values() if isinstance(p, ResponsePlugin)],
        origin=origin,
        plugins=plugins,
    )


def _plugins(entries: object) -> dict[str, Plugin]:
    if not isinstance(entries, list) or not entries:
        raise PickerConfigError("plugins must be a non-empty list")
    plugins: dict[str, Plugin] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise PickerConfigError(f"plugins[{index}]: needs a type")
        name = entry.get("name") or entry["type"]
        if not isinstance(name, str):
            raise PickerConfigError(f"plugins[{index}]: name must be a string")
        if name in plugins:
            raise PickerConfigError(f"plugin {name}: defined twice")
        unknown = sorted(set(entry) - {"name", "type", "parameters"})
        if unknown:
            raise PickerConfigError(f"plugin {name}: unknown field {unknown[0]}")
        plugins[name] = build_plugin(entry["type"], name, entry.get("parameters"))
    return plugins


def _profile(entries: object, plugins: dict[str, Plugin]) -> Profile:
    if entries is None:
        refs: list[dict[str, Any]] = [
            {"pluginRef": name} for name, p in plugins.items() if isinstance(p, Filter | Scorer | Picker)
        ]
        entries = [{"name": "default", "plugins": refs}]
    if not isinstance(entries, list) or len(entries) != 1:
        raise PickerConfigError(
            "schedulingProfiles: exactly one profile is supported (the single-profile-handler runs one profile)"
        )
    entry = entries[0]
    if not isinstance(entry, dict) or not isinstance(entry.get("plugins"), list):
        raise PickerConfigError("schedulingProfiles[0]: needs a name and a plugins list")
    name = str(entry.get("name", "default"))
    filters: list[Filter] = []
    scorers: list[tuple[Scorer, float]] = []
    pickers: list[Picker] = []
    for index, ref in enumerate(entry["plugins"]):
        if not isinstance(ref, dict) or ref.get("pluginRef") not in plugins:
            wanted = ref.get("pluginRef") if isinstance(ref, dict) else ref
            raise PickerConfigError(f"profile {name}: plugins[{index}] refers to unknown plugin {wanted!r}")
        plugin = plugins[ref["pluginRef"]]
        weight = ref.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise PickerConfigError(f"profile {name}: plugin {plugin.name}: weight must be a number >= 0")
        if isinstance(plugin, Filter):
            filters.append(plugin)
        elif isinstance(plugin, Scorer):
            scorers.append((plugin, float(weight)))
        elif isinstance(plugin, Picker):
            pickers.append(plugin)
        elif not isinstance(plugin, SingleProfileHandler):
            raise PickerConfigError(
                f"profile {name}: plugin {plugin.name} ({plugin.type_name}) cannot run in a profile"
            )
    if len(pickers) > 1:
        raise PickerConfigError(f"profile {name}: more than one picker ({', '.join(p.name for p in pickers)})")
    picker = pickers[0] if pickers else MaxScorePicker("max-score-picker")
    return Profile(name, filters, scorers, picker)


def _saturation(entry: object, plugins: dict[str, Plugin]) -> SaturationDetector:
    if entry is None:
        detectors = [p for p in plugins.values() if isinstance(p, UtilizationDetector)]
        return detectors[0].detector if detectors else SaturationDetector()
    ref = entry.get("pluginRef") if isinstance(entry, dict) else None
    plugin = plugins.get(ref) if isinstance(ref, str) else None
    if not isinstance(plugin, UtilizationDetector):
        raise PickerConfigError(f"saturationDetector: pluginRef {ref!r} is not a utilization-detector plugin")
    return plugin.detector
