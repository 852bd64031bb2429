"""Bytes the control plane sends for a one-endpoint change, SotW against Delta, with real Envoys.

    python -m bench.delta_bytes --clusters 3000

One `serve` process, two Envoys of the same Gateway (one SotW, one Delta), `--clusters` EDS clusters (a Service
with one ready Pod each). One Pod gets a new IP; the bytes of the xDS responses that change causes, per protocol,
come from the `xds_server_push_bytes_total` counter.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from testing.bulk_manifests import service_routes
from testing.envoy import Envoy
from testing.manifests import gateway
from testing.ports import free_port
from testing.processes import Serve, serve_port, synced


async def metric_by_protocol(serve: Serve) -> dict[str, float]:
    return {p: await serve.metric(f'xds_server_push_bytes_total{{protocol="{p}"') for p in ("sotw", "delta")}


async def measure(clusters: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        manifests = directory / "manifests"
        manifests.mkdir()
        (manifests / "00-gateway.yaml").write_text(gateway([free_port()]))
        (manifests / "10-services.yaml").write_text(service_routes(clusters))
        serve = Serve(manifests, free_port(), free_port(), directory / "serve.log")
        xds_port = int(serve_port(serve, "--xds-address"))
        envoys = [
            Envoy(directory, "default/gw", xds_port, node_id="sotw"),
            Envoy(directory, "default/gw", xds_port, node_id="delta", delta=True),
        ]
        try:
            await serve.ready()
            for envoy in envoys:
                await envoy.wait_live()
            await synced(serve)
            before = await metric_by_protocol(serve)
            (manifests / "10-services.yaml").write_text(service_routes(clusters, changed=clusters // 2))
            for _ in range(600):
                clients = await synced(serve)
                eds_versions = {c["types"]["ClusterLoadAssignment"]["acked"] for c in clients}
                snapshot = (await serve.document("/debug/snapshots"))["default/gw"]
                if eds_versions == {
                    snapshot["ClusterLoadAssignment"]["version"]
                } and before != await metric_by_protocol(serve):
                    break
                await asyncio.sleep(0.05)
            after = await metric_by_protocol(serve)
            return {protocol: after[protocol] - before[protocol] for protocol in after}
        finally:
            for envoy in envoys:
                envoy.stop()
            serve.terminate()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clusters", type=int, default=3000)
    args = parser.parse_args()
    sent = await measure(args.clusters)
    print("| EDS clusters | change | SotW bytes sent | Delta bytes sent |")
    print("|---:|---|---:|---:|")
    print(f"| {args.clusters:,} | one Pod IP | {sent['sotw']:,.0f} | {sent['delta']:,.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
