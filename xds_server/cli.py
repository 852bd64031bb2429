"""`xds-server` command line."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import importlib.metadata
import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from translators.gatewayapi import translate
from translators.gatewayapi.unsupported import unsupported_objects
from translators.ir import ENVOY_GATEWAY_CONTROLLER, ControlPlaneTls, PickerMode, TranslateOptions
from translators.xds.render import translation_dict
from xds_server.bootstrap import MAX_MODEL_LENGTH, bootstrap
from xds_server.envoy import AI_MODULE_FILE, MODULES_DIRECTORY, MODULES_PATH_VARIABLE
from xds_server.kube.infra import DEFAULT_MODULE_IMAGE, DEFAULT_TLS_DIR
from xds_server.listen import EXTPROC_SOCKET, XDS_SOCKET, Address, default_socket, default_socket_dir, parse_address
from xds_server.sources.files import load_paths


def host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def grpc_address(value: str) -> Address:
    """`HOST:PORT` or `unix:PATH`."""
    try:
        return parse_address(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# Without --xds-address / --extproc-address on one machine: Unix sockets only this user may open (xds_server.listen).
ADDRESS_HELP = "HOST:PORT, or unix:PATH for a Unix socket"


def _seconds(value: str) -> int:
    seconds = int(value)
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{value}: a number of seconds >= 0")
    return seconds


def _model_length(value: str) -> int:
    length = int(value)
    if not 1 <= length <= MAX_MODEL_LENGTH:
        raise argparse.ArgumentTypeError(f"{value}: between 1 and {MAX_MODEL_LENGTH}")
    return length


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be positive")
    return number


def add_translate_options(parser: argparse.ArgumentParser) -> None:
    """Options that shape the generated configuration; shared by every command that translates."""
    parser.add_argument(
        "--listener-address",
        help="address Envoy listeners bind (default 127.0.0.1; 0.0.0.0 with serve --kubernetes)",
    )
    parser.add_argument(
        "--extproc-address",
        type=grpc_address,
        metavar="ADDRESS",
        help="the control plane's ext_proc server as Envoy reaches it and serve listens: HOST:PORT or unix:PATH "
        f"(serve --resources: unix:{default_socket_dir()}/{EXTPROC_SOCKET}; translate: 127.0.0.1:1063; serve "
        "--kubernetes with provisioning: the control-plane Service's name, port 1063, listening on 0.0.0.0)",
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
        "--max-model-length",
        type=_model_length,
        default=TranslateOptions.max_model_length,
        metavar="N",
        help="a request whose 'model' is longer than N characters gets a 400 (invalid_model) before any route, echo "
        f"or log line sees it; 1 to {MAX_MODEL_LENGTH}, default {TranslateOptions.max_model_length}",
    )
    parser.add_argument(
        "--request-headers-timeout",
        type=_seconds,
        default=TranslateOptions.request_headers_timeout_seconds,
        metavar="SECONDS",
        help="a client has this long to send its request headers (slow clients are cut off); default "
        f"{TranslateOptions.request_headers_timeout_seconds}",
    )
    parser.add_argument(
        "--request-timeout",
        type=_seconds,
        default=TranslateOptions.request_timeout_seconds,
        metavar="SECONDS",
        help="a client has this long to send its whole request, body included (0: no limit; answers are not "
        f"bounded by it); default {TranslateOptions.request_timeout_seconds}",
    )
    parser.add_argument(
        "--stream-idle-timeout",
        type=_seconds,
        default=TranslateOptions.stream_idle_timeout_seconds,
        metavar="SECONDS",
        help="a request or answer with nothing sent either way for this long ends (a streamed answer that keeps "
        f"sending is never cut); default {TranslateOptions.stream_idle_timeout_seconds}",
    )
    parser.add_argument(
        "--resolve-cluster-local",
        action="store_true",
        help="route Backend FQDNs <svc>.<ns>.svc.cluster.local to that Service's pods",
    )
    parser.add_argument(
        "--system-ca-bundle",
        default=TranslateOptions.system_ca_bundle,
        metavar="PATH",
        help="the CA bundle Envoy verifies upstreams with when told to trust the system's CAs (BackendTLSPolicy "
        "wellKnownCACertificates: System, fqdn Backends on port 443): a file on Envoy's filesystem; "
        f"default {TranslateOptions.system_ca_bundle}",
    )


# In a cluster, provisioned Envoys run unprivileged (Envoy Gateway's convention): a Gateway port P < 1024 is
# container port P + 10000, which the translation's listeners must then use too; and the Envoy Service reaches them
# on the pod's address, not its loopback.
CLUSTER_PORT_OFFSET = 10000
CLUSTER_LISTENER_ADDRESS = "0.0.0.0"
TCP_EXTPROC = Address("127.0.0.1", 1063)
TCP_XDS = Address("127.0.0.1", 18000)


def translate_options(args: argparse.Namespace, extproc_default: Address = TCP_EXTPROC) -> TranslateOptions:
    cluster = bool(getattr(args, "kubernetes", False))
    offset = args.privileged_port_offset
    extproc: Address = args.extproc_address or extproc_default
    return TranslateOptions(
        listener_address=args.listener_address or (CLUSTER_LISTENER_ADDRESS if cluster else "127.0.0.1"),
        extproc_host=extproc.host or TCP_EXTPROC.host,
        extproc_port=extproc.port or TCP_EXTPROC.port,
        extproc_unix=extproc.path,
        resolve_cluster_local=args.resolve_cluster_local,
        privileged_port_offset=offset if offset is not None else (CLUSTER_PORT_OFFSET if cluster else 0),
        buffer_limit_bytes=args.buffer_limit_bytes,
        max_model_length=args.max_model_length,
        system_ca_bundle=args.system_ca_bundle,
        request_headers_timeout_seconds=args.request_headers_timeout,
        request_timeout_seconds=args.request_timeout,
        stream_idle_timeout_seconds=args.stream_idle_timeout,
    )


def run_translate(args: argparse.Namespace) -> int:
    resources = load_paths(args.paths)
    options = translate_options(args)
    translation = translate(resources, options)
    document = translation_dict(translation, resources.errors, options)
    errors = document.pop("errors")
    if args.output == "json":
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        yaml.safe_dump(document, sys.stdout, sort_keys=False)
    for error in resources.errors:
        print(f"error: {error}", file=sys.stderr)
    for warning in resources.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for ref, message in unsupported_objects(translation):
        print(f"warning: {ref.kind} {ref.key}: {message}", file=sys.stderr)
    return 1 if errors else 0


def gateway_key(value: str) -> str:
    namespace, _, name = value.partition("/")
    if not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"{value!r} is not NAMESPACE/NAME")
    return value


def control_plane_tls(args: argparse.Namespace) -> ControlPlaneTls | None:
    """--tls-dir and --tls-server-name: mutual TLS to a control plane in a cluster."""
    if args.tls_dir is None:
        return None
    return ControlPlaneTls(str(Path(args.tls_dir).absolute()), args.tls_server_name)


def add_tls_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--tls-dir",
        metavar="DIR",
        help="mutual TLS to a control plane in a cluster: the client certificate's directory (tls.crt, tls.key, "
        "ca.crt, as `xds-server certificate` writes it, or a provisioned Envoy's Secret mounted)",
    )
    command.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="with --tls-dir: the name the control plane's certificate carries, its Service's "
        "(e.g. xds-server.xds-server-system.svc.cluster.local)",
    )


def check_tls_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.tls_dir is None) != (args.tls_server_name is None):
        parser.error("--tls-dir and --tls-server-name go together")


def run_bootstrap(args: argparse.Namespace) -> int:
    namespace, _, name = args.gateway.partition("/")
    node_id = args.node_id or f"{namespace}-{name}"
    tls = control_plane_tls(args)
    xds = args.xds_address or default_socket(XDS_SOCKET)
    config = bootstrap(
        args.gateway, node_id, xds, args.admin_address, delta=args.delta, tls=tls, max_heap_bytes=args.max_heap_bytes
    )
    yaml.safe_dump(config, sys.stdout, sort_keys=False)
    return 0


def run_envoy_module(args: argparse.Namespace) -> int:
    """The AI filter module: its directory (what ENVOY_DYNAMIC_MODULES_SEARCH_PATH must name for an Envoy you run
    with AI routes), or a copy of it in --into, written aside and renamed so Envoy never loads half a file."""
    source = AI_MODULE_FILE
    if not source.is_file():
        print(
            f"error: {source} is missing: reinstall xds-server (its build compiles native/ai_filter.c)", file=sys.stderr
        )
        return 1
    if args.into is None:
        print(f"{MODULES_PATH_VARIABLE}={MODULES_DIRECTORY}")
        return 0
    directory = Path(args.into)
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f".{source.name}.partial"
    partial.unlink(missing_ok=True)  # a copy left by an interrupted run is read-only
    shutil.copyfile(source, partial)
    partial.chmod(0o555)
    partial.replace(directory / source.name)
    print(f"copied {source.name} into {directory}")
    return 0


def run_certificate(args: argparse.Namespace) -> int:
    """Issues a Gateway's client certificate from the cluster's CA into --output, with the SDS documents naming the
    files there: what `bootstrap --tls-dir` reads, for Envoys run by hand (`serve --kubernetes --no-provision`)."""
    from xds_server.kube.certificates import issue_client
    from xds_server.kube.infra import EnvoyCertificate, envoy_tls_files
    from xds_server.kube.tls_secrets import CertificateError, read_authority, utc_now
    from xds_server.sources.kubernetes.config import api_client, default_namespace

    namespace = args.controller_namespace or default_namespace(args.kubeconfig)

    async def authority() -> Any:
        api = await api_client(args.kubeconfig)
        try:
            return await read_authority(api, namespace, args.control_plane_service)
        finally:
            await api.close()

    try:
        found = asyncio.run(authority())
    except CertificateError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    pair = issue_client(found, args.gateway, utc_now(), datetime.timedelta(days=args.days))
    directory = Path(args.output).absolute()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    server_name = f"{args.control_plane_service}.{namespace}.svc.cluster.local"
    certificate = EnvoyCertificate(pair.certificate_pem, pair.key_pem, found.trust_pem)
    for file, content in envoy_tls_files(certificate, ControlPlaneTls(str(directory), server_name)).items():
        path = directory / file
        path.touch(mode=0o600)
        path.write_bytes(content)
    expiry = pair.certificate.not_valid_after_utc.isoformat(timespec="seconds")
    print(f"certificate of Gateway {args.gateway} in {directory}, valid until {expiry}")
    print(f"use: --tls-dir {directory} --tls-server-name {server_name}")
    return 0


def add_picker_debug_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--picker-debug",
        action="store_true",
        help="answer a request header x-gateway-picker-debug: true with the pick's scores (x-gateway-picker-scores); "
        "off by default, as the scores show the pools' endpoints and load to any client",
    )


def add_body_budget_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--body-budget-bytes",
        type=int,
        metavar="N",
        help="request-body bytes the picker and the upstream settings may hold at once; a request that does not fit "
        "gets a 503 (server_overloaded, retry-after: 1) before its body is sent; at least --buffer-limit-bytes, "
        "default twice it",
    )


def body_budget_error(args: argparse.Namespace) -> str | None:
    budget = args.body_budget_bytes
    if budget is not None and budget < args.buffer_limit_bytes:
        return (
            f"--body-budget-bytes ({budget}) must be at least --buffer-limit-bytes ({args.buffer_limit_bytes}): "
            "a body Envoy accepts could never be held"
        )
    return None


def run_serve(args: argparse.Namespace) -> int:
    from xds_server.logs import configure
    from xds_server.serve import serve

    configure(json=args.log_format == "json")
    if (problem := body_budget_error(args)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if not args.kubernetes:
        options = translate_options(args, default_socket(EXTPROC_SOCKET))
        xds = args.xds_address or default_socket(XDS_SOCKET)
        try:
            return asyncio.run(
                serve(
                    args.resources,
                    options,
                    xds,
                    args.admin_address,
                    args.picker_debug,
                    args.shutdown_grace,
                    args.body_budget_bytes,
                )
            )
        except OSError as error:  # a socket another server answers on, a socket directory that is not private
            print(f"error: {error}", file=sys.stderr)
            return 1
    options = translate_options(args)
    if (args.xds_address is not None and args.xds_address.unix) or (args.extproc_address and args.extproc_address.unix):
        print("error: serve --kubernetes listens on TCP (Envoys in pods cannot reach a Unix socket)", file=sys.stderr)
        return 2
    from xds_server.serve_cluster import ClusterOptions, serve_kubernetes  # the Kubernetes client: only here

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
        envoy_tls_dir=args.envoy_tls_dir,
        module_image=args.module_image,
    )
    if args.client_certificate_lifetime is not None:
        lifetime = datetime.timedelta(seconds=args.client_certificate_lifetime)
        cluster = replace(cluster, lifetimes=replace(cluster.lifetimes, client=lifetime))
    options = replace(options, endpoint_picker=PickerMode(args.endpoint_picker))
    xds = args.xds_address or TCP_XDS
    return asyncio.run(
        serve_kubernetes(
            cluster, options, xds, args.admin_address, args.picker_debug, args.shutdown_grace, args.body_budget_bytes
        )
    )


def run_up(args: argparse.Namespace) -> int:
    # `up` forks its children from a process with gRPC threads; they exec at once, so gRPC's fork handlers have
    # nothing to protect and would only log "skipping fork() handlers" (read when gRPC is first imported).
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    from xds_server.up.runner import UpConfig, up

    if (problem := body_budget_error(args)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2

    config = UpConfig(
        paths=[Path(p) for p in args.paths],
        listen_host=args.listen_host,
        privileged_port_offset=args.privileged_port_offset,
        buffer_limit_bytes=args.buffer_limit_bytes,
        max_model_length=args.max_model_length,
        ready_file=args.ready_file,
        log_dir=args.log_dir,
        free_ports=args.free_ports,
        wait_seconds=args.wait,
        picker_debug=args.picker_debug,
        body_budget_bytes=args.body_budget_bytes,
        envoy_max_heap_bytes=args.envoy_max_heap_bytes,
        xds_address=args.xds_address,
        extproc_address=args.extproc_address,
    )
    return asyncio.run(up(config))


def run_status(args: argparse.Namespace) -> int:
    import grpc

    from xds_server.admin_grpc import status_table
    from xds_server.api import admin_pb2, admin_pb2_grpc

    address: Address = args.xds_address or default_socket(XDS_SOCKET)
    tls = control_plane_tls(args)
    if tls is None:
        channel = grpc.insecure_channel(address.target)
    else:
        directory = Path(tls.directory)
        files = [(directory / name).read_bytes() for name in ("ca.crt", "tls.key", "tls.crt")]
        credentials = grpc.ssl_channel_credentials(*files)
        options = [("grpc.ssl_target_name_override", tls.server_name)]
        channel = grpc.secure_channel(address.target, credentials, options=options)
    with channel:
        try:
            stub = admin_pb2_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]  # generated, unannotated
            response = stub.ListClients(admin_pb2.ListClientsRequest(gateway=args.gateway or ""), timeout=5)
        except grpc.RpcError as error:
            print(f"error: cannot reach the control plane at {address}: {error.details()}", file=sys.stderr)
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


def package_version() -> str:
    """The installed distribution's version (pyproject.toml's), or "unknown" when run from an uninstalled tree."""
    try:
        return importlib.metadata.version("xds-server")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xds-server", description=__doc__)
    parser.add_argument("--version", action="version", version=f"xds-server {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    translate_cmd = commands.add_parser(
        "translate", help="print the Envoy resources (per Gateway) and conditions that manifests translate to"
    )
    translate_cmd.add_argument("paths", nargs="+", metavar="PATH", help="YAML files or directories")
    translate_cmd.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    add_translate_options(translate_cmd)
    translate_cmd.set_defaults(run=run_translate)
    bootstrap_cmd = commands.add_parser("bootstrap", help="print an Envoy bootstrap that fetches a Gateway over ADS")
    bootstrap_cmd.add_argument(
        "--gateway", required=True, type=gateway_key, metavar="NS/NAME", help="the Gateway this Envoy serves"
    )
    bootstrap_cmd.add_argument(
        "--xds-address",
        type=grpc_address,
        metavar="ADDRESS",
        help=f"ADS: {ADDRESS_HELP} (default unix:{default_socket_dir()}/{XDS_SOCKET}, where serve --resources listens)",
    )
    bootstrap_cmd.add_argument("--admin-address", type=host_port, default=("127.0.0.1", 19901), metavar="HOST:PORT")
    bootstrap_cmd.add_argument("--node-id", help="Envoy node id (default NS-NAME)")
    bootstrap_cmd.add_argument("--delta", action="store_true", help="use incremental (Delta) ADS")
    bootstrap_cmd.add_argument(
        "--max-heap-bytes",
        type=_positive,
        metavar="N",
        help="Envoy's heap limit for its overload manager: free memory returned from 95%% of it on, new requests "
        "answered 503 from 98%% (set it to about 80%% of the container's memory limit); default none",
    )
    add_tls_options(bootstrap_cmd)
    bootstrap_cmd.set_defaults(run=run_bootstrap, check=check_tls_options)
    certificate_cmd = commands.add_parser(
        "certificate",
        help="issue a Gateway's client certificate from a cluster's CA, for an Envoy you run (--no-provision)",
    )
    certificate_cmd.add_argument("--gateway", required=True, type=gateway_key, metavar="NS/NAME")
    certificate_cmd.add_argument("--output", required=True, metavar="DIR", help="where the files go (created 0700)")
    certificate_cmd.add_argument("--kubeconfig", metavar="PATH", help="default: $KUBECONFIG or ~/.kube/config")
    certificate_cmd.add_argument(
        "--controller-namespace", metavar="NS", help="the control plane's namespace (default: the context's)"
    )
    certificate_cmd.add_argument("--control-plane-service", default="xds-server", metavar="NAME")
    certificate_cmd.add_argument("--days", type=float, default=30.0, help="how long it is valid (default 30)")
    certificate_cmd.set_defaults(run=run_certificate)
    module_cmd = commands.add_parser(
        "envoy-module",
        help="print the directory Envoy loads our AI filter module from, or copy the module into another (--into)",
    )
    module_cmd.add_argument(
        "--into", metavar="DIR", help="copy lib<module>.so here (a provisioned Envoy's init container does)"
    )
    module_cmd.set_defaults(run=run_envoy_module)
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
    cluster.add_argument(
        "--module-image",
        default=DEFAULT_MODULE_IMAGE,
        metavar="IMAGE",
        help="the image a provisioned Envoy's init container copies the AI filter module from (`xds-server "
        f"envoy-module`): this controller's own image (default {DEFAULT_MODULE_IMAGE}, the Helm chart's)",
    )
    cluster.add_argument(
        "--envoy-tls-dir",
        default=DEFAULT_TLS_DIR,
        metavar="PATH",
        help="where a provisioned Envoy finds its client certificate (its Secret's mount, default /certs; another "
        "path for Envoys run outside a pod, as the tests do)",
    )
    # Seconds a Gateway's client certificate is valid (default 30 days), for tests of the renewal.
    cluster.add_argument("--client-certificate-lifetime", type=float, help=argparse.SUPPRESS)
    serve_cmd.add_argument(
        "--xds-address",
        type=grpc_address,
        metavar="ADDRESS",
        help=f"where ADS listens: {ADDRESS_HELP} (default: --resources unix:{default_socket_dir()}/{XDS_SOCKET}, "
        "only this user may open it; --kubernetes 127.0.0.1:18000)",
    )
    serve_cmd.add_argument("--admin-address", type=host_port, default=("127.0.0.1", 19000), metavar="HOST:PORT")
    serve_cmd.add_argument("--log-format", choices=("json", "console"), default="json")
    serve_cmd.add_argument(
        "--shutdown-grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM or Ctrl-C: /readyz fails at once, new ext_proc streams are refused, and those of requests "
        "in flight get this long to finish (a second signal stops at once); default 10",
    )
    add_picker_debug_option(serve_cmd)
    add_body_budget_option(serve_cmd)
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
    up_cmd.add_argument(
        "--max-model-length",
        type=_model_length,
        default=TranslateOptions.max_model_length,
        metavar="N",
        help=f"a 'model' longer than N characters is a 400 (invalid_model); 1 to {MAX_MODEL_LENGTH}, default "
        f"{TranslateOptions.max_model_length}",
    )
    up_cmd.add_argument("--ready-file", type=Path, metavar="FILE", help="write the ready Gateways' URLs here as JSON")
    up_cmd.add_argument("--log-dir", type=Path, metavar="DIR", help="where process logs go (default: a new temp dir)")
    up_cmd.add_argument(
        "--free-ports",
        action="store_true",
        help="the admin and the Envoys' admins on random free ports instead of 19000 and 19901+, and the ADS and "
        "ext_proc sockets in a new directory of the run's instead of this user's (runs side by side)",
    )
    up_cmd.add_argument(
        "--wait", type=float, default=120.0, metavar="SECONDS", help="longest wait for pods and Envoys at startup"
    )
    for flag, what in (("--xds-address", "ADS"), ("--extproc-address", "ext_proc")):
        up_cmd.add_argument(
            flag,
            type=grpc_address,
            metavar="ADDRESS",
            help=f"where {what} listens: {ADDRESS_HELP} (default: a Unix socket only this user may open, in "
            f"{default_socket_dir()}, or with --free-ports in a new directory of the run's; printed at start)",
        )
    add_picker_debug_option(up_cmd)
    up_cmd.add_argument(
        "--envoy-max-heap-bytes",
        type=_positive,
        metavar="N",
        help="each Envoy's heap limit (as bootstrap --max-heap-bytes); default none",
    )
    add_body_budget_option(up_cmd)
    up_cmd.set_defaults(run=run_up)
    status_cmd = commands.add_parser("status", help="show each connected Envoy's sync state per resource type")
    status_cmd.add_argument(
        "--xds-address",
        type=grpc_address,
        metavar="ADDRESS",
        help=f"the control plane's ADS: {ADDRESS_HELP} (default unix:{default_socket_dir()}/{XDS_SOCKET})",
    )
    status_cmd.add_argument("--gateway", metavar="NS/NAME", help="only Envoys of this Gateway")
    add_tls_options(status_cmd)
    status_cmd.set_defaults(run=run_status, check=check_tls_options)
    sim_cmd = commands.add_parser("sim", help="run a test or demo backend (see `xds-server sim NAME --help`)")
    sim_cmd.add_argument("simulator", choices=sorted(SIMULATORS))
    sim_cmd.add_argument("sim_args", nargs=argparse.REMAINDER, help="the simulator's own flags")
    sim_cmd.set_defaults(run=run_sim)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "check"):
        args.check(parser, args)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
