"""The local node's service proxy: a userspace kube-proxy for the pod network of `network.py`.

`ClusterServices` is the view of Services and EndpointSlices of every namespace that both the proxy and the cluster
DNS (`dns.py`) read: it reads them from the node's one `ObjectCache` (cache.py), which the node's `Watches` (the
project's reflectors) keep current, and indexes the EndpointSlices by Service. `ServiceProxy` puts every Service's
cluster IP on the bridge and listens on clusterIP:port for each TCP port, on node_ip:nodePort for NodePort and
LoadBalancer Services, and on a 127.k.200.n address of its own for each LoadBalancer Service (written to the
Service's status). Each accepted connection goes to the next ready endpoint, round robin, and is spliced to it byte
for byte; endpoints are looked up per connection, so changes apply without touching the listeners.

Run from an asyncio program (the node process, `__main__.py`):

    cache = ObjectCache()
    services = ClusterServices(cache)          # subscribes to the cache: create it before the watches start
    watches = Watches(api, cache, (..., SERVICE, ENDPOINT_SLICE))   # api: a kubernetes_asyncio ApiClient
    watches.start()
    proxy = ServiceProxy(api, network, services)
    await watches.synced()                     # both kinds listed
    await proxy.start()                        # returns once the listeners of what is listed are open
    ...
    await proxy.stop()                         # closes listeners and connections, removes the cluster IPs
    await watches.stop()

LoadBalancer addresses stay written in the Services' status after `stop()`: a proxy started later keeps them.
UDP (and SCTP) ports are not forwarded: that is logged once per Service port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from testing.localnode.cache import ENDPOINT_SLICE, SERVICE, ObjectCache
from testing.localnode.network import ClusterNetwork, NetworkError
from xds_server.kube.api import call
from xds_server.sources.kubernetes.kinds import Kind
from xds_server.sources.kubernetes.objects import metadata

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"

CHUNK = 64 * 1024  # one read; writes wait (drain) while the other side's buffer is above its high-water mark
RETRY_S = 5.0  # a listener that could not bind, an address or status that could not be written: tried again after
MERGE_PATCH = "application/merge-patch+json"


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _key(raw: dict[str, Any]) -> tuple[str, str]:
    meta = metadata(raw)
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


# --- the shared view of Services and EndpointSlices ------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One endpoint of an EndpointSlice (its first address, which the API says stands for all of them), with the
    slice's ports as (name, protocol, port)."""

    address: str
    ready: bool  # `conditions.ready`, unset counting as ready
    hostname: str  # "" when unset
    ports: tuple[tuple[str, str, int], ...]

    def port(self, name: str, protocol: str) -> int | None:
        return next((number for n, p, number in self.ports if n == name and p == protocol), None)


class ClusterServices:
    """Services and EndpointSlices of every namespace, read from the node's shared `ObjectCache` (which `Watches`
    keep as the API server holds them), with the EndpointSlices indexed by the Service they belong to (their
    `kubernetes.io/service-name` label). Subscribers are called (synchronously, on the loop) after every change of
    a Service or EndpointSlice, including those of the watches' first LIST."""

    def __init__(self, cache: ObjectCache) -> None:
        self._cache = cache
        self._slices: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}  # (namespace, service) -> name -> slice
        self._slice_services: dict[tuple[str, str], str] = {}  # (namespace, slice name) -> its service label
        self._subscribers: list[Callable[[], None]] = []
        for raw in cache.items(ENDPOINT_SLICE):  # what the cache already holds
            self._index(_key(raw), raw)
        cache.subscribe(self._changed)

    def _changed(self, kind: Kind, key: tuple[str, str], raw: dict[str, Any] | None) -> None:
        if (kind.group, kind.kind) == (ENDPOINT_SLICE.group, ENDPOINT_SLICE.kind):
            self._index(key, raw)
        elif (kind.group, kind.kind) != (SERVICE.group, SERVICE.kind):
            return
        self._notify()

    def _index(self, key: tuple[str, str], raw: dict[str, Any] | None) -> None:
        """Puts an EndpointSlice (None: deleted) under the Service it now names, out from under the one before."""
        namespace, name = key
        old = self._slice_services.pop(key, None)
        if old is not None:
            slices = self._slices.get((namespace, old), {})
            slices.pop(name, None)
            if not slices:
                self._slices.pop((namespace, old), None)
        if raw is None:
            return
        service = str(_mapping(metadata(raw).get("labels")).get(SERVICE_NAME_LABEL) or "")
        if service:
            self._slices.setdefault((namespace, service), {})[name] = raw
            self._slice_services[key] = service

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(callback)

    def _notify(self) -> None:
        for callback in list(self._subscribers):
            try:
                callback()
            except Exception:
                log.exception("a subscriber of the cluster's Services failed")

    def services(self) -> list[dict[str, Any]]:
        """Every Service, in (namespace, name) order."""
        return sorted(self._cache.items(SERVICE), key=_key)

    def service(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._cache.get(SERVICE, namespace, name)

    def endpoints(self, namespace: str, service: str) -> list[Endpoint]:
        """The IPv4 endpoints of a Service's EndpointSlices, ready or not, in slice order."""
        found = []
        slices = self._slices.get((namespace, service), {})
        for name in sorted(slices):
            raw = slices[name]
            if raw.get("addressType") != "IPv4":
                continue
            ports = tuple(
                (str(port.get("name") or ""), str(port.get("protocol") or "TCP"), port["port"])
                for port in _list(raw.get("ports"))
                if isinstance(port.get("port"), int)
            )
            for endpoint in _list(raw.get("endpoints")):
                addresses = endpoint.get("addresses")
                if not isinstance(addresses, list) or not addresses:
                    continue
                ready = _mapping(endpoint.get("conditions")).get("ready") is not False
                hostname = str(endpoint.get("hostname") or "")
                found.append(Endpoint(str(addresses[0]), ready, hostname, ports))
        return found


# --- the proxy -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortTarget:
    """Where a listener's connections go: the ready endpoints of a Service's port (named as in the Service)."""

    namespace: str
    service: str
    port_name: str


@dataclass(eq=False)
class _Listener:
    target: PortTarget
    server: asyncio.Server | None = None
    connections: set[asyncio.Task[Any]] = field(default_factory=set)
    closed: bool = False


def _cluster_ip(spec: dict[str, Any]) -> str | None:
    """The Service's IPv4 cluster IP; None when headless, ExternalName or not IPv4."""
    value = str(spec.get("clusterIP") or "")
    try:
        return value if ipaddress.ip_address(value).version == 4 else None
    except ValueError:
        return None


class ServiceProxy:
    """Listeners for every Service's TCP ports (cluster IP, node port, load-balancer address), forwarding each
    connection to one ready endpoint, round robin."""

    def __init__(
        self, api: ApiClient, network: ClusterNetwork, services: ClusterServices, connect_timeout_s: float = 5.0
    ) -> None:
        self._api = api
        self._network = network
        self._services = services
        self._connect_timeout_s = connect_timeout_s
        self._listeners: dict[tuple[str, int], _Listener] = {}
        self._addresses: set[str] = set()  # cluster IPs put on the bridge
        self._load_balancers: dict[tuple[str, str], int] = {}  # Service -> n of network.load_balancer_ip(n)
        self._turns: dict[PortTarget, int] = {}  # round robin: connections handed to each Service port
        self._said_no_endpoint: dict[PortTarget, float] = {}  # when the last "no endpoint" warning was logged
        self._warned: set[object] = set()  # what was logged once
        self._dirty = asyncio.Event()
        self._reconciled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def listening(self) -> set[tuple[str, int]]:
        """The (address, port) pairs with an open listener."""
        return set(self._listeners)

    def load_balancer_ip(self, namespace: str, name: str) -> str | None:
        """The address given to a LoadBalancer Service, None if none."""
        n = self._load_balancers.get((namespace, name))
        return self._network.load_balancer_ip(n) if n is not None else None

    async def start(self) -> None:
        """Starts following the Services; returns after the first pass (listeners of everything listed so far)."""
        if self._task is not None:
            return
        self._services.subscribe(self._dirty.set)
        self._reconciled.clear()
        self._task = asyncio.create_task(self._run(), name="local node service proxy")
        await self._reconciled.wait()

    async def stop(self) -> None:
        """Closes every listener and connection and takes the cluster IPs off the bridge."""
        self._services.unsubscribe(self._dirty.set)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for key in list(self._listeners):
            await self._close(key)
        for address in sorted(self._addresses):
            await asyncio.to_thread(self._network.remove_address, address)
        self._addresses.clear()

    async def _run(self) -> None:
        while True:
            self._dirty.clear()
            try:
                complete = await self._reconcile()
            except Exception:
                log.exception("service proxy: reconciling failed")
                complete = False
            self._reconciled.set()
            if complete:
                await self._dirty.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._dirty.wait(), RETRY_S)

    def _warn_once(self, key: object, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    async def _reconcile(self) -> bool:
        """Makes listeners, addresses and load-balancer statuses follow the Services; False if something failed
        and is to be tried again."""
        services = self._services.services()
        self._assign_load_balancers(services)
        wanted, addresses = self._wanted(services)
        complete = True
        for key in [key for key in self._listeners if key not in wanted]:
            await self._close(key)
        for address in sorted(self._addresses - addresses):
            await asyncio.to_thread(self._network.remove_address, address)
            self._addresses.discard(address)
        for address in sorted(addresses - self._addresses):
            try:
                await asyncio.to_thread(self._network.add_address, address)
            except NetworkError as error:
                log.warning("service proxy: %s", error)
                complete = False
                continue
            self._addresses.add(address)
        live = set(wanted.values())
        self._turns = {target: turn for target, turn in self._turns.items() if target in live}
        for key, target in wanted.items():
            if key in self._listeners:
                self._listeners[key].target = target
            elif key[0] in addresses and key[0] not in self._addresses:
                complete = False  # its address could not be added
            else:
                complete = await self._open(key, target) and complete
        return await self._write_statuses(services) and complete

    def _wanted(self, services: list[dict[str, Any]]) -> tuple[dict[tuple[str, int], PortTarget], set[str]]:
        wanted: dict[tuple[str, int], PortTarget] = {}
        addresses: set[str] = set()
        for service in services:
            namespace, name = _key(service)
            spec = _mapping(service.get("spec"))
            cluster_ip = _cluster_ip(spec)
            if cluster_ip is None:
                continue
            addresses.add(cluster_ip)
            node_ports = spec.get("type") in ("NodePort", "LoadBalancer")
            load_balancer = self.load_balancer_ip(namespace, name)
            for port in _list(spec.get("ports")):
                number, protocol = port.get("port"), str(port.get("protocol") or "TCP")
                if not isinstance(number, int):
                    continue
                if protocol != "TCP":
                    self._warn_once(
                        (namespace, name, number, protocol),
                        "Service %s/%s port %d/%s: %s is not supported by the local node; not forwarded",
                        namespace,
                        name,
                        number,
                        protocol,
                        protocol,
                    )
                    continue
                target = PortTarget(namespace, name, str(port.get("name") or ""))
                wanted[(cluster_ip, number)] = target
                node_port = port.get("nodePort")
                if node_ports and isinstance(node_port, int):
                    wanted[(self._network.node_ip, node_port)] = target
                if load_balancer is not None:
                    wanted[(load_balancer, number)] = target
        return wanted, addresses

    # --- load balancers --------------------------------------------------------------------------------------------

    def _ingress_number(self, address: object) -> int | None:
        """n when `address` is network.load_balancer_ip(n)."""
        prefix, _, last = str(address).rpartition(".")
        if prefix != self._network.load_balancer_ip(1).rpartition(".")[0] or not last.isdigit():
            return None
        return int(last) if 1 <= int(last) <= 254 else None

    def _assign_load_balancers(self, services: list[dict[str, Any]]) -> None:
        wanting = {
            _key(service): service
            for service in services
            if _mapping(service.get("spec")).get("type") == "LoadBalancer"
        }
        for key in [key for key in self._load_balancers if key not in wanting]:
            del self._load_balancers[key]
        taken = set(self._load_balancers.values())
        # An address already in the status (given by an earlier run of the proxy) stays, ahead of new assignments.
        for key, service in wanting.items():
            if key in self._load_balancers:
                continue
            ingress = _list(_mapping(_mapping(service.get("status")).get("loadBalancer")).get("ingress"))
            n = self._ingress_number(ingress[0].get("ip")) if ingress else None
            if n is not None and n not in taken:
                self._load_balancers[key] = n
                taken.add(n)
        for key in wanting:
            if key in self._load_balancers:
                continue
            n = next((n for n in range(1, 255) if n not in taken), None)
            if n is None:
                self._warn_once(("no address", key), "Service %s/%s: no load-balancer address left", *key)
                continue
            self._load_balancers[key] = n
            taken.add(n)

    async def _write_statuses(self, services: list[dict[str, Any]]) -> bool:
        """Every LoadBalancer Service's ingress is its address; a Service no longer of that type loses ours."""
        complete = True
        for service in services:
            namespace, name = _key(service)
            spec = _mapping(service.get("spec"))
            ingress = _list(_mapping(_mapping(service.get("status")).get("loadBalancer")).get("ingress"))
            address = self.load_balancer_ip(namespace, name)
            wanted: list[dict[str, str]] | None
            if address is not None:
                wanted = [{"ip": address, "ipMode": "VIP"}]
                if ingress == wanted:
                    continue
            elif spec.get("type") != "LoadBalancer" and any(self._ingress_number(i.get("ip")) for i in ingress):
                wanted = None
            else:
                continue
            path = f"/api/v1/namespaces/{namespace}/services/{name}/status"
            body = {"status": {"loadBalancer": {"ingress": wanted}}}
            try:
                await call(self._api, "PATCH", path, body=body, content_type=MERGE_PATCH)
            except ApiException as error:
                if error.status != 404:  # deleted meanwhile: nothing to write
                    log.warning("Service %s/%s: writing its status failed: %s %s", namespace, name, error.status, error)
                    complete = False
            except Exception as error:  # the API server unreachable: the next pass tries again
                log.warning("Service %s/%s: writing its status failed: %r", namespace, name, error)
                complete = False
        return complete

    # --- listeners and connections -----------------------------------------------------------------------------------

    async def _open(self, key: tuple[str, int], target: PortTarget) -> bool:
        listener = _Listener(target)
        self._listeners[key] = listener

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # A connection closed with its listener ends quietly: asyncio logs a cancelled connection callback.
            with contextlib.suppress(asyncio.CancelledError):
                await self._forward(listener, reader, writer)

        try:
            listener.server = await asyncio.start_server(accept, key[0], key[1], reuse_address=True)
        except OSError as error:
            del self._listeners[key]
            message = "Service %s/%s: cannot listen on %s:%d: %s (trying again)"
            self._warn_once(("bind", key), message, target.namespace, target.service, key[0], key[1], error)
            return False
        self._warned.discard(("bind", key))
        log.debug("listening on %s:%d for %s", *key, target)
        return True

    async def _close(self, key: tuple[str, int]) -> None:
        listener = self._listeners.pop(key)
        listener.closed = True
        if listener.server is not None:
            listener.server.close()
        for task in listener.connections:
            task.cancel()
        await asyncio.gather(*listener.connections, return_exceptions=True)
        if listener.server is not None:
            await listener.server.wait_closed()
        log.debug("closed %s:%d", *key)

    def _backends(self, target: PortTarget) -> list[tuple[str, int]]:
        found = {
            (endpoint.address, port)
            for endpoint in self._services.endpoints(target.namespace, target.service)
            if endpoint.ready and (port := endpoint.port(target.port_name, "TCP")) is not None
        }
        return sorted(found)

    async def _connect(self, target: PortTarget) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to the next endpoint in turn; one that refuses (or does not answer) passes to the next."""
        backends = self._backends(target)
        turn = self._turns.get(target, 0)
        self._turns[target] = turn + 1
        for i in range(len(backends)):
            host, port = backends[(turn + i) % len(backends)]
            try:
                return await asyncio.wait_for(asyncio.open_connection(host, port), self._connect_timeout_s)
            except (OSError, TimeoutError) as error:
                log.debug("%s: endpoint %s:%d: %r; trying the next", target, host, port, error)
        now = asyncio.get_running_loop().time()
        if now - self._said_no_endpoint.get(target, -60.0) >= 1.0:  # at most once a second per Service port
            self._said_no_endpoint[target] = now
            what = "every ready endpoint refused" if backends else "no ready endpoint"
            log.warning(
                "%s/%s port %r: %s; connection closed", target.namespace, target.service, target.port_name, what
            )
        return None

    async def _forward(self, listener: _Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            listener.connections.add(task)
        try:
            if listener.closed:  # accepted just before the listener closed
                return
            upstream = await self._connect(listener.target)
            if upstream is not None:
                await _splice(reader, writer, *upstream)
        finally:
            writer.close()
            if task is not None:
                listener.connections.discard(task)


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, source_writer: asyncio.StreamWriter) -> None:
    """Copies one direction; the source's end (EOF) shuts down writing to the sink. An error on either side
    closes both, which ends the other direction too."""
    try:
        while data := await source.read(CHUNK):
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
    except OSError:
        sink.close()
        source_writer.close()


async def _splice(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    upstream_reader: asyncio.StreamReader,
    upstream_writer: asyncio.StreamWriter,
) -> None:
    try:
        await asyncio.gather(
            _pump(client_reader, upstream_writer, client_writer),
            _pump(upstream_reader, client_writer, upstream_writer),
        )
    finally:
        client_writer.close()
        upstream_writer.close()
