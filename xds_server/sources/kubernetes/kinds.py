"""Every kind the translator reads, and where it lives in the API: group, version, plural, scope.

Versions are the ones the CRDs of charts/xds-server-crds serve. Where a CRD serves two versions through one
storage version without a conversion webhook, the API server returns every object at whichever version is asked
for (only `apiVersion` changes), so each kind is listed at one version.
"""

from __future__ import annotations

from dataclasses import dataclass

from translators.resources import MODELS, Resource


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True
    # A status subresource: a write to status leaves `metadata.generation` as it was, so an event that changes
    # none of generation, labels, annotations and deletionTimestamp is a status write and is not retranslated.
    status_subresource: bool = False
    # Narrows what is listed and watched (a `fieldSelector`), for kinds with many objects the translator never
    # reads.
    field_selector: str = ""
    # The same with labels (a `labelSelector`).
    label_selector: str = ""
    # Stored trimmed to what the translator reads (objects.strip): thousands of Pods then cost little memory. A
    # reader that needs whole objects (the test suite's local kubelet) watches an untrimmed Kind.
    trimmed: bool = False
    # A kind the translator has no model of but reports (translators/gatewayapi/unsupported.py): its objects are
    # stored trimmed to metadata, their references and status (objects.strip), become the ResourceSet's `unknown`,
    # and get Accepted False/Unsupported in their status when they concern one of our Gateways.
    report_only: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def model(self) -> type[Resource] | None:
        """The translator's model of the kind; None until the translator reads it."""
        return MODELS.get((self.group, self.kind))

    def path(self, namespace: str | None) -> str:
        """The collection's URL path: every namespace's objects when `namespace` is None."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            return f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{self.plural}"


GATEWAY_API = "gateway.networking.k8s.io"
AI_GATEWAY = "aigateway.envoyproxy.io"
ENVOY_GATEWAY = "gateway.envoyproxy.io"
INFERENCE = "inference.networking.k8s.io"
INFERENCE_X = "inference.networking.x-k8s.io"
GATEWAY_API_X = "gateway.networking.x-k8s.io"

KINDS: tuple[Kind, ...] = (
    Kind(GATEWAY_API, "v1", "GatewayClass", "gatewayclasses", namespaced=False, status_subresource=True),
    Kind(GATEWAY_API, "v1", "Gateway", "gateways", status_subresource=True),
    Kind(GATEWAY_API, "v1", "HTTPRoute", "httproutes", status_subresource=True),
    # v1beta1: the storage version of our CRDs, and the one Gateway API installs older than its v1 serve. No status.
    Kind(GATEWAY_API, "v1beta1", "ReferenceGrant", "referencegrants"),
    # v1: the storage version; v1alpha3 objects (Envoy AI Gateway's examples) are served at v1 with the same content.
    # Its status (`ancestors`, per Gateway) is not written yet: translate, /debug/status and `up` show its conditions.
    Kind(GATEWAY_API, "v1", "BackendTLSPolicy", "backendtlspolicies", status_subresource=True),
    # The AI Gateway CRDs serve v1alpha1 and v1beta1 from v1beta1 storage with the same schema (v1beta1 adds
    # BackendSecurityPolicy.spec.credentialOverride), conversion None: an object created as v1alpha1 is listed and
    # watched as v1beta1 with the same content (e2e/kube/test_source.py checks it), so v1beta1 alone sees them all.
    Kind(AI_GATEWAY, "v1beta1", "AIGatewayRoute", "aigatewayroutes", status_subresource=True),
    Kind(AI_GATEWAY, "v1beta1", "AIServiceBackend", "aiservicebackends", status_subresource=True),
    Kind(AI_GATEWAY, "v1beta1", "BackendSecurityPolicy", "backendsecuritypolicies", status_subresource=True),
    Kind(ENVOY_GATEWAY, "v1alpha1", "Backend", "backends", status_subresource=True),
    Kind(ENVOY_GATEWAY, "v1alpha1", "EnvoyProxy", "envoyproxies", status_subresource=True),
    Kind(INFERENCE, "v1", "InferencePool", "inferencepools", status_subresource=True),
    Kind(INFERENCE_X, "v1alpha2", "InferenceObjective", "inferenceobjectives", status_subresource=True),
    # Core kinds: every change is published (a Pod's readiness and IP, a Secret's data, a Namespace's labels).
    Kind("", "v1", "Service", "services"),
    Kind("", "v1", "Pod", "pods", trimmed=True),
    # Helm keeps every release revision as a Secret of this type (often hundreds of KiB each), and the controller's
    # CA key is in one of type xds-server.io/ca (kube/tls_secrets.py reads it itself); no route can use either as a
    # credential, so they are not even listed.
    Kind("", "v1", "Secret", "secrets", field_selector="type!=helm.sh/release.v1,type!=xds-server.io/ca"),
    Kind("", "v1", "ConfigMap", "configmaps"),
    # Only those a Service without a selector takes its endpoints from: the EndpointSlice controller's own (one or
    # more per Service, changing with every pod) say what the translator already reads from the Pods.
    Kind(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        label_selector="endpointslice.kubernetes.io/managed-by!=endpointslice-controller.k8s.io",
    ),
    Kind("apps", "v1", "Deployment", "deployments"),
    Kind("", "v1", "Namespace", "namespaces", namespaced=False),
    # Kinds of the gateway API groups this controller does not implement: an operator who applies one to our Gateway
    # (or to a route attached to it) is told in its status that it does nothing here. Their CRDs are often not
    # installed (Envoy Gateway's policies): such a kind counts as listed and empty, and is looked for again now and
    # then. Envoy Gateway's HTTPRouteFilter is not among them: it references nothing (routes name it in an
    # extensionRef filter, which the route's own status already reports as not implemented).
    *(
        Kind(ENVOY_GATEWAY, "v1alpha1", kind, plural, status_subresource=True, report_only=True)
        for kind, plural in (
            ("SecurityPolicy", "securitypolicies"),
            ("BackendTrafficPolicy", "backendtrafficpolicies"),
            ("ClientTrafficPolicy", "clienttrafficpolicies"),
            ("EnvoyExtensionPolicy", "envoyextensionpolicies"),
            ("EnvoyPatchPolicy", "envoypatchpolicies"),
        )
    ),
    Kind(GATEWAY_API, "v1", "GRPCRoute", "grpcroutes", status_subresource=True, report_only=True),
    # v1alpha2: served by every Gateway API bundle that has these kinds (v1.6 serves v1 too, from the same storage).
    Kind(GATEWAY_API, "v1alpha2", "TLSRoute", "tlsroutes", status_subresource=True, report_only=True),
    Kind(GATEWAY_API, "v1alpha2", "TCPRoute", "tcproutes", status_subresource=True, report_only=True),
    Kind(GATEWAY_API, "v1alpha2", "UDPRoute", "udproutes", status_subresource=True, report_only=True),
    # ListenerSet (v1 in the Gateway API v1.6 bundle), and XListenerSet, its predecessor in the experimental group.
    Kind(GATEWAY_API, "v1", "ListenerSet", "listenersets", status_subresource=True, report_only=True),
    Kind(GATEWAY_API_X, "v1alpha1", "XListenerSet", "xlistenersets", status_subresource=True, report_only=True),
    # Envoy AI Gateway's MCP routes (parentRefs to Gateways) and token quotas (targetRefs to AIServiceBackends, which
    # reach our Gateways through the AIGatewayRoutes that use them). QuotaPolicy exists in v1alpha1 only.
    Kind(AI_GATEWAY, "v1beta1", "MCPRoute", "mcproutes", status_subresource=True, report_only=True),
    Kind(AI_GATEWAY, "v1alpha1", "QuotaPolicy", "quotapolicies", status_subresource=True, report_only=True),
)

BY_NAME: dict[str, Kind] = {kind.kind: kind for kind in KINDS}


def watched_kinds() -> tuple[Kind, ...]:
    """The kinds of KINDS the translator has a model for (a kind whose model is still to come is not watched), and
    the report-only ones."""
    return tuple(kind for kind in KINDS if kind.model is not None or kind.report_only)
