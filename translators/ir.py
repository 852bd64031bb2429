"""The intermediate representation between resources and Envoy protobufs.

One `GatewayIR` per Gateway: what Envoy must listen on, how requests are matched, and where they go, with no
trace of Gateway API shapes left and no Envoy types yet. Frozen dataclasses, so an IR can be hashed, compared
and shared between threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from functools import cached_property, partial
from itertools import chain
from operator import attrgetter, is_
from typing import TypeVar


class Discovery(StrEnum):
    """How Envoy learns a cluster's endpoints."""

    STATIC = "STATIC"  # IP or unix socket endpoints inline in the cluster
    STRICT_DNS = "STRICT_DNS"  # hostnames inline, resolved by Envoy
    EDS = "EDS"  # endpoints served by the control plane (pods), so pod changes never touch the cluster


class AddressKind(StrEnum):
    IP = "ip"
    DNS = "dns"
    UNIX = "unix"


T = TypeVar("T")


def cached_hash(cls: type[T]) -> type[T]:
    """A frozen dataclass whose hash is computed once: the same value as the generated one (the hash of its compared
    fields), but IR values are hashed again and again (memo keys, dict keys), deep ones at a cost each time."""
    names = tuple(f.name for f in fields(cls) if f.compare)  # type: ignore[arg-type]

    def __hash__(self: object) -> int:
        found: int | None = self.__dict__.get("_hash")
        if found is None:
            found = hash(tuple(getattr(self, name) for name in names))
            object.__setattr__(self, "_hash", found)
        return found

    cls.__hash__ = __hash__  # type: ignore[method-assign]
    return cls


@cached_hash
@dataclass(frozen=True, order=True)
class ObjectRef:
    """A Kubernetes object, by kind and namespace/name (namespace "" for cluster-scoped kinds)."""

    kind: str
    namespace: str
    name: str

    @property
    def key(self) -> str:
        """ "<namespace>/<name>": how the picker, gRPC metadata and /debug name a pool or a Gateway."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


class EndpointHealth(StrEnum):
    """Whether an endpoint takes balanced traffic. A pool's cluster also holds its pods that have an address but are
    not Ready (yet) or are terminating: balancing skips them, but an Endpoint Picker's choice of one is honoured. The
    picker watches pods itself and sees a new Ready pod before Envoy's endpoints do; without them, its first pick of
    that pod would be a 503 ("no healthy upstream")."""

    READY = "ready"
    NOT_READY = "not-ready"  # EDS UNHEALTHY
    TERMINATING = "terminating"  # EDS DRAINING


@cached_hash
@dataclass(frozen=True, order=True)
class Endpoint:
    address: str  # IP, hostname or unix socket path
    port: int  # 0 for unix sockets
    kind: AddressKind = AddressKind.IP
    health: EndpointHealth = EndpointHealth.READY


class CaSource(StrEnum):
    """Whom Envoy trusts to have signed an upstream's certificate."""

    INLINE = "inline"  # the CA certificates the backend's references name (ConfigMaps, Secrets): UpstreamTlsIR.ca_pem
    SYSTEM = "system"  # the CA bundle of the system Envoy runs on, a file: TranslateOptions.system_ca_bundle
    NONE = "none"  # insecureSkipVerify: any certificate is taken, signed or not (only when a Backend asks for it)


class SanKind(StrEnum):
    DNS = "dns"
    URI = "uri"


@dataclass(frozen=True, order=True)
class SubjectNameIR:
    """A name the upstream's certificate must carry as a subject alternative name."""

    kind: SanKind
    value: str


@dataclass(frozen=True)
class UpstreamTlsIR:
    """TLS from Envoy to one backend: the SNI it sends, whom it trusts, and the names the certificate must carry
    (one of them; none: any certificate the trusted CAs signed)."""

    ca: CaSource
    ca_pem: str = ""  # CaSource.INLINE: the CA certificates, PEM (public: no secret)
    sni: str | None = None  # None: no SNI (an IP backend that names none)
    verify_names: tuple[SubjectNameIR, ...] = ()


@cached_hash
@dataclass(frozen=True)
class EndpointGroup:
    """Endpoints of one backend inside a cluster: an Envoy locality with its own priority and weight."""

    backend: str  # stable identity, e.g. "aiservicebackend/default/openai"
    endpoints: tuple[Endpoint, ...]
    priority: int = 0
    weight: int = 1
    dynamic: bool = False  # endpoints are pods: they change without the configuration changing
    tls: UpstreamTlsIR | None = None  # None: plain HTTP (or h2c) to these endpoints


class PickerMode(StrEnum):
    """Who picks a pool's endpoint: the Endpoint Picker its `endpointPickerRef` names (a real Inference Extension EPP,
    as the spec requires), or the picker embedded in this control plane (`up`, and files unless told otherwise)."""

    REFERENCE = "reference"
    EMBEDDED = "embedded"


@dataclass(frozen=True)
class EndpointPickerIR:
    """The Endpoint Picker a pool in reference mode calls: the Service its endpointPickerRef names, reached over gRPC
    (HTTP/2) at the Service's ready pods, as a cluster of its own."""

    service: ObjectRef  # the Service (same namespace as the pool)
    port: int  # the Service port (endpointPickerRef.port.number), not the pods' target port
    endpoints: tuple[Endpoint, ...] = ()  # ready pods selected by the Service, at the port's target port
    tls: bool = True  # the EPP serves TLS by default (self-signed); the port's appProtocol kubernetes.io/h2c: cleartext
    missing: str | None = None  # why there is nothing to call (no such Service or port, not a Service): a 500

    @property
    def cluster(self) -> str:
        """Keyed by the Service and port (pools sharing a picker share it), never by pool or route."""
        return f"epp/{self.service.namespace}/{self.service.name}/{self.port}"

    @property
    def authority(self) -> str:
        """The gRPC :authority, as a client inside the cluster would name the Service."""
        return f"{self.service.name}.{self.service.namespace}.svc:{self.port}"


@dataclass(frozen=True)
class PoolBalancing:
    """An InferencePool cluster: the picker's choice (its `envoy.lb` metadata) decides the host."""

    pool: ObjectRef  # the InferencePool
    fail_open: bool  # when no valid choice arrives, round-robin over the pool instead of failing
    picker: EndpointPickerIR | None = None  # reference mode: the pool's own Endpoint Picker; None: the embedded one


@dataclass(frozen=True)
class ApiKey:
    """A backend's credential: the request header it goes in, and the header's value. Never shown in a repr."""

    header: str
    value: str = field(repr=False)


@dataclass(frozen=True)
class AwsSigningIR:
    """What signs a backend's requests with AWS Signature Version 4: the credentials (never shown in a repr), the
    region and the service of the credential scope."""

    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    region: str = ""
    service: str = "bedrock"


class TokenKind(StrEnum):
    """How the control plane mints a backend's bearer token (off the request path, refreshed before it expires)."""

    GCP_SERVICE_ACCOUNT = "gcp-service-account"  # a JWT signed with the key, exchanged at the key's token_uri
    AZURE_CLIENT_SECRET = "azure-client-secret"  # OAuth client credentials at Microsoft Entra ID


@dataclass(frozen=True)
class TokenSourceIR:
    """What a token is minted from. `key`: the policy (<namespace>/<name>), which tokens are kept by. The secret
    material (a service account's key file, a client secret) is never shown in a repr."""

    kind: TokenKind
    key: str
    secret: str = field(repr=False)
    scope: str = ""
    client_id: str = ""  # Azure
    tenant_id: str = ""  # Azure


@dataclass(frozen=True)
class GcpLocationIR:
    """Where Vertex AI requests go: /v1/projects/{project}/locations/{region}/..."""

    project: str
    region: str


@cached_hash
@dataclass(frozen=True)
class ClusterIR:
    name: str
    discovery: Discovery
    groups: tuple[EndpointGroup, ...]
    pool: PoolBalancing | None = None
    http2: bool = False
    upstream_settings: bool = False  # some backend of it has BackendSettingsIR: the upstream ext_proc filter runs
    api_key: ApiKey | None = None  # Envoy injects it into each request (credential_injector, from an SDS secret)
    translates: bool = False  # some backend answers in another API (SchemaIR.answers_translated): the filter sees it


class ApiSchema(StrEnum):
    """The API a backend speaks (AIServiceBackend.spec.schema.name); clients always speak OpenAI's."""

    OPENAI = "OpenAI"
    AZURE_OPENAI = "AzureOpenAI"  # OpenAI's bodies, on a deployment's path with an api-version
    ANTHROPIC = "Anthropic"  # the Messages API: requests, answers and streams translated
    AWS_BEDROCK = "AWSBedrock"  # Converse and ConverseStream, signed with SigV4: translated both ways
    AWS_ANTHROPIC = "AWSAnthropic"  # Claude on Bedrock: InvokeModel with Anthropic's body, signed with SigV4
    GCP_VERTEX_AI = "GCPVertexAI"  # Gemini's generateContent, with a Google access token
    GCP_ANTHROPIC = "GCPAnthropic"  # Claude on Vertex AI: rawPredict with Anthropic's body, with a Google token


@dataclass(frozen=True)
class SchemaIR:
    name: ApiSchema = ApiSchema.OPENAI
    version: str | None = None  # AzureOpenAI: the api-version; Anthropic: the anthropic-version header
    prefix: str | None = None  # Anthropic: the path's version segment (default v1)

    @property
    def answers_translated(self) -> bool:
        """Answers come back in another API's format (Azure OpenAI's are OpenAI's already)."""
        return self.name not in (ApiSchema.OPENAI, ApiSchema.AZURE_OPENAI)


@dataclass(frozen=True)
class BackendSettingsIR:
    """What the upstream phase does to a request that one route rule sends to one backend, on every attempt.

    Keyed by (rule, backend): the route's `rule` metadata and the endpoint's `backend` metadata, which Envoy hands
    the upstream ext_proc filter with each attempt, so a retry on another backend gets that backend's settings.
    """

    rule: str  # RouteIR.rule
    backend: str  # EndpointGroup.backend
    model_name_override: str | None = None
    set_headers: tuple[tuple[str, str], ...] = ()  # (lowercase name, value), overwriting
    remove_headers: tuple[str, ...] = ()  # lowercase names
    set_fields: tuple[tuple[str, str], ...] = ()  # (top-level body field, JSON text)
    remove_fields: tuple[str, ...] = ()
    api_key: ApiKey | None = None
    credential_error: str | None = None  # the backend's security policy is unusable: its requests are refused
    schema: SchemaIR = field(default_factory=SchemaIR)
    aws: AwsSigningIR | None = None  # requests signed after every other change (the service's last step)
    token: TokenSourceIR | None = None  # a bearer token the control plane mints (`authorization: Bearer <token>`)
    gcp: GcpLocationIR | None = None  # Vertex AI's project and region (from the GCPCredentials policy)

    @property
    def changes_body(self) -> bool:
        return self.model_name_override is not None or bool(self.set_fields) or bool(self.remove_fields)

    @property
    def translates(self) -> bool:
        """The backend speaks another API: only the upstream-settings service can send it requests."""
        return self.schema.name is not ApiSchema.OPENAI

    @property
    def needs_service(self) -> bool:
        """Only the upstream-settings service can apply these settings (Envoy applies headers and plain keys)."""
        changes = self.changes_body or self.translates or self.credential_error is not None
        return changes or self.token is not None or self.aws is not None


class HeaderMatchKind(StrEnum):
    EXACT = "exact"
    REGEX = "regex"  # RE2, matching the whole value
    PRESENT = "present"
    ABSENT = "absent"


@cached_hash
@dataclass(frozen=True)
class HeaderMatchIR:
    name: str
    value: str = ""  # the exact value or the regex; unused for PRESENT and ABSENT
    kind: HeaderMatchKind = HeaderMatchKind.EXACT
    invert: bool = False  # matches when the header does not match (a missing header never does)


class PathKind(StrEnum):
    EXACT = "exact"
    PREFIX = "prefix"
    REGEX = "regex"


@cached_hash
@dataclass(frozen=True)
class PathMatchIR:
    kind: PathKind
    value: str


class PickerBodyMode(StrEnum):
    """How the picker's ext_proc filter sends it the request body (route annotation xds-server.io/picker-body-mode)."""

    BUFFERED = "BUFFERED"
    FULL_DUPLEX_STREAMED = "FULL_DUPLEX_STREAMED"


@dataclass(frozen=True)
class PoolRouteIR:
    """A route whose backend is an InferencePool: its picker runs on the route."""

    pool: ObjectRef
    fail_open: bool  # with no valid pick, the pool cluster falls back to round robin instead of failing
    body_mode: PickerBodyMode = PickerBodyMode.BUFFERED


class PathRewriteKind(StrEnum):
    FULL = "full"  # the whole path becomes the value
    PREFIX = "prefix"  # the matched prefix becomes the value


@dataclass(frozen=True)
class PathRewriteIR:
    kind: PathRewriteKind
    value: str


@dataclass(frozen=True)
class HeaderEditsIR:
    """Headers set (replacing), added (appending) and removed, in that order of application by Envoy."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@cached_hash
@dataclass(frozen=True)
class ForwardAction:
    cluster: str
    timeout_ms: int | None  # None: Envoy's default
    per_try_timeout_ms: int | None = None
    host_rewrite: bool = False  # rewrite Host to the upstream's hostname (DNS backends)
    fallback_retries: int = 0  # backends at lower priorities: a failed attempt retries on the next priority
    rewrite_hostname: str | None = None  # URLRewrite: the Host sent upstream
    rewrite_path: PathRewriteIR | None = None  # URLRewrite: the path sent upstream
    # The cluster runs the upstream-settings service, which finds the rule in the route's metadata. Only such routes
    # carry it: a metadata Struct on every route doubles what Envoy spends applying 10,000 routes.
    upstream_phase: bool = False


@dataclass(frozen=True)
class RedirectAction:
    """Envoy answers with a redirect (Gateway API RequestRedirect); what is None keeps the request's own."""

    status: int
    scheme: str | None = None
    hostname: str | None = None
    port: int | None = None
    path: PathRewriteIR | None = None


@dataclass(frozen=True)
class DirectAction:
    """An OpenAI-style JSON error Envoy answers itself."""

    status: int
    message: str  # may contain Envoy substitution commands such as %REQ(x-ai-eg-model)%
    error_type: str
    code: str


@dataclass(frozen=True)
class JsonReply:
    """A JSON document Envoy answers itself, served as it is (e.g. a virtual host's `/v1/models`)."""

    status: int
    body: str


class AiRole(StrEnum):
    """Where a route stands in a virtual host that routes by model, which decides the AI filters it turns on."""

    MODEL = "model"  # forwards the requests of a model (or a pool): usage metering reads the response
    ENTRY = "entry"  # where requests start: the body's `model` is copied into x-ai-eg-model, then Envoy routes again
    ENTRY_UNSIZED = "entry-unsized"  # the same for a body without Content-Length: Envoy also sets one
    REFUSAL = "refusal"  # answers a request whose body was read but names no model this host serves


@cached_hash
@dataclass(frozen=True)
class RouteIR:
    name: str
    path: PathMatchIR
    headers: tuple[HeaderMatchIR, ...]
    action: ForwardAction | DirectAction | JsonReply | RedirectAction
    method: str | None = None
    ai: AiRole | None = None  # set on the routes of a virtual host that routes by model
    pool: PoolRouteIR | None = None
    rule: str = ""  # "<kind>/<ns>/<name>/rule/<i>": which resource rule produced it
    request_headers: HeaderEditsIR | None = None  # RequestHeaderModifier
    response_headers: HeaderEditsIR | None = None  # ResponseHeaderModifier


@dataclass(frozen=True)
class ModelIR:
    """A model a virtual host serves by exact name, as `/v1/models` lists it."""

    name: str
    created: int  # Unix seconds: the creation time of the route that first names it (0 when unknown)


@dataclass(frozen=True)
class VirtualHostIR:
    name: str
    domains: tuple[str, ...]
    routes: tuple[RouteIR, ...]
    models: tuple[ModelIR, ...] = ()  # in route order, once each; regex matches are not listable


@dataclass(frozen=True)
class CertificateIR:
    """A certificate chain and its private key, from a `kubernetes.io/tls` Secret; Envoy gets them over SDS under
    `name`, so the key is never in a listener (nor in a listener's config dump)."""

    name: str  # "secret/<namespace>/<name>", the SDS resource name
    certificate_chain: str  # PEM
    private_key: str = field(repr=False)  # PEM; a secret: never logged or written out


@dataclass(frozen=True)
class TlsChainIR:
    """One TLS filter chain of an Envoy listener: the SNI names it takes (none: every other name, and clients that
    send none) and the certificates it presents (by CertificateIR name)."""

    server_names: tuple[str, ...]
    certificates: tuple[str, ...]


@dataclass(frozen=True)
class ListenerIR:
    name: str  # also the name of its RouteConfiguration
    address: str
    port: int
    virtual_hosts: tuple[VirtualHostIR, ...]
    tls: tuple[TlsChainIR, ...] = ()  # none: plain HTTP

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    # Computed once each, in C (a frozen value; tens of thousands of routes are walked at each reload).
    @cached_property
    def routes(self) -> tuple[RouteIR, ...]:
        return tuple(chain.from_iterable(map(attrgetter("routes"), self.virtual_hosts)))

    @cached_property
    def runs_picker(self) -> bool:
        """Some route goes to an InferencePool, so the listener's filter chain has the Endpoint Picker."""
        return not all(map(_IS_NONE, map(attrgetter("pool"), self.routes)))

    @cached_property
    def routes_by_model(self) -> bool:
        """Some virtual host routes by model: the filter chain reads bodies and meters usage."""
        return not all(map(_IS_NONE, map(attrgetter("ai"), self.routes)))


_IS_NONE = partial(is_, None)  # `value is None`, as a builtin: `map` then runs in C


@dataclass(frozen=True)
class GatewayIR:
    namespace: str
    name: str
    listeners: tuple[ListenerIR, ...]
    clusters: tuple[ClusterIR, ...]
    certificates: tuple[CertificateIR, ...] = ()  # those the TLS listeners present, sorted by name

    @property
    def key(self) -> str:
        """The snapshot key: Envoy's node.cluster for this Gateway."""
        return f"{self.namespace}/{self.name}"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"


@dataclass(frozen=True)
class Condition:
    """A Kubernetes condition (metav1.Condition without the times: the status writer stamps those)."""

    type: str
    status: ConditionStatus
    reason: str
    message: str


@cached_hash
@dataclass(frozen=True, order=True)
class ParentRefIR:
    """A parent as Kubernetes status echoes it: a route's parentRef with its defaults filled in (group, kind and
    namespace), or the Gateway an InferencePool is served by (no section or port)."""

    namespace: str
    name: str
    group: str = "gateway.networking.k8s.io"
    kind: str = "Gateway"
    section_name: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class ParentStatus:
    """One entry of a route's or a pool's `status.parents`: this controller's verdict for one parent."""

    parent: ParentRefIR
    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class ListenerStatus:
    """One entry of a Gateway's `status.listeners`."""

    name: str
    supported_kinds: tuple[tuple[str, str], ...]  # (group, kind) of the routes this listener takes
    attached_routes: int  # routes (HTTPRoutes and AIGatewayRoutes) Accepted on this listener
    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class ObjectStatus:
    """What this controller says of one object. `conditions` are the object's own (`status.conditions`); routes and
    pools also have one `parents` entry per Gateway of this controller, Gateways one `listeners` entry per listener."""

    ref: ObjectRef
    conditions: tuple[Condition, ...]
    generation: int = 0  # metadata.generation of the object the status was computed from: observedGeneration
    parents: tuple[ParentStatus, ...] = ()
    listeners: tuple[ListenerStatus, ...] = ()


@dataclass(frozen=True, order=True)
class PoolMember:
    """One endpoint of a pool: a (pod, targetPort) pair the picker can choose."""

    address: str  # pod IP
    port: int  # one of the pool's targetPorts, active on this pod
    pod: str  # pod name
    engine: str  # the pod's model-server engine (label inference.networking.k8s.io/engine-type), default "vllm"


@dataclass(frozen=True)
class ObjectiveIR:
    """An InferenceObjective of the pool: requests name it in x-gateway-inference-objective."""

    name: str
    priority: int  # higher is more important, negative is sheddable; unset is 0


@dataclass(frozen=True)
class PickerConfigIR:
    """The EndpointPickerConfig the pool's picker runs with."""

    text: str | None  # the EndpointPickerConfig YAML; None: the default profile (or `error`)
    origin: str  # where it came from, for errors and /debug
    error: str | None = None  # why a configured --config-file could not be read; `text` is None then


DEFAULT_PICKER_CONFIG = PickerConfigIR(None, "default profile")


@dataclass(frozen=True)
class PoolIR:
    """An InferencePool as the picker needs it."""

    namespace: str
    name: str
    endpoints: tuple[Endpoint, ...]  # the (address, port) of every member: the pool cluster's EDS endpoints
    fail_open: bool
    picker_service: str | None  # endpointPickerRef Service name, if any
    members: tuple[PoolMember, ...] = ()
    objectives: tuple[ObjectiveIR, ...] = ()  # sorted by name
    picker_config: PickerConfigIR = DEFAULT_PICKER_CONFIG
    # Who picks: the embedded picker serves (and scrapes) only EMBEDDED pools; REFERENCE pools call their own EPP.
    picker: PickerMode = PickerMode.EMBEDDED

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


# Envoy Gateway's controllerName: the tutorial's GatewayClass names it, and this project replaces Envoy Gateway.
ENVOY_GATEWAY_CONTROLLER = "gateway.envoyproxy.io/gatewayclass-controller"
OWN_CONTROLLER = "xds-server.dev/gateway-controller"


@dataclass(frozen=True)
class ControlPlaneTls:
    """How an Envoy reaches the control plane's gRPC servers in a cluster (mutual TLS): its client certificate and
    the CA it trusts are files in `directory` (a mounted Secret), read through file-based SDS and reloaded when the
    directory changes; the control plane's certificate must name `server_name` (its Service's DNS name)."""

    directory: str
    server_name: str


SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


@dataclass(frozen=True)
class TranslateOptions:
    listener_address: str = "127.0.0.1"  # loopback unless told otherwise
    privileged_port_offset: int = 0  # `up` maps port P < 1024 to P + 10000
    # Where Envoy reaches the ext_proc server: a host and port, or with `extproc_unix` a Unix socket's path (port 0).
    extproc_host: str = "127.0.0.1"
    extproc_port: int = 1063
    extproc_unix: str | None = None
    control_plane_tls: ControlPlaneTls | None = None  # cluster mode: Envoy presents its certificate to ext_proc
    resolve_cluster_local: bool = False  # map <svc>.<ns>.svc.cluster.local Backends to the Service's pods
    buffer_limit_bytes: int = 50 * 1024 * 1024  # buffered ext_proc bodies need room: 32 KiB is Envoy's default
    # A longer 'model' is refused (400) before any route, log line or error echoes it (model names are short).
    max_model_length: int = 256
    # GatewayClass controllers served: files and `up` take Envoy Gateway's (the tutorial's) and the project's own;
    # in a cluster exactly one is claimed (`--controller-name`), so another controller's classes are left alone.
    endpoint_picker: PickerMode = PickerMode.EMBEDDED  # the pool annotation xds-server.io/endpoint-picker overrides
    controller_names: frozenset[str] = frozenset({ENVOY_GATEWAY_CONTROLLER, OWN_CONTROLLER})
    # The CAs Envoy trusts for CaSource.SYSTEM (wellKnownCACertificates: System, fqdn Backends on port 443): a file on
    # Envoy's filesystem, read by Envoy (Debian's and Ubuntu's path, the Envoy image's among them).
    system_ca_bundle: str = SYSTEM_CA_BUNDLE
    # Edge limits of every listener (Envoy's edge best practices): a client has this long to send its headers, and
    # this long to send its whole request (0: no limit); a stream with no activity for stream_idle_seconds ends. None
    # of them bounds an answer: a long streamed completion keeps going as long as it sends something.
    request_headers_timeout_seconds: int = 10
    request_timeout_seconds: int = 300
    stream_idle_timeout_seconds: int = 300

    def envoy_port(self, port: int) -> int:
        """Where Envoy listens for a Gateway listener's port."""
        return port + self.privileged_port_offset if port < 1024 else port


@dataclass(frozen=True)
class Translation:
    gateways: tuple[GatewayIR, ...]
    statuses: tuple[ObjectStatus, ...]
    pools: tuple[PoolIR, ...]
    backend_settings: tuple[BackendSettingsIR, ...] = ()  # sorted by (rule, backend)
