"""Imports go one way only. Read from the source with `ast`: every `import` and `from ... import`, at module level,
inside functions and under `if TYPE_CHECKING:` alike, and `importlib.import_module("...")` with a literal name.

The product's layers, lowest first: `translators` (pure) <- small utilities <- the services (`xds_server.xds`,
`.extproc`, `.epp`, `.sources`, `.sim`) <- `xds_server.control_plane` <- the entry points (`serve`, `up`, `admin`,
`admin_grpc`, `cli`). A module may import its own layer and the layers below it. Inside the services layer the
groups are peers that share only what `SERVICE_PEERS` lists (e.g. the picker and the model router share the
ext_proc protocol kernel, never each other). The test code: `testing/` is the support shared by `tests/`, `e2e/`
and `bench/`; the product imports none of them, and a module of `tests/` imports no other one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Layer:
    name: str
    prefixes: tuple[str, ...]  # a module is in the layer of its longest prefix (the module itself or a parent)


# Lowest first.
LAYERS: tuple[Layer, ...] = (
    Layer("translators", ("translators",)),
    Layer(
        "utilities",
        (
            "xds_server",  # the package's own module only (see PACKAGES_ONLY)
            "xds_server.metrics",
            "xds_server.logs",
            "xds_server.envoy",
            "xds_server.native",  # the AI filter module Envoy loads (a shared object; no Python code)
            "xds_server.api",
            "xds_server.bootstrap",  # Envoy's bootstrap document: pure
            "xds_server.identity",  # which Gateway a gRPC peer's client certificate names
            "xds_server.listen",  # TCP or Unix socket addresses of the gRPC servers
            "xds_server.tls",  # the gRPC servers' certificate, replaced in place
        ),
    ),
    Layer(
        "services",
        (
            "xds_server.xds",
            "xds_server.extproc",
            "xds_server.epp",
            "xds_server.sources",
            "xds_server.sim",
            "xds_server.kube",
            "xds_server.tokens",
        ),
    ),
    Layer("control plane", ("xds_server.control_plane",)),
    Layer(
        "entry points",
        (
            "xds_server.serve",
            "xds_server.serve_cluster",
            "xds_server.up",
            "xds_server.admin",
            "xds_server.admin_grpc",
            "xds_server.cli",
        ),
    ),
)
# Peer groups of the services layer (a module is in the group of its longest prefix) and the other groups each may
# import; a group always may import itself. Every services module must be in a group.
SERVICE_PEERS: Mapping[str, frozenset[str]] = {
    "xds_server.xds": frozenset(),  # ADS and the snapshot cache
    "xds_server.extproc": frozenset(),  # the package's own module only (see PACKAGES_ONLY)
    "xds_server.extproc.protocol": frozenset(),  # the ext_proc kernel the processors share
    "xds_server.extproc.server": frozenset({"xds_server.extproc.protocol"}),  # the generic gRPC dispatcher
    # The request-body bytes the services hold at once (the picker's and the upstream settings' budget).
    "xds_server.extproc.budget": frozenset({"xds_server.extproc.protocol"}),
    "xds_server.extproc.sse": frozenset(),
    "xds_server.extproc.telemetry": frozenset(),
    # Translation between OpenAI's API and providers' own: pure, one module per schema.
    "xds_server.extproc.schemas": frozenset({"xds_server.extproc.sse"}),
    "xds_server.extproc.sigv4": frozenset(),  # AWS Signature Version 4: pure
    # One attempt to a backend of another API (Azure OpenAI's paths, Anthropic's translation) for the service below.
    "xds_server.extproc.providers": frozenset(
        {"xds_server.extproc.protocol", "xds_server.extproc.schemas", "xds_server.extproc.sigv4"}
    ),
    "xds_server.extproc.upstream": frozenset(
        {
            "xds_server.extproc.budget",
            "xds_server.extproc.protocol",
            "xds_server.extproc.providers",
            "xds_server.tokens",
        }
    ),
    "xds_server.tokens": frozenset(),  # bearer tokens minted for backends (Google, Entra ID), off the request path
    "xds_server.extproc.usage_log": frozenset({"xds_server.extproc.telemetry"}),
    "xds_server.epp": frozenset({"xds_server.extproc.budget", "xds_server.extproc.protocol"}),
    "xds_server.sources": frozenset(),
    "xds_server.sim": frozenset(),
    "xds_server.kube": frozenset(),  # cluster mode's writers: status, Lease (they read what they are handed)
}
PEER_LAYER = "services"
# Entries of LAYERS and SERVICE_PEERS that stand for a package's own module (an __init__ importing nothing), not
# for what is inside it: a new module there must find its place in the rules, not slip into a catch-all.
PACKAGES_ONLY = {"layers": frozenset({"xds_server"}), "peers": frozenset({"xds_server.extproc"})}
PRODUCT = ("translators", "xds_server")
# What each top-level package may import of the first-party ones (any third-party library is fine).
MAY_IMPORT: Mapping[str, frozenset[str]] = {
    "translators": frozenset({"translators"}),
    "xds_server": frozenset({"translators", "xds_server"}),
    "testing": frozenset({"translators", "xds_server", "testing"}),
    "tests": frozenset({"translators", "xds_server", "testing"}),  # no other tests.* module
    "e2e": frozenset({"translators", "xds_server", "testing", "e2e"}),  # e2e/kube has its own cluster support
    "bench": frozenset({"translators", "xds_server", "testing", "bench"}),  # benchmarks share their harness
}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    where: str  # path:line

    def __str__(self) -> str:
        return f"{self.importer} imports {self.imported}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files() -> dict[str, Path]:
    return {module_name(p): p for package in MAY_IMPORT for p in sorted((ROOT / package).rglob("*.py"))}


def imports_of(module: str, source: str, is_package: bool, modules: Iterable[str], where: str) -> list[Import]:
    """First-party imports of one module's source. `from X import name` imports X.name when that is a module."""
    known = set(modules)
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((submodule if submodule in known else base, node.lineno))
        elif (
            isinstance(node, ast.Call)
            and (ast.unparse(node.func) in ("importlib.import_module", "import_module", "__import__"))
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.args[0].value, node.lineno))
    return [
        Import(module, name, f"{where}:{line}")
        for name, line in sorted(set(found), key=lambda item: (item[1], item[0]))
        if name.split(".")[0] in MAY_IMPORT
    ]


def import_graph() -> tuple[list[str], list[Import]]:
    files = source_files()
    edges = [
        edge
        for module, path in files.items()
        for edge in imports_of(module, path.read_text(), path.name == "__init__.py", files, str(path.relative_to(ROOT)))
    ]
    return sorted(files), edges


def longest_prefix(module: str, prefixes: Iterable[str], packages_only: frozenset[str]) -> str | None:
    matching = [p for p in prefixes if module == p or (p not in packages_only and module.startswith(p + "."))]
    return max(matching, key=len) if matching else None


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer index)
    for index, layer in enumerate(LAYERS):
        prefix = longest_prefix(module, layer.prefixes, PACKAGES_ONLY["layers"])
        if prefix is not None and (best is None or len(prefix) > best[0]):
            best = (len(prefix), index)
    return None if best is None else best[1]


def violations(modules: Iterable[str], edges: Iterable[Import]) -> list[str]:
    """Every broken rule, one line each."""
    found = []
    for module in modules:
        if module.split(".")[0] in PRODUCT and layer_of(module) is None:
            found.append(f"{module} is in no layer (add it to LAYERS)")
        elif layer_of(module) == _peer_layer() and group_of(module) is None:
            found.append(f"{module} is in no peer group of layer {PEER_LAYER} (add it to SERVICE_PEERS)")
    for edge in edges:
        source, target = edge.importer.split(".")[0], edge.imported.split(".")[0]
        if target not in MAY_IMPORT[source]:
            allowed = ", ".join(sorted(MAY_IMPORT[source]))
            found.append(f"{edge} ({source} may import only {allowed}) at {edge.where}")
            continue
        if source not in PRODUCT:
            continue
        low, high = layer_of(edge.importer), layer_of(edge.imported)
        if low is None or high is None:
            found.append(f"{edge} (a module in no layer) at {edge.where}")
        elif high > low:
            found.append(f"{edge} (layer {LAYERS[low].name} -> higher layer {LAYERS[high].name}) at {edge.where}")
        elif high == low == _peer_layer():
            mine, theirs = group_of(edge.importer), group_of(edge.imported)
            if mine is not None and theirs is not None and mine != theirs and theirs not in SERVICE_PEERS[mine]:
                found.append(f"{edge} (peer {mine} -> peer {theirs}, not shared) at {edge.where}")
    return found


def group_of(module: str) -> str | None:
    return longest_prefix(module, SERVICE_PEERS, PACKAGES_ONLY["peers"])


def _peer_layer() -> int:
    [index] = [i for i, layer in enumerate(LAYERS) if layer.name == PEER_LAYER]
    return index


def test_the_tree_has_no_layering_violations() -> None:
    modules, edges = import_graph()
    assert any(e.importer == "xds_server.serve" for e in edges), "the walk found no imports: is ROOT right?"
    found = violations(modules, edges)
    assert not found, "\n".join(found)


def test_upward_peer_and_test_code_imports_are_each_reported() -> None:
    modules = [
        "translators.ir",
        "xds_server.control_plane",
        "xds_server.xds.cache",
        "xds_server.epp.picker",
        "xds_server.extproc.protocol",
        "xds_server.extproc.upstream",
        "xds_server.serve",
        "testing.ports",
        "tests.test_a",
        "tests.test_b",
        "bench.run",
        "e2e.test_c",
    ]
    edges = [
        Import("xds_server.xds.cache", "xds_server.control_plane", "cache.py:1"),  # upward
        Import("xds_server.epp.picker", "xds_server.extproc.upstream", "picker.py:2"),  # peer
        Import("xds_server.epp.picker", "xds_server.extproc.protocol", "picker.py:3"),  # shared: fine
        Import("translators.ir", "xds_server.metrics", "ir.py:4"),  # upward out of translators
        Import("xds_server.serve", "xds_server.epp.picker", "serve.py:5"),  # downward: fine
        Import("xds_server.serve", "testing.ports", "serve.py:6"),  # product -> test support
        Import("tests.test_a", "tests.test_b", "test_a.py:7"),
        Import("tests.test_a", "e2e.test_c", "test_a.py:8"),
        Import("tests.test_a", "testing.ports", "test_a.py:9"),  # fine
        Import("bench.run", "e2e.test_c", "run.py:10"),
        Import("testing.ports", "tests.test_a", "ports.py:11"),
    ]
    assert violations(modules, edges) == [
        "xds_server.xds.cache imports xds_server.control_plane (layer services -> higher layer control plane) at "
        "cache.py:1",
        "xds_server.epp.picker imports xds_server.extproc.upstream "
        "(peer xds_server.epp -> peer xds_server.extproc.upstream, not shared) at picker.py:2",
        "translators.ir imports xds_server.metrics (translators may import only translators) at ir.py:4",
        "xds_server.serve imports testing.ports (xds_server may import only translators, xds_server) at serve.py:6",
        "tests.test_a imports tests.test_b (tests may import only testing, translators, xds_server) at test_a.py:7",
        "tests.test_a imports e2e.test_c (tests may import only testing, translators, xds_server) at test_a.py:8",
        "bench.run imports e2e.test_c (bench may import only bench, testing, translators, xds_server) at run.py:10",
        "testing.ports imports tests.test_a (testing may import only testing, translators, xds_server) at ports.py:11",
    ]


def test_modules_outside_the_rules_are_reported() -> None:
    modules = ["xds_server", "xds_server.newthing", "xds_server.extproc", "xds_server.extproc.newthing"]
    assert violations([*modules, "xds_server.sim.vllm.engine"], []) == [
        "xds_server.newthing is in no layer (add it to LAYERS)",
        "xds_server.extproc.newthing is in no peer group of layer services (add it to SERVICE_PEERS)",
    ]
    assert violations(["xds_server.epp.x"], [Import("xds_server.epp.x", "xds_server.nowhere", "x.py:1")]) == [
        "xds_server.epp.x imports xds_server.nowhere (a module in no layer) at x.py:1"
    ]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import xds_server.control_plane", ["xds_server.control_plane"]),
        ("from xds_server import metrics, nothing", ["xds_server", "xds_server.metrics"]),
        ("from . import protocol", ["xds_server.extproc.protocol"]),
        ("from ..epp.picker import EndpointPicker", ["xds_server.epp.picker"]),
        ("def f():\n    from xds_server.serve import serve", ["xds_server.serve"]),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import xds_server.cli", ["xds_server.cli"]),
        ("import importlib\nimportlib.import_module('xds_server.sim.vllm')", ["xds_server.sim.vllm"]),
        ("import os, yaml\nfrom envoy.config.cluster.v3 import cluster_pb2", []),
    ],
)
def test_every_kind_of_import_is_seen(source: str, expected: list[str]) -> None:
    modules = ["xds_server", "xds_server.metrics", "xds_server.extproc.protocol", "xds_server.epp.picker"]
    found = imports_of("xds_server.extproc.upstream", source, False, modules, "router.py")
    assert sorted(edge.imported for edge in found) == expected
