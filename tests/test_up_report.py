"""What `up` shows of the manifests' problems: each said once when it appears, and the table lists those of the
manifests as they are now, so a fixed mistake leaves it (it used to stay in every later table)."""

from __future__ import annotations

import io

from translators.ir import ClusterIR, Discovery, Endpoint, EndpointGroup, EndpointHealth, GatewayIR, Translation
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


def test_backends_count_ready_endpoints_only_and_show_weights() -> None:
    pool = EndpointGroup(
        "inferencepool/default/p",
        (Endpoint("10.0.0.1", 8000), Endpoint("10.0.0.2", 8000, health=EndpointHealth.NOT_READY)),
        dynamic=True,
    )
    weighted = ClusterIR(
        "weighted/abc",
        Discovery.STATIC,
        (
            EndpointGroup("backend/default/a", (Endpoint("10.0.1.1", 80),), weight=3),
            EndpointGroup("backend/default/b", (Endpoint("10.0.2.1", 80),), priority=1, weight=1),
        ),
    )
    gateway = GatewayIR("default", "gw", (), (ClusterIR("inferencepool/default/p", Discovery.EDS, (pool,)), weighted))
    text = status_table(Translation((gateway,), (), (), ()), [], {}, [], [])
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith(("inferencepool/", "weighted/"))}
    assert rows["inferencepool/default/p"].split()[1:] == ["1", "10.0.0.1:8000"]  # the not-Ready pod is not counted
    assert rows["weighted/abc"].split(None, 2)[1:] == [
        "2",
        "backend/default/a weight 3: 10.0.1.1:80; backend/default/b weight 1 priority 1: 10.0.2.1:80",
    ]
