"""The pure parts of the Kubernetes source: the kinds table against the CRDs and models, what is kept of an
object, which changes are published, the store's diff and last-good rules, the debouncer and the backoff. The
parts that talk to an API server are tested against a real one in e2e/kube/test_source.py."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import yaml

from translators.gatewayapi import translate
from translators.ir import ConditionStatus, TranslateOptions
from translators.loader import ObjectKey
from translators.resources import MODELS, HTTPRoute, Pod, Secret
from xds_server import metrics
from xds_server.sources.kubernetes import config
from xds_server.sources.kubernetes.client import ApiError, Gone, NotFound, RawApi
from xds_server.sources.kubernetes.debounce import Debouncer
from xds_server.sources.kubernetes.kinds import BY_NAME, KINDS, watched_kinds
from xds_server.sources.kubernetes.objects import is_newer, strip, translation_input_changed
from xds_server.sources.kubernetes.reflector import Backoff, Reflector, Timing
from xds_server.sources.kubernetes.store import Store

CRDS = Path(__file__).resolve().parent.parent / "charts" / "xds-server-crds" / "charts" / "upstream" / "files"
POD, ROUTE, SECRET = BY_NAME["Pod"], BY_NAME["HTTPRoute"], BY_NAME["Secret"]


def crd_versions() -> dict[tuple[str, str], tuple[str, bool, dict[str, dict[str, Any]]]]:
    """(group, kind) -> plural, namespaced, served version -> its definition, from the chart's CRDs."""
    found = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                spec = doc["spec"]
                served = {v["name"]: v for v in spec["versions"] if v.get("served")}
                found[(spec["group"], spec["names"]["kind"])] = (
                    spec["names"]["plural"],
                    spec["scope"] == "Namespaced",
                    served,
                )
    return found


BUILT_IN_GROUPS = ("", "apps", "discovery.k8s.io")  # served by every API server, no CRD


def test_every_custom_kind_is_listed_at_a_version_its_crd_serves() -> None:
    crds = crd_versions()
    checked = set()
    for kind in KINDS:
        if kind.group in BUILT_IN_GROUPS:
            continue
        if kind.report_only and (kind.group, kind.kind) not in crds:
            continue  # a kind we only report (Envoy Gateway's policies): its CRD is not ours to ship
        checked.add(kind.kind)
        plural, namespaced, served = crds[(kind.group, kind.kind)]
        assert (kind.plural, kind.namespaced) == (plural, namespaced), kind
        assert kind.version in served, kind
        assert kind.status_subresource == ("status" in (served[kind.version].get("subresources") or {})), kind
    # The report-only kinds of the Gateway API bundle the chart ships are checked too.
    assert {"GRPCRoute", "TLSRoute", "TCPRoute", "UDPRoute", "ListenerSet"} <= checked


def test_kinds_agree_with_the_models() -> None:
    for kind in watched_kinds():
        if kind.report_only:
            assert kind.model is None, f"{kind.kind} has a model: read it instead of reporting it"
            continue
        model = kind.model
        assert model is not None
        assert kind.version in model.versions, f"{kind.kind}: the model does not accept {kind.version}"
        assert kind.namespaced == model.namespaced, kind
    # Every model the translator reads is watched, except RBAC and ServiceAccounts (only `up` applies those).
    watched = {(k.group, k.kind) for k in watched_kinds()}
    not_watched = {key for key in MODELS if key not in watched}
    assert {kind for _, kind in not_watched} <= {
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
    }


def test_collection_paths() -> None:
    assert POD.path("ns") == "/api/v1/namespaces/ns/pods"
    assert POD.path(None) == "/api/v1/pods"
    assert BY_NAME["Namespace"].path("ignored") == "/api/v1/namespaces"
    assert BY_NAME["InferencePool"].path("ns") == "/apis/inference.networking.k8s.io/v1/namespaces/ns/inferencepools"
    assert BY_NAME["GatewayClass"].path(None) == "/apis/gateway.networking.k8s.io/v1/gatewayclasses"


def pod(name: str = "p", version: str = "1", ready: bool = True, ip: str = "10.0.0.1") -> dict[str, Any]:
    """A Pod as an API server lists it (items of a core LIST carry no apiVersion/kind)."""
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": "u",
            "resourceVersion": version,
            "labels": {"app": "a"},
            "annotations": {"inference.networking.k8s.io/active-ports": "8000"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "rs"}],
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "img",
                    "env": [{"name": "A", "value": "x" * 1000}],
                    "ports": [{"name": "http", "containerPort": 8000, "protocol": "TCP"}],
                }
            ],
            "volumes": [{"name": "v", "emptyDir": {}}],
            "tolerations": [{"key": "k"}],
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": "t"},
            ],
            "containerStatuses": [{"name": "c", "restartCount": 0}],
        },
    }


def test_a_pod_keeps_only_what_translation_reads() -> None:
    raw = pod()
    kept = strip(POD, raw)
    assert kept == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "labels": {"app": "a"},
            "annotations": {"inference.networking.k8s.io/active-ports": "8000"},
            "resourceVersion": "1",
        },
        "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]}]},
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.1",
            "podIPs": [{"ip": "10.0.0.1"}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    assert strip(POD, kept) == kept
    assert raw == pod(), "the input is left alone"
    parsed = Pod.model_validate(kept)
    assert parsed.is_ready
    assert parsed.container_port("http") == 8000


def test_managed_fields_go_from_every_kind_and_the_rest_stays() -> None:
    secret = {
        "metadata": {"name": "s", "namespace": "ns", "resourceVersion": "3", "managedFields": [{"manager": "m"}]},
        "type": "Opaque",
        "data": {"apiKey": "c2VjcmV0"},
    }
    kept = strip(SECRET, secret)
    assert kept == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s", "namespace": "ns", "resourceVersion": "3"},
        "type": "Opaque",
        "data": {"apiKey": "c2VjcmV0"},
    }
    assert Secret.model_validate(kept).data == {"apiKey": "c2VjcmV0"}


def route(version: str, generation: int = 1, hostname: str = "a.example", status: str = "") -> dict[str, Any]:
    raw: dict[str, Any] = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": "ns", "resourceVersion": version, "generation": generation},
        "spec": {"hostnames": [hostname], "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}]},
    }
    if status:
        raw["status"] = {"parents": [{"controllerName": status}]}
    return raw


def test_status_only_changes_of_kinds_with_a_status_subresource_do_not_count() -> None:
    old = strip(ROUTE, route("1"))
    assert not translation_input_changed(ROUTE, old, strip(ROUTE, route("2", status="x")))
    assert translation_input_changed(ROUTE, old, strip(ROUTE, route("2", generation=2, hostname="b.example")))
    labelled = route("2")
    labelled["metadata"]["labels"] = {"a": "b"}
    assert translation_input_changed(ROUTE, old, strip(ROUTE, labelled))
    deleting = route("2")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert translation_input_changed(ROUTE, old, strip(ROUTE, deleting))


def test_pod_changes_count_unless_only_stripped_fields_changed() -> None:
    old = strip(POD, pod("p", "1"))
    heartbeat = pod("p", "2")
    heartbeat["status"]["containerStatuses"][0]["restartCount"] = 1
    assert not translation_input_changed(POD, old, strip(POD, heartbeat))
    assert translation_input_changed(POD, old, strip(POD, pod("p", "2", ready=False)))
    assert translation_input_changed(POD, old, strip(POD, pod("p", "2", ip="10.0.0.2")))


def test_resource_versions_compare_as_numbers() -> None:
    assert is_newer("10", "9")
    assert not is_newer("9", "10")
    assert not is_newer("9", "9")
    assert is_newer("b", "a") and is_newer("a", "b")  # not numbers: any difference is news


class Recorder:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def test_store_parses_only_new_versions_and_reports_changes() -> None:
    changes = Recorder()
    store = Store(changes)
    assert store.upsert(ROUTE, route("1"))
    assert changes.calls == 1
    first = store.resource_set().get(HTTPRoute, "ns", "r")
    assert first is not None
    assert not store.upsert(ROUTE, route("1")), "the same version again"
    assert store.resource_set().get(HTTPRoute, "ns", "r") is first, "not parsed again"
    assert not store.upsert(ROUTE, route("2", status="ours")), "status only"
    assert changes.calls == 1
    assert store.get("HTTPRoute", "ns", "r") == strip(ROUTE, route("2", status="ours")), "raw updated all the same"
    assert store.upsert(ROUTE, route("3", generation=2, hostname="b.example"))
    changed = store.resource_set().get(HTTPRoute, "ns", "r")
    assert changed is not None and changed.spec.hostnames == ["b.example"]
    assert not store.upsert(ROUTE, route("2", generation=3, hostname="c.example")), "older than stored"
    assert store.delete(ROUTE, "ns", "r")
    assert not store.delete(ROUTE, "ns", "r")
    assert store.resource_set().objects == {}
    assert changes.calls == 3


def test_an_invalid_version_keeps_the_last_good_one_served_and_reports_why() -> None:
    store = Store()
    store.upsert(ROUTE, route("1"))
    store.upsert(ROUTE, route("2", generation=2, hostname="Not_A_Hostname"))
    resources = store.resource_set()
    served = resources.get(HTTPRoute, "ns", "r")
    assert served is not None and served.spec.hostnames == ["a.example"]
    [error] = resources.errors
    assert (error.kind, error.namespace, error.name, error.field) == ("HTTPRoute", "ns", "r", "spec.hostnames[0]")
    assert str(error).startswith("kubernetes: HTTPRoute/ns/r: field spec.hostnames[0]:")
    assert store.get("HTTPRoute", "ns", "r") == strip(ROUTE, route("2", generation=2, hostname="Not_A_Hostname"))
    store.upsert(ROUTE, route("3", generation=3, hostname="c.example"))
    resources = store.resource_set()
    assert resources.errors == ()
    fixed = resources.get(HTTPRoute, "ns", "r")
    assert fixed is not None and fixed.spec.hostnames == ["c.example"]


def test_each_resource_set_says_which_keys_it_serves_differently_from_the_one_before() -> None:
    store = Store()
    key = ObjectKey("HTTPRoute", "ns", "r")
    store.upsert(ROUTE, route("1"))
    first = store.resource_set()
    assert first.changed_since(first) is None  # the first set was made from nothing
    store.upsert(ROUTE, route("2", status="ours"))  # not seen by translation
    second = store.resource_set()
    assert second.changed_since(first) == frozenset()
    store.upsert(ROUTE, route("3", generation=2, hostname="Not_A_Hostname"))  # invalid: the last good one stays
    third = store.resource_set()
    assert third.changed_since(second) == frozenset() and third.errors
    store.upsert(ROUTE, route("4", generation=3, hostname="b.example"))
    fourth = store.resource_set()
    assert fourth.changed_since(third) == frozenset({key})
    assert fourth.changed_since(second) is None  # said only of the set it was made from
    store.delete(ROUTE, "ns", "r")
    assert store.resource_set().changed_since(fourth) == frozenset({key})


def test_an_invalid_new_object_is_an_error_and_nothing_else() -> None:
    store = Store()
    store.upsert(ROUTE, route("1", hostname="Bad_Host"))
    resources = store.resource_set()
    assert resources.objects == {}
    assert [e.name for e in resources.errors] == ["r"]
    store.delete(ROUTE, "ns", "r")
    assert store.resource_set().errors == ()


def test_a_relist_deletes_what_was_not_listed_in_its_scope_only() -> None:
    store = Store()
    for namespace, name in [("a", "p1"), ("a", "p2"), ("b", "p1")]:
        raw = pod(name)
        raw["metadata"]["namespace"] = namespace
        store.upsert(POD, raw)
    survivor = pod("p2", "5", ip="10.0.0.9")
    survivor["metadata"]["namespace"] = "a"
    assert store.replace(POD, "a", [survivor]) == 1
    keys = {key for key in store.resource_set().objects if key.kind == "Pod"}
    assert keys == {ObjectKey("Pod", "a", "p2"), ObjectKey("Pod", "b", "p1")}
    updated = store.resource_set().get(Pod, "a", "p2")
    assert updated is not None and updated.status.pod_ip == "10.0.0.9"
    assert store.replace(POD, None, []) == 2


def test_cluster_scoped_objects_have_no_namespace() -> None:
    store = Store()
    gateway_class = {
        "metadata": {"name": "gc", "resourceVersion": "1", "generation": 1},
        "spec": {"controllerName": "example.com/c"},
    }
    store.upsert(BY_NAME["GatewayClass"], gateway_class)
    assert list(store.resource_set().objects) == [ObjectKey("GatewayClass", "", "gc")]
    assert store.keys(BY_NAME["GatewayClass"]) == [("", "gc")]
    assert store.get("GatewayClass", "", "gc") is not None


async def test_an_isolated_change_is_a_burst_at_once_and_close_ones_end_after_a_quiet_moment() -> None:
    debouncer = Debouncer(quiet_s=0.05, longest_s=10.0)
    stop = asyncio.Event()
    debouncer.changed()
    assert await debouncer.burst(stop)  # the first change: nothing to wait for

    async def changes() -> None:
        for _ in range(5):
            debouncer.changed()
            await asyncio.sleep(0.005)

    burst = asyncio.create_task(debouncer.burst(stop))
    await changes()  # right after a burst: coalesced
    assert await burst
    stop.set()
    assert not await debouncer.burst(stop), "no new change: only the stop ends the wait"


async def test_a_change_after_a_quiet_moment_does_not_wait_for_more() -> None:
    debouncer = Debouncer(quiet_s=0.02, longest_s=600.0)
    stop = asyncio.Event()
    debouncer.changed()
    assert await debouncer.burst(stop)
    await asyncio.sleep(0.05)  # quiet for longer than quiet_s
    debouncer.changed()

    async def keep_changing() -> None:  # a coalesced burst would never see a quiet moment, and last 600 s
        while True:
            await asyncio.sleep(0.005)
            debouncer.changed()

    changing = asyncio.create_task(keep_changing())
    try:
        assert await asyncio.wait_for(debouncer.burst(stop), timeout=300)
    finally:
        changing.cancel()


async def test_debouncer_publishes_during_a_storm() -> None:
    debouncer = Debouncer(quiet_s=0.05, longest_s=0.1)
    stop = asyncio.Event()
    bursts = 0

    async def consume() -> None:
        nonlocal bursts
        while await debouncer.burst(stop):
            bursts += 1

    consumer = asyncio.create_task(consume())
    # A change every 10 ms for 1.5 s never leaves 50 ms of quiet; bursts still end every 100 ms or so.
    for _ in range(150):
        debouncer.changed()
        await asyncio.sleep(0.01)
    during_storm = bursts
    stop.set()
    await consumer
    assert during_storm >= 3


async def test_a_change_while_the_consumer_is_busy_starts_the_next_burst() -> None:
    debouncer = Debouncer(quiet_s=0.01, longest_s=1.0)
    stop = asyncio.Event()
    debouncer.changed()
    assert await debouncer.burst(stop)
    debouncer.changed()  # arrives while the caller handles the first burst
    assert await asyncio.wait_for(debouncer.burst(stop), timeout=30)


def test_backoff_grows_to_its_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(0.2, 5.0)
    delays = [backoff.next_delay() for _ in range(10)]
    assert 0.1 <= delays[0] <= 0.2
    assert all(2.5 <= d <= 5.0 for d in delays[6:])
    backoff.reset()
    assert backoff.next_delay() <= 0.2


def test_strip_does_not_share_metadata_with_the_input() -> None:
    raw = route("1")
    before = copy.deepcopy(raw)
    kept = strip(ROUTE, raw)
    kept["metadata"]["resourceVersion"] = "99"
    assert raw == before


# --- the reflector's protocol, against a scripted API ------------------------------------------------------------

HANG = object()  # a watch that stays open and silent


class ScriptedApi:
    """Answers LISTs and WATCHes from scripts, recording what was asked. Once a script runs out, a watch hangs."""

    def __init__(self, lists: list[tuple[list[dict[str, Any]], str]], watches: list[list[Any]]) -> None:
        self.lists = lists
        self.watches = watches
        self.list_calls = 0
        self.watch_versions: list[str] = []

    async def get_json(self, path: str, query: Any, timeout_s: float) -> dict[str, Any]:
        self.list_calls += 1
        items, version = self.lists.pop(0)
        return {"metadata": {"resourceVersion": version}, "items": copy.deepcopy(items)}

    @contextlib.asynccontextmanager
    async def stream(self, path: str, query: Any) -> Any:
        self.watch_versions.append(dict(query)["resourceVersion"])
        script = self.watches.pop(0) if self.watches else [HANG]
        yield ScriptedBody(script)


class ScriptedBody:
    def __init__(self, script: list[Any]) -> None:
        self.script = script

    async def readline(self) -> bytes:
        if not self.script:
            return b""  # the server ended the watch
        item = self.script.pop(0)
        if item is HANG:
            await asyncio.Event().wait()
        if isinstance(item, Exception):
            raise item
        return orjson.dumps(item) + b"\n"


def route_item(name: str, version: str, hostname: str = "a.example", generation: int = 1) -> dict[str, Any]:
    raw = route(version, hostname=hostname, generation=generation)
    raw["metadata"]["name"] = name
    del raw["apiVersion"], raw["kind"]  # as a LIST gives items
    return raw


def event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


async def test_reflector_resumes_relists_on_410_and_reopens_a_silent_watch() -> None:
    api = ScriptedApi(
        lists=[
            ([route_item("a", "5"), route_item("b", "6")], "10"),
            ([route_item("a", "5"), route_item("c", "19", hostname="c2.example", generation=2)], "20"),
        ],
        watches=[
            [
                event("ADDED", {"apiVersion": "gateway.networking.k8s.io/v1", **route_item("c", "11")}),
                event("BOOKMARK", {"kind": "HTTPRoute", "metadata": {"resourceVersion": "15"}}),
            ],  # then the server ends the watch: resume from the bookmark's version
            [event("ERROR", {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"})],
            [HANG],  # after the relist: a stuck watch, reopened by the watchdog from the same version
        ],
    )
    store = Store()
    timing = Timing(inactivity_s=0.05, backoff_initial_s=0.001, backoff_max_s=0.01)
    reflector = Reflector(cast(RawApi, api), ROUTE, "ns", store, timing)
    reflector.start()
    try:
        await asyncio.wait_for(reflector.synced.wait(), 30)
        deadline = asyncio.get_running_loop().time() + 30
        while len(api.watch_versions) < 4:
            assert asyncio.get_running_loop().time() < deadline, api.watch_versions
            await asyncio.sleep(0.01)
    finally:
        await reflector.stop()
    assert api.watch_versions[:4] == ["10", "15", "20", "20"]
    assert api.list_calls == 2
    assert sorted(store.keys(ROUTE)) == [("ns", "a"), ("ns", "c")], "b vanished between the lists"
    served = store.resource_set().get(HTTPRoute, "ns", "c")
    assert served is not None and served.spec.hostnames == ["c2.example"]


async def test_a_kind_that_is_not_served_counts_as_listed_and_empty() -> None:
    class Missing(ScriptedApi):
        async def get_json(self, path: str, query: Any, timeout_s: float) -> dict[str, Any]:
            self.list_calls += 1
            raise ApiError.from_status(404, b'{"kind":"Status","code":404,"reason":"NotFound","message":"nope"}')

    api = Missing([], [])
    reflector = Reflector(cast(RawApi, api), ROUTE, None, Store(), Timing(absent_retry_s=60))
    reflector.start()
    try:
        await asyncio.wait_for(reflector.synced.wait(), 30)
    finally:
        await reflector.stop()
    assert api.list_calls == 1


async def test_a_translated_kind_the_rbac_does_not_grant_holds_the_sync_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Forbidden(ScriptedApi):
        async def get_json(self, path: str, query: Any, timeout_s: float) -> dict[str, Any]:
            self.list_calls += 1
            raise ApiError.from_status(403, b'{"kind":"Status","code":403,"reason":"Forbidden","message":"no"}')

    api = Forbidden([], [])
    forbidden = metrics.KUBE_WATCH_RESTARTS.labels(ROUTE.kind, "forbidden")
    before = forbidden._value.get()
    timing = Timing(backoff_initial_s=0.001, backoff_max_s=0.01)
    reflector = Reflector(cast(RawApi, api), ROUTE, None, Store(), timing)
    with caplog.at_level(logging.ERROR, logger="xds_server.sources.kubernetes.reflector"):
        reflector.start()
        try:
            deadline = asyncio.get_running_loop().time() + 30
            while api.list_calls < 3:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)
        finally:
            await reflector.stop()
    assert not reflector.synced.is_set()  # an empty HTTPRoute list would take every route away
    assert forbidden._value.get() - before >= 2
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert said and all("RBAC lacks list and watch" in m and "nothing is served until it is" in m for m in said)
    assert said[0].startswith("HTTPRoute (all namespaces): ")


def test_api_errors_by_code() -> None:
    gone = ApiError.from_status(410, b'{"kind":"Status","code":410,"reason":"Expired","message":"too old"}')
    assert isinstance(gone, Gone) and gone.reason == "Expired"
    assert isinstance(ApiError.from_status(404, b""), NotFound)
    other = ApiError.from_status(403, b"not json")
    assert type(other) is ApiError and other.status == 403
    assert isinstance(ApiError.from_object({"code": 410, "reason": "Gone"}), Gone)


# --- config --------------------------------------------------------------------------------------------------------


def write_kubeconfig(path: Path, server: str, namespace: str | None) -> Path:
    context: dict[str, Any] = {"cluster": "c", "user": "u"}
    if namespace:
        context["namespace"] = namespace
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "ctx", "context": context}],
                "current-context": "ctx",
            }
        )
    )
    return path


async def test_a_kubeconfig_names_the_server_and_the_namespace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    explicit = write_kubeconfig(tmp_path / "explicit", "https://127.0.0.1:1", "team-a")
    from_env = write_kubeconfig(tmp_path / "env", "https://127.0.0.2:2", None)
    monkeypatch.setenv("KUBECONFIG", str(from_env))

    client = await config.api_client(str(explicit))
    try:
        assert client.configuration.host == "https://127.0.0.1:1"
    finally:
        await client.close()
    client = await config.api_client(None)
    try:
        assert client.configuration.host == "https://127.0.0.2:2"
    finally:
        await client.close()
    assert config.default_namespace(str(explicit)) == "team-a"
    assert config.default_namespace(None) == "default", "the context names no namespace"
    assert config.default_namespace(str(tmp_path / "missing")) == "default"


def test_in_a_pod_the_service_account_says_where_we_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    namespace_file = tmp_path / "namespace"
    namespace_file.write_text("xds-system\n")
    monkeypatch.setattr(config, "SERVICE_ACCOUNT_NAMESPACE", namespace_file)
    assert config.in_cluster(None)
    assert not config.in_cluster("/some/kubeconfig"), "an explicit kubeconfig wins"
    assert config.default_namespace(None) == "xds-system"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    assert not config.in_cluster(None)


def test_a_field_the_clusters_crd_has_and_ours_lack_is_served_without_it_and_said() -> None:
    """The API server validated the object against its own CRD (another version than ours): refusing it would stop
    serving a route the cluster accepted, so it is served, without the field, and a warning condition names it."""
    gateway_class = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": "eg", "resourceVersion": "1"},
        "spec": {"controllerName": "gateway.envoyproxy.io/gatewayclass-controller"},
    }
    gateway = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": "ns", "resourceVersion": "1"},
        "spec": {"gatewayClassName": "eg", "listeners": [{"name": "http", "protocol": "HTTP", "port": 80}]},
    }
    newer = route("1")
    newer["spec"]["parentRefs"] = [{"name": "gw"}]
    newer["spec"]["rules"][0]["sessionPersistenceV9"] = {"type": "Cookie"}
    store = Store()
    for kind, raw in (("GatewayClass", gateway_class), ("Gateway", gateway), ("HTTPRoute", newer)):
        store.upsert(BY_NAME[kind], raw)
    resources = store.resource_set()
    assert resources.errors == () and resources.get(HTTPRoute, "ns", "r") is not None
    assert resources.ignored == {ObjectKey("HTTPRoute", "ns", "r"): ("spec.rules[0].sessionPersistenceV9",)}
    translation = translate(resources, TranslateOptions())
    [status] = [s for s in translation.statuses if (s.ref.kind, s.ref.name) == ("HTTPRoute", "r")]
    [parent] = status.parents
    conditions = parent.conditions
    [warning] = [c for c in conditions if c.type == "xds-server.io/IgnoredFields"]
    assert warning.status is ConditionStatus.TRUE and "spec.rules[0].sessionPersistenceV9" in warning.message
    assert {c.type: c.status for c in conditions}["Accepted"] is ConditionStatus.TRUE
    assert translation.gateways[0].listeners[0].virtual_hosts, "the route is served"
    fixed = route("2", generation=2)
    fixed["spec"]["parentRefs"] = [{"name": "gw"}]
    store.upsert(ROUTE, fixed)
    assert store.resource_set().ignored == {}
