"""Ext_proc filter configurations: the shared shape, and the upstream-settings filter AI clusters run per attempt."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2, grpc_service_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2, processing_mode_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import duration_pb2

from translators.xds.names import (
    BACKEND_ATTRIBUTE,
    EXTPROC_CLUSTER,
    RULE_ATTRIBUTE,
    UPSTREAM_SETTINGS_FILTER,
    UPSTREAM_SETTINGS_METADATA,
    UPSTREAM_SETTINGS_MODE,
    UPSTREAM_TRANSLATION_MODE,
    pack,
)

# The services answer each message in well under a millisecond; when they are gone or stuck, clients should get a
# 503 quickly instead of waiting (a stuck service would stall every request it is asked about).
QUICK_MESSAGE_TIMEOUT = duration_pb2.Duration(seconds=2)


def extproc_config(
    mode: processing_mode_pb2.ProcessingMode,
    receive: list[str],
    forward: list[str],
    allow_mode_override: bool,
    message_timeout: duration_pb2.Duration,
) -> ext_proc_pb2.ExternalProcessor:
    """An ext_proc filter calling the control plane's ext_proc server; Envoy fails the request if it cannot."""
    config = ext_proc_pb2.ExternalProcessor(
        grpc_service=grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=EXTPROC_CLUSTER)
        ),
        processing_mode=mode,
        message_timeout=message_timeout,
        failure_mode_allow=False,
        allow_mode_override=allow_mode_override,
    )
    if receive:
        config.metadata_options.receiving_namespaces.untyped.extend(receive)
    if forward:
        config.metadata_options.forwarding_namespaces.untyped.extend(forward)
    return config


def upstream_settings_filter(translates: bool = False) -> hcm_pb2.HttpFilter:
    """A cluster's upstream filter applying the backend's settings to each attempt (the codec follows it).

    Envoy runs it after it has chosen the host, so the request attributes name the rule (route metadata) and the
    backend (endpoint metadata) of this very attempt: a retry on a lower-priority backend gets that backend's
    settings. The body is asked for in BUFFERED mode, so Envoy keeps Content-Length and holds the headers until the
    service has answered the body (and set Content-Length to the new body's); the service turns the body off with a
    mode override when the settings only touch headers.

    `translates`: some backend of the cluster speaks another API than OpenAI's, so the filter also sees the answer's
    headers, and its body (buffered, or streamed for an event stream, by a mode override at the headers); attempts to
    the cluster's other backends turn the answer off in their first reply.
    """
    mode = UPSTREAM_TRANSLATION_MODE if translates else UPSTREAM_SETTINGS_MODE
    config = extproc_config(mode, [], [], allow_mode_override=True, message_timeout=QUICK_MESSAGE_TIMEOUT)
    config.grpc_service.initial_metadata.append(base_pb2.HeaderValue(key=UPSTREAM_SETTINGS_METADATA, value="1"))
    config.request_attributes.extend([RULE_ATTRIBUTE, BACKEND_ATTRIBUTE])
    return hcm_pb2.HttpFilter(name=UPSTREAM_SETTINGS_FILTER, typed_config=pack(config))
