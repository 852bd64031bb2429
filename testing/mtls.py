"""Mutual TLS from the tests' side: a certificate Secret's files written the way the kubelet mounts a Secret, gRPC
channels presenting a certificate (or none), and the calls an attacker would make with them: one ext_proc stream
asking for a rule's upstream settings (the backend's API key), one ADS request for a Gateway's snapshot."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import grpc
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from google.protobuf import struct_pb2

from translators.xds.names import (
    BACKEND_ATTRIBUTE,
    CLUSTER_TYPE,
    EXTPROC_ATTRIBUTES_KEY,
    RULE_ATTRIBUTE,
    UPSTREAM_SETTINGS_METADATA,
)
from translators.xds.tls import CA_FILE, CERTIFICATE_FILE, KEY_FILE

DATA_LINK = "..data"


def write_like_kubelet(directory: Path, files: Mapping[str, bytes]) -> None:
    """The files of a Secret as the kubelet mounts it, and updates it: the content in a new timestamped directory,
    then one rename of the `..data` symlink to it (atomic: a reader sees all old or all new files), the visible
    names being symlinks through `..data`; the previous directory is removed afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    fresh = directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    fresh.mkdir()
    for name, content in files.items():
        (fresh / name).write_bytes(content)
    data = directory / DATA_LINK
    previous = os.readlink(data) if data.is_symlink() else None
    swap = directory / "..data_tmp"
    swap.unlink(missing_ok=True)
    swap.symlink_to(fresh.name)
    swap.rename(data)
    for name in files:
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"{DATA_LINK}/{name}")
    if previous is not None:
        shutil.rmtree(directory / previous)


def credentials(files: Mapping[str, bytes] | None, ca_pem: bytes) -> grpc.ChannelCredentials:
    """TLS trusting `ca_pem`, presenting the certificate of a Secret's `files` (tls.crt, tls.key), or none."""
    if files is None:
        return grpc.ssl_channel_credentials(ca_pem)
    return grpc.ssl_channel_credentials(ca_pem, files[KEY_FILE], files[CERTIFICATE_FILE])


def secure_channel(
    address: str, files: Mapping[str, bytes] | None, ca_pem: bytes, server_name: str
) -> grpc.aio.Channel:
    """A channel to one of the control plane's servers (at a loopback address, as through a port-forward), checking
    that its certificate names `server_name` (the control-plane Service's)."""
    options = [("grpc.ssl_target_name_override", server_name)]
    return grpc.aio.secure_channel(address, credentials(files, ca_pem), options=options)


def presented_certificate(
    address: str, files: Mapping[str, bytes], server_name: str, scratch: Path
) -> x509.Certificate:
    """The certificate a server presents to a new connection (a plain TLS handshake presenting `files`' certificate,
    trusting their CA): which one a gRPC server serves now."""
    context = ssl.create_default_context(cadata=files[CA_FILE].decode())
    context.set_alpn_protocols(["h2"])
    scratch.mkdir(parents=True, exist_ok=True)
    for name in (CERTIFICATE_FILE, KEY_FILE):
        (scratch / name).write_bytes(files[name])
    context.load_cert_chain(scratch / CERTIFICATE_FILE, scratch / KEY_FILE)
    host, port = address.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


async def ask_upstream_settings(
    channel: grpc.aio.Channel, rule: str, backend: str, timeout: float = 5.0
) -> list[ext_proc_pb2.ProcessingResponse]:
    """The forged call: one ext_proc stream marked as the upstream-settings filter's, naming a rule and a backend,
    as an Envoy does for each attempt. What comes back would carry the backend's credential."""
    attributes = struct_pb2.Struct()
    attributes.update({RULE_ATTRIBUTE: rule, BACKEND_ATTRIBUTE: backend})
    headers = ext_proc_pb2.HttpHeaders(
        headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=":path", raw_value=b"/v1/chat/completions")]),
        end_of_stream=True,
    )

    async def requests() -> AsyncIterator[ext_proc_pb2.ProcessingRequest]:
        yield ext_proc_pb2.ProcessingRequest(request_headers=headers, attributes={EXTPROC_ATTRIBUTES_KEY: attributes})

    stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)
    call = stub.Process(requests(), metadata=((UPSTREAM_SETTINGS_METADATA, "1"),), timeout=timeout)
    return [response async for response in call]


def header_values(responses: list[ext_proc_pb2.ProcessingResponse]) -> dict[str, bytes]:
    """Every header the replies would set on the request."""
    found: dict[str, bytes] = {}
    for response in responses:
        if response.HasField("request_headers"):
            for option in response.request_headers.response.header_mutation.set_headers:
                found[option.header.key] = option.header.raw_value or option.header.value.encode()
    return found


async def ask_snapshot(
    channel: grpc.aio.Channel, gateway: str, timeout: float = 5.0
) -> discovery_pb2.DiscoveryResponse:
    """One ADS (state of the world) request for a Gateway's clusters, as its Envoy's first request; the first
    response, or the gRPC error ending the stream."""

    async def requests() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        node = base_pb2.Node(id="forged", cluster=gateway)
        yield discovery_pb2.DiscoveryRequest(node=node, type_url=CLUSTER_TYPE)

    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    call = stub.StreamAggregatedResources(requests(), timeout=timeout)
    async for response in call:
        call.cancel()
        return response
    raise AssertionError("the ADS stream ended without a response")
