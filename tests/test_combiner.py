"""The Combiner (translators/combiner.py) gives exactly what `combine` gives, and says which keys changed: after random
sequences of files added, edited and removed (objects defined twice, in one file or two, unknown kinds, errors),
each result is compared with a full combine of the same files."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from translators.combiner import Combiner
from translators.gatewayapi.incremental import changed_keys
from translators.loader import ObjectKey, Parsed, combine, parse_text
from translators.resources import ConfigMap

FILES = ("a.yaml", "b.yaml", "c.yaml", "d.yaml")


def _document(name: str, variant: int) -> str:
    if name.startswith("unknown"):
        return f"apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {name}}}\n"
    if name.startswith("broken"):
        return f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: [not, a, map]\n"
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{v: '{variant}'}}\n"


def _is_one(config_map: ConfigMap) -> bool:
    """A test of one object alone, as ResourceSet.matching asks (a module-level callable: it keys the cache)."""
    return config_map.data.get("v") == "1"


NAMES = ("cm-0", "cm-1", "cm-2", "cm-3", "unknown-0", "broken-0")
# A file: its documents (name, variant); the same name twice in one file or in two files is a duplicate.
file_texts = st.lists(st.tuples(st.sampled_from(NAMES), st.integers(0, 1)), max_size=4).map(
    lambda documents: "---\n".join(_document(name, variant) for name, variant in documents)
)
steps = st.lists(st.tuples(st.sampled_from(FILES), st.none() | file_texts), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(start=st.dictionaries(st.sampled_from(FILES), file_texts), changes=steps)
def test_every_combination_equals_a_full_combine_and_names_what_changed(
    start: dict[str, str], changes: list[tuple[str, str | None]]
) -> None:
    parsed: dict[str, tuple[Parsed, ...]] = {name: parse_text(name, text) for name, text in start.items()}
    combiner = Combiner()
    latest = combiner.combine(sorted(parsed.items()))
    assert latest == combine(results for _, results in sorted(parsed.items()))
    for index, (name, text) in enumerate(changes):
        if text is None:
            parsed.pop(name, None)
        else:
            parsed[name] = parse_text(name, text)  # a new parse: new objects, as a file watcher's re-read
        files = sorted(parsed.items())
        found = combiner.combine(files)
        assert found == combine(results for _, results in files), f"step {index}"
        said = found.changed_since(latest)
        if said is not None:  # else the translation compares every object, as before
            assert said == changed_keys(latest.objects, found.objects), f"step {index}"
        # What a translation then does: index the new set from the last one, and ask for the objects that pass a test.
        latest.matching(ConfigMap, _is_one)
        found.index_from(latest, changed_keys(latest.objects, found.objects))
        everything = found.untracked_of_kind(ConfigMap)
        assert found.matching(ConfigMap, _is_one) == [c for c in everything if _is_one(c)], f"step {index}"
        assert everything == sorted(everything, key=lambda c: c.name), f"step {index}"
        latest = found


def test_a_one_file_change_among_many_combines_only_that_file() -> None:
    parsed = {f"{i:03}.yaml": parse_text(f"{i:03}.yaml", _document(f"cm-{i}", 0)) for i in range(50)}
    combiner = Combiner()
    first = combiner.combine(sorted(parsed.items()))
    parsed["010.yaml"] = parse_text("010.yaml", _document("cm-10", 1))
    parsed["100.yaml"] = parse_text("100.yaml", _document("cm-100", 0))
    second = combiner.combine(sorted(parsed.items()))
    assert combiner.full == 1  # the first load only
    assert second.changed_since(first) == frozenset(ObjectKey("ConfigMap", "default", n) for n in ("cm-10", "cm-100"))
    assert second.changed_since(second) is None  # said only of the set it was made from
    # A file now defining what another file does: the order of files decides, so the full combine does.
    parsed["200.yaml"] = parse_text("200.yaml", _document("cm-3", 1))
    third = combiner.combine(sorted(parsed.items()))
    assert combiner.full == 2 and third.changed_since(second) is None
    assert third.warnings and third == combine(results for _, results in sorted(parsed.items()))
