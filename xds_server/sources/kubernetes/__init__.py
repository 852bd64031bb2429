"""The Kubernetes source of `xds-server serve --kubernetes`: list/watch reflectors per kind into a store of raw
objects and their parses, handing the control plane a ResourceSet after each burst of changes.

kinds      what is watched, where it lives in the API
client     the raw LIST and WATCH calls (kubernetes_asyncio for auth and TLS, orjson for bodies)
objects    what is kept of an object, which changes matter to translation
store      objects as last seen, parsed once per version, last good versions, errors
reflector  list, watch, resume, relist and diff
debounce   changes -> bursts
source     KubernetesSource, the API the composition root and the status writer use
config     the ApiClient from in-cluster credentials or a kubeconfig, the default namespace
"""

from xds_server.sources.kubernetes.config import api_client, default_namespace
from xds_server.sources.kubernetes.source import KubernetesSource

__all__ = ["KubernetesSource", "api_client", "default_namespace"]
