"""What the provisioner wants per Gateway (names, labels, Deployment, Service, bootstrap), what it deletes, and what a
Gateway's Service and Deployment make of its addresses and Programmed condition."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import replace
from typing import Any

import pytest
import yaml

from translators.ir import Condition, ConditionStatus, ControlPlaneTls, ObjectRef, ObjectStatus
from translators.loader import ResourceSet, load_texts
from translators.resources import EnvoyProxy, Gateway
from translators.xds.tls import sds_documents
from xds_server.kube.infra import (
    APPLIED_HASH,
    BOOTSTRAP_HASH,
    DEFAULT_IMAGE,
    DEFAULT_MODULE_IMAGE,
    MODULES_DIR,
    EnvoyCertificate,
    ProvisionSettings,
    bootstrap_document,
    container_port,
    desired_objects,
    desired_set,
    digest,
    gateway_infra,
    heap_limit,
    infra_name,
    node_addresses,
    selector_labels,
    service_addresses,
    stale_objects,
    tls_part,
    tls_secret_name,
)
from xds_server.kube.status import GatewayInfra, Ownership, desired_status, with_infrastructure

OURS = "gateway.envoyproxy.io/gatewayclass-controller"
SETTINGS = ProvisionSettings("envoy-gateway-system", ("xds-server.envoy-gateway-system.svc.cluster.local", 18000))
TRUE, FALSE = ConditionStatus.TRUE, ConditionStatus.FALSE

PROXY = """
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyProxy
metadata: {name: proxy, namespace: envoy-gateway-system}
spec:
  provider:
    type: Kubernetes
    kubernetes:
      envoyService: {type: NodePort}
      envoyDeployment:
        replicas: 3
        container:
          image: example.com/envoy:custom
          resources: {limits: {cpu: "2"}}
      envoyHpa: {maxReplicas: 5}
  logging: {level: {default: warn}}
"""


def resources(text: str) -> ResourceSet:
    loaded = load_texts([("test.yaml", text)])
    assert not loaded.errors, loaded.errors
    return loaded


def gateway_yaml(
    name: str = "gw",
    namespace: str = "default",
    ports: tuple[int, ...] = (80,),
    cls: str = "eg",
    infrastructure: str = "",
) -> str:
    """A Gateway; `infrastructure`, when given, is its spec.infrastructure as a YAML flow mapping."""
    listeners = ", ".join(f"{{name: l{p}, protocol: HTTP, port: {p}}}" for p in ports)
    infra = f", infrastructure: {infrastructure}" if infrastructure else ""
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {namespace}}}
spec: {{gatewayClassName: {cls}, listeners: [{listeners}]{infra}}}
"""


def class_yaml(name: str = "eg", controller: str = OURS, proxy: str | None = None) -> str:
    params = (
        f", parametersRef: {{group: gateway.envoyproxy.io, kind: EnvoyProxy, name: {proxy}, namespace: "
        "envoy-gateway-system}"
        if proxy
        else ""
    )
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: {name}}}
spec: {{controllerName: {controller}{params}}}
"""


def one_gateway(text: str = gateway_yaml()) -> Gateway:
    [found] = resources(text).of_kind(Gateway)
    return found


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objects}


def test_names_are_envoy_gateways_hashed_names() -> None:
    hash8 = hashlib.sha256(b"default/eg").hexdigest()[:8]
    assert infra_name("default", "eg") == f"envoy-default-eg-{hash8}"
    long = infra_name("a-namespace-with-a-long-name", "and-a-gateway-with-a-long-name-too")
    # "<ns>-<gw>" is cut at 48 characters; a '-' left at the end of the cut goes
    cut = "a-namespace-with-a-long-name-and-a-gateway-with-a-long-name-too"[:48]
    assert cut.endswith("-")
    cut = cut.rstrip("-")
    whole = b"a-namespace-with-a-long-name/and-a-gateway-with-a-long-name-too"
    assert long == f"envoy-{cut}-{hashlib.sha256(whole).hexdigest()[:8]}"
    assert len(long) <= 63 and "--" not in long
    # Different Gateways whose names cut the same differ by their hash
    assert infra_name("ns", "x" * 60 + "a") != infra_name("ns", "x" * 60 + "b")
    assert "." not in infra_name("default", "gw.example")


def test_every_object_is_labelled_with_its_gateway_and_the_selector_is_only_stable_labels() -> None:
    objects = by_kind(desired_objects(one_gateway(), None, SETTINGS))
    labels = {
        "app.kubernetes.io/name": "envoy",
        "app.kubernetes.io/component": "proxy",
        "app.kubernetes.io/managed-by": "xds-server",
        "gateway.envoyproxy.io/owning-gateway-name": "gw",
        "gateway.envoyproxy.io/owning-gateway-namespace": "default",
    }
    assert set(objects) == {"ServiceAccount", "ConfigMap", "Service", "Deployment"}
    name = infra_name("default", "gw")
    for document in objects.values():
        assert document["metadata"]["name"] == name
        assert document["metadata"]["namespace"] == "envoy-gateway-system"
        assert document["metadata"]["labels"] == labels
    deployment = objects["Deployment"]["spec"]
    assert deployment["selector"] == {"matchLabels": labels}
    assert deployment["template"]["metadata"]["labels"] == labels
    assert objects["Service"]["spec"]["selector"] == labels
    assert objects["ServiceAccount"]["automountServiceAccountToken"] is False


INFRASTRUCTURE_GATEWAY = gateway_yaml(
    infrastructure="{labels: {team: search, app.kubernetes.io/name: mine}, "
    "annotations: {example.com/owner: search-team}}"
)


def test_every_object_and_pod_carries_the_gateways_infrastructure_labels_and_annotations() -> None:
    settings = replace(SETTINGS, tls=TLS)
    gateway = one_gateway(INFRASTRUCTURE_GATEWAY)
    objects = by_kind(desired_objects(gateway, None, settings, tls_part(gateway, settings, CERTIFICATE)))
    assert set(objects) == {"ServiceAccount", "Secret", "ConfigMap", "Service", "Deployment"}
    selector = selector_labels("default", "gw")
    carried = {"team": "search", **selector}  # the selector's own labels win: app.kubernetes.io/name stays envoy
    for document in objects.values():
        assert document["metadata"]["labels"] == carried, document["kind"]
        assert document["metadata"]["annotations"]["example.com/owner"] == "search-team", document["kind"]
        assert APPLIED_HASH in document["metadata"]["annotations"]
    deployment = objects["Deployment"]["spec"]
    assert deployment["selector"] == {"matchLabels": selector}  # immutable: never the Gateway's labels
    assert objects["Service"]["spec"]["selector"] == selector
    pod = deployment["template"]["metadata"]
    assert pod["labels"] == carried
    assert pod["annotations"]["example.com/owner"] == "search-team" and BOOTSTRAP_HASH in pod["annotations"]


def test_a_changed_infrastructure_annotation_changes_what_is_applied() -> None:
    before = by_kind(desired_objects(one_gateway(INFRASTRUCTURE_GATEWAY), None, SETTINGS))
    changed = INFRASTRUCTURE_GATEWAY.replace("search-team", "ads-team")
    after = by_kind(desired_objects(one_gateway(changed), None, SETTINGS))
    for kind, document in after.items():
        assert (
            document["metadata"]["annotations"][APPLIED_HASH] != before[kind]["metadata"]["annotations"][APPLIED_HASH]
        )


def test_a_long_gateway_name_makes_a_valid_label_value() -> None:
    value = selector_labels("default", "g" * 100)["gateway.envoyproxy.io/owning-gateway-name"]
    assert len(value) <= 63 and value.startswith("g" * 50)


def test_defaults_without_an_envoy_proxy() -> None:
    objects = by_kind(desired_objects(one_gateway(), None, SETTINGS))
    spec = objects["Deployment"]["spec"]
    [container] = spec["template"]["spec"]["containers"]
    assert spec["replicas"] == 1
    assert container["image"] == DEFAULT_IMAGE == "docker.io/envoyproxy/envoy:distroless-v1.40.0"
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "512Mi"}}
    assert objects["Service"]["spec"]["type"] == "LoadBalancer"


@pytest.mark.parametrize(
    ("limits", "heap"),
    [
        ({"cpu": "2"}, None),
        ({"memory": "1Gi"}, int(0.8 * 2**30)),
        ({"memory": "500M"}, int(0.8 * 500 * 10**6)),
        ({"memory": "1.5Gi"}, int(0.8 * 1.5 * 2**30)),
        ({"memory": "268435456"}, int(0.8 * 2**28)),
    ],
)
def test_a_memory_limit_gives_envoy_a_heap_limit_at_80_percent_of_it(limits: dict[str, str], heap: int | None) -> None:
    assert heap_limit({"limits": limits}) == heap
    text = PROXY.replace('resources: {limits: {cpu: "2"}}', f"resources: {{limits: {limits}}}")
    [proxy] = resources(text).of_kind(EnvoyProxy)
    config = by_kind(desired_objects(one_gateway(), proxy, SETTINGS))["ConfigMap"]["data"]["bootstrap.yaml"]
    monitors = {m["name"]: m["typed_config"] for m in yaml.safe_load(config)["overload_manager"]["resource_monitors"]}
    assert monitors.get("envoy.resource_monitors.fixed_heap", {}).get("max_heap_size_bytes") == heap
    assert "envoy.resource_monitors.global_downstream_max_connections" in monitors  # always


def test_image_replicas_resources_and_service_type_come_from_the_envoy_proxy() -> None:
    [proxy] = resources(PROXY).of_kind(EnvoyProxy)
    objects = by_kind(desired_objects(one_gateway(), proxy, SETTINGS))
    spec = objects["Deployment"]["spec"]
    [container] = spec["template"]["spec"]["containers"]
    assert spec["replicas"] == 3
    assert container["image"] == "example.com/envoy:custom"
    assert container["resources"] == {"limits": {"cpu": "2"}}
    assert objects["Service"]["spec"]["type"] == "NodePort"


def test_the_envoy_container_runs_unprivileged_with_its_probe_and_drain() -> None:
    spec = by_kind(desired_objects(one_gateway(), None, SETTINGS))["Deployment"]["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert container["command"] == ["envoy"]
    assert container["args"] == [
        "-c",
        "/etc/envoy/bootstrap.yaml",
        "--service-node",
        "$(ENVOY_POD_NAME)",
        "--log-level",
        "warn",
        "--drain-time-s",
        "60",
        "--drain-strategy",
        "immediate",
    ]
    pod_name = next(e for e in container["env"] if e["name"] == "ENVOY_POD_NAME")
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 19003, "scheme": "HTTP"}
    assert container["lifecycle"]["preStop"]["httpGet"]["path"] == "/drain"
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["terminationGracePeriodSeconds"] == 60
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == infra_name("default", "gw")
    assert spec["volumes"] == [
        {"name": "bootstrap", "configMap": {"name": infra_name("default", "gw"), "defaultMode": 0o444}},
        {"name": "modules", "emptyDir": {"sizeLimit": "16Mi"}},
    ]


def test_an_init_container_of_the_controller_image_gives_envoy_the_ai_filter_module() -> None:
    """The Envoy image has none of our code: the controller's image copies the module into a volume the Envoy
    container reads (read-only), and Envoy is told to look there."""
    settings = ProvisionSettings(SETTINGS.namespace, SETTINGS.xds, module_image="registry.example/xds-server:1.2")
    spec = by_kind(desired_objects(one_gateway(), None, settings))["Deployment"]["spec"]["template"]["spec"]
    [init] = spec["initContainers"]
    [envoy] = spec["containers"]
    assert init["image"] == "registry.example/xds-server:1.2"
    assert init["args"] == ["envoy-module", "--into", MODULES_DIR]
    assert init["volumeMounts"] == [{"name": "modules", "mountPath": MODULES_DIR}]
    assert init["securityContext"] == envoy["securityContext"] and init["securityContext"]["runAsNonRoot"]
    assert {"name": "modules", "mountPath": MODULES_DIR, "readOnly": True} in envoy["volumeMounts"]
    assert {"name": "ENVOY_DYNAMIC_MODULES_SEARCH_PATH", "value": MODULES_DIR} in envoy["env"]
    default = by_kind(desired_objects(one_gateway(), None, SETTINGS))["Deployment"]["spec"]["template"]["spec"]
    assert default["initContainers"][0]["image"] == DEFAULT_MODULE_IMAGE == "xds-server:0.1.0"  # the chart's default


@pytest.mark.parametrize(
    ("port", "offset", "expected"),
    [
        (80, 10000, 10080),
        (443, 10000, 10443),
        (1023, 10000, 11023),
        (1024, 10000, 1024),
        (8080, 10000, 8080),
        (80, 0, 80),
    ],
)
def test_ports_below_1024_move_by_the_offset(port: int, offset: int, expected: int) -> None:
    assert container_port(port, offset) == expected


def test_service_ports_target_the_container_ports_and_shared_ports_appear_once() -> None:
    gateway = one_gateway(
        """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: eg
  listeners:
  - {name: a, protocol: HTTP, port: 80, hostname: a.example}
  - {name: b, protocol: HTTP, port: 80, hostname: b.example}
  - {name: c, protocol: HTTP, port: 8080}
"""
    )
    objects = by_kind(desired_objects(gateway, None, SETTINGS))
    assert objects["Service"]["spec"]["ports"] == [
        {"name": "http-80", "port": 80, "targetPort": 10080, "protocol": "TCP"},
        {"name": "http-8080", "port": 8080, "targetPort": 8080, "protocol": "TCP"},
    ]
    [container] = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["ports"] == [
        {"name": "http-80", "containerPort": 10080, "protocol": "TCP"},
        {"name": "http-8080", "containerPort": 8080, "protocol": "TCP"},
        {"name": "readiness", "containerPort": 19003, "protocol": "TCP"},
    ]


def test_the_bootstrap_names_the_gateway_and_reaches_ads_by_the_services_dns_name() -> None:
    objects = by_kind(desired_objects(one_gateway(), None, SETTINGS))
    config = objects["ConfigMap"]["data"]["bootstrap.yaml"]
    document = yaml.safe_load(config)
    assert document["node"]["cluster"] == "default/gw"
    assert document["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 19000}
    ads = next(c for c in document["static_resources"]["clusters"] if c["name"] == "xds-server/ads")
    assert ads["type"] == "STRICT_DNS"
    [endpoint] = ads["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == {
        "address": "xds-server.envoy-gateway-system.svc.cluster.local",
        "port_value": 18000,
    }
    [readiness] = document["static_resources"]["listeners"]
    assert readiness["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 19003}
    # A bootstrap change rolls the pods: its hash is in the pod template
    template = objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert template[BOOTSTRAP_HASH] == digest(config)
    other = ProvisionSettings(SETTINGS.namespace, ("other.example", 18000))
    moved = by_kind(desired_objects(one_gateway(), None, other))["Deployment"]["spec"]["template"]["metadata"]
    assert moved["annotations"][BOOTSTRAP_HASH] != template[BOOTSTRAP_HASH]


def test_an_ip_xds_address_stays_static() -> None:
    document = bootstrap_document(one_gateway(), ProvisionSettings("ns", ("10.0.0.5", 18000)))
    assert document["static_resources"]["clusters"][0]["type"] == "STATIC"


TLS = ControlPlaneTls("/certs", "xds-server.envoy-gateway-system.svc.cluster.local")
CERTIFICATE = EnvoyCertificate(b"CERT", b"KEY", b"CA")


def test_with_mutual_tls_the_gateway_gets_a_certificate_secret_mounted_where_its_bootstrap_reads_it() -> None:
    settings = replace(SETTINGS, tls=TLS)
    gateway = one_gateway()
    objects = desired_objects(gateway, None, settings, tls_part(gateway, settings, CERTIFICATE))
    assert [o["kind"] for o in objects] == ["ServiceAccount", "Secret", "ConfigMap", "Service", "Deployment"]
    by = by_kind(objects)
    name = infra_name("default", "gw")
    secret = by["Secret"]
    assert secret["metadata"]["name"] == f"{name}-tls" == tls_secret_name("default", "gw")
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["labels"] == selector_labels("default", "gw")  # deleted with the Gateway's objects
    files = {key: base64.b64decode(value) for key, value in secret["data"].items()}
    assert (files["tls.crt"], files["tls.key"], files["ca.crt"]) == (b"CERT", b"KEY", b"CA")
    assert {key: text.encode() for key, text in sds_documents(TLS).items()}.items() <= files.items()
    pod = by["Deployment"]["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": f"{name}-tls", "defaultMode": 0o440}} in pod["volumes"]
    assert {"name": "tls", "mountPath": "/certs", "readOnly": True} in pod["containers"][0]["volumeMounts"]
    assert pod["securityContext"]["fsGroup"] == 65532
    document = yaml.safe_load(by["ConfigMap"]["data"]["bootstrap.yaml"])
    socket = document["static_resources"]["clusters"][0]["transport_socket"]
    context = socket["typed_config"]
    assert context["sni"] == TLS.server_name
    sds = context["common_tls_context"]["tls_certificate_sds_secret_configs"][0]["sds_config"]
    assert sds["path_config_source"] == {"path": "/certs/sds-certificate.json", "watched_directory": {"path": "/certs"}}

    # A renewed certificate changes the Secret only: the pods keep running and the kubelet swaps the files.
    renewed = desired_objects(
        gateway, None, settings, tls_part(gateway, settings, replace(CERTIFICATE, certificate_pem=b"NEW"))
    )
    changed = [a["kind"] for a, b in zip(objects, renewed, strict=True) if a != b]
    assert changed == ["Secret"]


def test_desired_set_asks_each_gateway_its_certificate_when_tls_is_on() -> None:
    text = "---".join([class_yaml(), gateway_yaml()])
    asked: list[str] = []

    def certificate(gateway: str) -> EnvoyCertificate:
        asked.append(gateway)
        return CERTIFICATE

    wanted = desired_set(resources(text), OURS, replace(SETTINGS, tls=TLS), certificate)
    assert asked == ["default/gw"]
    assert ("Secret", f"{infra_name('default', 'gw')}-tls") in wanted
    assert not [key for key in desired_set(resources(text), OURS, SETTINGS) if key[0] == "Secret"]


def test_a_gateway_whose_objects_cannot_be_built_keeps_its_own_and_stops_no_other() -> None:
    # As a certificate the issuer refused once did: the whole pass failed, and no Gateway got its Envoy.
    text = "---".join([class_yaml(), gateway_yaml("a"), gateway_yaml("b")])

    def certificate(gateway: str) -> EnvoyCertificate:
        if gateway == "default/a":
            raise ValueError("refused")
        return CERTIFICATE

    failed: set[tuple[str, str]] = set()
    wanted = desired_set(resources(text), OURS, replace(SETTINGS, tls=TLS), certificate, failed)
    assert failed == {("default", "a")}
    assert ("Deployment", infra_name("default", "b")) in wanted
    assert not [key for key in wanted if key[1].startswith(infra_name("default", "a"))]
    # What Gateway a already has is not deleted as stale; b's leftovers would be.
    existing = [
        document
        for gateway in ("a", "b")
        for document in desired_objects(one_gateway(gateway_yaml(gateway)), None, SETTINGS)
    ]
    stale = stale_objects(existing, wanted, keep=failed)
    assert not [key for key in stale if key[1].startswith(infra_name("default", "a"))]
    assert stale_objects(existing, wanted) != stale


def test_every_object_carries_a_hash_of_itself_that_changes_with_it() -> None:
    [proxy] = resources(PROXY).of_kind(EnvoyProxy)
    plain = by_kind(desired_objects(one_gateway(), None, SETTINGS))
    shaped = by_kind(desired_objects(one_gateway(), proxy, SETTINGS))
    for kind in ("Service", "Deployment"):
        assert (
            plain[kind]["metadata"]["annotations"][APPLIED_HASH]
            != shaped[kind]["metadata"]["annotations"][APPLIED_HASH]
        )
    assert plain["ConfigMap"]["metadata"]["annotations"] == shaped["ConfigMap"]["metadata"]["annotations"]
    again = by_kind(desired_objects(one_gateway(), None, SETTINGS))
    assert again == plain


def test_the_desired_set_covers_gateways_of_our_classes_with_their_envoy_proxy() -> None:
    text = "---".join(
        [
            PROXY,
            class_yaml("eg", proxy="proxy"),
            class_yaml("other", controller="example.com/other"),
            gateway_yaml("a", "default"),
            gateway_yaml("b", "team"),
            gateway_yaml("foreign", "default", cls="other"),
            gateway_yaml("classless", "default", cls="missing"),
        ]
    )
    wanted = desired_set(resources(text), OURS, SETTINGS)
    names = {name for _, name in wanted}
    assert names == {infra_name("default", "a"), infra_name("team", "b")}
    assert len(wanted) == 8
    deployment = wanted[("Deployment", infra_name("team", "b"))]
    assert deployment["spec"]["replicas"] == 3


def test_a_gateways_own_envoy_proxy_wins_over_its_classs() -> None:
    """spec.infrastructure.parametersRef: an EnvoyProxy of the Gateway's namespace shapes its Envoy alone."""
    own = """
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyProxy
metadata: {name: small, namespace: team}
spec: {provider: {type: Kubernetes, kubernetes: {envoyDeployment: {replicas: 1}}}}
"""
    with_own = gateway_yaml(
        "b", "team", infrastructure="{parametersRef: {group: gateway.envoyproxy.io, kind: EnvoyProxy, name: small}}"
    )
    text = "---".join([PROXY, own, class_yaml("eg", proxy="proxy"), gateway_yaml("a", "team"), with_own])
    wanted = desired_set(resources(text), OURS, SETTINGS)
    assert wanted[("Deployment", infra_name("team", "a"))]["spec"]["replicas"] == 3  # the class's EnvoyProxy
    assert wanted[("Deployment", infra_name("team", "b"))]["spec"]["replicas"] == 1  # its own


def managed(kind: str, name: str, ours: bool = True, namespace: str = "default") -> dict[str, Any]:
    labels = {
        "app.kubernetes.io/managed-by": "xds-server" if ours else "helm",
        "gateway.envoyproxy.io/owning-gateway-namespace": namespace,
    }
    return {"kind": kind, "metadata": {"name": name, "labels": labels}}


def test_objects_no_gateway_wants_are_stale() -> None:
    kept = infra_name("default", "a")
    gone = infra_name("default", "deleted-while-down")
    actual = [
        managed("Deployment", kept),
        managed("Service", kept),
        managed("Deployment", gone),
        managed("ConfigMap", gone),
        managed("ServiceAccount", gone),
        managed("Deployment", "someone-elses", ours=False),
    ]
    wanted = [("Deployment", kept), ("Service", kept), ("ConfigMap", kept)]
    assert stale_objects(actual, wanted) == [("ConfigMap", gone), ("Deployment", gone), ("ServiceAccount", gone)]
    assert stale_objects(actual, []) == sorted(
        [("Deployment", kept), ("Service", kept), ("Deployment", gone), ("ConfigMap", gone), ("ServiceAccount", gone)]
    )


def test_a_controller_watching_some_namespaces_deletes_only_objects_of_gateways_there() -> None:
    actual = [managed("Deployment", "a", namespace="team-a"), managed("Deployment", "b", namespace="team-b")]
    assert stale_objects(actual, [], ["team-a"]) == [("Deployment", "a")]
    assert stale_objects(actual, []) == [("Deployment", "a"), ("Deployment", "b")]


def service(kind: str, status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "kind": "Service",
        "spec": {"type": kind, "clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"], **spec},
        "status": status or {},
    }


def node(name: str, *addresses: tuple[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"addresses": [{"type": t, "address": a} for t, a in addresses]}}


def test_load_balancer_addresses_are_its_ingress_else_its_external_ips() -> None:
    ingress = {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}, {"hostname": "lb.example.com"}]}}
    assert service_addresses(service("LoadBalancer", ingress), []) == (
        (("IPAddress", "1.2.3.4"), ("Hostname", "lb.example.com")),
        "",
    )
    assert service_addresses(service("LoadBalancer", externalIPs=["5.6.7.8"]), []) == ((("IPAddress", "5.6.7.8"),), "")
    addresses, note = service_addresses(service("LoadBalancer"), [])
    assert addresses == () and "no ingress address" in note


def test_cluster_ip_addresses_are_its_cluster_ips() -> None:
    assert service_addresses(service("ClusterIP", clusterIPs=["10.0.0.7", "fd00::7"]), []) == (
        (("IPAddress", "10.0.0.7"), ("IPAddress", "fd00::7")),
        "",
    )
    assert service_addresses(service("ClusterIP", clusterIP="None", clusterIPs=["None"]), [])[0] == ()


def test_node_port_addresses_are_the_nodes_external_ips_else_internal_ips_else_the_cluster_ip() -> None:
    nodes = [
        node("b", ("InternalIP", "192.168.0.2")),
        node("a", ("InternalIP", "192.168.0.1"), ("ExternalIP", "203.0.113.1"), ("Hostname", "a")),
    ]
    assert node_addresses(nodes) == (("IPAddress", "203.0.113.1"), ("IPAddress", "192.168.0.2"))
    assert service_addresses(service("NodePort"), nodes) == (
        (("IPAddress", "203.0.113.1"), ("IPAddress", "192.168.0.2")),
        "",
    )
    addresses, note = service_addresses(service("NodePort"), [])
    assert addresses == (("IPAddress", "10.0.0.7"),)
    assert "no Node addresses" in note


def test_no_service_means_no_address() -> None:
    infra = gateway_infra(None, None, [])
    assert infra == GatewayInfra((), 0, 0, "its Envoy Service does not exist yet")


def test_replicas_come_from_the_deployment() -> None:
    deployment = {"spec": {"replicas": 2}, "status": {"availableReplicas": 1}}
    infra = gateway_infra(service("ClusterIP"), deployment, [])
    assert (infra.available_replicas, infra.replicas) == (1, 2)
    assert gateway_infra(service("ClusterIP"), {"spec": {"replicas": 1}}, []).available_replicas == 0


HELD = Condition("Programmed", TRUE, "Programmed", "held by 1 Envoy(s): pod-a")
PENDING = Condition("Programmed", FALSE, "Pending", "no Envoy of this Gateway holds its current configuration yet")
ACCEPTED = Condition("Accepted", TRUE, "Accepted", "ok")
ADDRESSED = GatewayInfra((("IPAddress", "10.0.0.7"),), 1, 1)


def programmed(conditions: tuple[Condition, ...]) -> Condition:
    return next(c for c in conditions if c.type == "Programmed")


def test_programmed_needs_an_address_then_an_available_replica_then_an_envoy_holding_the_config() -> None:
    no_address = programmed(with_infrastructure((ACCEPTED, HELD), GatewayInfra((), 1, 1, "why")))
    assert (no_address.status, no_address.reason) == (FALSE, "AddressNotAssigned")
    assert "why" in no_address.message
    no_replica = programmed(with_infrastructure((ACCEPTED, HELD), GatewayInfra(ADDRESSED.addresses, 0, 1)))
    assert (no_replica.status, no_replica.reason, no_replica.message) == (
        FALSE,
        "NoResources",
        "0/1 Envoy replicas available",
    )
    ready = programmed(with_infrastructure((ACCEPTED, HELD), ADDRESSED))
    assert (ready.status, ready.reason) == (TRUE, "Programmed")
    assert ready.message == "Address assigned to the Gateway, 1/1 Envoy replicas available; held by 1 Envoy(s): pod-a"
    waiting = programmed(with_infrastructure((ACCEPTED, PENDING), ADDRESSED))
    assert (waiting.status, waiting.reason) == (FALSE, "Pending")
    # A configuration error says more than missing infrastructure
    invalid = Condition("Programmed", FALSE, "Invalid", "Envoy e rejected it")
    assert programmed(with_infrastructure((ACCEPTED, invalid), GatewayInfra((), 0, 1))) == invalid


def stored_gateway(status: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "Gateway", "metadata": {"name": "gw", "namespace": "default", "generation": 1}, "status": status}


def test_the_status_writer_writes_addresses_when_provisioning_and_keeps_them_otherwise() -> None:
    ours = ObjectStatus(ObjectRef("Gateway", "default", "gw"), (ACCEPTED, HELD), 1)
    ownership = Ownership(OURS, frozenset())
    theirs = {"addresses": [{"type": "IPAddress", "value": "9.9.9.9"}]}
    kept = desired_status("Gateway", stored_gateway(theirs), ours, ownership, "t")
    assert kept is not None and kept["addresses"] == theirs["addresses"]
    written = desired_status("Gateway", stored_gateway(theirs), ours, ownership, "t", ADDRESSED)
    assert written is not None and written["addresses"] == [{"type": "IPAddress", "value": "10.0.0.7"}]
    assert programmed_dict(written)["status"] == "True"
    cleared = desired_status("Gateway", stored_gateway(theirs), ours, ownership, "t", GatewayInfra((), 0, 1))
    assert cleared is not None and "addresses" not in cleared
    assert programmed_dict(cleared)["reason"] == "AddressNotAssigned"
    many = GatewayInfra(tuple(("IPAddress", f"10.0.0.{i}") for i in range(20)), 1, 1)
    limited = desired_status("Gateway", stored_gateway({}), ours, ownership, "t", many)
    assert limited is not None and len(limited["addresses"]) == 16


def test_an_earlier_true_is_kept_over_pending_only_while_the_infrastructure_is_fine() -> None:
    ours = ObjectStatus(ObjectRef("Gateway", "default", "gw"), (ACCEPTED, PENDING), 1)
    ownership = Ownership(OURS, frozenset())
    earlier = {"type": "Programmed", "status": "True", "reason": "Programmed", "message": "m", "observedGeneration": 1}
    fine = desired_status("Gateway", stored_gateway({"conditions": [earlier]}), ours, ownership, "t", ADDRESSED)
    assert fine is not None and programmed_dict(fine)["status"] == "True"
    gone = desired_status(
        "Gateway",
        stored_gateway({"conditions": [earlier]}),
        ours,
        ownership,
        "t",
        GatewayInfra(ADDRESSED.addresses, 0, 1),
    )
    assert gone is not None and programmed_dict(gone)["reason"] == "NoResources"


def programmed_dict(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Programmed")
