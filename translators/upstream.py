"""Per-backend settings of the upstream phase: model name override, header and body mutations, API keys.

Settings belong to a (route rule, backend) pair: `modelNameOverride` and mutations on a backendRef apply to that
rule only, while mutations on the AIServiceBackend and its BackendSecurityPolicy apply to every rule sending to it.
On a conflict the backendRef wins over the AIServiceBackend, and the credential wins over both. A credential never
travels in plain HTTP over the network (see UpstreamSettings).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from translators.aws_credentials import parse_credentials_file
from translators.backends import BackendResolver, ReferenceGrants, Unresolved, ai_backend_id, schema_of
from translators.ir import (
    AddressKind,
    ApiKey,
    ApiSchema,
    AwsSigningIR,
    BackendSettingsIR,
    ClusterIR,
    Endpoint,
    GcpLocationIR,
    HeaderEditsIR,
    SchemaIR,
    TokenKind,
    TokenSourceIR,
)
from translators.loader import ResourceSet
from translators.resources import AIGatewayRoute, AIServiceBackend, BackendSecurityPolicy, Secret
from translators.resources.aigateway import (
    API_KEY_SECRET_KEY,
    API_KEY_TYPES,
    AWS_CREDENTIALS_SECRET_KEY,
    AZURE_CLIENT_SECRET_KEY,
    GCP_CREDENTIALS_SECRET_KEY,
    AIGatewayRouteBackendRef,
    HTTPBodyMutation,
    HTTPHeaderMutation,
    SecretRef,
)
from translators.resources.envoy_gateway import ENVOY_GATEWAY_GROUP
from translators.upstream_tls import IMPLIED_BY_PORT, UPSTREAM_TLS_CONDITION, Report
from translators.xds.names import ALLOW_PLAINTEXT_CREDENTIALS_ANNOTATION, NOT_A_HEADER_VALUE


def _loopback(endpoint: Endpoint) -> bool:
    """Traffic to it never leaves the machine: a unix socket, or an IP in 127.0.0.0/8 or ::1. A name is never
    taken for one, `localhost` included: what it resolves to is not the control plane's to know."""
    if endpoint.kind is AddressKind.UNIX:
        return True
    return endpoint.kind is AddressKind.IP and ipaddress.ip_address(endpoint.address).is_loopback


def _has_settings(ref: AIGatewayRouteBackendRef) -> bool:
    return ref.model_name_override is not None or ref.header_mutation is not None or ref.body_mutation is not None


def _merge(
    layers: Iterable[tuple[Iterable[tuple[str, str]], Iterable[str]]],
) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """(set, remove) layers, later ones winning: a name a later layer sets is no longer removed, and the other way
    round. Returns the sorted (name, value) pairs to set and the sorted names to remove."""
    set_: dict[str, str] = {}
    remove: dict[str, None] = {}
    for sets, removes in layers:
        for name, value in sets:
            set_[name] = value
            remove.pop(name, None)
        for name in removes:
            remove[name] = None
            set_.pop(name, None)
    return tuple(sorted(set_.items())), tuple(sorted(remove))


def _merge_headers(*mutations: HTTPHeaderMutation | None) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """Header names are case-insensitive: compared (and sent) lowercase."""
    return _merge(
        ([(h.name.lower(), h.value) for h in m.set], [name.lower() for name in m.remove])
        for m in mutations
        if m is not None
    )


def _merge_fields(*mutations: HTTPBodyMutation | None) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    return _merge(([(f.path, f.value) for f in m.set], m.remove) for m in mutations if m is not None)


# What a BackendSecurityPolicy gives its backends: a key for a header, or what signs their requests (AWS).
Credential = ApiKey | AwsSigningIR | TokenSourceIR
GCP_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
AZURE_SCOPE = "https://cognitiveservices.azure.com/.default"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
_AWS_REGION = re.compile(r"[a-z]{2}(-[a-z0-9]+)+")


class UpstreamSettings:
    """Resolves settings within one ResourceSet, reporting each BackendSecurityPolicy's outcome once.

    A credential goes to a backend over TLS, or in plain HTTP only where it never leaves the machine (every endpoint
    on loopback or a unix socket) or where its policy says so (ALLOW_PLAINTEXT_CREDENTIALS_ANNOTATION: "true");
    otherwise the policy is not Accepted and the backend's requests are refused. Being where the translation reports
    statuses from, it also reports the verdicts of the backends' TLS settings (BackendTLSPolicy, Backend.spec.tls).

    `transports` resolves an AIServiceBackend to its endpoints and TLS: the translation's own resolver, or (when not
    given) one of its own that maps no `.svc.cluster.local` name to pods, so such a name counts as a remote host.
    """

    def __init__(
        self,
        resources: ResourceSet,
        report: Report,
        grants: ReferenceGrants | None = None,
        transports: BackendResolver | None = None,
    ) -> None:
        self._resources = resources
        self._report = report
        self._grants = grants if grants is not None else ReferenceGrants(resources)
        self._transports = transports or BackendResolver(resources, resolve_cluster_local=False, grants=self._grants)
        self._transports.tls.report(report)
        self._report_implied_tls()
        # Backends whose every request passes the upstream phase: their own settings, or a rule's on a backendRef.
        self.backends: set[tuple[str, str]] = set()
        self._schemas: dict[tuple[str, str], SchemaIR] = {}  # the backends speaking another API than OpenAI's
        # AIServiceBackends and AIGatewayRoutes are read here without a dependency on their whole kinds: what routes
        # take from this reading is `summary()`, which the translation compares from one reload to the next (a
        # change to it redoes every route), and each route depends on the backends it uses itself.
        for backend in resources.untracked_of_kind(AIServiceBackend):
            spec = backend.spec
            if spec.header_mutation or spec.body_mutation:
                self.backends.add((backend.namespace, backend.name))
            try:
                schema = schema_of(backend)
            except Unresolved:
                continue  # the backend is refused where routes resolve it, and says why
            if schema.name is not ApiSchema.OPENAI:
                self._schemas[(backend.namespace, backend.name)] = schema
        self.backends.update(self._schemas)
        for route in resources.untracked_of_kind(AIGatewayRoute):
            for rule in route.spec.rules:
                for ref in rule.backend_refs:
                    if not ref.is_inference_pool and _has_settings(ref):
                        self.backends.add((ref.namespace or route.namespace, ref.name))
        self._policies = self._policies_by_backend()
        self.backends.update(self._policies)  # a policy's targets: their requests need its key
        # Every policy's key read (and reported) once, used by any backend or not.
        self._keys = {(p.namespace, p.name): self._read_key(p) for p in resources.of_kind(BackendSecurityPolicy)}
        # Backends whose key would travel in plain HTTP over the network: their requests are refused instead.
        self._exposed: dict[tuple[str, str], str] = {}
        for (namespace, name), policy in sorted(self._policies.items()):
            error = self._keys[(policy.namespace, policy.name)][1]
            target = resources.get(AIServiceBackend, namespace, name)
            if error is None and target is not None:
                error = self._exposure(policy, target)
            if error is not None and target is not None:  # its requests are refused: say so on the backend too
                self._report(target, "Accepted", False, "InvalidBackendSecurityPolicy", error)
        # A Bedrock backend without AWS credentials, or AWS credentials on another backend: refused, and said.
        for key in sorted(self.backends - self._exposed.keys()):
            holder = self._policies.get(key)
            if holder is not None and self._keys[(holder.namespace, holder.name)][1] is not None:
                continue  # the policy's own problem, said above
            error = self._credential(key)[1]
            target = resources.get(AIServiceBackend, *key)
            if error is not None and target is not None:
                self._report(target, "Accepted", False, "InvalidBackendSecurityPolicy", error)

    def summary(self) -> Hashable:
        """What routes' settings depend on beyond the backend each names: which backends pass the upstream phase,
        and the APIs they speak."""
        return frozenset(self.backends), frozenset(self._schemas.items())

    def _report_implied_tls(self) -> None:
        """An AIServiceBackend of a Backend that gets TLS from its port alone says so (as the Backend does). A status
        only, listed again at every translation: nothing depends on what it reads."""
        with self._resources.no_dependency():
            for backend in self._resources.untracked_of_kind(AIServiceBackend):
                ref = backend.spec.backend_ref
                if (ref.group, ref.kind) != (ENVOY_GATEWAY_GROUP, "Backend"):
                    continue
                if self._transports.tls.backend(ref.namespace or backend.namespace, ref.name).implied:
                    self._report(backend, UPSTREAM_TLS_CONDITION, True, "ImpliedByPort", IMPLIED_BY_PORT)

    def _exposure(self, policy: BackendSecurityPolicy, backend: AIServiceBackend) -> str | None:
        """Why the policy's key must not go to `backend` (reported on the policy), or None when it may: over TLS, to
        loopback only, or in plain HTTP because the policy says so. A backend that cannot be resolved gets no
        requests at all (its routes answer 500), so it exposes nothing."""
        if policy.metadata.annotations.get(ALLOW_PLAINTEXT_CREDENTIALS_ANNOTATION) == "true":
            return None
        try:
            cluster = self._transports.ai_service_backend_cluster(backend.namespace, backend.name)
        except Unresolved:
            return None
        exposed = sorted({e for g in cluster.groups if g.tls is None for e in g.endpoints if not _loopback(e)})
        if not exposed:  # no endpoint yet (pods not Ready) exposes nothing either: a new one is a new translation
            return None
        shown = ", ".join(f"{e.address}:{e.port}" for e in exposed[:3]) + (", ..." if len(exposed) > 3 else "")
        message = (
            f"AIServiceBackend {backend.name}: the key would travel in plain HTTP to {shown}; give its backend TLS "
            f"(Backend tls or a BackendTLSPolicy), or annotate the policy {ALLOW_PLAINTEXT_CREDENTIALS_ANNOTATION}: "
            '"true"'
        )
        self._report(policy, "Accepted", False, "PlaintextUpstream", message)
        key = (backend.namespace, backend.name)
        self._exposed[key] = f"BackendSecurityPolicy {policy.namespace}/{policy.name} is not usable over plain HTTP"
        return self._exposed[key]

    def _policies_by_backend(self) -> dict[tuple[str, str], BackendSecurityPolicy]:
        """Each AIServiceBackend's policy: the oldest whose targetRefs name it (the others are told so)."""
        found: dict[tuple[str, str], BackendSecurityPolicy] = {}
        policies = sorted(
            self._resources.of_kind(BackendSecurityPolicy),
            key=lambda p: p.seniority,
        )
        for policy in policies:
            for target in policy.spec.target_refs:
                if target.kind != "AIServiceBackend":
                    continue
                key = (policy.namespace, target.name)
                holder = found.setdefault(key, policy)
                if holder is not policy:
                    self._report(
                        policy,
                        "Accepted",
                        False,
                        "Conflicted",
                        f"AIServiceBackend {target.name} already has BackendSecurityPolicy {holder.name}",
                    )
        return found

    def settings(self, rule: str, backend_namespace: str, ref: AIGatewayRouteBackendRef) -> BackendSettingsIR | None:
        """The settings of `ref` (an AIServiceBackend reference of `rule`), or None when there are none."""
        key = (backend_namespace, ref.name)
        self._resources.read(AIServiceBackend, *key)  # what the route's settings derive from (see __init__)
        if key not in self.backends:
            return None
        backend = self._resources.get(AIServiceBackend, *key)
        own_headers = backend.spec.header_mutation if backend is not None else None
        own_body = backend.spec.body_mutation if backend is not None else None
        set_headers, remove_headers = _merge_headers(own_headers, ref.header_mutation)
        set_fields, remove_fields = _merge_fields(own_body, ref.body_mutation)
        credential, error = self._credential(key)
        api_key = credential if isinstance(credential, ApiKey) else None
        if api_key is not None:
            set_headers = tuple(h for h in set_headers if h[0] != api_key.header)
            remove_headers = tuple(h for h in remove_headers if h != api_key.header)
        return BackendSettingsIR(
            rule=rule,
            backend=ai_backend_id(*key),
            model_name_override=ref.model_name_override,
            set_headers=set_headers,
            remove_headers=remove_headers,
            set_fields=set_fields,
            remove_fields=remove_fields,
            api_key=api_key,
            credential_error=error,
            schema=self._schemas.get(key, SchemaIR()),
            aws=credential if isinstance(credential, AwsSigningIR) else None,
            token=credential if isinstance(credential, TokenSourceIR) else None,
            gcp=self._gcp_location(key),
        )

    def _gcp_location(self, backend: tuple[str, str]) -> GcpLocationIR | None:
        policy = self._policies.get(backend)
        gcp = policy.spec.gcp_credentials if policy is not None else None
        return GcpLocationIR(gcp.project_name, gcp.region) if gcp is not None else None

    def refused(self, namespace: str, name: str) -> bool:
        """The AIServiceBackend's requests are refused: its security policy is missing or unusable."""
        return self._credential((namespace, name))[1] is not None

    def _credential(self, backend: tuple[str, str]) -> tuple[Credential | None, str | None]:
        if backend in self._exposed:
            return None, self._exposed[backend]
        policy = self._policies.get(backend)
        found = self._keys[(policy.namespace, policy.name)] if policy is not None else (None, None)
        schema = self._schemas.get(backend, SchemaIR()).name
        if found[1] is None and (mismatch := _credential_mismatch(backend, schema, found[0])) is not None:
            return None, mismatch
        return found

    def _read_key(self, policy: BackendSecurityPolicy) -> tuple[Credential | None, str | None]:
        """The policy's credential, or why there is none (reported on the policy; requests to its backends are
        refused)."""
        if policy.spec.type == "AWSCredentials":
            return self._read_aws(policy)
        if policy.spec.type == "GCPCredentials":
            return self._read_gcp(policy)
        if policy.spec.type == "AzureCredentials":
            return self._read_azure(policy)
        auth = policy.spec.key_auth
        if auth is None:
            supported = "API key types and AWSCredentials"
            return self._refuse(policy, "Unsupported", f"type {policy.spec.type} is not supported ({supported})")
        found = self._secret_value(policy, auth.secret_ref, API_KEY_SECRET_KEY)
        if isinstance(found, tuple):
            return found
        value = found.strip()
        if not value or NOT_A_HEADER_VALUE.search(value):
            # The message never quotes the value: it is a credential.
            return self._refuse(
                policy, "InvalidSecret", f"Secret {auth.secret_ref.name}: {API_KEY_SECRET_KEY} is empty or unusable"
            )
        header, prefix = API_KEY_TYPES[policy.spec.type][1:]
        self._report(policy, "Accepted", True, "Accepted", f"key from Secret {auth.secret_ref.name}")
        return ApiKey(header, prefix + value), None

    def _read_aws(self, policy: BackendSecurityPolicy) -> tuple[Credential | None, str | None]:
        """Static credentials from a shared credentials file in a Secret, and the region of the signatures."""
        aws = policy.spec.aws_credentials
        assert aws is not None  # the spec's validator requires the block for this type
        if aws.credentials_file is None:
            why = "only awsCredentials.credentialsFile is supported (not oidcExchangeToken)"
            return self._refuse(policy, "Unsupported", why)
        if not _AWS_REGION.fullmatch(aws.region):
            return self._refuse(policy, "InvalidRegion", f"awsCredentials.region {aws.region[:64]!r} is no AWS region")
        ref = aws.credentials_file.secret_ref
        found = self._secret_value(policy, ref, AWS_CREDENTIALS_SECRET_KEY)
        if isinstance(found, tuple):
            return found
        try:
            key_id, secret, token = parse_credentials_file(found, aws.credentials_file.profile)
        except ValueError as exc:
            return self._refuse(policy, "InvalidSecret", f"Secret {ref.name}: {AWS_CREDENTIALS_SECRET_KEY}: {exc}")
        self._report(policy, "Accepted", True, "Accepted", f"AWS credentials from Secret {ref.name}")
        return AwsSigningIR(key_id, secret, token, aws.region), None

    def _read_gcp(self, policy: BackendSecurityPolicy) -> tuple[Credential | None, str | None]:
        """A service account's key file in a Secret: the control plane mints access tokens from it."""
        gcp = policy.spec.gcp_credentials
        assert gcp is not None  # the spec's validator requires the block for this type
        if gcp.credentials_file is None:
            why = "only gcpCredentials.credentialsFile is supported (not workloadIdentityFederationConfig)"
            return self._refuse(policy, "Unsupported", why)
        for value, what in ((gcp.project_name, "projectName"), (gcp.region, "region")):
            if not _PATH_SEGMENT.fullmatch(value):
                return self._refuse(
                    policy, "InvalidValue", f"gcpCredentials.{what} {value[:64]!r} is not a path segment"
                )
        ref = gcp.credentials_file.secret_ref
        found = self._secret_value(policy, ref, GCP_CREDENTIALS_SECRET_KEY)
        if isinstance(found, tuple):
            return found
        problem = _service_account_problem(found)
        if problem is not None:
            return self._refuse(policy, "InvalidSecret", f"Secret {ref.name}: {GCP_CREDENTIALS_SECRET_KEY}: {problem}")
        self._report(policy, "Accepted", True, "Accepted", f"service account key from Secret {ref.name}")
        key = f"{policy.namespace}/{policy.name}"
        return TokenSourceIR(TokenKind.GCP_SERVICE_ACCOUNT, key, found, GCP_SCOPE), None

    def _read_azure(self, policy: BackendSecurityPolicy) -> tuple[Credential | None, str | None]:
        """An Entra ID application's client secret: the control plane mints access tokens with it."""
        azure = policy.spec.azure_credentials
        assert azure is not None
        if azure.client_secret_ref is None:
            return self._refuse(policy, "Unsupported", "only azureCredentials.clientSecretRef is supported (not OIDC)")
        for value, what in ((azure.client_id, "clientID"), (azure.tenant_id, "tenantID")):
            if not _PATH_SEGMENT.fullmatch(value):
                return self._refuse(policy, "InvalidValue", f"azureCredentials.{what} {value[:64]!r} is not an id")
        found = self._secret_value(policy, azure.client_secret_ref, AZURE_CLIENT_SECRET_KEY)
        if isinstance(found, tuple):
            return found
        secret = found.strip()
        if not secret or NOT_A_HEADER_VALUE.search(secret):
            name = azure.client_secret_ref.name
            return self._refuse(
                policy, "InvalidSecret", f"Secret {name}: {AZURE_CLIENT_SECRET_KEY} is empty or unusable"
            )
        self._report(policy, "Accepted", True, "Accepted", f"client secret from Secret {azure.client_secret_ref.name}")
        key = f"{policy.namespace}/{policy.name}"
        source = TokenSourceIR(
            TokenKind.AZURE_CLIENT_SECRET, key, secret, AZURE_SCOPE, azure.client_id, azure.tenant_id
        )
        return source, None

    def _secret_value(self, policy: BackendSecurityPolicy, ref: SecretRef, key: str) -> str | tuple[None, str]:
        """The text of a Secret's key the policy names, or the refusal (reported) when it cannot be read."""
        namespace = ref.namespace or policy.namespace
        if not self._grants.allows(policy, "", "Secret", namespace, ref.name):
            return self._refuse(policy, "RefNotPermitted", f"Secret in namespace {namespace} needs a ReferenceGrant")
        secret = self._resources.get(Secret, namespace, ref.name)
        if secret is None:
            return self._refuse(policy, "SecretNotFound", f"Secret {namespace}/{ref.name} not found")
        try:
            raw = secret.value(key)
            value = raw.decode() if raw is not None else None
        except ValueError:  # not base64, or (UnicodeDecodeError) not text
            return self._refuse(policy, "InvalidSecret", f"Secret {ref.name}: key {key} is not base64")
        if value is None:
            return self._refuse(policy, "InvalidSecret", f"Secret {ref.name} has no key {key}")
        return value

    def _refuse(self, policy: BackendSecurityPolicy, reason: str, message: str) -> tuple[None, str]:
        self._report(policy, "Accepted", False, reason, message)
        return None, f"BackendSecurityPolicy {policy.namespace}/{policy.name} is not usable"


# The credential each schema must have, and the schemas each kind of credential may go to.
_AWS_SCHEMAS = frozenset({ApiSchema.AWS_BEDROCK, ApiSchema.AWS_ANTHROPIC})
_GCP_SCHEMAS = frozenset({ApiSchema.GCP_VERTEX_AI, ApiSchema.GCP_ANTHROPIC})
_AZURE_TOKEN_SCHEMAS = frozenset({ApiSchema.AZURE_OPENAI, ApiSchema.OPENAI})


_PATH_SEGMENT = re.compile(r"[A-Za-z0-9._~-]{1,128}")


def _service_account_problem(text: str) -> str | None:
    """What keeps a service account's key file from minting tokens (never quoting it), or None."""
    try:
        info = json.loads(text)
    except ValueError:
        return "not JSON"
    if not isinstance(info, dict) or info.get("type") != "service_account":
        return 'not a service account key (its "type" is not "service_account")'
    missing = [k for k in ("client_email", "private_key") if not isinstance(info.get(k), str) or not info[k]]
    if missing:
        return f"no {' or '.join(missing)}"
    if "PRIVATE KEY-----" not in info["private_key"]:
        return "private_key is not a PEM key"
    token_uri = info.get("token_uri", GOOGLE_TOKEN_URI)
    if not isinstance(token_uri, str) or not token_uri.startswith(("https://", "http://")):
        return "token_uri is not a URL"
    return None


def _credential_mismatch(backend: tuple[str, str], schema: ApiSchema, credential: Credential | None) -> str | None:
    """Why the backend cannot use its credential (or lack of one), or None."""
    where = f"AIServiceBackend {backend[0]}/{backend[1]}"
    if schema in _AWS_SCHEMAS and not isinstance(credential, AwsSigningIR):
        return f"{where} speaks {schema}, whose requests must be signed: it needs a policy of type AWSCredentials"
    if schema in _GCP_SCHEMAS and not (
        isinstance(credential, TokenSourceIR) and credential.kind is TokenKind.GCP_SERVICE_ACCOUNT
    ):
        return f"{where} speaks {schema}, which takes Google access tokens: it needs a policy of type GCPCredentials"
    if isinstance(credential, AwsSigningIR) and schema not in _AWS_SCHEMAS:
        return f"{where}: AWSCredentials sign requests to AWS backends (AWSBedrock, AWSAnthropic) only"
    if isinstance(credential, TokenSourceIR):
        gcp = credential.kind is TokenKind.GCP_SERVICE_ACCOUNT
        if gcp and schema not in _GCP_SCHEMAS:
            return f"{where}: GCPCredentials are for Vertex AI backends (GCPVertexAI, GCPAnthropic) only"
        if not gcp and schema not in _AZURE_TOKEN_SCHEMAS:
            return f"{where}: AzureCredentials are for Azure OpenAI backends only"
    return None


def _header_names(settings: BackendSettingsIR) -> set[str]:
    names = {name for name, _ in settings.set_headers}
    if settings.api_key is not None:
        names.add(settings.api_key.header)
    return names


def isolate_attempts(
    rule: str, backends: Sequence[str], found: Mapping[str, BackendSettingsIR]
) -> tuple[BackendSettingsIR, ...]:
    """Settings for every backend of a rule, so one attempt's headers never reach the next attempt's backend.

    Envoy re-sends the original body on a retry, but the request headers carry the previous attempt's changes. So
    each backend removes the headers the rule's other backends set and it does not (another backend's credential
    above all), and a backend without settings of its own gets settings that do just that.
    """
    if not found:
        return ()
    if len(backends) < 2:
        return tuple(found.values())
    isolated = []
    for backend in backends:
        own = found.get(backend, BackendSettingsIR(rule=rule, backend=backend))
        others = set().union(*(_header_names(s) for b, s in found.items() if b != backend))
        foreign = others - _header_names(own)
        isolated.append(replace(own, remove_headers=tuple(sorted(set(own.remove_headers) | foreign))))
    return tuple(isolated)


# A backend's own cluster, when some rule sends to it settings only the upstream-settings service can apply: the
# rules whose settings Envoy applies itself share the backend's plain cluster, which never calls the service.
SERVICE_CLUSTER_SUFFIX = "/upstream-settings"


@dataclass(frozen=True)
class PlacedSettings:
    """Where a rule's settings are applied. `headers`: Envoy sets and removes them on the route. `cluster`: the
    cluster the rule routes to; its API key, if any, Envoy injects from an SDS secret, and when it calls the
    upstream-settings service (`upstream_settings`), the service applies the rest on every attempt."""

    headers: HeaderEditsIR | None
    cluster: ClusterIR


def place_settings(settings: tuple[BackendSettingsIR, ...], cluster: ClusterIR) -> PlacedSettings:
    """Envoy applies a rule's settings itself when the rule sends to one backend (each attempt then goes to that
    backend, so settings on the route are that backend's) and they leave the body alone: headers on the route, the
    credential from an SDS secret (so it never appears in a route, a cluster or a config dump). A body change stays
    with the service, which rewrites JSON exactly (Envoy's own JSON handling would round integers past 2^53, a
    client's `seed` for one), as does a credential that cannot be used (the service refuses those requests with the
    reason), and so does a backend of another API than OpenAI's (its requests and answers are translated). A rule
    sending to several backends keeps the service, which tells attempts to each backend apart."""
    if cluster.pool is not None or len(cluster.groups) != 1:
        return PlacedSettings(None, cluster)
    own = [s for s in settings if s.backend == cluster.groups[0].backend]
    if not own:
        return PlacedSettings(None, replace(cluster, upstream_settings=False))
    [mine] = own
    if mine.needs_service:
        return PlacedSettings(
            None, replace(cluster, name=cluster.name + SERVICE_CLUSTER_SUFFIX, upstream_settings=True)
        )
    headers = None
    if mine.set_headers or mine.remove_headers:
        headers = HeaderEditsIR(set=mine.set_headers, remove=mine.remove_headers)
    return PlacedSettings(headers, replace(cluster, upstream_settings=False, api_key=mine.api_key))
