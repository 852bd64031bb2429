"""What `up` shows of the manifests' problems: each said once when it appears, and the table lists those of the
manifests as they are now, so a fixed mistake leaves it (it used to stay in every later table)."""

from __future__ import annotations

import io

from translators.ir import Translation
from xds_server.up.report import Reporter, status_table


def table_warnings(reporter: Reporter) -> list[str]:
    text = status_table(Translation((), (), (), ()), [], {}, [], reporter.table_warnings())
    return [line.removeprefix("warning: ") for line in text.splitlines() if line.startswith("warning: ")]


def test_a_fixed_mistake_leaves_the_table_and_lasting_warnings_stay() -> None:
    out = io.StringIO()
    reporter = Reporter(out, interactive=False)
    reporter.warn("the Envoy of gateway default/gw rejected its configuration")  # a lasting event
    reporter.set_manifest_warnings(["invalid object: a.yaml: typo", "invalid object: b.yaml: typo"])
    assert table_warnings(reporter) == [
        "invalid object: a.yaml: typo",
        "invalid object: b.yaml: typo",
        "the Envoy of gateway default/gw rejected its configuration",
    ]
    reporter.set_manifest_warnings(["invalid object: b.yaml: typo"])  # a.yaml was fixed
    assert table_warnings(reporter) == [
        "invalid object: b.yaml: typo",
        "the Envoy of gateway default/gw rejected its configuration",
    ]
    reporter.set_manifest_warnings([])
    assert table_warnings(reporter) == ["the Envoy of gateway default/gw rejected its configuration"]
    # Each problem was said once, when it appeared.
    said = [line for line in out.getvalue().splitlines() if line.startswith("warning: ")]
    assert said == [
        "warning: the Envoy of gateway default/gw rejected its configuration",
        "warning: invalid object: a.yaml: typo",
        "warning: invalid object: b.yaml: typo",
    ]
