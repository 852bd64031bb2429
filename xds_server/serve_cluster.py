"""`serve --kubernetes`: the control plane of a cluster. Every replica lists and watches the API server, translates
and serves ADS and ext_proc with mutual TLS; the Lease's holder writes status and provisions each Gateway's Envoys.
Apart from `serve` so that file mode never loads the Kubernetes client (hundreds of modules, tens of MiB)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from translators.ir import ENVOY_GATEWAY_CONTROLLER, ControlPlaneTls, ObjectStatus, TranslateOptions
from translators.loader import ResourceSet
from xds_server.admin import ClusterView
from xds_server.kube.certificates import DEFAULT_LIFETIMES, Lifetimes
from xds_server.kube.infra import DEFAULT_MODULE_IMAGE, DEFAULT_TLS_DIR, ProvisionSettings
from xds_server.kube.leader import AlwaysLeader, LeaderElector
from xds_server.kube.provisioner import Provisioner
from xds_server.kube.status_writer import StatusWriter
from xds_server.kube.tls_secrets import CertificateError, ControlPlaneCertificates, GatewayCertificates
from xds_server.listen import Address
from xds_server.serve import SHUTDOWN_GRACE_SECONDS, ControlPlaneService, stop_on_signals
from xds_server.sources.kubernetes import kinds
from xds_server.sources.kubernetes.config import api_client, default_namespace
from xds_server.sources.kubernetes.source import KubernetesSource
from xds_server.tls import ServerCertificate

log = logging.getLogger(__name__)

CERTIFICATE_RETRY_SECONDS = 2.0  # between attempts to load the servers' certificate


@dataclass(frozen=True)
class ClusterOptions:
    """`serve --kubernetes`: where the API server is, what to watch, which GatewayClasses are ours, who writes."""

    kubeconfig: str | None = None
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    controller_name: str = ENVOY_GATEWAY_CONTROLLER
    leader_election: bool = True
    lease_namespace: str | None = None  # default: the controller namespace
    lease_name: str = "xds-server"
    # Where Envoys are provisioned: default the pod's namespace, else the kubeconfig context's, else "default".
    controller_namespace: str | None = None
    control_plane_service: str = "xds-server"  # the Service (the Helm chart's) Envoys reach ADS and ext_proc by
    provision: bool = True  # False: the user runs the Envoys (`xds-server bootstrap`)
    extproc_via_service: bool = False  # no --extproc-address: provisioned Envoys reach ext_proc by the Service
    envoy_tls_dir: str = DEFAULT_TLS_DIR  # where provisioned Envoys mount their certificate Secret
    module_image: str = DEFAULT_MODULE_IMAGE  # the image provisioned Envoys copy the AI filter module from
    lifetimes: Lifetimes = DEFAULT_LIFETIMES  # of the CA, the servers' and the Gateways' certificates


async def load_certificates(certificates: ControlPlaneCertificates, stop: asyncio.Event) -> ServerCertificate | None:
    """The servers' certificate (the CA and it made if missing), retried until the API server answers; None if
    stopped first."""
    while not stop.is_set():
        try:
            return await certificates.load()
        except (ApiException, aiohttp.ClientError, TimeoutError, CertificateError) as error:
            log.warning("cannot load the control plane's certificates yet (%s); retrying", error)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), CERTIFICATE_RETRY_SECONDS)
    return None


async def serve_kubernetes(
    cluster: ClusterOptions,
    options: TranslateOptions,
    xds_address: Address,
    admin_address: tuple[str, int],
    picker_debug: bool = False,
    shutdown_grace_seconds: float = SHUTDOWN_GRACE_SECONDS,
    body_budget_bytes: int | None = None,
) -> int:
    """Every replica lists and watches, translates and serves ADS and ext_proc (mutual TLS: the servers' certificate
    and the CA in Secrets of the controller namespace); the Lease's holder writes status and provisions each
    Gateway's Envoys with their certificates (unless `cluster.provision` is off)."""
    options = replace(options, controller_names=frozenset({cluster.controller_name}))
    controller_namespace = cluster.controller_namespace or default_namespace(cluster.kubeconfig)
    service_host = f"{cluster.control_plane_service}.{controller_namespace}.svc.cluster.local"
    extproc_listen = None
    if cluster.provision and cluster.extproc_via_service:
        # Provisioned Envoys reach ext_proc by the Service's name, as ADS; so it listens on every address.
        extproc_listen = Address("0.0.0.0", options.extproc_port)
        options = replace(options, extproc_host=service_host)
    api = await api_client(cluster.kubeconfig)
    certificates = ControlPlaneCertificates(api, controller_namespace, cluster.control_plane_service, cluster.lifetimes)
    tls = ControlPlaneTls(cluster.envoy_tls_dir, certificates.server_name)
    options = replace(options, control_plane_tls=tls)
    source = KubernetesSource(api, cluster.namespaces)
    service = ControlPlaneService(
        options, xds_address, admin_address, picker_debug, shutdown_grace_seconds, body_budget_bytes
    )
    service.extproc_listen = extproc_listen
    leadership: LeaderElector | AlwaysLeader
    if cluster.leader_election:
        lease_namespace = cluster.lease_namespace or controller_namespace
        leadership = LeaderElector(api, lease_namespace, cluster.lease_name)
    else:
        leadership = AlwaysLeader()
    service.cluster = ClusterView(source, leadership)
    control_plane = service.control_plane

    def current() -> tuple[ResourceSet, list[ObjectStatus]] | None:
        built = control_plane.current
        return None if built is None else (built.resources, control_plane.statuses())

    provisioner = None
    if cluster.provision:
        settings = ProvisionSettings(
            controller_namespace,
            (service_host, xds_address.port),
            options.privileged_port_offset,
            tls=tls,
            module_image=cluster.module_image,
        )
        watched = not cluster.namespaces or controller_namespace in cluster.namespaces
        provisioner = Provisioner(
            api,
            source,
            settings,
            cluster.controller_name,
            lambda: control_plane.current.resources if control_plane.current is not None else None,
            leadership,
            watched,
            cluster.namespaces,
            on_pass=lambda: writer.poke(),
            certificates=GatewayCertificates(lambda: certificates.authority, cluster.lifetimes.client),
        )
        control_plane.build_listeners.append(lambda _built: provisioner.poke())
        leadership.on_started_leading(provisioner.lead)
        certificates.listeners.append(provisioner.poke)  # a new trust bundle goes to every Gateway's Secret
    infrastructure = provisioner.gateway_infra if provisioner is not None else None
    writer = StatusWriter(api, source, kinds.BY_NAME, cluster.controller_name, current, leadership, infrastructure)
    control_plane.build_listeners.append(lambda _built: writer.poke())
    control_plane.clients.add_ack_listener(lambda _stream, _type_url, _version: writer.poke())
    control_plane.clients.add_nack_listener(lambda _nack: writer.poke())
    leadership.on_started_leading(writer.resync)
    stop = stop_on_signals()
    try:
        # The admin first, so /healthz answers while a large cluster is listed; ADS and ext_proc once the
        # certificates are loaded, /readyz and ADS's answers once the first listing is translated (an Envoy is never
        # served a half-listed cluster).
        await service.start_admin()
        listing = asyncio.create_task(source.start())
        loading = asyncio.create_task(load_certificates(certificates, stop))
        started: asyncio.Future[Any] = asyncio.gather(listing, loading)
        stopping: asyncio.Future[Any] = asyncio.create_task(stop.wait())
        await asyncio.wait({started, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not started.done() or loading.result() is None:  # stopped first (or the API server unreachable)
            started.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await started
            await source.close()
            return 0
        service.server_certificate = loading.result()
        await service.start_grpc()
        await service.publish(source.resources())
        tasks = [
            asyncio.create_task(source.watch(service.publish, stop)),
            asyncio.create_task(writer.run(stop)),
            asyncio.create_task(leadership.run(stop)),
            asyncio.create_task(certificates.run(stop)),
        ]
        if provisioner is not None:
            tasks.append(asyncio.create_task(provisioner.run(stop)))
        await stop.wait()
        log.info("shutting down")
        await asyncio.gather(*tasks)
    finally:
        await service.stop()
        await api.close()
    return 0
