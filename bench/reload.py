"""What one change costs `serve`, stage by stage: a manifests directory of N routes, then one new file with one more
route at a time, each loaded (FileSource) and built (control_plane.build, with the memo, the translation cache and
the previous snapshots, as `serve` keeps them). Medians over the changes.

python -m bench.reload --routes 1000 3000 10000 [--shape routes|hostnames|models] [--changes 15]

Shapes: `routes`, HTTPRoutes on one hostname, each with its own path and Backend (bench.propagation's); `hostnames`,
the same with a hostname each (a virtual host per route); `models`, AIGatewayRoutes of 15 model rules, each rule
with its own AIServiceBackend and Backend (bench.translate's).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from testing.bulk_manifests import ai_gateway_routes, http_routes
from testing.manifests import gateway
from translators.gatewayapi.incremental import TranslationCache
from translators.ir import TranslateOptions
from translators.xds.memo import Memo
from xds_server.control_plane import build
from xds_server.sources.files import FileSource

UPSTREAM = ("127.0.6.1", 8080)
STAGES = ("load", "translate", "xds", "snapshot", "runtime")


def _routes(shape: str, count: int, prefix: str) -> str:
    if shape == "models":
        return ai_gateway_routes(count, prefix=prefix)
    return http_routes(count, *UPSTREAM, prefix=prefix, hostnames=shape == "hostnames")


def measure(shape: str, routes: int, changes: int) -> dict[str, float]:
    """Median milliseconds of each stage over `changes` one-route additions, of their sum, and the median number
    of routes whose translation was reused ("reused")."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "00-gateway.yaml").write_text(gateway([10080]))
        (directory / "10-routes.yaml").write_text(_routes(shape, routes, "r"))
        source, options, memo, translations = FileSource([directory]), TranslateOptions(), Memo(), TranslationCache()
        built = build(source.load(), options, memo, None, translations)
        assert not built.resources.errors and not built.refused
        samples: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "total")}
        reused: list[int] = []
        for change in range(changes):
            (directory / f"20-new-{change}.yaml").write_text(_routes(shape, 1, f"new{change}-"))
            started = time.perf_counter()
            resources = source.load()
            loaded = time.perf_counter() - started
            built = build(resources, options, memo, built.snapshots, translations)
            assert not built.refused
            reused.append(translations.reused)
            samples["load"].append(loaded)
            for stage, seconds in built.stage_seconds.items():
                samples[stage].append(seconds)
            samples["total"].append(loaded + built.seconds)
        found = {stage: statistics.median(seconds) * 1000 for stage, seconds in samples.items()}
        return {**found, "reused": statistics.median(reused)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routes", type=int, nargs="+", default=[1000, 3000, 10000])
    parser.add_argument("--shape", choices=("routes", "hostnames", "models"), default="routes")
    parser.add_argument("--changes", type=int, default=15)
    args = parser.parse_args()
    unit = "model rules" if args.shape == "models" else "routes"
    print(f"| {unit} ({args.shape}) | routes reused | " + " | ".join(STAGES) + " | total |")
    print("|---:|---:|" + "---:|" * (len(STAGES) + 1))
    for routes in args.routes:
        found = measure(args.shape, routes, args.changes)
        cells = " | ".join(f"{found[stage]:.1f} ms" for stage in (*STAGES, "total"))
        print(f"| {routes:,} | {found['reused']:,.0f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
