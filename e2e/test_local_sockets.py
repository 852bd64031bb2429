"""On one machine ADS and ext_proc listen on Unix sockets only their user may open (issue 15: on loopback any other user
of the machine could ask ext_proc for a backend's API key, and ADS for every Gateway's configuration).

`xds-server serve --resources` with no address flags: its sockets in `$XDG_RUNTIME_DIR/xds-server` (0700, sockets
0600), no TCP port but the admin's; `xds-server bootstrap` and `xds-server status` find them by default, and an Envoy
started from the printed bootstrap goes LIVE and gets the backend's key put on its requests over the ext_proc
socket. The forged call from another user fails at the directory (run as `nobody` when the tests run as root; the
modes are asserted whatever the user).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from testing.envoy import Envoy
from testing.manifests import ai_gateway_route, gateway, keyed_backend
from testing.ports import free_port, loopback_address
from testing.processes import listening_tcp_ports, stop_process
from testing.sims import b64, start_testupstream
from testing.web import eventually, http_get, request

API_KEY = "sk-local-socket-not-a-real-key-0d2e"
NOBODY = 65534


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """A stand-in for $XDG_RUNTIME_DIR (short: a socket path has at most 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="xrt-") as name:
        os.chmod(name, 0o700)
        yield Path(name)


def cli(*args: str, env: dict[str, str]) -> str:
    command = [sys.executable, "-m", "xds_server.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True, env=env, timeout=60).stdout


def connect_as(uid: int, path: Path) -> str:
    """What another user gets trying to open the socket (a child process with that uid, run by a Python it may
    execute: the venv's may be in a directory only its owner enters)."""
    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable
    probe = f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({str(path)!r}); print('connected')"
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, user=uid, cwd="/", timeout=30)
    return done.stdout + done.stderr


async def test_serve_listens_on_sockets_only_its_user_may_open_and_envoy_reaches_them_by_default(
    tmp_path: Path, runtime_dir: Path
) -> None:
    host = loopback_address()[0]
    upstream = start_testupstream("keyed", host, tmp_path / "upstream.log")
    listen_port, admin_port, envoy_admin = free_port(), free_port(), free_port()
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "gateway.yaml").write_text(
        "---".join(
            [
                gateway([listen_port]),
                keyed_backend("keyed", host, upstream.port, API_KEY),
                ai_gateway_route("llm", {"keyed": "keyed"}),
            ]
        )
    )
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)}
    command = [sys.executable, "-m", "xds_server.cli", "serve", "--resources", str(manifests)]
    command += ["--admin-address", f"127.0.0.1:{admin_port}"]
    log = tmp_path / "serve.log"
    serve = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("a"), env=env)
    envoy: Envoy | None = None
    try:
        ready = eventually(lambda: http_get(f"http://127.0.0.1:{admin_port}/readyz")[0] == 200, "serve ready")
        assert ready, log.read_text()[-2000:]
        sockets = runtime_dir / "xds-server"
        assert stat.S_IMODE(sockets.stat().st_mode) == 0o700 and sockets.stat().st_uid == os.getuid()
        for name in ("ads.sock", "extproc.sock"):
            found = (sockets / name).stat()
            assert stat.S_ISSOCK(found.st_mode) and stat.S_IMODE(found.st_mode) == 0o600, name
        # No TCP port but the admin's: nothing on loopback for another user to ask.
        assert listening_tcp_ports(serve.pid) == {admin_port}

        printed = cli("bootstrap", "--gateway", "default/gw", "--admin-address", f"127.0.0.1:{envoy_admin}", env=env)
        ads = json.dumps(yaml.safe_load(printed)["static_resources"]["clusters"][0])
        assert str(sockets / "ads.sock") in ads and '"pipe"' in ads
        envoy = Envoy(tmp_path, "default/gw", 0, printed_bootstrap=(printed, envoy_admin))
        await envoy.wait_live()
        url = f"http://127.0.0.1:{listen_port}"
        body = json.dumps({"model": "keyed", "messages": [{"role": "user", "content": "hi"}]}).encode()
        headers = {"content-type": "application/json", "x-expected-headers": b64(f"authorization:Bearer {API_KEY}")}
        answer = eventually(
            lambda: (r := request(url, "POST", "/v1/chat/completions", body, headers)).status_code == 200 and r,
            "the keyed route through Envoy, its key from ext_proc over the socket",
        )
        assert answer and answer.status_code == 200, envoy.log_tail()
        assert "SYNCED" in cli("status", env=env)

        if os.getuid() == 0:  # another user of the machine: the private directory stops them before the socket
            for name in ("ads.sock", "extproc.sock"):
                assert "PermissionError" in connect_as(NOBODY, sockets / name), name
    finally:
        if envoy is not None:
            envoy.stop()
        stop_process(serve)
        upstream.kill()
    assert not (runtime_dir / "xds-server" / "ads.sock").exists()  # removed on exit


def test_a_second_serve_does_not_take_over_the_sockets_of_a_running_one(tmp_path: Path, runtime_dir: Path) -> None:
    manifests = tmp_path / "gateway.yaml"
    manifests.write_text(gateway([free_port()]))
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)}
    admin_port = free_port()

    def start(admin: int, log: Path) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "xds_server.cli", "serve", "--resources", str(manifests)]
        command += ["--admin-address", f"127.0.0.1:{admin}"]
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("a"), env=env)

    first = start(admin_port, tmp_path / "first.log")
    try:
        assert eventually(lambda: http_get(f"http://127.0.0.1:{admin_port}/readyz")[0] == 200, "first ready")
        second = start(free_port(), tmp_path / "second.log")
        try:
            assert second.wait(timeout=30) != 0
        finally:
            stop_process(second)
        assert "another server listens on unix:" in (tmp_path / "second.log").read_text()
        cli("status", env=env)  # the first one still answers on its socket
    finally:
        stop_process(first)
