"""The local node's cluster DNS, on node_ip:53 over UDP and TCP, answering from the `ClusterServices` view the
service proxy reads too.

Under cluster.local (TTL 5 s, authoritative; an empty answer or NXDOMAIN carries the zone's SOA):
- `<svc>.<ns>.svc`: A, the cluster IP; for a headless Service the ready endpoints' addresses (all of them with
  `publishNotReadyAddresses`); for an ExternalName Service a CNAME to its external name
- `<hostname>.<svc>.<ns>.svc` and `<a-b-c-d>.<svc>.<ns>.svc`: A, the endpoint with that hostname or address
- `_<port>._<proto>.<svc>.<ns>.svc`: SRV for a named port (the Service's name and port; for a headless Service one
  per ready endpoint, named as above, with the endpoint's port)
- `<a-b-c-d>.<ns>.pod`: A, that address
- `<ns>.svc` of a namespace with Services, `svc`, `pod` and the zone itself exist without records; AAAA (and any
  other type) of an existing name is an empty NOERROR answer, so resolvers fall back to A; anything else is NXDOMAIN.
Other names are forwarded to the host's first nameserver (from /etc/resolv.conf), SERVFAIL when it does not answer.

    dns = ClusterDNS(network, services)     # services: a ClusterServices over the node's ObjectCache
    await watches.synced()                  # the Watches filling that cache (see services.py)
    await dns.start()
    ...
    await dns.stop()

`resolv_conf(network, namespace)` is the text of a pod's /etc/resolv.conf pointing at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, cast

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from testing.localnode.network import ClusterNetwork
from testing.localnode.services import ClusterServices, Endpoint
from xds_server.sources.kubernetes.objects import metadata

log = logging.getLogger(__name__)

DOMAIN = dns.name.from_text("cluster.local.")
TTL = 5
SOA = "ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5"
TCP_IDLE_S = 30.0  # a TCP client that sends nothing for this long is closed

Records = list[tuple[dns.rdatatype.RdataType, str]]


def resolv_conf(network: ClusterNetwork, namespace: str) -> str:
    """A pod's /etc/resolv.conf: the cluster DNS, the namespace's search path, ndots:5 (as a kubelet writes it)."""
    return (
        f"search {namespace}.svc.cluster.local svc.cluster.local cluster.local\n"
        f"nameserver {network.node_ip}\n"
        "options ndots:5\n"
    )


def host_nameserver(path: Path = Path("/etc/resolv.conf")) -> tuple[str, int] | None:
    """The first nameserver of the host's resolv.conf, None if it names none."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            return fields[1], 53
    return None


def _dashed(address: str) -> str:
    return address.replace(".", "-")


def _undashed(label: str) -> str | None:
    """The IPv4 address a label like 10-1-2-3 stands for."""
    try:
        return str(ipaddress.IPv4Address(label.replace("-", ".")))
    except ValueError:
        return None


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class ClusterDNS:
    def __init__(
        self,
        network: ClusterNetwork,
        services: ClusterServices,
        *,
        upstream: tuple[str, int] | None = None,
        port: int = 53,
        forward_timeout_s: float = 2.0,
    ) -> None:
        """`upstream` (host, port) answers names outside cluster.local; by default the host's first nameserver."""
        self._network = network
        self._services = services
        self._upstream = upstream if upstream is not None else host_nameserver()
        if self._upstream is not None and self._upstream[0] == network.node_ip:
            self._upstream = None  # ourselves: forwarding would loop
        self._port = port
        self._forward_timeout_s = forward_timeout_s
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Listens on node_ip:port, UDP and TCP."""
        loop = asyncio.get_running_loop()
        address = self._network.node_ip
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(address, self._port))
        try:
            self._tcp = await asyncio.start_server(self._serve_tcp, address, self._port, reuse_address=True)
        except OSError:
            self._udp.close()
            self._udp = None
            raise

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._tcp is not None:
            await self._tcp.wait_closed()
            self._tcp = None

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- transport -------------------------------------------------------------------------------------------------

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE_S):
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    wire = await reader.readexactly(size)
                reply = await self.respond(wire, tcp=True)
                if reply is None:
                    break
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, OSError, TimeoutError):
            pass
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def respond(self, wire: bytes, tcp: bool = False) -> bytes | None:
        """The answer to one query as sent on the wire; None (no answer) for what cannot be parsed."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException as error:
            log.debug("dropped an unparsable query: %r", error)
            return None
        try:
            response = await self._response(query, tcp)
        except Exception:
            log.exception("answering %s failed", query.question[0].name if query.question else "a query")
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
        limit = 65535 if tcp else max(512, query.payload if query.edns >= 0 else 512)
        return response.to_wire(max_size=limit, prefer_truncation=True)

    async def _response(self, query: dns.message.Message, tcp: bool) -> dns.message.Message:
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.NOTIMP if query.opcode() != dns.opcode.QUERY else dns.rcode.FORMERR)
            return response
        question = query.question[0]
        if question.name.is_subdomain(DOMAIN):
            return self.answer(query)
        return await self._forward(query, tcp)

    async def _forward(self, query: dns.message.Message, tcp: bool) -> dns.message.Message:
        if self._upstream is not None:
            host, port = self._upstream
            timeout = self._forward_timeout_s
            try:
                if tcp:
                    return await dns.asyncquery.tcp(query, host, timeout, port=port)
                return await dns.asyncquery.udp(query, host, timeout, port=port, ignore_unexpected=True)
            except (dns.exception.DNSException, OSError) as error:
                log.debug("forwarding %s to %s:%d failed: %r", query.question[0].name, host, port, error)
        response = dns.message.make_response(query, recursion_available=True)
        response.set_rcode(dns.rcode.SERVFAIL)
        return response

    # --- the cluster's names ---------------------------------------------------------------------------------------

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        """The authoritative answer to a query for a name under cluster.local."""
        response = dns.message.make_response(query, recursion_available=True)
        response.flags |= dns.flags.AA
        question = query.question[0]
        if question.rdclass != dns.rdataclass.IN:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        records = self.lookup(question.name)
        if records is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            wanted = question.rdtype
            if wanted != dns.rdatatype.CNAME and any(rdtype == dns.rdatatype.CNAME for rdtype, _ in records):
                wanted = dns.rdatatype.CNAME  # the resolver follows it
            texts = [text for rdtype, text in records if rdtype == wanted]
            if texts:
                response.answer.append(dns.rrset.from_text_list(question.name, TTL, "IN", wanted, texts))
        if not response.answer:
            response.authority.append(dns.rrset.from_text(DOMAIN, TTL, "IN", "SOA", SOA))
        return response

    def lookup(self, name: dns.name.Name) -> Records | None:
        """The records of a name under cluster.local, [] for a name that exists without any, None for a name that
        does not exist."""
        labels = [label.decode("ascii", "replace").lower() for label in name.relativize(DOMAIN).labels]
        match labels:
            case [] | ["svc"] | ["pod"]:
                return []
            case [namespace, "svc"]:
                exists = any(metadata(s).get("namespace") == namespace for s in self._services.services())
                return [] if exists else None
            case [service, namespace, "svc"]:
                return self._service_records(namespace, service)
            case [label, service, namespace, "svc"]:
                if self._services.service(namespace, service) is None:
                    return None
                if label.startswith("_"):  # `_<proto>` of an SRV name
                    return []
                return self._endpoint_records(namespace, service, label)
            case [port, protocol, service, namespace, "svc"] if port.startswith("_") and protocol.startswith("_"):
                return self._srv_records(namespace, service, port[1:], protocol[1:].upper())
            case [dashed, _namespace, "pod"]:
                address = _undashed(dashed)
                return [(dns.rdatatype.A, address)] if address is not None else None
        return None

    def _published(self, namespace: str, service: str) -> list[Endpoint]:
        """The endpoints DNS names: ready ones, or all with `publishNotReadyAddresses`."""
        spec = _mapping(_mapping(self._services.service(namespace, service)).get("spec"))
        everyone = spec.get("publishNotReadyAddresses") is True
        return [endpoint for endpoint in self._services.endpoints(namespace, service) if everyone or endpoint.ready]

    def _service_records(self, namespace: str, name: str) -> Records | None:
        service = self._services.service(namespace, name)
        if service is None:
            return None
        spec = _mapping(service.get("spec"))
        if spec.get("type") == "ExternalName":
            target = str(spec.get("externalName") or "")
            return [(dns.rdatatype.CNAME, target.rstrip(".") + ".")] if target else []
        cluster_ip = str(spec.get("clusterIP") or "")
        if cluster_ip and cluster_ip != "None":
            return [(dns.rdatatype.A, cluster_ip)]
        addresses = sorted({endpoint.address for endpoint in self._published(namespace, name)})
        return [(dns.rdatatype.A, address) for address in addresses]

    def _endpoint_records(self, namespace: str, service: str, label: str) -> Records | None:
        addresses = sorted(
            {
                endpoint.address
                for endpoint in self._published(namespace, service)
                if endpoint.hostname.lower() == label or _dashed(endpoint.address) == label
            }
        )
        return [(dns.rdatatype.A, address) for address in addresses] or None

    def _srv_records(self, namespace: str, name: str, port_name: str, protocol: str) -> Records | None:
        service = self._services.service(namespace, name)
        if service is None:
            return None
        spec = _mapping(service.get("spec"))
        ports = [
            port
            for port in spec.get("ports") or []
            if isinstance(port, dict)
            and str(port.get("name") or "") == port_name
            and str(port.get("protocol") or "TCP") == protocol
        ]
        if not ports or not port_name:
            return None
        base = f"{name}.{namespace}.svc.{DOMAIN}"
        cluster_ip = str(spec.get("clusterIP") or "")
        if cluster_ip and cluster_ip != "None":
            return [(dns.rdatatype.SRV, f"0 100 {ports[0].get('port')} {base}")]
        records: Records = []
        for endpoint in self._published(namespace, name):
            number = endpoint.port(port_name, protocol)
            if number is not None:
                host = endpoint.hostname or _dashed(endpoint.address)
                records.append((dns.rdatatype.SRV, f"0 100 {number} {host}.{base}"))
        return sorted(set(records))


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: ClusterDNS) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)  # what create_datagram_endpoint gives

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._server._spawn(self._reply(data, addr))

    async def _reply(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        reply = await self._server.respond(data)
        if reply is not None and self._transport is not None:
            with contextlib.suppress(OSError):
                self._transport.sendto(reply, addr)
