"""The corpus of bad inputs (tests/bad-inputs): one mistake per file, and the message it must give. Each file's
first line says what it expects (`# expect: <text the error message contains>`). Every file gives exactly one error,
and nothing of it is served. The work one object may ask for is bounded by a count of values (the YAML bomb's
message), not measured here: tests assert no timings."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from translators.gatewayapi import translate
from translators.gatewayapi.unsupported import GATEWAY_GROUPS
from translators.loader import load_texts
from translators.resources import split_api_version
from translators.resources.fields import has_properties
from xds_server.sources.files import load_paths

CORPUS = Path(__file__).resolve().parent / "bad-inputs"
HEADER = re.compile(rb"# (expect|expect-warning|expect-status|serves): (.*)")


def headers(path: Path) -> dict[str, list[str]]:
    """The file's leading `# <key>: <value>` lines:
    - `expect`: text the file's one error contains (several lines: all of them);
    - `expect-warning`: the same, of the one warning of a mistake that refuses nothing;
    - `expect-status`: a mistake only translation sees (`Kind/namespace/name Type Status Reason` of a condition);
      the file then loads without error;
    - `serves`: `Kind namespace/name` of an object still served despite the mistake."""
    found: dict[str, list[str]] = {}
    for line in path.read_bytes().split(b"\n"):
        match = HEADER.fullmatch(line)
        if match is None:
            break
        found.setdefault(match[1].decode(), []).append(match[2].decode())
    assert found.keys() & {"expect", "expect-warning", "expect-status"}, f"{path.name}: first line: `# expect: ...`"
    return found


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.yaml")), ids=lambda p: p.name)
def test_each_mistake_gives_its_message(path: Path) -> None:
    expected = headers(path)
    loaded = load_paths([path])
    served = sorted(str(key) for key in loaded.objects)
    if "expect-status" in expected:
        assert loaded.errors == ()
        conditions = [
            f"{s.ref.kind}/{s.ref.namespace}/{s.ref.name} {c.type} {c.status.value} {c.reason}: {c.message}"
            for s in translate(loaded).statuses
            for c in (*s.conditions, *(c for p in s.parents for c in p.conditions))
        ]
        for text in expected["expect-status"]:
            assert any(text in line for line in conditions), conditions
        return
    said = loaded.warnings if "expect-warning" in expected else loaded.errors
    assert len(said) == 1 and len(loaded.errors + loaded.warnings) == 1, [str(e) for e in loaded.errors + said]
    message = str(said[0])
    for text in expected.get("expect", expected.get("expect-warning", [])):
        assert text in message, message
    assert message.startswith(str(path)), message  # it names the file
    assert served == sorted(expected.get("serves", [])), served  # nothing broken is served, the rest is


def test_the_corpus_covers_the_kinds_of_mistakes() -> None:
    names = {p.stem for p in CORPUS.glob("*.yaml")}
    assert {
        "typo-field",
        "wrong-type",
        "out-of-range",
        "missing-required",
        "broken-yaml",
        "yaml-bomb",
        "cycle",
        "deep-nesting",
        "duplicate-name",
        "reference-to-nothing",
        "binary",
        "huge-string",
    } <= names


# --- mutations of valid manifests ---

TUTORIAL_DOCUMENTS = [
    doc
    for path in sorted((Path(__file__).resolve().parent.parent / "examples" / "tutorial").glob("*.yaml"))
    for doc in yaml.safe_load_all(path.read_text())
    if isinstance(doc, dict) and split_api_version(str(doc.get("apiVersion", "")))[0] in GATEWAY_GROUPS
]
JUNK_VALUES = st.one_of(
    st.integers(), st.booleans(), st.none(), st.text(max_size=20), st.lists(st.integers(), max_size=3)
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value under `spec`, as keys and indices."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, sub in value.items():
            found += _paths(sub, (*prefix, key))
    elif isinstance(value, list):
        for index, sub in enumerate(value):
            found += _paths(sub, (*prefix, index))
    return found


@st.composite
def mutated(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A tutorial object of a CRD kind with one mistake under `spec`: a key renamed, a value replaced by one of
    another type, or a key removed."""
    document = copy.deepcopy(draw(st.sampled_from(TUTORIAL_DOCUMENTS)))
    path = draw(st.sampled_from(_paths(document["spec"], ("spec",))))
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    group, version = split_api_version(document["apiVersion"])
    renamable = isinstance(last, str) and has_properties(group, version, document["kind"], path[:-1])
    mutation = draw(st.sampled_from(["rename", "retype", "remove"] if renamable else ["retype"]))
    if mutation == "rename":
        parent[last + draw(st.sampled_from(["s", "x", "_"]))] = parent.pop(last)
    elif mutation == "retype":
        parent[last] = draw(JUNK_VALUES)
    else:
        del parent[last]
    return document, mutation


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated())
def test_a_mutated_manifest_never_breaks_the_loader_and_its_errors_name_a_field(
    case: tuple[dict[str, Any], str],
) -> None:
    document, mutation = case
    loaded = load_texts([("mutated.yaml", yaml.safe_dump(document))])  # never raises
    for error in loaded.errors:
        assert error.field, str(error)  # inside an object: always the field's path
        assert error.origin.file == "mutated.yaml" and error.kind == document["kind"]
    if mutation == "rename":  # a key the CRD does not have is always said, never dropped
        assert loaded.errors, yaml.safe_dump(document)
