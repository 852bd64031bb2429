"""`xds-server` command line."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import yaml

from translators.gatewayapi import translate
from translators.ir import ENVOY_GATEWAY_CONTROLLER, PickerMode, TranslateOptions
from translators.xds.render import translation_dict
from xds_server.bootstrap import bootstrap
from xds_server.sources.files import load_paths


def host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def add_translate_options(parser: argparse.ArgumentParser) -> None:
    """Options that shape the generated configuration; shared by every command that translates."""
    parser.add_argument(
        "--listener-address",
        help="address Envoy listeners bind (default 127.0.0.1; 0.0.0.0 with serve --kubernetes)",
    )
    parser.add_argument(
        "--extproc-address",
        type=host_port,
        help="HOST:PORT of the control plane's ext_proc server as Envoy reaches it (default 127.0.0.1:1063; with "
        "serve --kubernetes and provisioning, the control-plane Service's name, port 1063, listening on 0.0.0.0)",
    )
    parser.add_argument(
        "--privileged-port-offset",
        type=int,
        metavar="N",
        help="listen on P+N for a Gateway port P below 1024, to run without privileges (e.g. 10000: 80 -> 10080); "
        "default 0, 10000 with serve --kubernetes",
    )
    parser.add_argument(
        "--buffer-limit-bytes",
        type=int,
        default=TranslateOptions.buffer_limit_bytes,
        metavar="N",
        help="Envoy's per-connection buffer: the largest request body AI routes accept (413 above it); default 50 MiB",
    )
    parser.add_argument(
        "--resolve-cluster-local",
        action="store_true",
        help="route Backend FQDNs <svc>.<ns>.svc.cluster.local to that Service's pods",
    )


# In a cluster, provisioned Envoys run unprivileged (Envoy Gateway's convention): a Gateway port P < 1024 is
# container port P + 10000, which the translation's listeners must then use too; and the Envoy Service reaches them
# on the pod's address, not its loopback.
CLUSTER_PORT_OFFSET = 10000
CLUSTER_LISTENER_ADDRESS = "0.0.0.0"


def translate_options(args: argparse.Namespace) -> TranslateOptions:
    cluster = bool(getattr(args, "kubernetes", False))
    offset = args.privileged_port_offset
    extproc = args.extproc_address or ("127.0.0.1", 1063)
    return TranslateOptions(
        listener_address=args.listener_address or (CLUSTER_LISTENER_ADDRESS if cluster else "127.0.0.1"),
        extproc_host=extproc[0],
        extproc_port=extproc[1],
        resolve_cluster_local=args.resolve_cluster_local,
        privileged_port_offset=offset if offset is not None else (CLUSTER_PORT_OFFSET if cluster else 0),
        buffer_limit_bytes=args.buffer_limit_bytes,
    )


def run_translate(args: argparse.Namespace) -> int:
    resources = load_paths(args.paths)
    options = translate_options(args)
    document = translation_dict(translate(resources, options), resources.errors, options)
    errors = document.pop("errors")
    if args.output == "json":
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        yaml.safe_dump(document, sys.stdout, sort_keys=False)
    for error in resources.errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


def run_bootstrap(args: argparse.Namespace) -> int:
    namespace, _, name = args.gateway.partition("/")
    if not namespace or not name:
        print("error: --gateway must be NAMESPACE/NAME", file=sys.stderr)
        return 2
    node_id = args.node_id or f"{namespace}-{name}"
    config = bootstrap(args.gateway, node_id, args.xds_address, args.admin_address, delta=args.delta)
    yaml.safe_dump(config, sys.stdout, sort_keys=False)
    return 0


def add_picker_debug_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--picker-debug",
        action="store_true",
        help="answer a request header x-gateway-picker-debug: true with the pick's scores (x-gateway-picker-scores); "
        "off by default, as the scores show the pools' endpoints and load to any client",
    )


def run_serve(args: argparse.Namespace) -> int:
    from xds_server.logs import configure
    from xds_server.serve import ClusterOptions, serve, serve_kubernetes

    configure(json=args.log_format == "json")
    options = translate_options(args)
    if not args.kubernetes:
        return asyncio.run(serve(args.resources, options, args.xds_address, args.admin_address, args.picker_debug))
    cluster = ClusterOptions(
        kubeconfig=args.kubeconfig,
        namespaces=tuple(args.namespaces),
        controller_name=args.controller_name,
        leader_election=args.leader_election,
        lease_namespace=args.lease_namespace,
        controller_namespace=args.controller_namespace,
        control_plane_service=args.control_plane_service,
        provision=args.provision,
        extproc_via_service=args.extproc_address is None,
    )
    options = replace(options, endpoint_picker=PickerMode(args.endpoint_picker))
    return asyncio.run(serve_kubernetes(cluster, options, args.xds_address, args.admin_address, args.picker_debug))


def run_up(args: argparse.Namespace) -> int:
    # `up` forks its children from a process with gRPC threads; they exec at once, so gRPC's fork handlers have
    # nothing to protect and would only log "skipping fork() handlers" (read when gRPC is first imported).
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    from xds_server.up.runner import UpConfig, up

    config = UpConfig(
        paths=[Path(p) for p in args.paths],
        listen_host=args.listen_host,
        privileged_port_offset=args.privileged_port_offset,
        buffer_limit_bytes=args.buffer_limit_bytes,
        ready_file=args.ready_file,
        log_dir=args.log_dir,
        free_ports=args.free_ports,
        wait_seconds=args.wait,
        picker_debug=args.picker_debug,
    )
    return asyncio.run(up(config))


def run_status(args: argparse.Namespace) -> int:
    import grpc

    from xds_server.admin_grpc import status_table
    from xds_server.api import admin_pb2, admin_pb2_grpc

    host, port = args.xds_address
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            stub = admin_pb2_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]  # generated, unannotated
            response = stub.ListClients(admin_pb2.ListClientsRequest(gateway=args.gateway or ""), timeout=5)
        except grpc.RpcError as error:
            print(f"error: cannot reach the control plane at {host}:{port}: {error.details()}", file=sys.stderr)
            return 1
    sys.stdout.write(status_table(response))
    return 0


SIMULATORS = {
    "testupstream": "xds_server.sim.testupstream",
    "vllm": "xds_server.sim.vllm",
}


def run_sim(args: argparse.Namespace) -> int:
    """Hand the remaining arguments to the simulator's own parser, so each simulator owns its flags."""
    module = importlib.import_module(SIMULATORS[args.simulator])
    result: int = module.main(args.sim_args)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xds-server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    translate_cmd = commands.add_parser(
        "translate", help="print the Envoy resources (per Gateway) and conditions that manifests translate to"
    )
    translate_cmd.add_argument("paths", nargs="+", metavar="PATH", help="YAML files or directories")
    translate_cmd.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    add_translate_options(translate_cmd)
    translate_cmd.set_defaults(run=run_translate)
    bootstrap_cmd = commands.add_parser("bootstrap", help="print an Envoy bootstrap that fetches a Gateway over ADS")
    bootstrap_cmd.add_argument("--gateway", required=True, metavar="NS/NAME", help="the Gateway this Envoy serves")
    bootstrap_cmd.add_argument("--xds-address", type=host_port, default=("127.0.0.1", 18000), metavar="HOST:PORT")
    bootstrap_cmd.add_argument("--admin-address", type=host_port, default=("127.0.0.1", 19901), metavar="HOST:PORT")
    bootstrap_cmd.add_argument("--node-id", help="Envoy node id (default NS-NAME)")
    bootstrap_cmd.add_argument("--delta", action="store_true", help="use incremental (Delta) ADS")
    bootstrap_cmd.set_defaults(run=run_bootstrap)
    serve_cmd = commands.add_parser(
        "serve",
        help="serve manifests (--resources) or a cluster's objects (--kubernetes) to Envoy over ADS, following changes",
    )
    source = serve_cmd.add_mutually_exclusive_group(required=True)
    source.add_argument("--resources", nargs="+", metavar="PATH", help="YAML files or directories, watched")
    source.add_argument(
        "--kubernetes", action="store_true", help="run as a cluster controller: list/watch the API server, write status"
    )
    cluster = serve_cmd.add_argument_group("cluster mode (--kubernetes)")
    cluster.add_argument(
        "--kubeconfig", metavar="PATH", help="default: in-cluster config in a pod, else $KUBECONFIG or ~/.kube/config"
    )
    cluster.add_argument(
        "--namespace",
        dest="namespaces",
        action="append",
        default=[],
        metavar="NS",
        help="watch only this namespace (repeatable; default: all namespaces)",
    )
    cluster.add_argument(
        "--controller-name",
        default=ENVOY_GATEWAY_CONTROLLER,
        metavar="NAME",
        help=f"the GatewayClass controllerName served; other classes are ignored (default {ENVOY_GATEWAY_CONTROLLER})",
    )
    cluster.add_argument(
        "--endpoint-picker",
        choices=[mode.value for mode in PickerMode],
        default=PickerMode.REFERENCE.value,
        help="reference: call the Endpoint Picker each pool's endpointPickerRef names (default); embedded: pick in "
        "this process (a pool's annotation xds-server.io/endpoint-picker: embedded does so for that pool)",
    )
    election = cluster.add_mutually_exclusive_group()
    election.add_argument(
        "--leader-election",
        dest="leader_election",
        action="store_true",
        default=True,
        help="only the holder of a coordination.k8s.io Lease writes status (default)",
    )
    election.add_argument("--no-leader-election", dest="leader_election", action="store_false")
    cluster.add_argument(
        "--lease-namespace",
        metavar="NS",
        help="the Lease's namespace (default: the controller namespace)",
    )
    cluster.add_argument(
        "--controller-namespace",
        metavar="NS",
        help="where each Gateway's Envoy objects are provisioned (default: the pod's namespace, else the kubeconfig "
        "context's, else default)",
    )
    cluster.add_argument(
        "--control-plane-service",
        default="xds-server",
        metavar="NAME",
        help="the Service in the controller namespace that provisioned Envoys reach ADS (and ext_proc) by: "
        "NAME.NS.svc.cluster.local at the --xds-address port (default xds-server, the Helm chart's)",
    )
    cluster.add_argument(
        "--no-provision",
        dest="provision",
        action="store_false",
        help="provision no Envoys and leave Gateway addresses alone (you run the Envoys: xds-server bootstrap)",
    )
    serve_cmd.add_argument("--xds-address", type=host_port, default=("127.0.0.1", 18000), metavar="HOST:PORT")
    serve_cmd.add_argument("--admin-address", type=host_port, default=("127.0.0.1", 19000), metavar="HOST:PORT")
    serve_cmd.add_argument("--log-format", choices=("json", "console"), default="json")
    add_picker_debug_option(serve_cmd)
    add_translate_options(serve_cmd)
    serve_cmd.set_defaults(run=run_serve)
    up_cmd = commands.add_parser(
        "up", help="run manifests on this machine: control plane, one Envoy per Gateway, local pods for Deployments"
    )
    up_cmd.add_argument("paths", nargs="+", metavar="PATH", help="YAML files or directories, watched")
    up_cmd.add_argument("--listen-host", default="127.0.0.1", help="address the Gateways' listeners bind")
    up_cmd.add_argument(
        "--privileged-port-offset",
        type=int,
        default=10000,
        metavar="N",
        help="a Gateway port P below 1024 listens on P+N (default 10000: 80 -> 10080)",
    )
    up_cmd.add_argument(
        "--buffer-limit-bytes",
        type=int,
        default=TranslateOptions.buffer_limit_bytes,
        metavar="N",
        help=argparse.SUPPRESS,
    )
    up_cmd.add_argument("--ready-file", type=Path, metavar="FILE", help="write the ready Gateways' URLs here as JSON")
    up_cmd.add_argument("--log-dir", type=Path, metavar="DIR", help="where process logs go (default: a new temp dir)")
    up_cmd.add_argument(
        "--free-ports",
        action="store_true",
        help="ADS, ext_proc, admin and Envoy admin on random free ports instead of 18000, 1063, 19000 and 19901+",
    )
    up_cmd.add_argument(
        "--wait", type=float, default=120.0, metavar="SECONDS", help="longest wait for pods and Envoys at startup"
    )
    add_picker_debug_option(up_cmd)
    up_cmd.set_defaults(run=run_up)
    status_cmd = commands.add_parser("status", help="show each connected Envoy's sync state per resource type")
    status_cmd.add_argument("--xds-address", type=host_port, default=("127.0.0.1", 18000), metavar="HOST:PORT")
    status_cmd.add_argument("--gateway", metavar="NS/NAME", help="only Envoys of this Gateway")
    status_cmd.set_defaults(run=run_status)
    sim_cmd = commands.add_parser("sim", help="run a test or demo backend (see `xds-server sim NAME --help`)")
    sim_cmd.add_argument("simulator", choices=sorted(SIMULATORS))
    sim_cmd.add_argument("sim_args", nargs=argparse.REMAINDER, help="the simulator's own flags")
    sim_cmd.set_defaults(run=run_sim)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
