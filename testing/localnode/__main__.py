"""The local node as a process: kubelet (node.LocalNode), service proxy and cluster DNS, until SIGTERM.

    python -m testing.localnode --kubeconfig K --network-index N --workdir DIR [--node-name local-node]

The pod network (testing/localnode/network.py) is created by whoever starts the cluster, before the API server
(which needs its service range); this process only adds and removes pods on it. testing/kube_cluster.py starts it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from testing.localnode.cache import ENDPOINT_SLICE, ObjectCache, Watches
from testing.localnode.dns import ClusterDNS
from testing.localnode.network import ClusterNetwork
from testing.localnode.node import LocalNode
from testing.localnode.services import ClusterServices, ServiceProxy
from xds_server.sources.kubernetes.config import api_client


async def main(args: argparse.Namespace) -> int:
    """One cache of what the node watches, read by the kubelet, the service proxy and the DNS."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    api = await api_client(args.kubeconfig)
    network = ClusterNetwork(args.network_index)
    cache = ObjectCache()
    node = LocalNode(api, network, args.node_name, Path(args.workdir), cache)
    services = ClusterServices(cache)
    watches = Watches(api, cache, (*node.kinds, ENDPOINT_SLICE))
    watches.start()
    proxy = ServiceProxy(api, network, services)
    dns = ClusterDNS(network, services)
    try:
        await watches.synced()
        await proxy.start()
        await dns.start()
        await node.run(stop, watches)
    finally:
        await dns.stop()
        await proxy.stop()
        await watches.stop()
        await api.close()
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m testing.localnode", description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--network-index", type=int, required=True, help="the cluster number of the pod network")
    parser.add_argument("--workdir", required=True, help="pod logs and volumes go here")
    parser.add_argument("--node-name", default="local-node")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    logging.basicConfig(level=arguments.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main(arguments)))
