"""Compiles protos/ into xds_server/api/ and native/ into xds_server/native/ on every build and install, so generated
code and the Envoy module never go stale."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
PROTOS = ROOT / "protos"
NATIVE = ROOT / "native"
# Where Envoy finds the AI filter module (xds_server.envoy.MODULES_DIRECTORY; the name is translators' AI_MODULE).
MODULE = ROOT / "xds_server" / "native" / "libxds_server_ai.so"


def compile_protos() -> None:
    import grpc_tools
    from grpc_tools import protoc

    includes = Path(grpc_tools.__file__).parent / "_proto"
    for proto in sorted(PROTOS.rglob("*.proto")):
        args = [
            "protoc",
            f"-I{PROTOS}",
            f"-I{includes}",
            f"--python_out={ROOT}",
            f"--pyi_out={ROOT}",
            f"--grpc_python_out={ROOT}",
            str(proto),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")


def compile_module() -> None:
    """The AI filter, a C shared object Envoy loads (no Python headers or libraries: it uses only Envoy's ABI)."""
    compiler = shlex.split(os.environ.get("CC", "cc"))
    flags = ["-O2", "-std=c11", "-D_DEFAULT_SOURCE", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared"]
    flags += ["-fvisibility=hidden", "-pthread"]  # only the ABI's hooks and the entry points the tests call
    command = [*compiler, *flags, "-o", str(MODULE), *(str(source) for source in sorted(NATIVE.glob("*.c")))]
    try:
        subprocess.run(command, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        message = f"building the Envoy module failed ({shlex.join(command)}): {error}; a C compiler is needed"
        raise SystemExit(message) from error


class BuildWithProtos(build_py):
    def run(self) -> None:
        compile_protos()
        compile_module()
        super().run()


class NativeDistribution(Distribution):
    """The wheel carries a shared object for this platform, so it is tagged as one (not py3-none-any)."""

    def has_ext_modules(self) -> bool:
        return True


setup(cmdclass={"build_py": BuildWithProtos}, distclass=NativeDistribution)
