"""Where the control plane's gRPC servers listen: a TCP `HOST:PORT`, or a Unix socket `unix:PATH`.

On one machine (`serve --resources`, `up`) ADS and ext_proc listen on Unix sockets by default, in a directory only
their user may enter (0700) and as sockets only their user may open (0600): the ext_proc server hands out backend
API keys and ADS every Gateway's configuration, and any other user of the machine can reach a loopback port, but
not a socket in another user's private directory. Envoy (run by the same user) reaches them by a `pipe` address.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

UNIX_PREFIX = "unix:"
SOCKET_DIR_NAME = "xds-server"
XDS_SOCKET = "ads.sock"
EXTPROC_SOCKET = "extproc.sock"
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL


@dataclass(frozen=True)
class Address:
    """A TCP `host:port`, or a Unix socket at `path`."""

    host: str = ""
    port: int = 0
    path: str | None = None

    @property
    def unix(self) -> bool:
        return self.path is not None

    @property
    def target(self) -> str:
        """gRPC's form, for servers and channels alike: `unix:PATH` or `HOST:PORT` (an IPv6 host in brackets)."""
        if self.path is not None:
            return UNIX_PREFIX + self.path
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.target


def parse_address(value: str) -> Address:
    """`unix:PATH` (an absolute path) or `HOST:PORT`; ValueError otherwise."""
    if value.startswith(UNIX_PREFIX):
        path = value[len(UNIX_PREFIX) :]
        if not path.startswith("/"):
            raise ValueError(f"{value!r}: a Unix socket needs an absolute path (unix:/run/user/1000/ads.sock)")
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise ValueError(f"{value!r}: a Unix socket path has at most {MAX_SOCKET_PATH} bytes")
        return Address(path=path)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT or unix:PATH")
    return Address(host.strip("[]"), int(port))


def default_socket_dir() -> Path:
    """Per user: `$XDG_RUNTIME_DIR/xds-server` (a directory of the user's own, 0700, emptied at logout), else
    `/tmp/xds-server-<uid>`."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return Path(runtime) / SOCKET_DIR_NAME
    return Path(tempfile.gettempdir()) / f"{SOCKET_DIR_NAME}-{os.getuid()}"


def default_socket(name: str) -> Address:
    return Address(path=str(default_socket_dir() / name))


def private_directory(path: Path) -> Path:
    """Makes `path` a directory only this user may enter (0700), or checks that it is one: owned by this user, no
    access for group or others, not a symlink. Anything else is refused (PermissionError): a directory someone
    else made in /tmp beforehand could let them take the sockets' place."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    found = path.lstat()
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid() or found.st_mode & 0o077:
        raise PermissionError(
            f"{path} must be a directory of user {os.getuid()} with mode 0700 (it is "
            f"{'not a directory' if not stat.S_ISDIR(found.st_mode) else oct(found.st_mode & 0o777)}, owner "
            f"{found.st_uid}); remove it or choose another with --xds-address/--extproc-address unix:PATH"
        )
    return path


def claim_socket(address: Address) -> None:
    """Before a server binds `address`: its directory made private, and no other server answering at the path (gRPC
    would silently unlink a live socket and take its place; a stale one, left by a killed process, it replaces)."""
    if address.path is None:
        return
    path = Path(address.path)
    private_directory(path.parent)
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return  # nobody listens: stale
    finally:
        probe.close()
    raise OSError(f"another server listens on {address}: is another `xds-server serve` or `up` running?")


def restrict_socket(address: Address) -> None:
    """After binding: only this user may connect (connecting needs write permission on the socket)."""
    if address.path is not None:
        os.chmod(address.path, 0o600)
