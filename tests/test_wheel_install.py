"""The container image's install, without a container builder: the Dockerfile's steps in a fresh venv.

The build stage's COPY lines say which files make the build context; they are copied to a temporary folder (so the
build never writes generated code into the work tree), the wheel is built there with `pip wheel --no-deps`, and a new
venv installs only that wheel with its dependencies as binary wheels from PyPI (`--only-binary=:all:`, as the final
image has no compiler). The installed `xds-server` must then run the tutorial's translation. pip's cache is used
(the image's build passes --no-cache-dir): a warm run takes about 15 s, a cold one downloads every dependency.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
TUTORIAL = ROOT / "examples" / "tutorial"


def build_context() -> list[str]:
    """The sources of the build stage's COPY instructions (the first FROM up to the next)."""
    sources: list[str] = []
    stages = 0
    for line in DOCKERFILE.read_text().splitlines():
        if line.split(" ", 1)[0].upper() not in ("FROM", "COPY"):
            continue  # RUN lines go on over several, and they are not needed here
        words = shlex.split(line, comments=True)
        if words[0].upper() == "FROM":
            stages += 1
        elif words[0].upper() == "COPY" and stages == 1 and not any(w.startswith("--from") for w in words):
            sources += words[1:-1]
    return sources


def run(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_wheel_installs_alone_in_a_fresh_venv_and_translates_the_tutorial(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    sources = build_context()
    assert {"pyproject.toml", "setup.py", "protos", "native", "translators", "xds_server"} <= set(sources)
    for source in sources:
        path = ROOT / source
        if path.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*_pb2*.py", "*_pb2*.pyi", "*.so")
            shutil.copytree(path, context / source, ignore=ignore)
        else:
            shutil.copy2(path, context / source)

    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), "."], context)
    [wheel] = wheels.glob("*.whl")
    assert wheel.name.startswith("xds_server-")

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python, command = env_dir / "bin" / "python", env_dir / "bin" / "xds-server"
    run([str(python), "-m", "pip", "install", "--quiet", "--only-binary=:all:", str(wheel)], tmp_path)

    assert "translate" in run([str(command), "--help"], tmp_path)
    translated = run([str(command), "translate", str(TUTORIAL)], tmp_path)
    assert "inference-pool-with-aigwroute" in translated
    # The code generated from protos/ at build time is in the wheel (serve imports it), and nothing is imported from
    # the work tree: the venv's own copy answers.
    where = run(
        [str(python), "-c", "import xds_server.serve, xds_server.api.admin_pb2 as m; print(m.__file__)"], tmp_path
    )
    assert where.startswith(str(env_dir)), where
    # So is the AI filter module compiled from native/ (Envoy loads it from there), and the wheel says its platform.
    module = run([str(python), "-c", "from xds_server.envoy import MODULES_DIRECTORY as d; print(d)"], tmp_path)
    assert (Path(module.strip()) / "libxds_server_ai.so").is_file(), module
    assert not wheel.name.endswith("-none-any.whl"), wheel.name
