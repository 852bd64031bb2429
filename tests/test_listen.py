"""Where the gRPC servers listen: the address grammar (`HOST:PORT`, `unix:PATH`), the private socket directory (0700,
this user's, never a symlink), a live socket never taken over, a stale one replaced, sockets 0600."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from xds_server.listen import (
    Address,
    claim_socket,
    default_socket_dir,
    parse_address,
    private_directory,
    restrict_socket,
)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (a socket path has at most 107 bytes; pytest's tmp_path can be longer)."""
    with tempfile.TemporaryDirectory(prefix="xl-") as name:
        yield Path(name)


def test_the_address_grammar() -> None:
    assert parse_address("127.0.0.1:18000") == Address("127.0.0.1", 18000)
    assert parse_address("[::1]:18000") == Address("::1", 18000)
    assert parse_address("[::1]:18000").target == "[::1]:18000"
    assert parse_address("unix:/run/user/1000/xds-server/ads.sock") == Address(
        path="/run/user/1000/xds-server/ads.sock"
    )
    assert str(parse_address("unix:/tmp/a.sock")) == "unix:/tmp/a.sock"
    for bad in ("18000", "host:", ":18000", "host:0", "host:70000", "unix:relative.sock", "unix:/" + "x" * 120):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_the_default_socket_directory_is_the_users_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1234")
    assert default_socket_dir() == Path("/run/user/1234/xds-server")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_socket_dir() == Path(tempfile.gettempdir()) / f"xds-server-{os.getuid()}"


def test_a_private_directory_is_made_0700_and_nothing_else_is_accepted(short_dir: Path) -> None:
    made = private_directory(short_dir / "a" / "sockets")
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    assert private_directory(made) == made  # again: it is fine as it is

    shared = short_dir / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(PermissionError, match="0o755"):
        private_directory(shared)
    link = short_dir / "link"
    link.symlink_to(made)
    with pytest.raises(PermissionError):
        private_directory(link)
    if os.getuid() == 0:  # someone else's directory, made beforehand where the sockets would go
        foreign = short_dir / "foreign"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, 65534, 65534)
        with pytest.raises(PermissionError, match="owner 65534"):
            private_directory(foreign)


async def test_a_live_socket_is_never_taken_over_and_a_stale_one_is_replaced(short_dir: Path) -> None:
    address = Address(path=str(short_dir / "run" / "ads.sock"))
    claim_socket(address)  # makes the directory
    server = grpc.aio.server()
    server.add_insecure_port(address.target)
    await server.start()
    restrict_socket(address)
    try:
        assert stat.S_IMODE(os.stat(address.path or "").st_mode) == 0o600
        with pytest.raises(OSError, match="another server listens on unix:"):
            claim_socket(address)
    finally:
        await server.stop(None)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # bound and closed: what a killed process leaves
    stale.bind(address.path or "")
    stale.close()
    claim_socket(address)
    again = grpc.aio.server()
    again.add_insecure_port(address.target)
    await again.start()
    await again.stop(None)
