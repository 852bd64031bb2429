"""Per-backend settings of the upstream phase: model name override, header and body mutations, API keys.

Settings belong to a (route rule, backend) pair: `modelNameOverride` and mutations on a backendRef apply to that
rule only, while mutations on the AIServiceBackend and its BackendSecurityPolicy apply to every rule sending to it.
On a conflict the backendRef wins over the AIServiceBackend, and the credential wins over both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

from translators.backends import ReferenceGrants, ai_backend_id
from translators.ir import ApiKey, BackendSettingsIR
from translators.loader import ResourceSet
from translators.resources import AIGatewayRoute, AIServiceBackend, BackendSecurityPolicy, Resource, Secret
from translators.resources.aigateway import (
    API_KEY_SECRET_KEY,
    API_KEY_TYPES,
    AIGatewayRouteBackendRef,
    HTTPBodyMutation,
    HTTPHeaderMutation,
)
from translators.xds.names import NOT_A_HEADER_VALUE

# (object, condition type, ok, reason, message): how problems reach the object's status.
Report = Callable[[Resource, str, bool, str, str], None]
# Characters Envoy refuses in a header value (a key read from a file often ends with a newline: that is stripped).


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


class UpstreamSettings:
    """Resolves settings within one ResourceSet, reporting each BackendSecurityPolicy's outcome once."""

    def __init__(self, resources: ResourceSet, report: Report, grants: ReferenceGrants | None = None) -> None:
        self._resources = resources
        self._report = report
        self._grants = grants if grants is not None else ReferenceGrants(resources)
        # Backends whose every request passes the upstream phase: their own settings, or a rule's on a backendRef.
        self.backends: set[tuple[str, str]] = set()
        for backend in resources.of_kind(AIServiceBackend):
            spec = backend.spec
            if spec.header_mutation or spec.body_mutation or spec.backend_security_policy_ref:
                self.backends.add((backend.namespace, backend.name))
        for route in resources.of_kind(AIGatewayRoute):
            for rule in route.spec.rules:
                for ref in rule.backend_refs:
                    if not ref.is_inference_pool and _has_settings(ref):
                        self.backends.add((ref.namespace or route.namespace, ref.name))
        self._policies = self._policies_by_backend()
        self.backends.update(self._policies)  # a policy's targets: their requests need its key
        # Every policy's key read (and reported) once, used by any backend or not.
        self._keys = {(p.namespace, p.name): self._read_key(p) for p in resources.of_kind(BackendSecurityPolicy)}
        for (namespace, name), policy in sorted(self._policies.items()):
            error = self._keys[(policy.namespace, policy.name)][1]
            target = resources.get(AIServiceBackend, namespace, name)
            if error is not None and target is not None:  # its requests are refused: say so on the backend too
                self._report(target, "Accepted", False, "InvalidBackendSecurityPolicy", error)

    def _policies_by_backend(self) -> dict[tuple[str, str], BackendSecurityPolicy]:
        """Each AIServiceBackend's policy: the one the backend names, else the oldest whose targetRefs name it.

        A backend naming a policy that does not exist is refused requests (`_missing`), never sent without a key.
        """
        found: dict[tuple[str, str], BackendSecurityPolicy] = {}
        self._missing: dict[tuple[str, str], str] = {}
        policies = sorted(
            self._resources.of_kind(BackendSecurityPolicy),
            key=lambda p: (p.metadata.creation_timestamp or "", p.namespace, p.name),
        )
        by_name = {(p.namespace, p.name): p for p in policies}
        for backend in self._resources.of_kind(AIServiceBackend):
            ref = backend.spec.backend_security_policy_ref
            if ref is not None:
                policy = by_name.get((backend.namespace, ref.name))
                if policy is not None:
                    found[(backend.namespace, backend.name)] = policy
                else:
                    message = f"BackendSecurityPolicy {backend.namespace}/{ref.name} not found"
                    self._missing[(backend.namespace, backend.name)] = message
                    self._report(backend, "Accepted", False, "BackendSecurityPolicyNotFound", message)
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
        if key not in self.backends:
            return None
        backend = self._resources.get(AIServiceBackend, *key)
        own_headers = backend.spec.header_mutation if backend is not None else None
        own_body = backend.spec.body_mutation if backend is not None else None
        set_headers, remove_headers = _merge_headers(own_headers, ref.header_mutation)
        set_fields, remove_fields = _merge_fields(own_body, ref.body_mutation)
        api_key, error = self._credential(key)
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
        )

    def refused(self, namespace: str, name: str) -> bool:
        """The AIServiceBackend's requests are refused: its security policy is missing or unusable."""
        return self._credential((namespace, name))[1] is not None

    def _credential(self, backend: tuple[str, str]) -> tuple[ApiKey | None, str | None]:
        if backend in self._missing:
            return None, self._missing[backend]
        policy = self._policies.get(backend)
        return self._keys[(policy.namespace, policy.name)] if policy is not None else (None, None)

    def _read_key(self, policy: BackendSecurityPolicy) -> tuple[ApiKey | None, str | None]:
        """The policy's key, or why there is none (reported on the policy; requests to its backends are refused)."""
        auth = policy.spec.key_auth
        if auth is None:
            return self._refuse(policy, "Unsupported", f"type {policy.spec.type} is not supported (API key types only)")
        ref = auth.secret_ref
        namespace = ref.namespace or policy.namespace
        if not self._grants.allows(policy, "", "Secret", namespace, ref.name):
            return self._refuse(policy, "RefNotPermitted", f"Secret in namespace {namespace} needs a ReferenceGrant")
        secret = self._resources.get(Secret, namespace, ref.name)
        if secret is None:
            return self._refuse(policy, "SecretNotFound", f"Secret {namespace}/{ref.name} not found")
        try:
            raw = secret.value(API_KEY_SECRET_KEY)
            value = raw.decode() if raw is not None else None
        except ValueError:  # not base64, or (UnicodeDecodeError) not text
            return self._refuse(policy, "InvalidSecret", f"Secret {ref.name}: key {API_KEY_SECRET_KEY} is not base64")
        if value is None:
            return self._refuse(policy, "InvalidSecret", f"Secret {ref.name} has no key {API_KEY_SECRET_KEY}")
        value = value.strip()
        if not value or NOT_A_HEADER_VALUE.search(value):
            # The message never quotes the value: it is a credential.
            return self._refuse(
                policy, "InvalidSecret", f"Secret {ref.name}: {API_KEY_SECRET_KEY} is empty or unusable"
            )
        header, prefix = API_KEY_TYPES[policy.spec.type][1:]
        self._report(policy, "Accepted", True, "Accepted", f"key from Secret {ref.name}")
        return ApiKey(header, prefix + value), None

    def _refuse(self, policy: BackendSecurityPolicy, reason: str, message: str) -> tuple[None, str]:
        self._report(policy, "Accepted", False, reason, message)
        return None, f"BackendSecurityPolicy {policy.namespace}/{policy.name} is not usable"


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
