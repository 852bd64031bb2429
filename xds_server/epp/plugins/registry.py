"""Plugin type names -> the classes that build them, as an EndpointPickerConfig names them in `plugins[].type`."""

from __future__ import annotations

from typing import TypeVar

from xds_server.epp.plugins.base import PickerConfigError, Plugin
from xds_server.epp.plugins.header_selection_filter import HeaderSelectionFilter
from xds_server.epp.plugins.kv_cache_scorer import KVCacheScorer
from xds_server.epp.plugins.lora_affinity_scorer import LoraAffinityScorer
from xds_server.epp.plugins.max_score_picker import MaxScorePicker
from xds_server.epp.plugins.prefix_cache_scorer import PrefixCacheScorer
from xds_server.epp.plugins.queue_scorer import QueueScorer
from xds_server.epp.plugins.random_picker import RandomPicker
from xds_server.epp.plugins.running_requests_scorer import RunningRequestsScorer
from xds_server.epp.plugins.served_endpoint_verifier import ServedEndpointVerifier
from xds_server.epp.plugins.single_profile_handler import SingleProfileHandler
from xds_server.epp.plugins.utilization_detector import UtilizationDetector
from xds_server.epp.plugins.weighted_random_picker import WeightedRandomPicker

P = TypeVar("P", bound=Plugin)


class DuplicatePluginType(ValueError):
    """Two plugin classes registered under one type name: a config naming it would be ambiguous."""


class Registry:
    def __init__(self) -> None:
        self._types: dict[str, type[Plugin]] = {}

    def register(self, plugin: type[P]) -> type[P]:
        """Adds a plugin class under its `type_name`; refuses a name already taken."""
        name = plugin.type_name
        taken = self._types.get(name)
        if taken is not None:
            raise DuplicatePluginType(
                f"plugin type {name!r} is already registered (by {taken.__qualname__}), cannot register "
                f"{plugin.__qualname__}"
            )
        self._types[name] = plugin
        return plugin

    def build(self, type_name: str, name: str, parameters: object) -> Plugin:
        """A plugin of `type_name` called `name`, its parameters parsed by the plugin's class."""
        plugin = self._types.get(type_name)
        if plugin is None:
            known = ", ".join(sorted(self._types))
            raise PickerConfigError(f"plugin {name}: unknown type {type_name!r} (known: {known})")
        return plugin.from_parameters(name, parameters)


REGISTRY = Registry()
for _plugin in (
    QueueScorer,
    RunningRequestsScorer,
    KVCacheScorer,
    LoraAffinityScorer,
    PrefixCacheScorer,
    HeaderSelectionFilter,
    MaxScorePicker,
    RandomPicker,
    WeightedRandomPicker,
    ServedEndpointVerifier,
    UtilizationDetector,
    SingleProfileHandler,
):
    REGISTRY.register(_plugin)


def build_plugin(type_name: str, name: str, parameters: object) -> Plugin:
    return REGISTRY.build(type_name, name, parameters)
