"""Incremental translation (translators/gatewayapi/incremental.py) gives exactly what a translation from scratch
gives: after random sequences of additions, edits (with new content, or the same content in a new object) and
deletions of the objects a translation reads, the Translation and every xDS resource's bytes are compared with a
fresh build's."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from translators.combiner import Combiner
from translators.gatewayapi import translate
from translators.gatewayapi.incremental import TranslationCache, changed_keys
from translators.ir import TranslateOptions
from translators.loader import Parsed, ResourceSet, parse_text
from translators.xds.memo import Memo
from xds_server.control_plane import Build, build
from xds_server.xds.cache import Snapshot

OPTIONS = TranslateOptions()
GW = "gateway.networking.k8s.io/v1"
AI = "aigateway.envoyproxy.io/v1beta1"
EG = "gateway.envoyproxy.io/v1alpha1"


def _gateway(name: str, variant: int) -> str:
    hostname = ["", "hostname: '*.example.com', ", "hostname: a.example.com, "][variant % 3]
    port = 8080 if variant < 3 else 8081
    allowed = "allowedRoutes: {namespaces: {from: All}}"
    listeners = f"[{{name: http, protocol: HTTP, port: {port}, {hostname}{allowed}}}]"
    if variant >= 9:  # two listeners of one port that both take a.example.com: a route there is placed twice
        listeners = (
            f"[{{name: http, protocol: HTTP, port: 8080, hostname: '*.example.com', {allowed}}}, "
            f"{{name: http-a, protocol: HTTP, port: 8080, hostname: a.example.com, {allowed}}}]"
        )
    return (
        f"apiVersion: {GW}\nkind: Gateway\nmetadata: {{name: {name}}}\nspec:\n  gatewayClassName: eg\n"
        f"  listeners: {listeners}\n"
    )


def _http_route(name: str, variant: int) -> str:
    parent = ["gw-0", "gw-1", "gw-0", "missing"][variant * 7 % 4]  # each backend with two parents, over 0..11
    backend = [
        "{name: backend-0, group: gateway.envoyproxy.io, kind: Backend}",
        "{name: backend-1, group: gateway.envoyproxy.io, kind: Backend}",
        "{name: svc-0, port: 80}",
        "{name: svc-1, port: 80}",
        "{name: pool-0, group: inference.networking.k8s.io, kind: InferencePool}",
        "{name: nothing, port: 80}",
        "{name: manual, port: 80}",  # a Service without a selector: its EndpointSlices (read as a whole kind)
    ][variant % 7]
    path = ["/a", "/b", "/a"][variant % 3]  # the same path twice: one route shadows the other
    hostnames = ["", "hostnames: [a.example.com]\n  "][variant % 2]
    return (
        f"apiVersion: {GW}\nkind: HTTPRoute\nmetadata: {{name: {name}}}\nspec:\n  {hostnames}"
        f"parentRefs: [{{name: {parent}}}]\n"
        f"  rules: [{{matches: [{{path: {{type: PathPrefix, value: {path}}}}}], backendRefs: [{backend}]}}]\n"
    )


def _ai_route(name: str, variant: int) -> str:
    model = ["m-0", "m-1", "m-0"][variant % 3]
    backend = ["ai-0", "ai-1", "missing"][variant % 3]
    parent = ["gw-0", "gw-1"][variant % 2]
    # Settings on the reference: every request to that backend then passes the upstream phase, whichever route sent it.
    settings = ", headerMutation: {set: [{name: x-tenant, value: t}]}" if variant >= 8 else ""
    return (
        f"apiVersion: {AI}\nkind: AIGatewayRoute\nmetadata: {{name: {name}}}\nspec:\n"
        f"  parentRefs: [{{name: {parent}, kind: Gateway, group: gateway.networking.k8s.io}}]\n"
        f"  rules: [{{matches: [{{headers: [{{type: Exact, name: x-ai-eg-model, value: {model}}}]}}], "
        f"backendRefs: [{{name: {backend}{settings}}}]}}]\n"
    )


def _backend(name: str, variant: int) -> str:
    endpoint = ["{ip: {address: 127.0.7.1, port: 8000}}", "{ip: {address: 127.0.7.2, port: 9000}}"][variant % 2]
    endpoint = endpoint if variant < 4 else "{fqdn: {hostname: api.example.com, port: 443}}"
    return f"apiVersion: {EG}\nkind: Backend\nmetadata: {{name: {name}}}\nspec: {{endpoints: [{endpoint}]}}\n"


def _service(name: str, variant: int) -> str:
    picker = ", {port: 9002, targetPort: 9002}" if variant >= 3 else ""  # what a pool's endpointPickerRef names
    return (
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n"
        f"spec: {{selector: {{app: a{variant % 2}}}, ports: [{{port: 80, targetPort: {8000 + variant}}}{picker}]}}\n"
    )


def _pod(name: str, variant: int) -> str:
    ready = "True" if variant % 3 else "False"
    return (
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: a{variant % 2}}}}}\n"
        f"spec: {{containers: [{{name: c, image: i}}]}}\n"
        f"status: {{podIP: 127.0.8.{variant + 1}, conditions: [{{type: Ready, status: '{ready}'}}]}}\n"
    )


def _manual_service(name: str, variant: int) -> str:
    return f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{ports: [{{port: 80}}]}}\n"


def _endpoint_slice(name: str, variant: int) -> str:
    ready = "true" if variant % 3 else "false"
    return (
        f"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
        f"metadata: {{name: {name}, labels: {{kubernetes.io/service-name: manual}}}}\naddressType: IPv4\n"
        f"endpoints: [{{addresses: [127.0.9.{variant + 1}], conditions: {{ready: {ready}}}}}]\n"
        "ports: [{port: 8080}]\n"
    )


def _ai_backend(name: str, variant: int) -> str:
    target = ["backend-0", "backend-1", "nothing"][variant % 3]
    schema = "Anthropic" if variant in (6, 7) else "OpenAI"  # another API: its requests pass the upstream phase
    mutation = ", headerMutation: {remove: [x-debug]}" if variant >= 9 else ""
    return (
        f"apiVersion: {AI}\nkind: AIServiceBackend\nmetadata: {{name: {name}}}\n"
        f"spec: {{schema: {{name: {schema}}}, "
        f"backendRef: {{name: {target}, kind: Backend, group: gateway.envoyproxy.io}}{mutation}}}\n"
    )


def _security_policy(name: str, variant: int) -> str:
    target = ["ai-0", "ai-1"][variant % 2]
    secret = ["key", "missing-key"][variant // 6]  # a missing Secret: the backend's requests are refused
    return (
        f"apiVersion: {AI}\nkind: BackendSecurityPolicy\nmetadata: {{name: {name}}}\n"
        f"spec: {{type: APIKey, apiKey: {{secretRef: {{name: {secret}}}}}, "
        f"targetRefs: [{{group: aigateway.envoyproxy.io, kind: AIServiceBackend, name: {target}}}]}}\n"
    )


def _secret(name: str, variant: int) -> str:
    return f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData: {{apiKey: sk-{variant}}}\n"


def _pool(name: str, variant: int) -> str:
    mode = ["embedded", "reference"][variant % 2]  # reference: its clusters carry the picker Service's endpoints
    return (
        f"apiVersion: inference.networking.k8s.io/v1\nkind: InferencePool\n"
        f"metadata: {{name: {name}, annotations: {{xds-server.io/endpoint-picker: {mode}}}}}\n"
        f"spec: {{selector: {{matchLabels: {{app: a{variant % 2}}}}}, targetPorts: [{{number: {8000 + variant}}}], "
        "endpointPickerRef: {name: picker, port: {number: 9002}}}\n"
    )


def _class(name: str, variant: int) -> str:
    controller = "gateway.envoyproxy.io/gatewayclass-controller" if variant < 4 else "example.com/other"
    return f"apiVersion: {GW}\nkind: GatewayClass\nmetadata: {{name: {name}}}\nspec: {{controllerName: {controller}}}\n"


def _policy(name: str, variant: int) -> str:
    target = ["gw-0", "r-0"][variant % 2]
    kind = ["Gateway", "HTTPRoute"][variant % 2]
    return (
        f"apiVersion: {EG}\nkind: SecurityPolicy\nmetadata: {{name: {name}}}\n"
        f"spec: {{targetRefs: [{{group: gateway.networking.k8s.io, kind: {kind}, name: {target}}}]}}\n"
    )


# Every object a sequence may put, edit or delete: (name, its document for a variant 0..5).
UNIVERSE: dict[str, Callable[[str, int], str]] = {
    "eg": _class,
    "gw-0": _gateway,
    "gw-1": _gateway,
    **{f"r-{i}": _http_route for i in range(5)},
    **{f"a-{i}": _ai_route for i in range(3)},
    **{f"backend-{i}": _backend for i in range(2)},
    **{f"svc-{i}": _service for i in range(2)},
    "picker": _service,  # the pool's endpointPickerRef
    "manual": _manual_service,
    "manual-slice": _endpoint_slice,
    **{f"pod-{i}": _pod for i in range(3)},
    **{f"ai-{i}": _ai_backend for i in range(2)},
    "pool-0": _pool,
    "policy": _policy,
    "ai-policy": _security_policy,
    "key": _secret,
}
START = {"eg": 0, "gw-0": 0, "r-0": 0, "r-1": 2, "a-0": 0, "backend-0": 0, "ai-0": 0, "svc-0": 0, "pod-0": 1}
# A richer start: two routes on one pool whose picker is a Service (what a per-translation cache shares), pods that
# services and the pool select, a second Gateway.
RICH_START = {
    **START,
    **{"gw-1": 1, "r-2": 4, "r-3": 10, "r-4": 6, "pool-0": 1, "picker": 3, "pod-1": 4, "pod-2": 5, "svc-1": 1},
    **{"manual": 0, "manual-slice": 1},
}
VARIANTS = st.integers(min_value=0, max_value=11)
# (object, variant, what): put the variant (a new object only if the variant differs), touch (the same content in a
# new object, as a re-applied file gives), or delete.
STEPS = st.lists(
    st.tuples(st.sampled_from(sorted(UNIVERSE)), VARIANTS, st.sampled_from(["put", "put", "touch", "delete"])),
    min_size=1,
    max_size=12,
)


class Manifests:
    def __init__(self) -> None:
        self.documents: dict[str, tuple[int, tuple[Parsed, ...]]] = {}
        # As the file source combines them: each set says which keys changed, so translations take that path.
        self.combiner = Combiner()

    def put(self, name: str, variant: int, fresh: bool) -> None:
        current = self.documents.get(name)
        if current is None or current[0] != variant or fresh:
            self.documents[name] = (variant, parse_text(f"{name}.yaml", UNIVERSE[name](name, variant)))

    def delete(self, name: str) -> None:
        self.documents.pop(name, None)

    def resources(self) -> ResourceSet:
        loaded = self.combiner.combine([(name, parsed) for name, (_, parsed) in sorted(self.documents.items())])
        assert not loaded.errors, [str(e) for e in loaded.errors]
        return loaded


def _xds_bytes(built: Build) -> dict[str, dict[str, dict[str, bytes]]]:
    return {
        key: {type_url: {n: r.serialized for n, r in found.resources.items()} for type_url, found in s.types.items()}
        for key, s in built.snapshots.items()
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=st.sampled_from([START, RICH_START]), steps=STEPS)
def test_every_incremental_translation_equals_one_from_scratch(
    start: dict[str, int], steps: list[tuple[str, int, str]]
) -> None:
    manifests = Manifests()
    for name, variant in start.items():
        manifests.put(name, variant, fresh=True)
    cache, memo = TranslationCache(), Memo()
    previous: dict[str, Snapshot] = {}
    for index, (name, variant, what) in enumerate([("", 0, "start"), *steps]):
        if what == "delete":
            manifests.delete(name)
        elif what != "start":
            manifests.put(name, variant, fresh=what == "touch")
        resources = manifests.resources()
        incremental = build(resources, OPTIONS, memo, previous, cache)
        previous = incremental.snapshots
        scratch = build(resources, OPTIONS)
        assert incremental.translation == scratch.translation, f"step {index}: {name} {what} {variant}"
        assert _xds_bytes(incremental) == _xds_bytes(scratch), f"step {index}: {name} {what} {variant}"


def test_an_unrelated_route_change_reuses_every_other_route_and_a_backend_change_redoes_its_readers() -> None:
    manifests = Manifests()
    plain = {"eg": 0, "gw-0": 0, "backend-0": 0, "svc-0": 0, "pod-0": 1, "r-0": 0, "r-1": 2, "r-2": 1, "r-3": 2}
    for name, variant in plain.items():
        manifests.put(name, variant, fresh=True)
    cache = TranslationCache()
    first = manifests.resources()
    translate(first, OPTIONS, cache)
    assert cache.reused == 0
    manifests.put("r-3", 3, fresh=False)  # r-3 now goes to svc-1
    translate(manifests.resources(), OPTIONS, cache)
    assert cache.reused == 3  # all but r-3
    manifests.put("backend-0", 1, fresh=False)  # read by r-0 only
    second = manifests.resources()
    assert changed_keys(first.objects, second.objects) == {
        ("Backend", "default", "backend-0"),
        ("HTTPRoute", "default", "r-3"),
    }
    translate(second, OPTIONS, cache)
    assert cache.reused == 3  # r-1, r-2 and r-3
    manifests.put("ai-0", 0, fresh=False)  # an AIServiceBackend on backend-0, which no route uses
    translate(manifests.resources(), OPTIONS, cache)
    assert cache.reused == 4
    manifests.put("backend-0", 0, fresh=False)  # still read by r-0 only: its AIServiceBackend's statuses read no route
    translate(manifests.resources(), OPTIONS, cache)
    assert cache.reused == 3
    manifests.put("ai-0", 9, fresh=False)  # a header mutation: its requests now pass the upstream phase, which any
    translate(manifests.resources(), OPTIONS, cache)  # route's settings may depend on (the upstream summary)
    assert cache.reused == 0
    manifests.put("r-3", 2, fresh=False)
    translate(manifests.resources(), OPTIONS, cache)
    assert cache.reused == 3
    manifests.put("gw-0", 1, fresh=False)  # a Gateway: everything is translated again
    translate(manifests.resources(), OPTIONS, cache)
    assert cache.reused == 0
