"""helm (v4, built from the Go module proxy by e2e/kube/build-helm.sh) as the tests run it."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import yaml


class Helm:
    """The helm binary with its own config, cache and data folders (never the user's), talking to `kubeconfig`."""

    def __init__(self, binary: Path, home: Path, kubeconfig: Path | None = None) -> None:
        self.binary = binary
        self.home = home
        self.kubeconfig = kubeconfig
        home.mkdir(parents=True, exist_ok=True)

    def run(self, *args: str, values: dict[str, Any] | None = None) -> str:
        command = [str(self.binary), *args]
        if values:
            values_file = self.home / f"values-{uuid.uuid4().hex[:8]}.yaml"
            values_file.write_text(yaml.safe_dump(values))
            command += ["--values", str(values_file)]
        if self.kubeconfig is not None:
            command += ["--kubeconfig", str(self.kubeconfig)]
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.home),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def template(
        self, chart: Path, values: dict[str, Any] | None = None, namespace: str = "xs"
    ) -> list[dict[str, Any]]:
        out = self.run("template", "rel", str(chart), "--namespace", namespace, values=values)
        # libyaml's loader: the pure-Python one takes seconds for the 3.8 MB of CRDs.
        return [doc for doc in yaml.load_all(out, Loader=yaml.CSafeLoader) if isinstance(doc, dict)]
