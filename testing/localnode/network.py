"""The local node's pod network: a Linux bridge with the node's address, one network namespace per pod joined to it
by a veth pair, and the Services' cluster IPs as extra addresses of the bridge (where the node's service proxy
listens). This needs root (CAP_NET_ADMIN), which the machines this project is tested on give.

Why namespaces rather than one 127.x address per pod: the programs the tutorial and the conformance suites run bind
wildcard addresses (the Endpoint Picker's `:9002`, echo-basic's `:3000`, Envoy's `0.0.0.0` listeners), so two pods
of the same kind on one loopback would fight for their ports. A namespace gives each pod its own port space and its
own address, the way a real pod network does, with nothing but `ip` from iproute2.

Addresses, for cluster number k (chosen at random among free ones, so two test runs can share the machine):
- node (the bridge `xkn<k>`): 10.k.1.1; pods: 10.k.1.2-254
- Services: 10.k.128.0/20 (the API server's --service-cluster-ip-range); the `kubernetes` Service is 10.k.128.1
- load-balancer ingress addresses: 127.k.200.1-254, on the host's loopback, reachable only from this machine
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

# Ownership records: a run killed outright leaves its bridge and namespaces behind; the next run removes those whose
# owner process is gone.
STATE_DIR = Path("/run/xds-server-testnet")
PREFIX = "xkn"
FIRST_INDEX, LAST_INDEX = 100, 250


class NetworkError(RuntimeError):
    """An `ip` command failed; the message has the command and its stderr."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


@dataclass(frozen=True)
class PodNetwork:
    """One pod's namespace (run its processes under `ip netns exec <netns>`) and address."""

    netns: str
    ip: str


@dataclass
class ClusterNetwork:
    index: int
    _free: list[int] = field(default_factory=lambda: list(range(2, 255)))
    _pods: dict[str, PodNetwork] = field(default_factory=dict)
    # add_pod and remove_pod run in worker threads (their `ip` calls block): one at a time.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def bridge(self) -> str:
        return f"{PREFIX}{self.index}"

    @property
    def node_ip(self) -> str:
        return f"10.{self.index}.1.1"

    @property
    def pod_cidr(self) -> str:
        return f"10.{self.index}.1.0/24"

    @property
    def service_cidr(self) -> str:
        return f"10.{self.index}.128.0/20"

    @property
    def kubernetes_service_ip(self) -> str:
        """The first address of the service range: the API server gives it to the `kubernetes` Service."""
        return str(ipaddress.ip_network(self.service_cidr)[1])

    def load_balancer_ip(self, n: int) -> str:
        """The n-th (1-254) load-balancer ingress address: on loopback, so only this machine reaches it."""
        if not 1 <= n <= 254:
            raise ValueError(f"load balancer address number {n} out of 1-254")
        return f"127.{self.index}.200.{n}"

    # --- pods -----------------------------------------------------------------------------------------------------

    def add_pod(self, key: str) -> PodNetwork:
        """A namespace with its own loopback and an address on the bridge, default route via the node. `key` is the
        pod's UID; adding the same key twice returns the same network."""
        with self._lock:
            return self._add_pod(key)

    def _add_pod(self, key: str) -> PodNetwork:
        if key in self._pods:
            return self._pods[key]
        if not self._free:
            raise NetworkError(f"no free pod address left in {self.pod_cidr}")
        host = self._free.pop(0)
        netns = f"{self.bridge}-{host}"
        veth = f"{self.bridge}p{host}"
        pod_ip = f"10.{self.index}.1.{host}"
        ip("netns", "del", netns, check=False)  # left by a killed run that reused this number
        ip("netns", "add", netns)
        try:
            ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
            ip("link", "set", veth, "master", self.bridge, "up")
            ip("-n", netns, "link", "set", "lo", "up")
            ip("-n", netns, "addr", "add", f"{pod_ip}/24", "dev", "eth0")
            ip("-n", netns, "link", "set", "eth0", "up")
            ip("-n", netns, "route", "add", "default", "via", self.node_ip)
        except NetworkError:
            ip("netns", "del", netns, check=False)
            self._free.append(host)
            raise
        pod = PodNetwork(netns=netns, ip=pod_ip)
        self._pods[key] = pod
        return pod

    def remove_pod(self, key: str) -> None:
        """Deletes the namespace (and with it the veth pair); its address can be given again."""
        with self._lock:
            self._remove_pod(key)

    def _remove_pod(self, key: str) -> None:
        pod = self._pods.pop(key, None)
        if pod is None:
            return
        ip("netns", "del", pod.netns, check=False)
        self._free.append(int(pod.ip.rsplit(".", 1)[1]))

    # --- service addresses ----------------------------------------------------------------------------------------

    def add_address(self, address: str) -> None:
        """A cluster IP as a /32 of the bridge: pods reach it through their default route, the host locally."""
        done = ip("addr", "add", f"{address}/32", "dev", self.bridge, check=False)
        if done.returncode != 0 and "File exists" not in done.stderr:
            raise NetworkError(f"ip addr add {address}/32 dev {self.bridge}: {done.stderr.strip()}")

    def remove_address(self, address: str) -> None:
        ip("addr", "del", f"{address}/32", "dev", self.bridge, check=False)

    # --- lifecycle ------------------------------------------------------------------------------------------------

    def destroy(self) -> None:
        for key in list(self._pods):
            self.remove_pod(key)
        _remove(self.index)


def _remove(index: int) -> None:
    bridge = f"{PREFIX}{index}"
    for line in ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(f"{bridge}-"):
            ip("netns", "del", name, check=False)
    for files in Path("/etc/netns").glob(f"{bridge}-*"):  # each pod's resolv.conf and hosts (testing/localnode/pods.py)
        shutil.rmtree(files, ignore_errors=True)
    ip("link", "del", bridge, check=False)
    with contextlib.suppress(OSError):
        (STATE_DIR / bridge).unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale() -> None:
    """Removes the networks of runs whose owner process no longer exists."""
    if not STATE_DIR.is_dir():
        return
    for record in STATE_DIR.glob(f"{PREFIX}*"):
        try:
            owner = int(record.read_text().strip() or "0")
        except (OSError, ValueError):
            owner = 0
        if not owner or not _alive(owner):
            _remove(int(record.name.removeprefix(PREFIX)))


def create_network(owner_pid: int | None = None) -> ClusterNetwork:
    """A fresh bridge with a free cluster number; `owner_pid` (default: this process) is recorded so a later run can
    clean up after it if it dies without `destroy()`."""
    if os.geteuid() != 0:
        raise NetworkError(
            "the local node's pod network needs root (network namespaces, veth pairs and a bridge through iproute2); "
            f"this process runs as uid {os.geteuid()}"
        )
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    _sweep_stale()
    candidates = list(range(FIRST_INDEX, LAST_INDEX + 1))
    random.shuffle(candidates)
    for index in candidates:
        bridge = f"{PREFIX}{index}"
        if ip("link", "add", bridge, "type", "bridge", check=False).returncode != 0:
            continue  # taken by another run
        (STATE_DIR / bridge).write_text(str(owner_pid or os.getpid()))
        network = ClusterNetwork(index)
        try:
            # A bridge with a kernel-chosen address takes the lowest address of its ports, so it changes as pods come
            # and go, and every pod's ARP entry for the node goes stale: the pods lose the node (the API server, the
            # proxy's replies) for the 20-50 s it takes their neighbour entries to be probed again. Seen as a
            # controller cut off for 50 s when the conformance suite started 30 pods. A set address stays.
            ip("link", "set", bridge, "address", f"02:00:0a:{index:02x}:01:01")
            ip("addr", "add", f"{network.node_ip}/24", "dev", bridge)
            ip("link", "set", bridge, "up")
        except NetworkError:
            _remove(index)
            raise
        return network
    raise NetworkError(f"no free cluster number in {FIRST_INDEX}-{LAST_INDEX} (bridges {PREFIX}<n>)")
