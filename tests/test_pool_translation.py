"""What a pool's picker is given: members (active ports), objectives, the config chain, body mode, served endpoint."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from envoy.extensions.load_balancing_policies.override_host.v3 import override_host_pb2
from google.protobuf import unknown_fields

from translators.backends import BackendResolver
from translators.gatewayapi import translate
from translators.ir import ClusterIR, Discovery, EndpointGroup, ObjectRef, PoolBalancing, RouteIR
from translators.loader import ResourceSet, load_texts
from translators.picker_config import config_flags
from translators.pools import parse_active_ports
from translators.resources import InferencePool
from translators.xds.clusters import cluster
from translators.xds.override_host import SELECTED_HOST_KEY_NUMBER
from translators.xds.render import message_dict

Doc = dict[str, Any]
CONFIG = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def _doc(api_version: str, kind: str, name: str, **fields: Any) -> Doc:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}, **fields}


def _pool(name: str = "pool", ports: tuple[int, ...] = (8000,), picker: str | None = "pool-epp") -> Doc:
    spec: Doc = {"selector": {"matchLabels": {"app": name}}, "targetPorts": [{"number": p} for p in ports]}
    if picker is not None:
        spec["endpointPickerRef"] = {"name": picker, "port": {"number": 9002}}
    return _doc("inference.networking.k8s.io/v1", "InferencePool", name, spec=spec)


def _pod(name: str, ip: str, app: str = "pool", annotations: dict[str, str] | None = None) -> Doc:
    pod = _doc(
        "v1",
        "Pod",
        name,
        spec={"containers": [{"name": "server"}]},
        status={"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    )
    pod["metadata"].update(labels={"app": app}, annotations=annotations or {})
    return pod


def _picker_deployment(container: Doc, volumes: list[Doc] | None = None) -> list[Doc]:
    """The pool's picker Service and the Deployment it selects, running `container`."""
    service = _doc("v1", "Service", "pool-epp", spec={"selector": {"app": "pool-epp"}, "ports": [{"port": 9002}]})
    pod_spec: Doc = {"containers": [container]}
    if volumes is not None:
        pod_spec["volumes"] = volumes
    template = {"metadata": {"labels": {"app": "pool-epp"}}, "spec": pod_spec}
    deployment = _doc(
        "apps/v1",
        "Deployment",
        "pool-epp",
        spec={"selector": {"matchLabels": {"app": "pool-epp"}}, "template": template},
    )
    return [service, deployment]


def _configmap(name: str, data: dict[str, str]) -> Doc:
    return _doc("v1", "ConfigMap", name, data=data)


def _load(docs: list[Doc]) -> ResourceSet:
    resources = load_texts([("test.yaml", yaml.safe_dump_all(docs))])
    assert resources.errors == ()
    return resources


def _pool_ir(docs: list[Doc], name: str = "pool") -> Any:
    resources = _load(docs)
    pool = resources.get(InferencePool, "default", name)
    assert pool is not None
    return BackendResolver(resources, resolve_cluster_local=False).pool(pool)


def _epp(*argv: str, command: tuple[str, ...] = (), mounts: list[Doc] | None = None) -> Doc:
    return {"name": "epp", "command": list(command), "args": list(argv), "volumeMounts": mounts or []}


CONFIG_VOLUME = [{"name": "cfg", "configMap": {"name": "plugins"}}]
CONFIG_MOUNT = [{"name": "cfg", "mountPath": "/config"}]

# --- flags ---


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--config-file", "/c/a.yaml"], {"config-file": "/c/a.yaml"}),
        (["--config-file=/c/a.yaml"], {"config-file": "/c/a.yaml"}),
        (["-config-file", "/c/a.yaml"], {"config-file": "/c/a.yaml"}),
        (["--config-text", "x: 1"], {"config-text": "x: 1"}),
        (["--config-text=x: 1"], {"config-text": "x: 1"}),
        (["--config-file=/a", "--v", "4", "--config-file", "/b"], {"config-file": "/b"}),  # the last one wins
        (["--config-file"], {"config-file": ""}),
        (["--pool-name", "p", "--config-filex", "/a", "config-file"], {}),
    ],
)
def test_config_flags(argv: list[str], expected: dict[str, str]) -> None:
    assert config_flags(argv) == expected


# --- the config chain ---


def test_config_file_with_separate_value() -> None:
    docs = [
        _pool(),
        *_picker_deployment(_epp("--config-file", "/config/p.yaml", mounts=CONFIG_MOUNT), CONFIG_VOLUME),
        _configmap("plugins", {"p.yaml": CONFIG}),
    ]
    config = _pool_ir(docs).picker_config
    assert config.text == CONFIG and config.error is None
    assert (
        config.origin
        == "ConfigMap default/plugins key p.yaml (Deployment default/pool-epp --config-file /config/p.yaml)"
    )


def test_config_file_with_equals_in_command() -> None:
    container = _epp(command=("/epp", "--config-file=/config/p.yaml"), mounts=CONFIG_MOUNT)
    docs = [_pool(), *_picker_deployment(container, CONFIG_VOLUME), _configmap("plugins", {"p.yaml": CONFIG})]
    assert _pool_ir(docs).picker_config.text == CONFIG


def test_config_text_inline() -> None:
    docs = [_pool(), *_picker_deployment(_epp("--config-text", CONFIG))]
    config = _pool_ir(docs).picker_config
    assert (config.text, config.origin, config.error) == (CONFIG, "Deployment default/pool-epp --config-text", None)


def test_config_file_wins_over_config_text() -> None:
    container = _epp("--config-text", "ignored", "--config-file", "/config/p.yaml", mounts=CONFIG_MOUNT)
    docs = [_pool(), *_picker_deployment(container, CONFIG_VOLUME), _configmap("plugins", {"p.yaml": CONFIG})]
    assert _pool_ir(docs).picker_config.text == CONFIG


def test_sub_path_mount_of_one_key() -> None:
    mounts = [{"name": "cfg", "mountPath": "/etc/epp/config.yaml", "subPath": "tuned.yaml"}]
    container = _epp("--config-file", "/etc/epp/config.yaml", mounts=mounts)
    docs = [_pool(), *_picker_deployment(container, CONFIG_VOLUME), _configmap("plugins", {"tuned.yaml": CONFIG})]
    config = _pool_ir(docs).picker_config
    assert config.text == CONFIG
    assert config.origin.startswith("ConfigMap default/plugins key tuned.yaml (")


def test_items_map_keys_to_paths_and_the_innermost_mount_wins() -> None:
    mounts = [{"name": "outer", "mountPath": "/etc"}, {"name": "cfg", "mountPath": "/etc/epp/"}]
    volumes = [
        {"name": "outer", "emptyDir": {}},
        {"name": "cfg", "configMap": {"name": "plugins", "items": [{"key": "real.yaml", "path": "sub/picker.yaml"}]}},
    ]
    container = _epp("--config-file=/etc/epp/sub/picker.yaml", mounts=mounts)
    docs = [_pool(), *_picker_deployment(container, volumes), _configmap("plugins", {"real.yaml": CONFIG})]
    assert _pool_ir(docs).picker_config.text == CONFIG


@pytest.mark.parametrize(
    ("argv", "mounts", "volumes", "data", "error"),
    [
        (["--config-file", "/config/p.yaml"], CONFIG_MOUNT, CONFIG_VOLUME, None, "ConfigMap default/plugins"),
        (["--config-file", "/config/p.yaml"], CONFIG_MOUNT, CONFIG_VOLUME, {"q.yaml": CONFIG}, "has no key p.yaml"),
        (["--config-file", "/elsewhere/p.yaml"], CONFIG_MOUNT, CONFIG_VOLUME, {"p.yaml": CONFIG}, "no volumeMount"),
        (["--config-file", "/config/p.yaml"], CONFIG_MOUNT, [], {"p.yaml": CONFIG}, "volume cfg, mounted at /config"),
        (["--config-file", "/config"], CONFIG_MOUNT, CONFIG_VOLUME, {"p.yaml": CONFIG}, "a directory"),
        (["--config-file", "/config/a/p.yaml"], CONFIG_MOUNT, CONFIG_VOLUME, {"p.yaml": CONFIG}, "keys are top-level"),
        (
            ["--config-file", "/config/p.yaml"],
            CONFIG_MOUNT,
            [{"name": "cfg", "configMap": {"name": "plugins", "items": [{"key": "p.yaml", "path": "other.yaml"}]}}],
            {"p.yaml": CONFIG},
            "maps no key to path p.yaml",
        ),
        (
            ["--config-file", "/config/p.yaml"],
            CONFIG_MOUNT,
            [{"name": "cfg", "secret": {"secretName": "s"}}],
            None,
            "not a ConfigMap volume",
        ),
        (["--config-file"], CONFIG_MOUNT, CONFIG_VOLUME, {"p.yaml": CONFIG}, "has no value"),
    ],
)
def test_broken_chain_after_config_file_is_an_error(
    argv: list[str], mounts: list[Doc], volumes: list[Doc], data: dict[str, str] | None, error: str
) -> None:
    docs = [_pool(), *_picker_deployment(_epp(*argv, mounts=mounts), volumes)]
    if data is not None:
        docs.append(_configmap("plugins", data))
    config = _pool_ir(docs).picker_config
    assert config.text is None
    assert config.error is not None and error in config.error, config.error
    assert config.origin.startswith("Deployment default/pool-epp --config-file")


@pytest.mark.parametrize(
    ("docs", "why"),
    [
        ([_pool(picker=None)], None),
        ([_pool()], "Service default/pool-epp not found"),
        (
            [_pool(), _doc("v1", "Service", "pool-epp", spec={"ports": [{"port": 9002}]})],
            "Service default/pool-epp has no selector",
        ),
        ([_pool(), _picker_deployment(_epp())[0]], "no Deployment in default matches"),
        ([_pool(), *_picker_deployment(_epp("--pool-name", "pool"))], "runs without --config-file or --config-text"),
    ],
)
def test_no_config_flag_means_the_default_profile(docs: list[Doc], why: str | None) -> None:
    config = _pool_ir(docs).picker_config
    assert config.text is None and config.error is None
    if why is None:
        assert config.origin == "default profile"
    else:
        assert config.origin.startswith("default profile (") and why in config.origin, config.origin


# --- members and objectives ---


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("8000", frozenset({8000})),
        ("8000,8001", frozenset({8000, 8001})),
        (" 8000 , 8001 ", frozenset({8000, 8001})),
        ("", None),
        ("8000,", None),
        ("8000;8001", None),
        ("http", None),
        ("70000", None),
        ("0", None),
        ("²", None),
    ],
)
def test_parse_active_ports(value: str, expected: frozenset[int] | None) -> None:
    assert parse_active_ports(value) == expected


def test_members_follow_active_ports_and_so_do_the_cluster_endpoints() -> None:
    active = "inference.networking.k8s.io/active-ports"
    docs = [
        _pool(ports=(8000, 8001)),
        _pod("b", "10.0.0.2", annotations={active: "8001"}),
        _pod("a", "10.0.0.1"),
        _pod("c", "10.0.0.3", annotations={active: "bogus"}),
        _pod("d", "10.0.0.4", annotations={active: "9000"}),
    ]
    docs[1]["metadata"]["labels"]["inference.networking.k8s.io/engine-type"] = "sglang"
    pool = _pool_ir(docs)
    assert [(m.pod, m.address, m.port, m.engine) for m in pool.members] == [
        ("a", "10.0.0.1", 8000, "vllm"),
        ("a", "10.0.0.1", 8001, "vllm"),
        ("b", "10.0.0.2", 8001, "sglang"),
        ("c", "10.0.0.3", 8000, "vllm"),
        ("c", "10.0.0.3", 8001, "vllm"),
    ]
    cluster_ir, _ = BackendResolver(_load(docs), resolve_cluster_local=False).pool_cluster("default", "pool")
    assert [(e.address, e.port) for e in cluster_ir.groups[0].endpoints] == [(m.address, m.port) for m in pool.members]
    assert pool.endpoints == cluster_ir.groups[0].endpoints


def test_objectives_of_the_pool_only() -> None:
    def objective(name: str, pool_ref: Doc, priority: int | None = None, namespace: str = "default") -> Doc:
        spec: Doc = {"poolRef": pool_ref}
        if priority is not None:
            spec["priority"] = priority
        doc = _doc("inference.networking.x-k8s.io/v1alpha2", "InferenceObjective", name, spec=spec)
        doc["metadata"]["namespace"] = namespace
        return doc

    docs = [
        _pool(),
        _pool("other"),
        objective("z-last", {"name": "pool"}, 5),
        objective("a-first", {"name": "pool", "group": "inference.networking.k8s.io", "kind": "InferencePool"}),
        objective("wrong-group", {"name": "pool", "group": "inference.networking.x-k8s.io"}, 1),
        objective("wrong-kind", {"name": "pool", "kind": "Service"}, 1),
        objective("wrong-pool", {"name": "other"}, 1),
        objective("wrong-namespace", {"name": "pool"}, 1, namespace="team-a"),
    ]
    assert [(o.name, o.priority) for o in _pool_ir(docs).objectives] == [("a-first", 0), ("z-last", 5)]
    assert [o.name for o in _pool_ir(docs, "other").objectives] == ["wrong-pool"]


# --- body mode and the served endpoint ---


def _routes(annotation: str | None) -> tuple[list[RouteIR], Any]:
    route = _doc(
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        "r",
        spec={
            "parentRefs": [{"name": "gw"}],
            "rules": [
                {"backendRefs": [{"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "pool"}]},
                {"backendRefs": [{"kind": "Service", "name": "svc", "port": 80}]},
            ],
        },
    )
    if annotation is not None:
        route["metadata"]["annotations"] = {"xds-server.io/picker-body-mode": annotation}
    docs = [
        _doc(
            "gateway.networking.k8s.io/v1",
            "GatewayClass",
            "eg",
            spec={"controllerName": "xds-server.dev/gateway-controller"},
        ),
        _doc(
            "gateway.networking.k8s.io/v1",
            "Gateway",
            "gw",
            spec={"gatewayClassName": "eg", "listeners": [{"name": "h", "protocol": "HTTP", "port": 80}]},
        ),
        route,
        _pool(),
        _doc("v1", "Service", "svc", spec={"selector": {"app": "svc"}, "ports": [{"port": 80}]}),
    ]
    translation = translate(_load(docs))
    [status] = [s for s in translation.statuses if s.ref.kind == "HTTPRoute"]
    return list(translation.gateways[0].listeners[0].routes), status


@pytest.mark.parametrize(
    ("annotation", "mode", "invalid"),
    [
        (None, "BUFFERED", False),
        ("FULL_DUPLEX_STREAMED", "FULL_DUPLEX_STREAMED", False),
        ("full_duplex", "BUFFERED", True),
    ],
)
def test_body_mode_annotation(annotation: str | None, mode: str, invalid: bool) -> None:
    routes, status = _routes(annotation)
    pool_route, service_route = sorted(routes, key=lambda r: r.pool is None)
    assert pool_route.pool is not None and pool_route.pool.body_mode == mode
    assert service_route.pool is None  # no picker there
    flagged = [c for c in status.conditions if "xds-server.io/picker-body-mode" in c.message]
    assert bool(flagged) == invalid
    if invalid:
        assert flagged[0].status == "False"


def test_pool_cluster_reports_the_served_endpoint_deterministically() -> None:
    ir = ClusterIR(
        "inferencepool/default/p",
        Discovery.EDS,
        (EndpointGroup("p", (), dynamic=True),),
        pool=PoolBalancing(ObjectRef("InferencePool", "default", "p"), False),
    )
    first, second = cluster(ir, 1024), cluster(ir, 1024)
    assert first.SerializeToString(deterministic=True) == second.SerializeToString(deterministic=True)
    override = override_host_pb2.OverrideHost()
    first.load_balancing_policy.policies[0].typed_extension_config.typed_config.Unpack(override)
    unknown = unknown_fields.UnknownFieldSet(override)
    assert [unknown[i].field_number for i in range(len(unknown))] == [SELECTED_HOST_KEY_NUMBER]
    rendered = message_dict(first)["load_balancing_policy"]["policies"][0]["typed_extension_config"]["typed_config"]
    assert rendered["selected_host_key"] == {
        "key": "envoy.lb",
        "path": [{"key": "x-gateway-destination-endpoint-served"}],
    }
