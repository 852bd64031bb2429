"""Property tests of loading and translation, on generated Kubernetes-style manifests.

1. Document order and the split of documents across files never change the translation.
2. Every reference inside one Gateway's xDS resources resolves (route -> cluster, EDS cluster -> load
   assignment, listener -> RouteConfiguration, ext_proc filter -> cluster).
3. Names Envoy keys on are unique, and so are domains across the virtual hosts of a RouteConfiguration.
4. Invalid documents and raw junk become LoadErrors, never exceptions, and change nothing else.
5. Weighted and prioritised AIServiceBackends of one rule become one locality each, with dense priorities.

Bugs these properties found are pinned by the regression tests at the end.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from translators.gatewayapi import translate
from translators.ir import TranslateOptions
from translators.loader import ResourceSet, load_texts
from translators.resources import KINDS, AIServiceBackend
from translators.xds.gateway import XdsResources, gateway_resources
from translators.xds.render import translation_dict

Doc = dict[str, Any]
Source = tuple[str, str]

OPTIONS = TranslateOptions()
PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

GATEWAY_API = "gateway.networking.k8s.io/v1"
AIGATEWAY_API = "aigateway.envoyproxy.io/v1alpha1"
ENVOY_GATEWAY_API = "gateway.envoyproxy.io/v1alpha1"
INFERENCE_API = "inference.networking.k8s.io/v1"
ENVOY_GATEWAY_GROUP = "gateway.envoyproxy.io"
INFERENCE_GROUP = "inference.networking.k8s.io"
CONTROLLER = "gateway.envoyproxy.io/gatewayclass-controller"
MODEL_HEADER = "x-ai-eg-model"

NAMESPACES = ("default", "team-a")
NAMESPACE_CHOICES = ("default", "default", "default", "team-a")  # mostly one namespace, so references resolve
GATEWAY_NAMES = ("gw-a", "gw-b")
PORTS = (80, 8080, 9000)
# Valid Gateway API hostnames (lowercase; a bare "*" is not one): see test_mixed_case_hostname_is_a_load_error.
HOSTNAMES = ("*.example.com", "api.example.com", "chat.example.com", "v1.api.example.com", "example.org")
MODEL_VALUES = ("gpt-4o", "llama-3-8b", "mistral-7b")
MODEL_REGEXES = ("gpt-.*", "llama-.*", ".*")
EXTRA_HEADERS = ("x-tenant", "x-user-tier")
EXTRA_VALUES = ("blue", "green")
BACKEND_NAMES = ("be-a", "be-b", "be-c", "be-d")
POOL_NAMES = ("pool-a", "pool-b")
SERVICE_NAMES = ("svc-a", "svc-b")
APP_LABELS = ("model-a", "model-b", "svc-a", "svc-b")
DNS_NAMES = ("llm.example.com", "api.openai.com")
TIMEOUTS = ("10s", "1m30s", "500ms")
TIMESTAMPS = ("2024-01-01T00:00:00Z", "2025-06-01T12:00:00Z")


# --- building and loading manifests ---


def resource(api_version: str, kind: str, name: str, namespace: str | None = None, **fields: Any) -> Doc:
    metadata: Doc = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **fields}


def put(target: Doc, key: str, value: Any) -> Doc:
    """Sets `key` unless `value` is None (an optional field left out)."""
    if value is not None:
        target[key] = value
    return target


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def dump_docs(docs: Sequence[Any]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def load_docs(docs: Sequence[Any], file: str = "all.yaml") -> ResourceSet:
    return load_texts([(file, dump_docs(docs))])


def render(resources: ResourceSet) -> dict[str, Any]:
    return translation_dict(translate(resources, OPTIONS), resources.errors, OPTIONS)


def canonical(rendered: dict[str, Any]) -> str:
    """Exact text, key order included: what `xds-server translate` would print."""
    return json.dumps(rendered, sort_keys=False)


def xds_of(resources: ResourceSet) -> list[XdsResources]:
    return [gateway_resources(g, OPTIONS) for g in translate(resources, OPTIONS).gateways]


def duplicates(values: Iterable[str]) -> list[str]:
    return sorted(value for value, count in Counter(values).items() if count > 1)


# --- strategies: a valid resource set with unique kind/namespace/name keys ---


@st.composite
def gateways(draw: st.DrawFn) -> list[Doc]:
    keys = draw(
        st.lists(
            st.tuples(st.sampled_from(NAMESPACE_CHOICES), st.sampled_from(GATEWAY_NAMES)),
            min_size=1,
            max_size=2,
            unique=True,
        )
    )
    docs = []
    for namespace, name in keys:
        listeners = []
        for port in draw(st.lists(st.sampled_from(PORTS), min_size=1, max_size=3, unique=True)):
            listener: Doc = {"name": f"http-{port}", "protocol": "HTTP", "port": port}
            put(listener, "hostname", draw(maybe(st.sampled_from(HOSTNAMES))))
            if draw(st.booleans()):
                listener["allowedRoutes"] = {"namespaces": {"from": "All"}}
            listeners.append(listener)
        class_name = draw(st.sampled_from(("eg", "eg", "eg", "eg", "eg", "other", "missing")))
        docs.append(
            resource(
                GATEWAY_API, "Gateway", name, namespace, spec={"gatewayClassName": class_name, "listeners": listeners}
            )
        )
    return docs


@st.composite
def parent_refs(draw: st.DrawFn, namespace: str, gateway_keys: Sequence[tuple[str, str]]) -> list[Doc]:
    """Mostly to a Gateway of the set (named with or without its namespace), else to a missing one."""
    refs = []
    for _ in range(draw(st.integers(1, 2))):
        if draw(st.integers(0, 4)):
            gateway_namespace, name = draw(st.sampled_from(gateway_keys))
        else:
            gateway_namespace, name = draw(st.sampled_from(NAMESPACES)), draw(st.sampled_from(GATEWAY_NAMES))
        ref: Doc = {"name": name}
        if gateway_namespace != namespace or draw(st.booleans()):
            ref["namespace"] = gateway_namespace
        put(ref, "sectionName", draw(st.sampled_from((None, None, None, *(f"http-{p}" for p in PORTS)))))
        if "sectionName" not in ref:
            put(ref, "port", draw(st.sampled_from((None, None, None, *PORTS))))
        refs.append(ref)
    return refs


def route_metadata(draw: st.DrawFn, doc: Doc) -> Doc:
    timestamp = draw(maybe(st.sampled_from(TIMESTAMPS)))
    if timestamp is not None:
        doc["metadata"]["creationTimestamp"] = timestamp
    return doc


@st.composite
def pool_ref(draw: st.DrawFn) -> Doc:
    ref: Doc = {"kind": "InferencePool", "name": draw(st.sampled_from(POOL_NAMES))}
    if draw(st.booleans()):
        ref["group"] = INFERENCE_GROUP
    return ref


@st.composite
def ai_rule(draw: st.DrawFn) -> Doc:
    matches = []
    for _ in range(draw(st.integers(1, 2))):
        if draw(st.booleans()):
            model = {"type": "RegularExpression", "name": MODEL_HEADER, "value": draw(st.sampled_from(MODEL_REGEXES))}
        else:
            model = {"type": "Exact", "name": MODEL_HEADER, "value": draw(st.sampled_from(MODEL_VALUES))}
        extras = draw(st.lists(st.sampled_from(EXTRA_HEADERS), max_size=2, unique=True))
        matches.append(
            {"headers": [model, *({"name": n, "value": draw(st.sampled_from(EXTRA_VALUES))} for n in extras)]}
        )
    if draw(st.integers(0, 4)) == 0:
        refs = [draw(pool_ref())]
    else:
        refs = []
        count = draw(st.sampled_from((1, 1, 2, 2, 3)))
        for name in draw(st.lists(st.sampled_from(BACKEND_NAMES), min_size=count, max_size=count, unique=True)):
            ref: Doc = {"name": name}
            put(ref, "weight", draw(maybe(st.integers(0, 100))))
            put(ref, "priority", draw(maybe(st.integers(0, 3))))
            refs.append(ref)
    rule: Doc = {"matches": matches, "backendRefs": refs}
    timeout = draw(maybe(st.sampled_from(TIMEOUTS)))
    if timeout is not None:
        rule["timeouts"] = {"request": timeout}
    return rule


@st.composite
def routes(
    draw: st.DrawFn,
    gateway_keys: Sequence[tuple[str, str]],
    api: str,
    kind: str,
    rule: st.SearchStrategy[Doc],
    count: tuple[int, int],
    max_rules: int,
) -> list[Doc]:
    """AIGatewayRoutes or HTTPRoutes: parentRefs to existing or missing Gateways, optional hostnames, rules."""
    docs = []
    for index in range(draw(st.integers(*count))):
        namespace = draw(st.sampled_from(NAMESPACE_CHOICES))
        spec: Doc = {"parentRefs": draw(parent_refs(namespace, gateway_keys))}
        hostnames = draw(st.lists(st.sampled_from(HOSTNAMES), max_size=2, unique=True))
        if hostnames:
            spec["hostnames"] = hostnames
        spec["rules"] = draw(st.lists(rule, min_size=1, max_size=max_rules))
        docs.append(route_metadata(draw, resource(api, kind, f"{kind.lower()}-{index}", namespace, spec=spec)))
    return docs


@st.composite
def http_rule(draw: st.DrawFn) -> Doc:
    matches = []
    for _ in range(draw(st.integers(1, 2))):
        match: Doc = {
            "path": {
                "type": draw(st.sampled_from(("Exact", "PathPrefix", "RegularExpression"))),
                "value": draw(st.sampled_from(("/", "/v1", "/v1/chat", "/healthz"))),
            }
        }
        if draw(st.booleans()):
            match["headers"] = [{"name": "x-probe", "value": draw(st.sampled_from(EXTRA_VALUES))}]
        put(match, "method", draw(maybe(st.sampled_from(("GET", "POST")))))
        matches.append(match)
    if draw(st.integers(0, 3)) == 0:
        refs = [{**draw(pool_ref()), "group": INFERENCE_GROUP}]
    else:
        refs = []
        for _ in range(draw(st.sampled_from((0, 1, 1, 1, 2)))):
            if draw(st.integers(0, 3)) == 0:
                ref: Doc = {
                    "group": ENVOY_GATEWAY_GROUP,
                    "kind": "Backend",
                    "name": draw(st.sampled_from(BACKEND_NAMES)),
                }
            else:
                ref = {"name": draw(st.sampled_from(SERVICE_NAMES))}
                put(ref, "port", draw(st.sampled_from((80, 8000, 80, 8000, None))))
            put(ref, "weight", draw(maybe(st.integers(0, 10))))
            refs.append(ref)
    return {"matches": matches, "backendRefs": refs}


@st.composite
def backends(draw: st.DrawFn, namespace: str, ns_index: int) -> list[Doc]:
    """AIServiceBackends and Backends of one namespace; most references resolve, some are missing."""
    docs = []
    ai_names = draw(st.lists(st.sampled_from(BACKEND_NAMES), min_size=3, max_size=4, unique=True))
    backend_names = set(draw(st.lists(st.sampled_from(BACKEND_NAMES), max_size=2, unique=True)))
    for name in ai_names:
        if draw(st.integers(0, 3)) == 0:
            ref: Doc = {"name": draw(st.sampled_from(SERVICE_NAMES)), "port": draw(st.sampled_from((80, 8000)))}
        else:
            target = draw(st.sampled_from((name, name, name, *BACKEND_NAMES)))
            ref = {"group": ENVOY_GATEWAY_GROUP, "kind": "Backend", "name": target}
            if draw(st.integers(0, 7)):
                backend_names.add(target)
        docs.append(
            resource(
                AIGATEWAY_API,
                "AIServiceBackend",
                name,
                namespace,
                spec={"schema": {"name": "OpenAI"}, "backendRef": ref},
            )
        )
    for index, name in enumerate(sorted(backend_names)):
        endpoints = []
        for _ in range(draw(st.integers(1, 2))):
            port = draw(st.sampled_from((443, 8080)))
            if draw(st.integers(0, 3)) == 0:
                endpoints.append({"fqdn": {"hostname": draw(st.sampled_from(DNS_NAMES)), "port": port}})
            else:
                endpoints.append(
                    {"ip": {"address": f"10.{ns_index}.1.{index * 4 + draw(st.integers(1, 3))}", "port": port}}
                )
        docs.append(resource(ENVOY_GATEWAY_API, "Backend", name, namespace, spec={"endpoints": endpoints}))
    return docs


@st.composite
def workloads(draw: st.DrawFn, namespace: str, ns_index: int) -> list[Doc]:
    """InferencePools, Services and the Pods they select, in one namespace."""
    docs = []
    for name in draw(st.lists(st.sampled_from(POOL_NAMES), max_size=2, unique=True)):
        spec: Doc = {
            "selector": {"matchLabels": {"app": draw(st.sampled_from(APP_LABELS))}},
            "targetPorts": [
                {"number": n} for n in draw(st.lists(st.sampled_from((8000, 8001)), min_size=1, unique=True))
            ],
        }
        put(spec, "appProtocol", draw(maybe(st.sampled_from(("http", "kubernetes.io/h2c")))))
        if draw(st.booleans()):
            spec["endpointPickerRef"] = {
                "name": f"{name}-epp",
                "port": {"number": 9002},
                "failureMode": draw(st.sampled_from(("FailOpen", "FailClose"))),
            }
        docs.append(resource(INFERENCE_API, "InferencePool", name, namespace, spec=spec))
    for name in draw(st.lists(st.sampled_from(SERVICE_NAMES), min_size=1, max_size=2, unique=True)):
        ports = [
            put({"port": p}, "targetPort", draw(maybe(st.sampled_from((8000, 8080, "http")))))
            for p in draw(st.lists(st.sampled_from((80, 8000)), min_size=1, unique=True))
        ]
        selector = draw(st.sampled_from((name, name, *APP_LABELS, None)))
        docs.append(
            resource(
                "v1", "Service", name, namespace, spec=put({"ports": ports}, "selector", selector and {"app": selector})
            )
        )
    for index in range(draw(st.integers(0, 6))):
        ready = draw(st.sampled_from(("True", "True", "True", "False")))
        pod = resource(
            "v1",
            "Pod",
            f"pod-{index}",
            namespace,
            spec={"containers": [{"name": "server", "ports": [{"name": "http", "containerPort": 8000}]}]},
            status={
                "podIP": f"10.{ns_index}.0.{draw(st.integers(1, 6))}",
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": ready}],
            },
        )
        pod["metadata"]["labels"] = {"app": draw(st.sampled_from(APP_LABELS))}
        if draw(st.integers(0, 7)) == 0:
            pod["metadata"]["deletionTimestamp"] = TIMESTAMPS[0]
        docs.append(pod)
    return docs


@st.composite
def valid_sets(draw: st.DrawFn) -> list[Doc]:
    docs = [resource(GATEWAY_API, "GatewayClass", "eg", spec={"controllerName": CONTROLLER})]
    if draw(st.booleans()):
        docs.append(resource(GATEWAY_API, "GatewayClass", "other", spec={"controllerName": "example.com/other"}))
    gateway_docs = draw(gateways())
    keys = [(g["metadata"]["namespace"], g["metadata"]["name"]) for g in gateway_docs]
    docs += gateway_docs
    docs += draw(routes(keys, AIGATEWAY_API, "AIGatewayRoute", ai_rule(), (1, 4), 4))
    docs += draw(routes(keys, GATEWAY_API, "HTTPRoute", http_rule(), (0, 2), 2))
    for ns_index, namespace in enumerate(NAMESPACES):
        docs += draw(backends(namespace, ns_index))
        docs += draw(workloads(namespace, ns_index))
    return docs


def split_into_files(data: st.DataObject, docs: Sequence[Any]) -> list[Source]:
    """Documents dealt into 1-4 files, given to the loader in a drawn file order."""
    count = data.draw(st.integers(1, 4), label="files")
    owners = data.draw(st.lists(st.integers(0, count - 1), min_size=len(docs), max_size=len(docs)))
    files: list[list[Any]] = [[] for _ in range(count)]
    for doc, owner in zip(docs, owners, strict=True):
        files[owner].append(doc)
    order = data.draw(st.permutations(range(count)), label="file order")
    return [(f"part-{i}.yaml", dump_docs(files[i])) for i in order]


# --- 1. order independence ---


@PROPERTY
@given(docs=valid_sets(), data=st.data())
def test_document_and_file_order_do_not_change_the_translation(docs: list[Doc], data: st.DataObject) -> None:
    resources = load_docs(docs)
    assert resources.errors == (), "the generator must produce valid documents"
    expected = canonical(render(resources))

    permuted = data.draw(st.permutations(docs), label="permuted")
    assert canonical(render(load_docs(permuted))) == expected

    sources = split_into_files(data, data.draw(st.permutations(docs), label="split"))
    assert canonical(render(load_texts(sources))) == expected


# --- 2. references resolve ---


def hcm_of(listener: Any) -> list[hcm_pb2.HttpConnectionManager]:
    managers = []
    for chain in listener.filter_chains:
        for network_filter in chain.filters:
            manager = hcm_pb2.HttpConnectionManager()
            assert network_filter.typed_config.Unpack(manager), network_filter.typed_config.type_url
            managers.append(manager)
    return managers


def check_references(resources: XdsResources) -> None:
    clusters = {c.name: c for c in resources.clusters}
    assignments = {e.cluster_name for e in resources.endpoints}
    route_configs = {r.name for r in resources.routes}
    for config in resources.routes:
        for vhost in config.virtual_hosts:
            for route in vhost.routes:
                assert route.HasField("route") or route.HasField("direct_response"), route.name
                if route.HasField("route"):
                    assert route.route.cluster in clusters, (route.name, route.route.cluster)
    for name, built in clusters.items():
        if built.type == cluster_pb2.Cluster.EDS:
            assert name in assignments, f"EDS cluster {name} has no ClusterLoadAssignment"
        else:
            assert built.load_assignment.cluster_name == name
    assert assignments <= {n for n, c in clusters.items() if c.type == cluster_pb2.Cluster.EDS}
    for listener in resources.listeners:
        for manager in hcm_of(listener):
            assert manager.rds.route_config_name in route_configs, (listener.name, manager.rds.route_config_name)
            for http_filter in manager.http_filters:
                processor = ext_proc_pb2.ExternalProcessor()
                if http_filter.typed_config.Unpack(processor):
                    assert processor.grpc_service.envoy_grpc.cluster_name in clusters, http_filter.name


@PROPERTY
@given(docs=valid_sets())
def test_every_reference_in_a_snapshot_resolves(docs: list[Doc]) -> None:
    for resources in xds_of(load_docs(docs)):
        check_references(resources)


# --- 3. unique names ---


def check_unique_names(resources: XdsResources) -> None:
    assert not duplicates(lis.name for lis in resources.listeners)
    assert not duplicates(r.name for r in resources.routes)
    assert not duplicates(c.name for c in resources.clusters)
    assert not duplicates(e.cluster_name for e in resources.endpoints)
    for config in resources.routes:
        assert not duplicates(v.name for v in config.virtual_hosts), config.name
        # Envoy compares domains case-insensitively and refuses the RouteConfiguration on a duplicate.
        assert not duplicates(d.lower() for v in config.virtual_hosts for d in v.domains), config.name
        for vhost in config.virtual_hosts:
            assert vhost.domains, vhost.name
            assert not duplicates(r.name for r in vhost.routes), vhost.name


@PROPERTY
@given(docs=valid_sets())
def test_names_and_domains_are_unique(docs: list[Doc]) -> None:
    for resources in xds_of(load_docs(docs)):
        check_unique_names(resources)


# --- 4. invalid input: errors, never exceptions ---

FIELD_NAMES = (
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "spec",
    "status",
    "listeners",
    "port",
    "protocol",
    "hostname",
    "rules",
    "matches",
    "headers",
    "backendRefs",
    "parentRefs",
    "weight",
    "priority",
    "endpoints",
    "ip",
    "fqdn",
    "address",
    "selector",
    "matchLabels",
    "targetPorts",
    "number",
    "items",
    "type",
    "value",
)
ODD_STRINGS = (
    "",
    " ",
    "Gateway",
    "HTTP",
    "default",
    "UPPER",
    "a_b",
    "-x",
    "x" * 300,
    "10.0.0.1",
    "999.1.1.1",
    "::1",
    "80",
    "-1",
    "1h",
    "0s",
    "Exact",
    "RegularExpression",
    "List",
    "null",
    "~",
    "*",
    "\t",
    "é",
    "💥",
    "\x00",
)
BAD_PORTS = st.sampled_from((0, -1, 65536, 2**31, 2**64, "80", "http", 80.5, None, True, [80], {"port": 80}))
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(ODD_STRINGS)
)
KEYS = st.sampled_from(FIELD_NAMES) | st.text(max_size=8) | st.integers(-3, 3)
JUNK = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4), max_leaves=12
)
KNOWN_KINDS = [(f"{m.group}/{v}" if m.group else v, m.kind) for m in KINDS for v in m.versions]
API_VERSIONS = [*sorted({api for api, _ in KNOWN_KINDS}), "v0", "gateway.networking.k8s.io/v9", ""]
# Left alone by mutations: a negative or huge targetPort loads and then breaks rendering (a known bug).
UNMUTATED_FIELDS = frozenset({"targetPort"})


def is_port_field(path: tuple[Any, ...]) -> bool:
    return bool(path) and path[-1] in ("port", "containerPort", "number")


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key or index path inside a document, outermost first."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        if key in UNMUTATED_FIELDS:
            continue
        yield (*prefix, key)
        yield from paths(value, (*prefix, key))


def mutate(doc: Doc, path: tuple[Any, ...], value: Any, delete: bool) -> None:
    parent: Any = doc
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value


@st.composite
def mutated(draw: st.DrawFn, templates: Sequence[Doc]) -> Doc:
    """A valid document with 1-3 fields replaced by wrong types, out-of-range ports or junk, or deleted."""
    doc = copy.deepcopy(draw(st.sampled_from(templates)))
    if draw(st.booleans()):  # a new object; otherwise a later, probably invalid, version of a valid one
        doc["metadata"]["name"] = f"junk-{draw(st.integers(0, 9))}"
    for _ in range(draw(st.integers(1, 3))):
        candidates = list(paths(doc))
        if not candidates:
            break
        path = draw(st.sampled_from(candidates))
        port_value = is_port_field(path) and draw(st.booleans())
        value = draw(BAD_PORTS) if port_value else draw(JUNK)
        mutate(doc, path, value, delete=not port_value and draw(st.integers(0, 3)) == 0)
    return doc


@st.composite
def known_kind_junk(draw: st.DrawFn) -> Doc:
    """A known apiVersion/kind pair (or an unsupported version) with random fields."""
    api_version, kind = draw(st.sampled_from(KNOWN_KINDS))
    if draw(st.integers(0, 4)) == 0:
        api_version = draw(st.sampled_from(API_VERSIONS))
    metadata = draw(st.just({"name": f"junk-{draw(st.integers(0, 9))}"}) | JUNK)
    fields = draw(st.dictionaries(st.sampled_from(("spec", "status", "data", "items")), JUNK, max_size=3))
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **fields}


def junk_documents(valid: Sequence[Doc]) -> st.SearchStrategy[Any]:
    return JUNK | known_kind_junk() | mutated(valid)


def single(doc: Any) -> ResourceSet:
    return load_texts([("one.yaml", dump_docs([doc]))])


def is_empty_list(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list)


@PROPERTY
@given(valid=valid_sets(), data=st.data())
def test_invalid_documents_become_errors_and_change_nothing_else(valid: list[Doc], data: st.DataObject) -> None:
    junk = data.draw(st.lists(junk_documents(valid), min_size=1, max_size=6), label="junk")
    docs: list[Any] = list(valid)
    for doc in junk:
        docs.insert(data.draw(st.integers(0, len(docs))), doc)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(docs)), max_size=2)))
    bounds = [0, *cuts, len(docs)]
    files = [(f"part-{i}.yaml", docs[start:end]) for i, (start, end) in enumerate(itertools.pairwise(bounds))]

    resources = load_texts((name, dump_docs(part)) for name, part in files)
    rendered = render(resources)
    assert all(error.reason for error in resources.errors)
    assert all(str(error) for error in resources.errors)

    # Each document is judged alone: its errors are exactly those it would give in a file of its own, and an
    # invalid document (not an object, not a kind the project ignores) gives at least one.
    expected_errors = []
    accepted: list[Any] = []
    for name, part in files:
        for number, doc in enumerate(part, start=1):
            alone = single(doc)
            expected_errors += [(name, number, e.kind, e.namespace, e.name, e.field, e.reason) for e in alone.errors]
            if alone.objects:
                accepted.append(doc)
            elif doc is not None and not alone.unknown and not is_empty_list(doc):
                assert alone.errors, f"invalid document without an error: {doc!r}"
    actual_errors = [
        (e.origin.file, e.origin.document, e.kind, e.namespace, e.name, e.field, e.reason) for e in resources.errors
    ]
    assert actual_errors == expected_errors

    # The objects are those of the accepted documents, later ones replacing earlier ones (kubectl apply), so
    # when no junk is accepted the translation is that of the valid set alone.
    effective = load_docs(accepted)
    assert resources.objects == effective.objects
    assert rendered["gateways"] == render(effective)["gateways"]
    if all(any(doc is v for v in valid) for doc in accepted):
        assert rendered["gateways"] == render(load_docs(valid))["gateways"]


# PyYAML's SafeConstructor raises ValueError/KeyError/AttributeError (not YAMLError) on impossible dates and
# on explicitly tagged scalars such as `!!int x`: a known bug, see test_known_bug_yaml_constructor_errors.
KNOWN_YAML_BUG = re.compile(r"\d{4}-\d\d?-\d\d?|!!|tag:yaml\.org")
YAML_FRAGMENTS = (
    "\n",
    "\n  ",
    "- ",
    ": ",
    "---\n",
    "...\n",
    "{",
    "}",
    "[",
    "]",
    ", ",
    "&a ",
    "*a",
    "? ",
    "|\n",
    ">-\n",
    "'",
    '"',
    "#",
    "%YAML 1.1\n",
    "!local ",
    "kind: Gateway\n",
    "apiVersion: v1\n",
    "metadata:\n  name: x\n",
    "kind: List\nitems:\n",
    "\t",
    "\ufeff",
    "\x85",
    "\x07",
    "é",
    "0x1F",
    "1e3",
    ".nan",
    "null",
    "<<: ",
)
RAW_TEXT = st.text() | st.lists(st.sampled_from(YAML_FRAGMENTS) | st.text(max_size=4), max_size=30).map("".join)


@PROPERTY
@given(valid=valid_sets(), text=RAW_TEXT.filter(lambda t: not KNOWN_YAML_BUG.search(t)), first=st.booleans())
def test_raw_text_junk_never_raises(valid: list[Doc], text: str, first: bool) -> None:
    sources = [("valid.yaml", dump_docs(valid))]
    sources.insert(0 if first else 1, ("junk.yaml", text))
    resources = load_texts(sources)
    rendered = render(resources)
    assert all(error.reason for error in resources.errors)
    assert all(error.origin.file == "junk.yaml" for error in resources.errors)
    if all(origin.file == "valid.yaml" for origin in resources.origins.values()):
        assert rendered["gateways"] == render(load_docs(valid))["gateways"]


# --- 5. weighted and prioritised backends ---


# One GatewayClass and Gateway (HTTP :80) for the focused tests below.
GATEWAY_DOCS = [
    resource(GATEWAY_API, "GatewayClass", "eg", spec={"controllerName": CONTROLLER}),
    resource(
        GATEWAY_API,
        "Gateway",
        "gw",
        spec={"gatewayClassName": "eg", "listeners": [{"name": "http", "protocol": "HTTP", "port": 80}]},
    ),
]


@st.composite
def weighted_rule(draw: st.DrawFn) -> tuple[list[Doc], list[tuple[str, int, int, str]]]:
    """One Gateway, one AIGatewayRoute rule with 2-5 AIServiceBackends: (name, weight, priority, kind) each."""
    docs = copy.deepcopy(GATEWAY_DOCS)
    members = []
    for index in range(draw(st.integers(2, 5))):
        name = f"backend-{index}"
        kind = draw(st.sampled_from(("ip", "fqdn", "service")))
        if kind == "service":
            ref: Doc = {"name": name, "port": 80}
            docs.append(resource("v1", "Service", name, spec={"selector": {"app": name}, "ports": [{"port": 80}]}))
            pod = resource(
                "v1",
                "Pod",
                name,
                spec={"containers": [{"name": "server"}]},
                status={"podIP": f"10.2.0.{index + 1}", "conditions": [{"type": "Ready", "status": "True"}]},
            )
            pod["metadata"]["labels"] = {"app": name}
            docs.append(pod)
        else:
            ref = {"group": ENVOY_GATEWAY_GROUP, "kind": "Backend", "name": name}
            endpoint = (
                {"ip": {"address": f"10.1.0.{index + 1}", "port": 8080}}
                if kind == "ip"
                else {"fqdn": {"hostname": f"{name}.example.com", "port": 443}}
            )
            docs.append(resource(ENVOY_GATEWAY_API, "Backend", name, spec={"endpoints": [endpoint]}))
        docs.append(
            resource(AIGATEWAY_API, "AIServiceBackend", name, spec={"schema": {"name": "OpenAI"}, "backendRef": ref})
        )
        members.append((name, draw(st.integers(1, 100)), draw(st.integers(0, 3)), kind))
    refs = [
        {"name": name, "weight": weight, "priority": priority}
        for name, weight, priority, _ in draw(st.permutations(members))
    ]
    rule = {"matches": [{"headers": [{"name": MODEL_HEADER, "value": "m"}]}], "backendRefs": refs}
    docs.append(
        resource(AIGATEWAY_API, "AIGatewayRoute", "weighted", spec={"parentRefs": [{"name": "gw"}], "rules": [rule]})
    )
    return docs, members


def assignment_of(resources: XdsResources, name: str) -> endpoint_pb2.ClusterLoadAssignment:
    built = next(c for c in resources.clusters if c.name == name)
    if built.type != cluster_pb2.Cluster.EDS:
        return built.load_assignment
    return next(e for e in resources.endpoints if e.cluster_name == name)


@PROPERTY
@given(case=weighted_rule())
def test_weighted_backends_become_localities_with_dense_priorities(
    case: tuple[list[Doc], list[tuple[str, int, int, str]]],
) -> None:
    docs, members = case
    (resources,) = xds_of(load_docs(docs))
    targets = {
        r.route.cluster for c in resources.routes for v in c.virtual_hosts for r in v.routes if r.HasField("route")
    }
    assert len(targets) == 1, targets
    (name,) = targets
    built = next(c for c in resources.clusters if c.name == name)
    kinds = {kind for *_, kind in members}
    expected_type = "STRICT_DNS" if "fqdn" in kinds else "EDS" if "service" in kinds else "STATIC"
    assert cluster_pb2.Cluster.DiscoveryType.Name(built.type) == expected_type
    assert built.common_lb_config.HasField("locality_weighted_lb_config")

    localities = {loc.locality.sub_zone: loc for loc in assignment_of(resources, name).endpoints}
    assert len(assignment_of(resources, name).endpoints) == len(members)
    assert set(localities) == {f"aiservicebackend/default/{n}" for n, *_ in members}
    ranks = sorted({priority for _, _, priority, _ in members})
    for backend, weight, priority, _ in members:
        locality = localities[f"aiservicebackend/default/{backend}"]
        assert locality.priority == ranks.index(priority)
        assert locality.load_balancing_weight.value == weight
        assert len(locality.lb_endpoints) == 1
    assert {loc.priority for loc in localities.values()} == set(range(len(ranks)))


# --- regressions: inputs the properties once found to crash the loader or produce config Envoy rejects ---


@pytest.mark.parametrize(
    "text",
    [
        "a: !!int x\n",
        "a: !!bool x\n",
        "a: !!float x\n",
        "a: !!timestamp x\n",
        "a: !!timestamp 2024-02-30\n",
    ],
)
def test_yaml_constructor_errors_are_load_errors(text: str) -> None:
    """An explicit tag the value does not fit. (An unquoted date is no tag: it stays a string, as Kubernetes reads it,
    however impossible a date it would be.)"""
    resources = load_texts([("junk.yaml", text), ("valid.yaml", dump_docs(GATEWAY_DOCS))])
    [error] = resources.errors
    assert error.origin.file == "junk.yaml" and error.reason.startswith("invalid YAML")
    assert len(resources.objects) == len(GATEWAY_DOCS)


def test_an_unquoted_date_is_the_string_it_was_written_as() -> None:
    """Kubernetes reads `version: 2024-10-21` (an Azure api-version) as a string; so does the loader."""
    text = """
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIServiceBackend
metadata: {name: azure}
spec:
  schema: {name: AzureOpenAI, version: 2024-10-21}
  backendRef: {group: gateway.envoyproxy.io, kind: Backend, name: azure}
"""
    resources = load_texts([("azure.yaml", text)])
    assert resources.errors == ()
    [backend] = resources.of_kind(AIServiceBackend)
    assert backend.spec.schema_.version == "2024-10-21"


def service_route_docs(target_port: int) -> list[Doc]:
    pod = resource(
        "v1",
        "Pod",
        "p",
        spec={"containers": [{"name": "c"}]},
        status={"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
    )
    pod["metadata"]["labels"] = {"app": "s"}
    route = resource(
        GATEWAY_API,
        "HTTPRoute",
        "r",
        spec={"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "s", "port": 80}]}]},
    )
    service = resource(
        "v1", "Service", "s", spec={"selector": {"app": "s"}, "ports": [{"port": 80, "targetPort": target_port}]}
    )
    return [*GATEWAY_DOCS, route, service, pod]


@pytest.mark.parametrize("target_port", [-1, 0, 70000, 2**32])
def test_out_of_range_service_target_port_is_a_load_error(target_port: int) -> None:
    resources = load_docs(service_route_docs(target_port))
    [error] = resources.errors
    assert (error.kind, error.name, error.field) == ("Service", "s", "spec.ports[0].targetPort")
    rendered = render(resources)  # the route now reports a missing Service instead of crashing
    [route] = [s for s in rendered["status"] if s["kind"] == "HTTPRoute"]
    [parent] = route["parents"]
    assert any(c["type"] == "ResolvedRefs" and c["status"] == "False" for c in parent["conditions"])


def timeout_docs(duration: str) -> list[Doc]:
    backend = resource(
        ENVOY_GATEWAY_API, "Backend", "b", spec={"endpoints": [{"ip": {"address": "10.0.0.1", "port": 80}}]}
    )
    rule = {
        "backendRefs": [{"group": ENVOY_GATEWAY_GROUP, "kind": "Backend", "name": "b"}],
        "timeouts": {"request": duration},
    }
    route = resource(GATEWAY_API, "HTTPRoute", "r", spec={"parentRefs": [{"name": "gw"}], "rules": [rule]})
    return [*GATEWAY_DOCS, backend, route]


@pytest.mark.parametrize("duration", ["400000000000s", "99999999999999999999s", "1h1m1s1ms1s"])
def test_durations_beyond_gateway_api_bounds_are_load_errors(duration: str) -> None:
    resources = load_docs(timeout_docs(duration))
    [error] = resources.errors
    assert error.field == "spec.rules[0].timeouts.request" and "at most 5 digits" in error.reason
    render(resources)


def two_hosts_docs(first: str, second: str) -> list[Doc]:
    docs = list(GATEWAY_DOCS)
    for index, hostname in enumerate((first, second)):
        rule = {
            "matches": [{"headers": [{"name": MODEL_HEADER, "value": f"m{index}"}]}],
            "backendRefs": [{"name": "a"}],
        }
        docs.append(
            resource(
                AIGATEWAY_API,
                "AIGatewayRoute",
                f"r{index}",
                spec={"parentRefs": [{"name": "gw"}], "hostnames": [hostname], "rules": [rule]},
            )
        )
    docs.append(
        resource(
            AIGATEWAY_API,
            "AIServiceBackend",
            "a",
            spec={
                "schema": {"name": "OpenAI"},
                "backendRef": {"group": ENVOY_GATEWAY_GROUP, "kind": "Backend", "name": "a"},
            },
        )
    )
    docs.append(
        resource(ENVOY_GATEWAY_API, "Backend", "a", spec={"endpoints": [{"ip": {"address": "10.0.0.1", "port": 80}}]})
    )
    return docs


def test_distinct_hostnames_give_distinct_domains() -> None:
    for resources in xds_of(load_docs(two_hosts_docs("api.example.com", "chat.example.com"))):
        check_unique_names(resources)


def test_mixed_case_hostname_is_a_load_error() -> None:
    resources = load_docs(two_hosts_docs("API.example.com", "api.example.com"))
    [error] = resources.errors
    assert (error.name, error.field) == ("r0", "spec.hostnames[0]")
    for xds in xds_of(resources):
        check_unique_names(xds)
