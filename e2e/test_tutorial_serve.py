"""The issue's "done when": `xds-server serve --resources examples/tutorial` plus an Envoy started from the
bootstrap `xds-server bootstrap` prints reaches LIVE with the translated listeners, routes and clusters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from testing.cases import TUTORIAL
from testing.envoy import Envoy
from testing.ports import free_port
from testing.processes import Serve, serve_port, synced, xds_server_status

GATEWAY = "default/inference-pool-with-aigwroute"


async def test_envoy_from_the_printed_bootstrap_goes_live_with_the_tutorial(tmp_path: Path) -> None:
    serve = Serve(
        TUTORIAL, free_port(), free_port(), tmp_path / "serve.log", extra=["--privileged-port-offset", "10000"]
    )
    try:
        await serve.ready()
        xds_port = serve_port(serve, "--xds-address")
        admin_port = free_port()
        command = [sys.executable, "-m", "xds_server.cli", "bootstrap", "--gateway", GATEWAY]
        command += ["--xds-address", f"127.0.0.1:{xds_port}", "--admin-address", f"127.0.0.1:{admin_port}"]
        printed = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        envoy = Envoy(tmp_path, GATEWAY, int(xds_port), printed_bootstrap=(printed, admin_port))
        try:
            await envoy.wait_live()
            dump = json.dumps(await envoy.config_dump())
            snapshots = (await serve.document("/debug/snapshots"))[GATEWAY]
            for type_name in ("Listener", "RouteConfiguration", "Cluster"):
                for name in snapshots[type_name]["resources"]:
                    assert f'"{name}"' in dump, (type_name, name)
            assert '"port_value": 10080' in dump
            [client] = await synced(serve)
            assert {t["state"] for t in client["types"].values()} == {"SYNCED"}
            assert "SYNCED" in xds_server_status(serve)
        finally:
            envoy.stop()
    finally:
        serve.terminate()
