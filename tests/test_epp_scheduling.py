"""The picker's config loading, plugins and scheduling decisions, on candidates with chosen metrics."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Callable

import pytest

from testing.manifests import TUTORIAL_PICKER_CONFIG
from translators.ir import PickerConfigIR, PoolIR, PoolMember
from xds_server.epp.config import load_config
from xds_server.epp.metrics import EndpointMetrics
from xds_server.epp.plugins import prefix_cache_scorer
from xds_server.epp.plugins.base import (
    Candidate,
    CycleState,
    NoParameters,
    PickerConfigError,
    PickerParams,
    PickRequest,
    restrict,
)
from xds_server.epp.plugins.header_selection_filter import HeaderSelectionFilter
from xds_server.epp.plugins.kv_cache_scorer import KVCacheScorer
from xds_server.epp.plugins.lora_affinity_scorer import LoraAffinityScorer
from xds_server.epp.plugins.max_score_picker import MaxScorePicker
from xds_server.epp.plugins.prefix_cache_scorer import PrefixCacheParams, PrefixCacheScorer, PrefixCycleState
from xds_server.epp.plugins.queue_scorer import QueueScorer
from xds_server.epp.plugins.registry import REGISTRY, DuplicatePluginType, Registry, build_plugin
from xds_server.epp.plugins.utilization_detector import SaturationDetector
from xds_server.epp.plugins.weighted_random_picker import WeightedRandomPicker
from xds_server.epp.pools import PoolState
from xds_server.epp.prefix import PrefixIndex, prefix_hashes
from xds_server.epp.scheduler import SchedulingError, schedule

NOW = 1000.0


def endpoint(index: int, waiting: int = 0, kv: float = 0.0, age: float = 0.0, **more: object) -> Candidate:
    metrics = EndpointMetrics(waiting=waiting, kv_usage=kv, updated=NOW - age, **more)  # type: ignore[arg-type]
    return Candidate(f"10.0.0.{index}:8000", f"10.0.0.{index}", 8000, f"pod-{index}", metrics)


def request(prompt: str = "hello", priority: int = 0, **headers: str) -> PickRequest:
    return PickRequest("llama", prompt, {k.replace("_", "-"): v for k, v in headers.items()}, priority)


def test_tutorial_config_gives_three_scorers_of_weight_one_and_a_max_score_picker() -> None:
    config = load_config(TUTORIAL_PICKER_CONFIG, "test")
    assert [(type(s), w) for s, w in config.profile.scorers] == [
        (QueueScorer, 1.0),
        (KVCacheScorer, 1.0),
        (PrefixCacheScorer, 1.0),
    ]
    assert isinstance(config.profile.picker, MaxScorePicker) and config.profile.picker.max_endpoints == 1
    prefix = config.profile.scorers[2][0]
    assert isinstance(prefix, PrefixCacheScorer)
    assert prefix.params == PrefixCacheParams(block_chars=64, max_blocks=256, lru_capacity=31250)
    assert prefix.index.capacity == 31250


def test_default_profile_weights_queue_and_kv_two_and_prefix_three() -> None:
    config = load_config(None, "default profile")
    assert [(s.name, w) for s, w in config.profile.scorers] == [
        ("queue-scorer", 2.0),
        ("kv-cache-utilization-scorer", 2.0),
        ("prefix-cache-scorer", 3.0),
    ]


def test_no_profiles_means_one_profile_with_every_listed_plugin() -> None:
    config = load_config("plugins: [{type: kv-cache-utilization-scorer}, {type: random-picker, name: r}]", "t")
    assert [s.name for s, _ in config.profile.scorers] == ["kv-cache-utilization-scorer"]
    assert config.profile.picker.name == "r"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("plugins: [{type: prefix-cache-scorer, parameters: {hashBlockSize: -3}}]", "hashBlockSize"),
        ("plugins: [{type: prefix-cache-scorer, parameters: {blockSize: 16}}]", "unknown parameter blockSize"),
        ("plugins: [{type: max-score-picker, name: p, parameters: {maxNumOfEndpoints: two}}]", "plugin p"),
        ("plugins: [{type: no-such-scorer}]", "unknown type 'no-such-scorer'"),
        ("plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: d, plugins: [{pluginRef: q}]}]", "'q'"),
        (
            "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: d, plugins: "
            "[{pluginRef: queue-scorer, weight: -1}]}]",
            "weight",
        ),
        (
            "plugins: [{type: utilization-detector, parameters: {metricsStalenessThreshold: soon}}]",
            "metricsStalenessThreshold",
        ),
        ("plugins: [{type: queue-scorer}]\nflowControl: {maxBytes: 1}", "flowControl"),
        ("plugins: [{type: queue-scorer}, {type: queue-scorer}]", "defined twice"),
    ],
)
def test_a_bad_config_names_the_plugin_and_parameter(text: str, message: str) -> None:
    with pytest.raises(PickerConfigError, match=message.replace("(", r"\(")):
        load_config(text, "test")


def test_saturation_thresholds_are_configurable() -> None:
    config = load_config(
        "plugins: [{type: queue-scorer}, {type: utilization-detector, name: u, parameters: "
        "{queueDepthThreshold: 2, kvCacheUtilThreshold: 0.5, metricsStalenessThreshold: 1s}}]\n"
        "saturationDetector: {pluginRef: u}",
        "t",
    )
    assert config.saturation == SaturationDetector(queue_depth=2, kv_usage=0.5, staleness=1.0)


def test_queue_scorer_scales_between_shortest_and_longest_queue() -> None:
    scores = QueueScorer("q").score(
        CycleState(), request(), [endpoint(1, waiting=0), endpoint(2, waiting=5), endpoint(3, waiting=10)]
    )
    assert scores == [1.0, 0.5, 0.0]
    assert QueueScorer("q").score(CycleState(), request(), [endpoint(1, waiting=3), endpoint(2, waiting=3)]) == [
        1.0,
        1.0,
    ]


def test_lora_affinity_prefers_a_running_adapter_then_a_free_slot() -> None:
    running = endpoint(1, active_models=frozenset({"llama"}), max_models=2)
    free_slot = endpoint(2, active_models=frozenset({"other"}), max_models=2)
    waiting = endpoint(3, active_models=frozenset({"a"}), waiting_models=frozenset({"llama"}), max_models=2)
    full = endpoint(4, active_models=frozenset({"a", "b"}), max_models=2)
    scores = LoraAffinityScorer("l").score(CycleState(), request(), [running, free_slot, waiting, full])
    assert scores == [1.0, 0.8, 0.6, 0.0]


def test_the_least_loaded_endpoint_wins_and_ties_are_shared() -> None:
    config = load_config(TUTORIAL_PICKER_CONFIG, "t")
    busy, idle = endpoint(1, waiting=8, kv=0.9), endpoint(2, waiting=0, kv=0.1)
    picks = {schedule(config, request(), [busy, idle], NOW).targets[0].key for _ in range(20)}
    assert picks == {idle.key}
    equal = [endpoint(i) for i in range(1, 4)]
    shared = Counter(
        schedule(load_config(TUTORIAL_PICKER_CONFIG, "t"), request(), equal, NOW).targets[0].key for _ in range(90)
    )
    assert len(shared) == 3  # random tie-break, not always the first


def test_requests_sharing_a_prefix_follow_the_first_pick() -> None:
    config = load_config(TUTORIAL_PICKER_CONFIG, "t")
    candidates = [endpoint(i) for i in range(1, 5)]
    system = "You are a helpful assistant that answers questions about the tutorial. " * 20
    first = schedule(config, request(system + "question one"), candidates, NOW).targets[0]
    for question in ("two", "three", "four"):
        decision = schedule(config, request(system + question), candidates, NOW)
        assert decision.targets[0] == first
        assert dict(zip([c.key for c in candidates], decision.scores[2][2], strict=True))[first.key] == 1.0


def test_max_score_picker_returns_fallbacks_in_score_order() -> None:
    picker = MaxScorePicker("p", PickerParams(max_endpoints=3))
    candidates = [endpoint(i) for i in range(1, 5)]
    assert [c.key for c in picker.pick(CycleState(), candidates, [0.1, 0.9, 0.5, 0.7])] == [
        candidates[1].key,
        candidates[3].key,
        candidates[2].key,
    ]


def test_weighted_random_picker_follows_the_scores() -> None:
    random.seed(7)
    candidates = [endpoint(1), endpoint(2)]
    picker = WeightedRandomPicker("w")
    counts = Counter(picker.pick(CycleState(), candidates, [0.9, 0.1])[0].key for _ in range(2000))
    assert counts[candidates[0].key] > counts[candidates[1].key] * 3


def test_sheddable_requests_are_refused_only_on_a_saturated_pool() -> None:
    config = load_config(TUTORIAL_PICKER_CONFIG, "t")
    saturated = [endpoint(1, waiting=9), endpoint(2, kv=0.95)]
    with pytest.raises(SchedulingError) as refused:
        schedule(config, request(priority=-1), saturated, NOW)
    assert refused.value.status == 429
    assert schedule(config, request(priority=0), saturated, NOW).targets  # not sheddable: still scheduled
    stale = [endpoint(1, age=5.0)]
    with pytest.raises(SchedulingError):
        schedule(config, request(priority=-1), stale, NOW)
    assert schedule(config, request(priority=-1), [endpoint(1), *saturated], NOW).targets[0].key == "10.0.0.1:8000"


def test_no_candidates_is_503_and_a_filter_leaving_none_is_429() -> None:
    config = load_config(TUTORIAL_PICKER_CONFIG, "t")
    with pytest.raises(SchedulingError) as empty:
        schedule(config, request(), [], NOW)
    assert empty.value.status == 503
    conformance = load_config("plugins: [{type: header-based-testing-filter}, {type: max-score-picker}]", "t")
    with pytest.raises(SchedulingError) as filtered:
        schedule(conformance, request(), [endpoint(1)], NOW)
    assert filtered.value.status == 429


def test_header_selection_filter_keeps_listed_ips_or_endpoints() -> None:
    candidates = [endpoint(1), endpoint(2), endpoint(3)]
    kept = HeaderSelectionFilter("h").filter(
        CycleState(), request(test_epp_endpoint_selection="10.0.0.1, 10.0.0.3:8000,10.0.0.2:9999"), candidates
    )
    assert [c.key for c in kept] == ["10.0.0.1:8000", "10.0.0.3:8000"]


def test_subset_hint_matches_ip_or_ip_and_port() -> None:
    candidates = [endpoint(1), endpoint(2), endpoint(3)]
    assert [c.pod for c in restrict(candidates, ["10.0.0.2"])] == ["pod-2"]
    assert [c.pod for c in restrict(candidates, ["10.0.0.1:8000,10.0.0.3:8000"])] == ["pod-1", "pod-3"]
    assert restrict(candidates, ["10.0.0.1:9000"]) == []


def test_prefix_hashes_chain_blocks_and_depend_on_the_model() -> None:
    text = "a" * 64 + "b" * 64 + "c" * 10
    hashes = prefix_hashes("m", text, 64, 256)
    assert len(hashes) == 2  # the partial block is left out
    assert prefix_hashes("m", "a" * 64 + "x" * 64, 64, 256)[0] == hashes[0]
    assert prefix_hashes("m", "a" * 64 + "x" * 64, 64, 256)[1] != hashes[1]
    assert prefix_hashes("other", text, 64, 256)[0] != hashes[0]
    assert prefix_hashes("m", "é" * 130, 64, 256) == prefix_hashes("m", "é" * 128, 64, 256)
    assert len(prefix_hashes("m", "z" * 64 * 10, 64, 3)) == 3


def test_prefix_index_evicts_least_recently_used_and_forgets_departed_endpoints() -> None:
    index = PrefixIndex(capacity=2)
    index.add("a", [1, 2])
    index.add("a", [1])  # 1 is now the most recent
    index.add("a", [3])  # evicts 2
    assert index.match([1]) == {"a": 1}
    assert index.match([2]) == {}
    index.add("b", [1, 5])
    assert index.match([1, 5]) == {"a": 1, "b": 2}
    index.remove_endpoints({"b"})
    assert index.match([1, 3]) == {"b": 1}
    assert index.size("a") == 0


def test_pool_state_keeps_candidates_and_reads_unknown_engines_with_vllm_names() -> None:
    members = (PoolMember("10.0.0.1", 8000, "a", "vllm"), PoolMember("10.0.0.2", 8000, "b", "triton-tensorrt-llm"))
    state = PoolState("default/p")
    state.update(PoolIR("default", "p", (), False, None, members=members))
    first = state.endpoints[0]
    assert state.engines == {"10.0.0.1:8000": "vllm", "10.0.0.2:8000": "vllm"}
    state.update(PoolIR("default", "p", (), False, None, members=members[:1]))
    assert state.endpoints == (first,) and state.endpoints[0] is first


def test_a_refused_config_keeps_the_last_good_one() -> None:
    state = PoolState("default/p")
    good = PickerConfigIR("plugins: [{type: random-picker}]", "ConfigMap default/x key a")
    state.update(PoolIR("default", "p", (), False, None, picker_config=good))
    bad = PickerConfigIR(
        "plugins: [{type: random-picker, parameters: {maxNumOfEndpoints: 0}}]", "ConfigMap default/x key a"
    )
    state.update(PoolIR("default", "p", (), False, None, picker_config=bad))
    assert state.config.profile.picker.name == "random-picker"
    assert state.config_error is not None and "maxNumOfEndpoints" in state.config_error


def test_the_registry_refuses_a_second_plugin_of_one_type_name() -> None:
    class OtherQueueScorer(QueueScorer):
        type_name = "queue-scorer"

    registry = Registry()
    registry.register(QueueScorer)
    with pytest.raises(DuplicatePluginType, match="'queue-scorer' is already registered"):
        registry.register(OtherQueueScorer)
    with pytest.raises(DuplicatePluginType):
        REGISTRY.register(OtherQueueScorer)  # the built-in registry too
    assert type(build_plugin("queue-scorer", "q", None)) is QueueScorer  # the built-in one still wins


@pytest.mark.parametrize(
    ("parse", "raw", "message"),
    [
        (PrefixCacheParams.parse, {"blockSize": 16}, "plugin p: unknown parameter blockSize"),
        (
            PrefixCacheParams.parse,
            {"hashBlockSize": "64"},
            "plugin p: parameter hashBlockSize must be an integer, got '64'",
        ),
        (PickerParams.parse, {"maxNumOfEndpoints": 1.5}, "plugin p: parameter maxNumOfEndpoints must be an integer"),
        (
            PickerParams.parse,
            {"maxNumOfEndpoints": 0},
            "plugin p: parameter maxNumOfEndpoints must be at least 1, got 0",
        ),
        (SaturationDetector.parse, {"kvCacheUtilThreshold": True}, "parameter kvCacheUtilThreshold must be a number"),
        (SaturationDetector.parse, {"metricsStalenessThreshold": "soon"}, "must be a duration like 200ms, got 'soon'"),
        (SaturationDetector.parse, [1], "plugin p: parameters must be a mapping"),
        (NoParameters.parse, {"weight": 2}, "plugin p: unknown parameter weight"),
    ],
)
def test_parameter_classes_refuse_unknown_names_and_wrong_types(
    parse: Callable[[str, object], object], raw: object, message: str
) -> None:
    with pytest.raises(PickerConfigError, match=message):
        parse("p", raw)


def test_parameters_parse_into_typed_frozen_values() -> None:
    picker = PickerParams.parse("p", {"maxNumOfEndpoints": 2.0})
    assert picker == PickerParams(max_endpoints=2) and type(picker.max_endpoints) is int
    prefix = PrefixCacheParams.parse("p", {"blockSizeTokens": 16, "maxPrefixTokensToMatch": 1024})
    assert prefix == PrefixCacheParams(block_chars=64, max_blocks=64, lru_capacity=31250)
    detector = SaturationDetector.parse("u", {"queueDepthThreshold": 3, "kvCacheUtilThreshold": 1})
    assert type(detector.kv_usage) is float and detector.staleness == 0.2
    with pytest.raises(dataclasses.FrozenInstanceError):
        picker.max_endpoints = 5  # type: ignore[misc]  # the point: parameters cannot change after parsing


def test_scheduling_leaves_the_pools_endpoints_and_earlier_candidates_unchanged() -> None:
    members = tuple(PoolMember(f"10.0.0.{i}", 8000, f"pod-{i}", "vllm") for i in range(1, 4))
    state = PoolState("default/p")
    state.update(PoolIR("default", "p", (), False, None, members=members))
    endpoints = state.endpoints
    before = [dataclasses.astuple(e) for e in endpoints]
    samples = {e.key: EndpointMetrics(waiting=i, updated=NOW) for i, e in enumerate(endpoints)}

    first = state.paired(samples.get)
    decision = schedule(state.config, request("hello " * 40), first, NOW)
    assert state.endpoints is endpoints and [dataclasses.astuple(e) for e in endpoints] == before
    assert decision.targets[0] in first and [c.metrics for c in first] == [samples[e.key] for e in endpoints]

    # the next request, after one endpoint was scraped again: a new candidate for it, the others shared
    fresher = EndpointMetrics(waiting=9, updated=NOW + 1)
    samples[endpoints[0].key] = fresher
    second = state.paired(samples.get)
    assert second[0] is not first[0] and second[0].metrics is fresher and first[0].metrics.waiting == 0
    assert second[1:] == first[1:] and all(a is b for a, b in zip(second[1:], first[1:], strict=True))
    with pytest.raises(dataclasses.FrozenInstanceError):
        first[0].metrics = fresher  # type: ignore[misc]  # the point: a candidate cannot change under a request
    with pytest.raises(dataclasses.FrozenInstanceError):
        request().prompt = "changed"  # type: ignore[misc]  # nor can the request


def test_never_scraped_endpoints_pair_with_stale_metrics() -> None:
    state = PoolState("default/p")
    state.update(PoolIR("default", "p", (), False, None, members=(PoolMember("10.0.0.1", 8000, "a", "vllm"),)))
    (candidate,) = state.paired(lambda key: None)
    assert candidate.key == "10.0.0.1:8000" and candidate.metrics.updated == 0.0  # as stale as can be


def test_prefix_hashes_are_computed_once_per_cycle_and_kept_under_the_scorers_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    def counting(model: str, prompt: str, block_chars: int, max_blocks: int) -> list[int]:
        calls.append(block_chars)
        return prefix_hashes(model, prompt, block_chars, max_blocks)

    monkeypatch.setattr(prefix_cache_scorer, "prefix_hashes", counting)
    config = load_config(
        "plugins:\n"
        "- {type: prefix-cache-scorer, name: chars}\n"
        "- {type: prefix-cache-scorer, name: tokens, parameters: {blockSizeTokens: 32}}\n"
        "- {type: max-score-picker}\n",
        "t",
    )
    prompt = "a shared system prompt. " * 20
    cycle = CycleState()
    decision = schedule(config, request(prompt), [endpoint(1), endpoint(2)], NOW, cycle)
    assert sorted(calls) == [64, 128]  # one computation per scorer for scoring and learning together
    chars = cycle.read("chars", PrefixCycleState)
    tokens = cycle.read("tokens", PrefixCycleState)
    assert chars is not None and list(chars.hashes) == prefix_hashes("llama", prompt, 64, 256)
    assert tokens is not None and list(tokens.hashes) == prefix_hashes("llama", prompt, 128, 256)
    assert "hashes" not in {f.name for f in dataclasses.fields(PickRequest)}  # nothing of it on the request

    calls.clear()
    again = schedule(config, request(prompt), [endpoint(1), endpoint(2)], NOW)  # a new cycle computes them anew
    assert sorted(calls) == [64, 128]
    assert again.targets[0].key == decision.targets[0].key  # and the first cycle's pick was learned
