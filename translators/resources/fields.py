"""Unknown fields, found as the API server's strict field validation finds them: against the field tree of each
custom kind's CRD schema (`fields.json`, generated from the CRDs the chart installs). A misspelled field that a
typed model would silently drop (`matchs:` for `matches:`, which turned a rule into a catch-all) is named instead.

Only kinds with a CRD here are checked: the core kinds' schemas are not shipped, and the models read a part of them.

The tree is compact: a node is 0 (a scalar), 1 (anything goes: `x-kubernetes-preserve-unknown-fields`, or an object
without a schema of its fields), `{"p": {name: node}}` (an object with these properties), `{"m": node}` (a map of
values of one shape) or `{"i": node}` (a list of items of one shape).

`python -m translators.resources.fields CRD_DIR` regenerates `fields.json`; tests/test_fields.py checks that the
committed file matches the chart's CRDs.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

FIELDS_FILE = Path(__file__).with_name("fields.json")
ANY, SCALAR = 1, 0
# Top-level fields every object has, whose shape the CRD does not describe here; `status` is the controller's.
_UNCHECKED_TOP = frozenset({"apiVersion", "kind", "metadata", "status"})
_MAX_REPORTED = 20
MAX_VALUES = 100_000  # far more than a real object holds; a bound on the work an object can ask for
# Fields the translator reads that the shipped CRD lacks: InferencePool's appProtocol (h2c pools) comes from a later
# Inference Extension release than the v1.0.2 CRDs. Files may use it; an API server with these CRDs prunes it.
EXTENSIONS: Mapping[str, frozenset[str]] = {
    "inference.networking.k8s.io/InferencePool": frozenset({"spec.appProtocol"})
}


def _tree(schema: Mapping[str, Any]) -> Any:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return ANY
    if schema.get("type") == "array":
        items = schema.get("items")
        return {"i": _tree(items)} if isinstance(items, Mapping) else ANY
    properties = schema.get("properties")
    if isinstance(properties, Mapping):
        return {"p": {name: _tree(sub) for name, sub in sorted(properties.items())}}
    additional = schema.get("additionalProperties")
    if isinstance(additional, Mapping):
        return {"m": _tree(additional)}
    if schema.get("type") == "object" or additional is True:
        return ANY
    return SCALAR


def generate(crd_dir: Path) -> dict[str, Any]:
    """`{"<group>/<version>/<Kind>": tree}` for every served version of every CRD in `crd_dir`."""
    trees: dict[str, Any] = {}
    for path in sorted(crd_dir.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if not isinstance(document, dict) or document.get("kind") != "CustomResourceDefinition":
                continue
            spec = document["spec"]
            for version in spec["versions"]:
                schema = (version.get("schema") or {}).get("openAPIV3Schema")
                if version.get("served") and isinstance(schema, Mapping):
                    trees[f"{spec['group']}/{version['name']}/{spec['names']['kind']}"] = _tree(schema)
    return dict(sorted(trees.items()))


@functools.cache
def _trees() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(FIELDS_FILE.read_text())
    return loaded


class TooLarge(ValueError):
    """More values than any object of the kind needs (YAML aliases can make a small file an enormous tree)."""


def _walk(value: Any, node: Any, path: str, budget: list[int]) -> Iterator[str]:
    budget[0] -= 1
    if budget[0] < 0:
        raise TooLarge(f"more than {MAX_VALUES} values (YAML aliases expanding?)")
    if isinstance(node, int):  # ANY or SCALAR
        return  # a scalar where an object was expected is a type error: the model says so
    if "p" in node and isinstance(value, Mapping):
        for key, sub in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in node["p"]:
                yield where
            else:
                yield from _walk(sub, node["p"][key], where, budget)
    elif "m" in node and isinstance(value, Mapping):
        for key, sub in value.items():
            yield from _walk(sub, node["m"], f"{path}.{key}", budget)
    elif "i" in node and isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, node["i"], f"{path}[{index}]", budget)


def unknown_fields(group: str, version: str, kind: str, raw: Mapping[str, Any]) -> list[str]:
    """The paths of the fields `raw` has that its CRD's schema does not (at most 20); [] for kinds without a CRD.
    Raises TooLarge for an object with more than MAX_VALUES values."""
    tree = _trees().get(f"{group}/{version}/{kind}")
    if tree is None or not isinstance(tree, dict) or "p" not in tree:
        return []
    found: list[str] = []
    budget = [MAX_VALUES]
    for key, value in raw.items():
        if key in _UNCHECKED_TOP:
            continue
        if key not in tree["p"]:
            found.append(str(key))
        else:
            found.extend(_walk(value, tree["p"][key], str(key), budget))
        if len(found) >= _MAX_REPORTED:
            break
    allowed = EXTENSIONS.get(f"{group}/{kind}", frozenset())
    return [path for path in found if path not in allowed][:_MAX_REPORTED]


def has_properties(group: str, version: str, kind: str, path: tuple[str | int, ...]) -> bool:
    """Whether the value at `path` (keys and list indices) is an object of named properties in the kind's schema (a
    key renamed there is an unknown field), rather than a map, a list, a scalar or anything-goes."""
    node = _trees().get(f"{group}/{version}/{kind}")
    for step in path:
        if not isinstance(node, dict):
            return False
        if isinstance(step, int):
            node = node.get("i")
        elif "p" in node:
            node = node["p"].get(step)
        else:
            node = node.get("m")
    return isinstance(node, dict) and "p" in node


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m translators.resources.fields CRD_DIR", file=sys.stderr)
        return 2
    FIELDS_FILE.write_text(json.dumps(generate(Path(argv[0])), separators=(",", ":")) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
