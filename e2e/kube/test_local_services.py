"""The local node's service proxy and cluster DNS (testing/localnode/services.py, dns.py) against a real API server,
on a real pod network (testing/localnode/network.py: a bridge, one network namespace per pod; needs root).

There is no controller-manager here: the tests write the Services and their EndpointSlices themselves. "Pods" are
network namespaces running a small server that answers with its own name (HTTP on 8080, and on 9000 the size and
SHA-256 of everything received until the client's EOF), so round robin, endpoint choice and half-close are visible.
Requests go from inside a client pod's namespace (`ip netns exec ... curl`) or from the host. The proxy and the DNS
run on each test's event loop; the official client's blocking calls run in threads. Every wait is a bounded poll;
nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import dns.message
import dns.rcode
import dns.rrset
import pytest
from kubernetes import client as k8s
from kubernetes_asyncio.client import ApiClient

from testing.kube_cluster import KubeCluster
from testing.localnode.cache import ENDPOINT_SLICE, SERVICE, ObjectCache, Watches
from testing.localnode.dns import ClusterDNS, resolv_conf
from testing.localnode.network import ClusterNetwork, PodNetwork, create_network, ip
from testing.localnode.services import ClusterServices, ServiceProxy
from xds_server.sources.kubernetes.config import api_client

WAIT_S = 60.0  # a deadline against hangs on a loaded machine, not a performance bound
HTTP_PORT, ECHO_PORT = 8080, 9000
FAKE_UPSTREAM_ANSWER = "192.0.2.99"

T = TypeVar("T")

# A pod: answers GET with its name on 8080; on 9000 reads to EOF, then answers "<name> <size> <sha256>" and closes.
# It exits when its parent (pytest) is gone, so a killed run leaves no server behind.
POD_SERVER = """
import hashlib, http.server, os, socketserver, sys, threading, time
name, parent = sys.argv[1], os.getppid()

class Http(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = name.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        digest, size = hashlib.sha256(), 0
        while data := self.request.recv(65536):
            digest.update(data)
            size += len(data)
        self.request.sendall(f"{name} {size} {digest.hexdigest()}".encode())

socketserver.ThreadingTCPServer.allow_reuse_address = True
http.server.ThreadingHTTPServer.allow_reuse_address = True
for server in (
    http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Http),
    socketserver.ThreadingTCPServer(("0.0.0.0", 9000), Echo),
):
    threading.Thread(target=server.serve_forever, daemon=True).start()
while os.getppid() == parent:
    time.sleep(0.5)
"""

# Queries from inside a pod: [name, type, tcp] -> [rcode, sorted answer texts].
DNS_QUERIES = """
import json, sys
import dns.message, dns.query, dns.rcode
server, queries = sys.argv[1], json.loads(sys.argv[2])
results = []
for name, rdtype, tcp in queries:
    query = dns.message.make_query(name, rdtype)
    answer = (dns.query.tcp if tcp else dns.query.udp)(query, server, timeout=10)
    results.append([dns.rcode.to_text(answer.rcode()), sorted(rd.to_text() for rrset in answer.answer for rd in rrset)])
print(json.dumps(results))
"""


# --- the network, the pods ------------------------------------------------------------------------------------------


def _port_open(host: str, port: int) -> bool:
    import socket

    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


@dataclass
class Pods:
    servers: dict[str, PodNetwork]  # web-0, web-1, web-2: the pod servers
    client: PodNetwork  # nothing listens there


@pytest.fixture(scope="module")
def network() -> Iterator[ClusterNetwork]:
    network = create_network()
    try:
        yield network
    finally:
        network.destroy()


@pytest.fixture(scope="module")
def pods(network: ClusterNetwork) -> Iterator[Pods]:
    servers = {name: network.add_pod(name) for name in ("web-0", "web-1", "web-2")}
    processes = [
        subprocess.Popen(
            ["ip", "netns", "exec", pod.netns, sys.executable, "-c", POD_SERVER, name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pod in servers.items()
    ]
    try:
        deadline = time.monotonic() + WAIT_S
        for pod in servers.values():
            while not (_port_open(pod.ip, HTTP_PORT) and _port_open(pod.ip, ECHO_PORT)):
                assert time.monotonic() < deadline, f"the server of pod {pod.ip} never listened"
                assert all(p.poll() is None for p in processes), "a pod server exited"
                time.sleep(0.1)
        yield Pods(servers, network.add_pod("client"))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)


# --- the node: cache, proxy, DNS on the test's loop ------------------------------------------------------------------


class _FakeUpstream(asyncio.DatagramProtocol):
    """The host's nameserver, for names outside cluster.local: any A query is answered 192.0.2.99, except names
    under `silent.test.`, which get no answer at all."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        if question.name.to_text().endswith("silent.test."):
            return
        response = dns.message.make_response(query)
        response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", FAKE_UPSTREAM_ANSWER))
        self.transport.sendto(response.to_wire(), addr)


@dataclass
class Node:
    api: ApiClient
    network: ClusterNetwork
    services: ClusterServices
    proxy: ServiceProxy
    dns: ClusterDNS


@pytest.fixture
async def node(kube_cluster: KubeCluster, network: ClusterNetwork) -> AsyncIterator[Node]:
    async with contextlib.AsyncExitStack() as stack:
        api = await api_client(str(kube_cluster.kubeconfig))
        stack.push_async_callback(api.close)
        loop = asyncio.get_running_loop()
        upstream, _ = await loop.create_datagram_endpoint(_FakeUpstream, local_addr=("127.0.0.1", 0))
        stack.callback(upstream.close)
        upstream_port = upstream.get_extra_info("sockname")[1]
        cache = ObjectCache()
        services = ClusterServices(cache)
        watches = Watches(api, cache, (SERVICE, ENDPOINT_SLICE))
        proxy = ServiceProxy(api, network, services)
        node = Node(api, network, services, proxy, ClusterDNS(network, services, upstream=("127.0.0.1", upstream_port)))
        stack.push_async_callback(watches.stop)
        watches.start()
        await asyncio.wait_for(watches.synced(), WAIT_S)
        stack.push_async_callback(lambda: node.proxy.stop())  # the proxy a test may have replaced
        await proxy.start()
        stack.push_async_callback(node.dns.stop)
        await node.dns.start()
        yield node


# --- helpers --------------------------------------------------------------------------------------------------------


async def run(*argv: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), WAIT_S)
    assert process.returncode is not None
    return process.returncode, stdout.decode()


async def curl(url: str, pod: PodNetwork | None = None, max_time: int = 5) -> tuple[int, str]:
    """curl's exit code (0, or 7 refused, 52 empty reply, 28 timeout, ...) and body; from inside `pod`, or the host."""
    prefix = ("ip", "netns", "exec", pod.netns) if pod is not None else ()
    return await run(*prefix, "curl", "-s", "--max-time", str(max_time), "--noproxy", "*", url)


async def poll(what: str, probe: Callable[[], Awaitable[T | None]]) -> T:
    deadline = time.monotonic() + WAIT_S
    while True:
        found = await probe()
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.1)


async def names_answering(url: str, pod: PodNetwork | None, requests: int) -> Counter[str]:
    """Who answered each of `requests` sequential requests (a failure counts as "<curl exit code>")."""
    answers: Counter[str] = Counter()
    for _ in range(requests):
        code, body = await curl(url, pod)
        answers[body if code == 0 else f"<curl {code}>"] += 1
    return answers


def service_body(name: str, ports: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"ports": ports, **spec}}


def http_port(name: str = "http", port: int = 80, target: int = HTTP_PORT) -> dict[str, Any]:
    return {"name": name, "port": port, "targetPort": target, "protocol": "TCP"}


def slice_body(service: str, endpoints: list[dict[str, Any]], ports: list[tuple[str, int]]) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{service}-slice", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": name, "port": port, "protocol": "TCP"} for name, port in ports],
    }


def endpoint(pod: PodNetwork, ready: bool | None = True, hostname: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"addresses": [pod.ip]}
    if ready is not None:
        found["conditions"] = {"ready": ready}
    if hostname:
        found["hostname"] = hostname
    return found


async def create(api: k8s.ApiClient, namespace: str, service: Any, slice_: Any | None) -> Any:
    """The EndpointSlice (if any), then the Service, both as dicts (the client takes them for its models); returns
    the Service as created (a V1Service)."""
    if slice_ is not None:
        await asyncio.to_thread(k8s.DiscoveryV1Api(api).create_namespaced_endpoint_slice, namespace, slice_)
    return await asyncio.to_thread(k8s.CoreV1Api(api).create_namespaced_service, namespace, service)


async def read_service(api: k8s.ApiClient, namespace: str, name: str) -> Any:
    return await asyncio.to_thread(k8s.CoreV1Api(api).read_namespaced_service, name, namespace)


async def ingress_ip(api: k8s.ApiClient, namespace: str, name: str) -> tuple[str, str] | None:
    """The (ip, ipMode) of a Service's only load-balancer ingress; None while there is none."""
    status = (await read_service(api, namespace, name)).status.load_balancer
    if status is None or not status.ingress:
        return None
    [ingress] = status.ingress
    return ingress.ip, ingress.ip_mode


async def connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | str:
    """A connection, or the name of the error that refused it."""
    try:
        return await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    except (OSError, TimeoutError) as error:
        return type(error).__name__


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> str:
    """Sends `payload`, half-closes, and returns all that comes back until the other side closes."""
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), WAIT_S)
    writer.close()
    return answer.decode()


# --- the proxy ------------------------------------------------------------------------------------------------------


async def test_cluster_ip_round_robin_over_ready_endpoints(
    node: Node, pods: Pods, api_client: k8s.ApiClient, namespace: str
) -> None:
    web = pods.servers
    ports = [http_port(), {"name": "echo", "port": 7000, "targetPort": ECHO_PORT, "protocol": "TCP"}]
    endpoints = [endpoint(web["web-0"]), endpoint(web["web-1"], ready=None), endpoint(web["web-2"], ready=False)]
    slice_ = slice_body("web", endpoints, [("http", HTTP_PORT), ("echo", ECHO_PORT)])
    created = await create(api_client, namespace, service_body("web", ports), slice_)
    cluster_ip = created.spec.cluster_ip
    url = f"http://{cluster_ip}:80/"

    async def both_answered() -> bool | None:
        seen = await names_answering(url, pods.client, 2)
        assert "web-2" not in seen  # not ready
        return True if set(seen) == {"web-0", "web-1"} else None

    await poll("web-0 and web-1 both answer on the cluster IP", both_answered)
    # Port 80 of the Service is 8080 of the pods; ready and unset readiness get one connection in turn each.
    assert await names_answering(url, pods.client, 6) == {"web-0": 3, "web-1": 3}

    # A connection opened before the endpoints change lives on (the listener is not restarted), and the proxy
    # passes the client's EOF on: the pod answers only after it, with all 1 MiB received.
    held = await connect(cluster_ip, 7000)
    assert not isinstance(held, str), held

    endpoints = [endpoint(web["web-0"], ready=False), endpoint(web["web-1"]), endpoint(web["web-2"])]
    patch = {"endpoints": endpoints}
    await asyncio.to_thread(
        k8s.DiscoveryV1Api(api_client).patch_namespaced_endpoint_slice, "web-slice", namespace, patch
    )

    async def web_2_answers() -> bool | None:
        return True if "web-2" in await names_answering(url, pods.client, 2) else None

    await poll("web-2 answers once ready", web_2_answers)
    assert await names_answering(url, pods.client, 6) == {"web-1": 3, "web-2": 3}

    payload = os.urandom(1024 * 1024)
    name, size, digest = (await echo(*held, payload)).split()
    assert name in ("web-0", "web-1") and (int(size), digest) == (len(payload), hashlib.sha256(payload).hexdigest())


async def test_a_refusing_endpoint_is_skipped_and_no_endpoint_closes(
    node: Node, pods: Pods, api_client: k8s.ApiClient, namespace: str
) -> None:
    # The client pod is "ready" but nothing listens there: its connections are refused, the next endpoint serves.
    slice_ = slice_body("web", [endpoint(pods.client), endpoint(pods.servers["web-0"])], [("http", HTTP_PORT)])
    created = await create(api_client, namespace, service_body("web", [http_port()]), slice_)
    url = f"http://{created.spec.cluster_ip}/"

    async def answered() -> bool | None:
        return True if (await curl(url, pods.client))[0] == 0 else None

    await poll("the Service answers", answered)
    assert await names_answering(url, pods.client, 4) == {"web-0": 4}

    # Without any endpoint the listener is there but closes each connection at once: curl gets an empty reply (52),
    # or a reset (56) when its request arrived before the close; not a refused connection (7).
    lonely = await create(api_client, namespace, service_body("lonely", [http_port()]), None)

    async def listening() -> bool | None:
        return True if (lonely.spec.cluster_ip, 80) in node.proxy.listening else None

    await poll("a listener for the Service without endpoints", listening)
    code, body = await curl(f"http://{lonely.spec.cluster_ip}/", pods.client)
    assert code in (52, 56) and body == "", code


async def test_node_port(node: Node, pods: Pods, api_client: k8s.ApiClient, namespace: str) -> None:
    slice_ = slice_body("web", [endpoint(pods.servers["web-1"])], [("http", HTTP_PORT)])
    created = await create(api_client, namespace, service_body("web", [http_port()], type="NodePort"), slice_)
    node_port = created.spec.ports[0].node_port
    assert isinstance(node_port, int)
    url = f"http://{node.network.node_ip}:{node_port}/"

    async def answered() -> str | None:
        code, body = await curl(url, pods.client)
        return body if code == 0 else None

    assert await poll("the node port answers from a pod", answered) == "web-1"
    assert await curl(url) == (0, "web-1")  # and from the host


async def test_load_balancer_address_in_status_reachable_and_stable_across_restarts(
    node: Node, pods: Pods, api_client: k8s.ApiClient, namespace: str
) -> None:
    network = node.network
    ours = {network.load_balancer_ip(n) for n in range(1, 255)}
    for name, pod in (("lb-a", "web-0"), ("lb-b", "web-1")):
        slice_ = slice_body(name, [endpoint(pods.servers[pod])], [("http", HTTP_PORT)])
        await create(api_client, namespace, service_body(name, [http_port()], type="LoadBalancer"), slice_)

    async def both_have_ingress() -> dict[str, str] | None:
        found = {name: await ingress_ip(api_client, namespace, name) for name in ("lb-a", "lb-b")}
        return {name: ingress[0] for name, ingress in found.items() if ingress} if all(found.values()) else None

    addresses = await poll("both LoadBalancer Services get an ingress address", both_have_ingress)
    assert await ingress_ip(api_client, namespace, "lb-b") == (addresses["lb-b"], "VIP")
    assert set(addresses.values()) <= ours and addresses["lb-a"] != addresses["lb-b"]
    assert await curl(f"http://{addresses['lb-a']}/") == (0, "web-0")
    assert await curl(f"http://{addresses['lb-b']}/") == (0, "web-1")

    # A proxy started afresh after lb-a went keeps lb-b's address, though a lower number is free again, and gives
    # a new LoadBalancer Service another one.
    await node.proxy.stop()
    await asyncio.to_thread(k8s.CoreV1Api(api_client).delete_namespaced_service, "lb-a", namespace)

    async def lb_a_gone() -> bool | None:
        return True if node.services.service(namespace, "lb-a") is None else None

    await poll("the store sees lb-a deleted", lb_a_gone)
    node.proxy = ServiceProxy(node.api, network, node.services)
    await node.proxy.start()
    slice_ = slice_body("lb-c", [endpoint(pods.servers["web-2"])], [("http", HTTP_PORT)])
    await create(api_client, namespace, service_body("lb-c", [http_port()], type="LoadBalancer"), slice_)

    async def lb_c_ingress() -> tuple[str, str] | None:
        return await ingress_ip(api_client, namespace, "lb-c")

    lb_c, _ = await poll("lb-c gets an ingress address", lb_c_ingress)
    assert await ingress_ip(api_client, namespace, "lb-b") == (addresses["lb-b"], "VIP")
    assert lb_c in ours and lb_c != addresses["lb-b"]
    assert node.proxy.load_balancer_ip(namespace, "lb-b") == addresses["lb-b"]
    assert await curl(f"http://{addresses['lb-b']}/") == (0, "web-1")
    assert await curl(f"http://{lb_c}/") == (0, "web-2")

    # Deleted, its address stops listening (refused: loopback addresses are always local).
    await asyncio.to_thread(k8s.CoreV1Api(api_client).delete_namespaced_service, "lb-b", namespace)

    async def refused() -> bool | None:
        return True if await connect(addresses["lb-b"], 80) == "ConnectionRefusedError" else None

    await poll("lb-b's address refuses connections", refused)


async def test_removed_port_and_deleted_service_close_their_listeners(
    node: Node, pods: Pods, api_client: k8s.ApiClient, namespace: str
) -> None:
    slice_ = slice_body("web", [endpoint(pods.servers["web-2"])], [("http", HTTP_PORT), ("other", HTTP_PORT)])
    ports = [http_port(), http_port("other", 81)]
    created = await create(api_client, namespace, service_body("web", ports), slice_)
    cluster_ip = created.spec.cluster_ip

    async def both_answer() -> bool | None:
        answers = [await curl(f"http://{cluster_ip}:{port}/") for port in (80, 81)]
        return True if answers == [(0, "web-2")] * 2 else None

    await poll("both ports answer", both_answer)

    remove_port = [{"op": "remove", "path": "/spec/ports/1"}]
    await asyncio.to_thread(k8s.CoreV1Api(api_client).patch_namespaced_service, "web", namespace, remove_port)

    async def port_81_refused() -> bool | None:
        return True if await connect(cluster_ip, 81) == "ConnectionRefusedError" else None

    await poll("the removed port refuses connections", port_81_refused)
    assert await curl(f"http://{cluster_ip}:80/") == (0, "web-2")

    await asyncio.to_thread(k8s.CoreV1Api(api_client).delete_namespaced_service, "web", namespace)

    async def address_gone() -> bool | None:
        on_bridge = ip("-4", "-o", "addr", "show", "dev", node.network.bridge).stdout
        gone = f" {cluster_ip}/32 " not in on_bridge and (cluster_ip, 80) not in node.proxy.listening
        return True if gone else None

    await poll("the cluster IP leaves the bridge", address_gone)
    code, _ = await curl(f"http://{cluster_ip}/", pods.client, max_time=2)  # nothing answers there any more
    assert code != 0


# --- DNS ------------------------------------------------------------------------------------------------------------


async def test_cluster_dns_from_a_pod(node: Node, pods: Pods, api_client: k8s.ApiClient, namespace: str) -> None:
    web = pods.servers
    created = await create(api_client, namespace, service_body("web", [http_port()]), None)
    endpoints = [endpoint(web["web-0"], hostname="db-0"), endpoint(web["web-1"]), endpoint(web["web-2"], ready=False)]
    db_slice = slice_body("db", endpoints, [("pg", 5432)])
    db_ports = [{"name": "pg", "port": 5432, "protocol": "TCP"}]
    await create(api_client, namespace, service_body("db", db_ports, clusterIP="None"), db_slice)
    cluster_ip = created.spec.cluster_ip
    suffix = f"{namespace}.svc.cluster.local."

    async def query(*queries: tuple[str, str, bool]) -> list[list[Any]]:
        code, out = await run(
            "ip", "netns", "exec", pods.client.netns, sys.executable, "-c", DNS_QUERIES, node.network.node_ip,
            json.dumps(queries),
        )  # fmt: skip
        assert code == 0, out
        return list(json.loads(out))

    async def both_known() -> bool | None:
        [web_answer, db_answer] = await query((f"web.{suffix}", "A", False), (f"db.{suffix}", "A", False))
        return True if web_answer[1] and db_answer[1] else None

    await poll("the DNS knows both Services", both_known)
    dashed = web["web-1"].ip.replace(".", "-")
    answers = await query(
        (f"web.{suffix}", "A", False),
        (f"web.{suffix}", "A", True),  # over TCP
        (f"db.{suffix}", "A", False),  # headless: the ready endpoints
        (f"db-0.db.{suffix}", "A", False),
        (f"{dashed}.db.{suffix}", "A", False),
        (f"_http._tcp.web.{suffix}", "SRV", False),
        (f"_pg._tcp.db.{suffix}", "SRV", False),
        (f"web.{suffix}", "AAAA", False),
        (f"nothere.{suffix}", "A", False),
        (f"db-0.web.{suffix}", "A", False),  # a hostname of another Service
        ("www.example.test.", "A", False),  # forwarded upstream
        ("www.silent.test.", "A", False),  # upstream does not answer
    )
    assert answers == [
        ["NOERROR", [cluster_ip]],
        ["NOERROR", [cluster_ip]],
        ["NOERROR", sorted([web["web-0"].ip, web["web-1"].ip])],
        ["NOERROR", [web["web-0"].ip]],
        ["NOERROR", [web["web-1"].ip]],
        ["NOERROR", [f"0 100 80 web.{suffix}"]],
        ["NOERROR", sorted([f"0 100 5432 db-0.db.{suffix}", f"0 100 5432 {dashed}.db.{suffix}"])],
        ["NOERROR", []],
        ["NXDOMAIN", []],
        ["NXDOMAIN", []],
        ["NOERROR", [FAKE_UPSTREAM_ANSWER]],
        ["SERVFAIL", []],
    ]

    # The pod's resolv.conf as a kubelet would write it (`ip netns exec` mounts /etc/netns/<netns>/resolv.conf over
    # /etc/resolv.conf): the C library's resolver finds a short name through the search path.
    etc = Path("/etc/netns") / pods.client.netns
    etc.mkdir(parents=True, exist_ok=True)
    try:
        (etc / "resolv.conf").write_text(resolv_conf(node.network, namespace))
        code, out = await run("ip", "netns", "exec", pods.client.netns, "getent", "ahostsv4", "web")
        assert code == 0 and {line.split()[0] for line in out.splitlines()} == {cluster_ip}, out
        code, out = await run("ip", "netns", "exec", pods.client.netns, "getent", "ahostsv4", "db")
        assert code == 0 and {line.split()[0] for line in out.splitlines()} == {web["web-0"].ip, web["web-1"].ip}, out
    finally:
        shutil.rmtree(etc, ignore_errors=True)


def test_resolv_conf(network: ClusterNetwork) -> None:
    assert resolv_conf(network, "team") == (
        "search team.svc.cluster.local svc.cluster.local cluster.local\n"
        f"nameserver {network.node_ip}\n"
        "options ndots:5\n"
    )


def test_the_node_keeps_its_link_address_as_pods_come_and_go(network: ClusterNetwork) -> None:
    """A bridge whose address the kernel chose takes the lowest address of its ports, so adding a pod could change
    it and leave every pod's ARP entry for the node stale (the pods lose the API server for tens of seconds)."""
    link = Path("/sys/class/net") / network.bridge
    before = (link / "address").read_text()
    for key in ("mac-0", "mac-1", "mac-2"):
        network.add_pod(key)
    try:
        assert (link / "address").read_text() == before
        assert (link / "addr_assign_type").read_text().strip() == "3"  # NET_ADDR_SET: the kernel leaves it alone
    finally:
        for key in ("mac-0", "mac-1", "mac-2"):
            network.remove_pod(key)
    assert (link / "address").read_text() == before
