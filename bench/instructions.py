"""Envoy's instructions per request, path by path and part by part: a count that does not move with the machine.

    python -m bench.instructions [--seconds 5] [--parts]
    python -m bench.instructions --smoke

On this shared two-core VM, Envoy's CPU time per request moves by 10-20% from one minute to the next (other
tenants, steal, frequency): too much to see a part of the filter chain that costs 5%. Valgrind's callgrind counts
the instructions Envoy executes, in user space (not the kernel's socket work, which every path pays alike), and the
count is the same from run to run within a few tenths of a percent.

ai_latency's Bench starts `serve`, the canned upstream and the gateway Envoy; its config dump is made static (the
listener with its routes inline, the EDS clusters with their endpoints, the bootstrap's runtime), and a one-worker
Envoy per variant runs it under callgrind with instrumentation off. For each path (plain: the HTTPRoute;
ai: the AIGatewayRoute), wrk sends 4 s of the bench's chat completion uninstrumented (connections, lazily built
state); then Envoy is counted for --seconds idle, and for --seconds of wrk (one connection: one request after the
other, the same work for each, where concurrent requests would share event-loop turns by chance): the loaded count
less the idle one (timers, stats, the usage log's flush ticks: a few thousand instructions a request over
a few hundred requests), over the requests answered. `serve` stays up for the usage log, so its export is counted.

Variants: `bare` (bench.side_by_side's row 1: a header route and the router filter), `ours` (the translator's
config), and with --parts `ours` less one part each, so each part's cost is the difference:
Envoy's access log on stdout (the listener's requests answered 400 or more that are not AI requests: the AI filter
writes the AI requests' lines itself), use_remote_address with path normalization, the early header mutation that
strips internal headers. (The AI filter cannot be left out: the AI path's requests are routed by it; its usage log
and access log lines are counted with it.)
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench.ai_latency import MODEL, PLAIN_HEADER, REQUEST_BODY
from bench.ai_latency import PATHS as BENCH_PATHS
from bench.side_by_side import OneWorkerBench, bare_config
from testing.envoy import base_id
from testing.ports import free_port
from xds_server.envoy import envoy_binary, envoy_environment

Config = dict[str, Any]
PATHS = {path: BENCH_PATHS[path] for path in ("plain", "ai")}  # ai_latency's hosts; plain first, as bare
WARM_UP_S = 4
LUA = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Host"] = "{host}"
wrk.headers["{header}"] = "{model}"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("ANSWERED %d %d\\n", summary.requests, e.status + e.connect + e.read + e.write + e.timeout))
end
"""


def static_config(dump: Config, port: int, admin_port: int) -> Config:
    """A bootstrap serving what a config dump shows: its listeners (on `port`) with their RDS routes inline, its
    clusters with EDS endpoints inline, its secrets, and the bootstrap's runtime and regex engine."""
    sections = {config["@type"].rsplit(".", 1)[-1]: config for config in dump["configs"]}
    routes = {
        entry["route_config"]["name"]: untyped(entry["route_config"])
        for entry in sections["RoutesConfigDump"].get("dynamic_route_configs", [])
    }
    endpoints = {
        entry["endpoint_config"]["cluster_name"]: untyped(entry["endpoint_config"])
        for entry in sections.get("EndpointsConfigDump", {}).get("dynamic_endpoint_configs", [])
    }
    listeners = []
    for entry in sections["ListenersConfigDump"].get("dynamic_listeners", []):
        listener = untyped(entry["active_state"]["listener"])
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                manager = network_filter["typed_config"]
                if "rds" in manager:
                    manager["route_config"] = routes[manager.pop("rds")["route_config_name"]]
        listener["address"]["socket_address"]["port_value"] = port
        listeners.append(listener)
    clusters = []
    dumped = sections["ClustersConfigDump"]
    for entry in dumped.get("static_clusters", []) + dumped.get("dynamic_active_clusters", []):
        cluster = untyped(entry["cluster"])
        if cluster.get("type") == "EDS":
            cluster["type"] = "STATIC"
            del cluster["eds_cluster_config"]
            cluster["load_assignment"] = endpoints.get(cluster["name"], {"cluster_name": cluster["name"]})
        clusters.append(cluster)
    dumped_secrets = sections.get("SecretsConfigDump", {}).get("dynamic_active_secrets", [])
    secrets = [untyped(entry["secret"]) for entry in dumped_secrets]
    config: Config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": listeners, "clusters": clusters, "secrets": secrets},
    }
    bootstrap = sections["BootstrapConfigDump"]["bootstrap"]
    for key in ("layered_runtime", "default_regex_engine"):
        if key in bootstrap:
            config[key] = bootstrap[key]
    return config


def untyped(resource: Config) -> Config:
    """A resource of the dump without its `@type` (a bootstrap's fields are typed already)."""
    return {key: value for key, value in resource.items() if key != "@type"}


def manager(config: Config) -> Config:
    manager: Config = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def without_access_log(name: str) -> Callable[[Config], None]:
    def change(config: Config) -> None:
        hcm = manager(config)
        hcm["access_log"] = [log for log in hcm.get("access_log", []) if log["name"] != name]

    return change


def without(*keys: str) -> Callable[[Config], None]:
    def change(config: Config) -> None:
        for key in keys:
            manager(config).pop(key, None)

    return change


PARTS: dict[str, tuple[str, Callable[[Config], None]]] = {
    "stdout_log": ("Envoy's access log on stdout", without_access_log("envoy.access_loggers.stdout")),
    "remote_address": (
        "use_remote_address, normalize_path, merge_slashes",
        without("use_remote_address", "normalize_path", "merge_slashes"),
    ),
    "strip_headers": ("the early header mutation", without("early_header_mutation_extensions")),
}


class CountedEnvoy:
    """A one-worker Envoy under callgrind, instrumentation off until `count` turns it on."""

    def __init__(self, directory: Path, name: str, config: Config, port: int, admin_port: int) -> None:
        self.directory, self.name, self.port, self.admin_port = directory, name, port, admin_port
        path = directory / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.counts = directory / f"{name}.callgrind"
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={self.counts}"]
        command += [str(envoy_binary()), "-c", str(path), "--concurrency", "1", "--base-id", str(base_id())]
        command += ["-l", "warning", "--log-path", str(directory / f"{name}.log")]
        with (directory / f"{name}.valgrind").open("wb") as output:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=output, env=envoy_environment())

    def wait_live(self, seconds: float = 180.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=2) as answer:
                    if answer.read() == b"LIVE\n":
                        return
            except OSError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        log = (self.directory / f"{self.name}.valgrind").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.name}: Envoy under callgrind not live\n{log}")

    def callgrind(self, *command: str) -> None:
        subprocess.run(["callgrind_control", *command, str(self.process.pid)], capture_output=True, check=True)

    def count(self, host: str, seconds: float) -> tuple[float, int]:
        """(instructions per request answered, requests answered) of `seconds` of wrk on `host`."""
        script = self.directory / f"{self.name}-{host}.lua"
        body = REQUEST_BODY.decode()
        script.write_text(LUA.format(body=body, host=host, header=PLAIN_HEADER, model=MODEL))
        url = f"http://127.0.0.1:{self.port}/v1/chat/completions"

        def wrk(duration: float) -> tuple[int, int]:
            command = ["wrk", "-t", "1", "-c", "1", "-d", f"{max(1, round(duration))}s", "--timeout", "30s"]
            command += ["-s", str(script), url]
            printed = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            [line] = [line for line in printed.splitlines() if line.startswith("ANSWERED ")]
            answered, errors = (int(field) for field in line.split()[1:])
            return answered, errors

        wrk(WARM_UP_S)
        idle, idle_seconds = self.counted(lambda: time.sleep(seconds))
        answered, errors = 0, 0

        def load() -> None:
            nonlocal answered, errors
            answered, errors = wrk(seconds)
            time.sleep(0.5)  # the usage log's last batch of the run (its flush interval is 250 ms)

        busy, busy_seconds = self.counted(load)
        assert answered > 0 and errors == 0, (self.name, host, answered, errors)
        # What Envoy does whatever the load (timers, stats, the usage log's flush ticks) is not the requests'.
        return (busy - idle * busy_seconds / idle_seconds) / answered, answered

    def counted(self, run: Callable[[], None]) -> tuple[int, float]:
        """(instructions Envoy executed, seconds) while `run` ran."""
        self.callgrind("--zero")
        self.callgrind("--instr=on")
        started = time.monotonic()
        run()
        elapsed = time.monotonic() - started
        self.callgrind("--instr=off")
        before = set(self.directory.glob(f"{self.name}.callgrind*"))
        self.callgrind("--dump")
        dumps = sorted(set(self.directory.glob(f"{self.name}.callgrind*")) - before, key=os.path.getmtime)
        assert dumps, f"{self.name}: callgrind wrote no counts"
        found = re.search(r"^totals:\s*(\d+)", dumps[-1].read_text(errors="replace"), re.MULTILINE)
        assert found is not None, dumps[-1]
        return int(found.group(1)), elapsed

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="counted wrk per path and variant")
    parser.add_argument("--parts", action="store_true", help="also ours less each part (PARTS)")
    parser.add_argument("--smoke", action="store_true", help="CI: bare and ours, 1 s each")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.parts = 1.0, False
    for tool in ("valgrind", "callgrind_control", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install -y valgrind wrk")
    started = time.monotonic()
    variants: dict[str, Callable[[Config], None] | None] = {"bare": None, "ours": lambda config: None}
    if args.parts:
        variants.update({f"ours - {part}": change for part, (_, change) in PARTS.items()})
    rows: list[tuple[str, str, float, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        bench = OneWorkerBench(directory)
        try:
            await bench.start()
            with urllib.request.urlopen(f"{bench.envoy.admin}/config_dump?include_eds") as answer:
                dump = json.load(answer)
            for name, change in variants.items():
                port, admin_port = free_port(), free_port()
                if change is None:
                    config = bare_config(port, admin_port, bench.upstream.port)
                else:
                    config = static_config(copy.deepcopy(dump), port, admin_port)
                    change(config)
                envoy = CountedEnvoy(directory, name.replace(" ", ""), config, port, admin_port)
                try:
                    await asyncio.to_thread(envoy.wait_live)
                    for path, host in PATHS.items():
                        if change is None and path != "plain":
                            continue
                        per_request, answered = await asyncio.to_thread(envoy.count, host, args.seconds)
                        rows.append((path, name, per_request, answered))
                        print(f"{path:>5} {name:<28} {per_request / 1000:8.1f} k instructions/request", flush=True)
                finally:
                    envoy.stop()
        finally:
            bench.stop()
    counts = {(path, name): per_request for path, name, per_request, _ in rows}
    bare = counts[("plain", "bare")]
    print("\n| path | Envoy | k instructions / request | / bare | / ours (same path) | requests counted |")
    print("|---|---|---:|---:|---:|---:|")
    for path, name, per_request, answered in rows:
        ours = counts[(path, "ours")]
        print(
            f"| {path} | {name} | {per_request / 1000:.1f} | {per_request / bare:.3f} | "
            f"{per_request / ours:.3f} | {answered:,} |"
        )
    if args.parts:
        print("\n| part | plain: k instructions it costs | ai: k instructions it costs |\n|---|---:|---:|")
        for part, (title, _) in PARTS.items():
            costs = [counts[(path, "ours")] - counts[(path, f"ours - {part}")] for path in PATHS]
            print(f"| {title} | {costs[0] / 1000:.1f} | {costs[1] / 1000:.1f} |")
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    asyncio.run(main())
