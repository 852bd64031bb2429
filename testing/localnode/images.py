"""Which local program runs a container image, and its argv from the container's command and args.

There is no container runtime here, so each image this project's tests deploy is mapped, by repository name
(registry and tag ignored, as `up` recognises images), to a program on this machine with the image's entrypoint
semantics: `command` replaces the entrypoint, `args` the default arguments. An image that is not mapped, or whose
program is not built, is an `UnknownImage` with a message saying what to do; the pod then waits with that reason.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from xds_server.envoy import EnvoyNotFound, envoy_binary
from xds_server.up.images import repository

ROOT = Path(__file__).resolve().parent.parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xds-server"
EPP_VERSION = "v1.0.2"  # bench/peers/build.sh's; the tutorial's v1.0.1 image runs it too
GATEWAY_API_VERSION = "v1.6.1"  # conformance/build.sh's, for echo-basic
COREDNS_VERSION = "v1.12.2"  # conformance/build.sh's: the Gateway API suite's base manifests run it


class Program(StrEnum):
    ENVOY = "envoy"
    XDS_SERVER = "xds-server"
    TESTUPSTREAM = "testupstream"
    VLLM_SIMULATOR = "vllm-simulator"
    ENDPOINT_PICKER = "endpoint-picker"
    ECHO_BASIC = "echo-basic"
    COREDNS = "coredns"


# Repository path suffixes, matched on whole path segments.
REPOSITORIES: dict[str, Program] = {
    "envoyproxy/envoy": Program.ENVOY,
    "xds-server": Program.XDS_SERVER,
    "ai-gateway-testupstream": Program.TESTUPSTREAM,
    "llm-d-inference-sim": Program.VLLM_SIMULATOR,
    "gateway-api-inference-extension/epp": Program.ENDPOINT_PICKER,
    "echo-basic": Program.ECHO_BASIC,
    "coredns/coredns": Program.COREDNS,
}


class UnknownImage(Exception):
    """The image has no local program, or its program is not built."""


def program_of(image: str) -> Program:
    repo = repository(image)
    for suffix, program in REPOSITORIES.items():
        if repo == suffix or repo.endswith("/" + suffix):
            return program
    known = ", ".join(sorted(REPOSITORIES))
    raise UnknownImage(f"the local node has no program for image {image!r} (it runs: {known})")


def _built(path: Path, how: str) -> str:
    if not os.access(path, os.X_OK):
        raise UnknownImage(f"{path} is not built: run {how}")
    return str(path)


@dataclass(frozen=True)
class Image:
    """An image's entrypoint and default arguments, as local argv pieces."""

    entrypoint: tuple[str, ...]
    default_args: tuple[str, ...] = ()
    # Arguments always appended: where a local stand-in's default would differ from the image's behaviour.
    forced_args: tuple[str, ...] = ()


def local_image(program: Program) -> Image:
    python = (sys.executable, "-m", "xds_server.cli")
    if program is Program.ENVOY:
        try:
            envoy = str(envoy_binary())
        except EnvoyNotFound as error:
            raise UnknownImage(str(error)) from error
        return Image((envoy,), ("-c", "/etc/envoy/envoy.yaml"))
    if program is Program.XDS_SERVER:
        return Image(python, ("--help",))
    if program is Program.TESTUPSTREAM:  # the image listens on every address, our simulator on loopback by default
        return Image((*python, "sim", "testupstream"), forced_args=("--host", "0.0.0.0"))
    if program is Program.VLLM_SIMULATOR:
        return Image((*python, "sim", "vllm"), forced_args=("--host", "0.0.0.0"))
    if program is Program.ENDPOINT_PICKER:
        peers = Path(os.environ.get("PEERS_CACHE") or CACHE / "peers")
        return Image((_built(peers / f"epp-{EPP_VERSION}" / "epp", "bench/peers/build.sh epp"),))
    conformance = Path(os.environ.get("XDS_SERVER_CONFORMANCE_CACHE") or CACHE / "conformance")
    if program is Program.COREDNS:
        coredns = conformance / f"coredns-{COREDNS_VERSION}" / "coredns"
        return Image((_built(coredns, "conformance/build.sh coredns"),))
    return Image((_built(conformance / GATEWAY_API_VERSION / "echo-basic", "conformance/build.sh echo-basic"),))


def argv(image: str, command: Sequence[str], args: Sequence[str]) -> list[str]:
    """What runs for a container: Kubernetes' rule (command replaces the entrypoint, args the default arguments)
    with the image's entrypoint being the local program. A `command` naming the program itself (`envoy`,
    `/usr/local/bin/envoy`, `xds-server`) is the program."""
    local = local_image(program_of(image))
    if command:
        first, rest = command[0], list(command[1:])
        if Path(first).name in {Path(local.entrypoint[-1]).name, "envoy", "xds-server", "epp", "echo-basic", "coredns"}:
            return [*local.entrypoint, *rest, *args, *local.forced_args]
        raise UnknownImage(
            f"image {image!r}: command {first!r} is not the image's program; the local node runs only that"
        )
    return [*local.entrypoint, *(args or local.default_args), *local.forced_args]
