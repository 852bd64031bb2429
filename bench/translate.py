"""Load, then translation + snapshot build time (`serve`'s reload path) for N AIGatewayRoute rules.

python -m bench.translate --rules 1000 10000
"""

from __future__ import annotations

import argparse
import time

from testing.bulk_manifests import ai_gateway_routes
from testing.manifests import gateway
from translators.ir import TranslateOptions
from translators.loader import load_texts
from xds_server.control_plane import build


def measure(rules: int) -> dict[str, float]:
    text = gateway([10080]) + "---\n" + ai_gateway_routes(rules)
    options = TranslateOptions()
    started = time.perf_counter()
    resources = load_texts([("bench.yaml", text)])
    loaded = time.perf_counter()
    assert not resources.errors, resources.errors[:3]
    built = build(resources, options)  # what `serve` runs on every reload
    [snapshot] = built.snapshots.values()
    size = sum(len(c.serialized) for t in snapshot.types.values() for c in t.resources.values())
    return {"rules": rules, "load_s": loaded - started, "build_s": built.seconds, "config_mb": size / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rules", type=int, nargs="+", default=[1000, 10000])
    args = parser.parse_args()
    print("| rules | load (YAML + validation) | translate + snapshot build | serialized config |")
    print("|---:|---:|---:|---:|")
    for rules in args.rules:
        r = measure(rules)
        print(f"| {rules:,} | {r['load_s']:.2f} s | {r['build_s']:.2f} s | {r['config_mb']:.1f} MB |")


if __name__ == "__main__":
    main()
