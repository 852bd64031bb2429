"""The corpus of bad inputs (tests/bad-inputs): one mistake per file, and the message it must give. Each file's
first line says what it expects (`# expect: <text the error message contains>`). Every file gives exactly one error,
and nothing of it is served. The work one object may ask for is bounded by a count of values (the YAML bomb's
message), not measured here: tests assert no timings."""

from __future__ import annotations

from pathlib import Path

import pytest

from xds_server.sources.files import load_paths

CORPUS = Path(__file__).resolve().parent / "bad-inputs"
EXPECT = b"# expect: "


def expected(path: Path) -> str:
    first = path.read_bytes().split(b"\n", 1)[0]
    assert first.startswith(EXPECT), f"{path.name}: the first line must be `# expect: ...`"
    return first.removeprefix(EXPECT).decode()


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.yaml")), ids=lambda p: p.name)
def test_each_mistake_gives_its_message(path: Path) -> None:
    loaded = load_paths([path])
    assert len(loaded.errors) == 1, [str(e) for e in loaded.errors]
    message = str(loaded.errors[0])
    assert expected(path) in message, message
    assert message.startswith(str(path)), message  # it names the file
    assert loaded.objects == {}  # the broken object is not served


def test_the_corpus_covers_the_kinds_of_mistakes() -> None:
    names = {p.stem for p in CORPUS.glob("*.yaml")}
    assert {"typo-field", "wrong-type", "out-of-range", "missing-required", "broken-yaml", "yaml-bomb"} <= names
