"""How long a whole local cluster takes to come up and serve the tutorial (testing/local_cluster.py: etcd,
kube-apiserver, kube-controller-manager, kube-scheduler, the local node, the charts with helm, then the tutorial
applied file by file as its README goes, until its three requests answer 200).

    sudo python -m bench.local_cluster [--runs 3] [--json FILE]

Warm: every Go-built tool already cached. The cold figure adds the one-time builds, which this prints from the
caches' build-times.txt (written by e2e/kube/build-binaries.sh and conformance/build.sh when they built).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from testing.cluster_tutorial import install_tutorial
from testing.kube_cluster import binary_dir
from testing.local_cluster import local_cluster
from testing.localnode.images import CACHE
from testing.web import request

MODELS = ("meta-llama/Llama-3.1-8B-Instruct", "mistral:latest", "some-cool-self-hosted-model")


def answers(url: str) -> bool:
    for model in MODELS:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hi"}]}).encode()
        if request(url, "POST", "/v1/chat/completions", body, {"content-type": "application/json"}).status_code != 200:
            return False
    return True


def one_run() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-local-cluster-") as workdir:
        started = time.monotonic()
        marks: dict[str, float] = {}
        with local_cluster(Path(workdir)) as (cluster, helm):
            marks["cluster and charts up"] = time.monotonic() - started
            tutorial = asyncio.run(install_tutorial(cluster, helm))
            marks["tutorial Programmed"] = time.monotonic() - started
            while not answers(tutorial.url):
                time.sleep(0.2)
            marks["three requests answered"] = time.monotonic() - started
        marks["torn down"] = time.monotonic() - started
        return marks


def build_times() -> list[str]:
    """What the one-time builds took, as the build scripts recorded them."""
    files = [binary_dir() / "build-times.txt", *sorted((CACHE / "conformance").glob("*/build-times.txt"))]
    files += [CACHE / "peers" / "build-times.txt"]
    return [line for path in files if path.is_file() for line in path.read_text().splitlines()]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.local_cluster", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    runs = [one_run() for _ in range(args.runs)]
    result: dict[str, Any] = {"runs": runs, "builds": build_times()}
    print(f"warm bring-up over {len(runs)} run(s), seconds from nothing (median [min-max]):")
    for mark in runs[0]:
        values = [run[mark] for run in runs]
        print(f"  {mark:<26} {statistics.median(values):6.1f} [{min(values):.1f}-{max(values):.1f}]")
    print("one-time builds (cold cache), as recorded:")
    for line in result["builds"]:
        print(f"  {line}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
