"""Where the API server is and who we are to it: in a pod, its service account; elsewhere a kubeconfig
(`--kubeconfig`, else $KUBECONFIG, else ~/.kube/config), as kubectl finds it."""

from __future__ import annotations

import os
from pathlib import Path

from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config import list_kube_config_contexts, load_incluster_config, load_kube_config

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_NAMESPACE = "default"


def in_cluster(kubeconfig: str | None) -> bool:
    """Running in a pod (the kubelet sets KUBERNETES_SERVICE_HOST) and not told to use a kubeconfig."""
    return kubeconfig is None and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def kubeconfig_path(kubeconfig: str | None) -> str:
    """The kubeconfig to read; $KUBECONFIG may list several files, separated by ':'."""
    return kubeconfig or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")


async def api_client(kubeconfig: str | None) -> ApiClient:
    """A client of the cluster; close it with `await client.close()`."""
    configuration = Configuration()
    if in_cluster(kubeconfig):
        # Re-reads the projected token file as it rotates (kubernetes_asyncio's refresh hook).
        load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        # persist_config=False: never write refreshed credentials back into the user's kubeconfig.
        await load_kube_config(
            config_file=kubeconfig_path(kubeconfig), client_configuration=configuration, persist_config=False
        )
    return ApiClient(configuration)


def default_namespace(kubeconfig: str | None) -> str:
    """The namespace we run in: the pod's in a cluster, else the kubeconfig's current context's, else `default`."""
    if in_cluster(kubeconfig):
        try:
            return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or DEFAULT_NAMESPACE
        except OSError:
            return DEFAULT_NAMESPACE
    try:
        _, current = list_kube_config_contexts(kubeconfig_path(kubeconfig))
    except Exception:  # no kubeconfig, or one without a current context: the API client reports it properly
        return DEFAULT_NAMESPACE
    context = current.get("context") if isinstance(current, dict) else None
    namespace = context.get("namespace") if isinstance(context, dict) else None
    return str(namespace) if namespace else DEFAULT_NAMESPACE
