"""Which backends Envoy reaches over TLS, and how: resources -> `UpstreamTlsIR` per Service port or Backend.

Three sources, as Envoy Gateway reads them:

- a Gateway API `BackendTLSPolicy` targeting a Service (all ports, or one by name) or an Envoy Gateway Backend: its
  CA certificates (or the system's), its `hostname` as the SNI, and the name verified (its `subjectAltNames` when
  given, else the hostname). Where it applies it wins over `Backend.spec.tls` (every field of the subset read here);
- `Backend.spec.tls`: CA certificates, the system's, or no verification at all (`insecureSkipVerify`, only when
  asked), and the SNI (default: the endpoints' hostname), which is also the name verified;
- no setting at all, an fqdn Backend on port 443: TLS with the system CAs, SNI and verified name its hostname.
  Plain HTTP to port 443 of a name on the network is never what was meant, and would carry credentials in clear.

TLS that was asked for but cannot be set up (a missing CA, a policy that is not valid) is a refusal: the rule sending
there answers 500, and nothing goes to the backend in plain text instead. Verdicts on each policy and Backend are
kept as conditions, for whoever holds the status book to report (`report`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from translators.ir import CaSource, SanKind, SubjectNameIR, UpstreamTlsIR
from translators.loader import ObjectKey, ResourceSet
from translators.resources import Backend, BackendTLSPolicy, ConfigMap, Resource, Secret, Service
from translators.resources.envoy_gateway import ENVOY_GATEWAY_GROUP, TLS_PORT, BackendEndpoint, BackendTLSSettings
from translators.resources.gateway_api import SYSTEM_CAS, LocalObjectReference, PolicyTargetReference

CA_KEY = "ca.crt"  # the key of a CA ConfigMap or Secret, in Gateway API and Envoy Gateway alike
IMPLIED_BY_PORT = "TLS with the system CAs, as port 443 implies"
# A condition of this project's own on a Backend (and the AIServiceBackends using it): how its upstream is reached.
UPSTREAM_TLS_CONDITION = "xds-server.io/UpstreamTLS"
_SERVICE = ("", "Service")
_BACKEND = (ENVOY_GATEWAY_GROUP, "Backend")

# (object, condition type, ok, reason, message): how problems reach the object's status.
Report = Callable[[Resource, str, bool, str, str], None]


@dataclass(frozen=True)
class Refusal:
    """Why TLS that was asked for cannot be set up; `reason` is the ResolvedRefs reason of the routes sending there."""

    reason: str
    message: str


@dataclass(frozen=True)
class TargetTls:
    """How one Service port or Backend is reached: plain (`tls` None), over TLS, or not at all (`refusal`)."""

    tls: UpstreamTlsIR | None = None
    refusal: Refusal | None = None
    implied: bool = False  # TLS only because an fqdn endpoint is on port 443


PLAIN = TargetTls()


@dataclass(frozen=True)
class _Verdict:
    obj: Resource
    type: str
    ok: bool
    reason: str
    message: str


@dataclass(frozen=True)
class _CaBundle:
    pem: str  # the usable certificates, PEM; "" when none is
    problems: tuple[str, ...]  # one per unusable reference
    wrong_kind: bool = False  # some reference names a kind that is neither ConfigMap nor Secret


def _pem_certificates(data: bytes) -> str | None:
    """The PEM certificates in `data`, re-encoded (so no stray text reaches Envoy), or None when there are none."""
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        return None
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certificates)


_WANTS_TLS = attrgetter("spec.wants_tls")


def _on_tls_port(endpoint: BackendEndpoint) -> bool:
    """An fqdn endpoint on 443: TLS, implied (see UpstreamTls._implied)."""
    return endpoint.fqdn is not None and endpoint.fqdn.port == TLS_PORT


def _sni_hostnames(backend: Backend) -> list[str]:
    return sorted({e.fqdn.hostname for e in backend.spec.endpoints if e.fqdn is not None})


class UpstreamTls:
    """Resolves every BackendTLSPolicy and Backend TLS setting of one ResourceSet once; answers per target."""

    def __init__(self, resources: ResourceSet) -> None:
        self._resources = resources
        self._verdicts: list[_Verdict] = []
        # (kind, namespace, name, sectionName or None) -> the policy that applies there (the oldest, on a conflict).
        self._policies: dict[tuple[str, str, str, str | None], BackendTLSPolicy] = {}
        self._policy_tls: dict[tuple[str, str], TargetTls] = {}
        self._backends: dict[tuple[str, str], TargetTls] = {}
        policies = sorted(
            resources.of_kind(BackendTLSPolicy),
            key=lambda p: p.seniority,
        )
        for policy in policies:
            self._policy_tls[(policy.namespace, policy.name)] = self._resolve_policy(policy)
            self._attach(policy)
        # Every Backend's TLS, read without tracking the kind: each answer (`backend`) records the one it is about.
        # Most have none (no policy, no tls, no fqdn endpoint on 443): PLAIN, which `backend` answers for them.
        # The question is asked of thousands of Backends at each reload: in C, and the key only for the few.
        for backend in resources.matching(Backend, _WANTS_TLS):
            self._backends[(backend.namespace, backend.name)] = self._resolve_backend(backend)
        for kind, namespace, name, _ in self._policies:  # a policy's target says nothing: no verdict, no order
            targeted = resources.objects.get(ObjectKey(kind, namespace, name)) if kind == "Backend" else None
            if isinstance(targeted, Backend) and (namespace, name) not in self._backends:
                self._backends[(namespace, name)] = self._resolve_backend(targeted)

    # --- answers -------------------------------------------------------------------------------------------------

    def service(self, namespace: str, name: str, port: int) -> TargetTls:
        """A Service port: the policy naming that port (by its name), else one naming the whole Service, else plain."""
        service = self._resources.get(Service, namespace, name)
        port_name = next((p.name for p in service.spec.ports if p.port == port), None) if service else None
        policy = self._policy_of("Service", namespace, name, port_name) if port_name else None
        policy = policy or self._policy_of("Service", namespace, name, None)
        return self._policy_tls[(policy.namespace, policy.name)] if policy is not None else PLAIN

    def backend(self, namespace: str, name: str) -> TargetTls:
        """An Envoy Gateway Backend (that exists): its policy, else its own settings, else what its port implies."""
        self._resources.read(Backend, namespace, name)
        return self._backends.get((namespace, name), PLAIN)

    def report(self, report: Report) -> None:
        """Every verdict on a BackendTLSPolicy (Accepted, ResolvedRefs) and a Backend (its TLS), in a stable order."""
        for verdict in self._verdicts:
            report(verdict.obj, verdict.type, verdict.ok, verdict.reason, verdict.message)

    # --- policies ------------------------------------------------------------------------------------------------

    def _policy_of(self, kind: str, namespace: str, name: str, section: str | None) -> BackendTLSPolicy | None:
        return self._policies.get((kind, namespace, name, section))

    def _say(self, obj: Resource, type_: str, ok: bool, reason: str, message: str) -> None:
        self._verdicts.append(_Verdict(obj, type_, ok, reason, message))

    def _attach(self, policy: BackendTLSPolicy) -> None:
        """Places the policy on each target it names that exists; Accepted says where it applies and where not."""
        attached = []
        for target in policy.spec.target_refs:
            where = f"{target.kind} {policy.namespace}/{target.name}" + (
                f" port {target.section_name}" if target.section_name else ""
            )
            problem = self._target_problem(policy.namespace, target)
            if problem is not None:
                self._say(policy, "Accepted", False, problem[0], f"targetRef {where}: {problem[1]}")
                continue
            key = (target.kind, policy.namespace, target.name, target.section_name)
            holder = self._policies.setdefault(key, policy)
            if holder is not policy:  # older (or first by name): it keeps the target
                message = f"targetRef {where}: BackendTLSPolicy {holder.name} applies there already"
                self._say(policy, "Accepted", False, "Conflicted", message)
                continue
            attached.append(where)
        if attached:
            self._say(policy, "Accepted", True, "Accepted", f"applies to {', '.join(attached)}")

    def _target_problem(self, namespace: str, target: PolicyTargetReference) -> tuple[str, str] | None:
        if (target.group, target.kind) == _SERVICE:
            service = self._resources.get(Service, namespace, target.name)
            if service is None:
                return "TargetNotFound", "not found"
            if target.section_name is not None and all(p.name != target.section_name for p in service.spec.ports):
                return "TargetNotFound", f"the Service has no port named {target.section_name}"
            return None
        if (target.group, target.kind) == _BACKEND:
            if self._resources.get(Backend, namespace, target.name) is None:
                return "TargetNotFound", "not found"
            if target.section_name is not None:
                return "Invalid", "a Backend has no sections: leave sectionName out"
            return None
        kind = f"{target.group}/{target.kind}" if target.group else target.kind
        return "Invalid", f"kind {kind} is not supported (a Service, or a {ENVOY_GATEWAY_GROUP} Backend, is)"

    def _resolve_policy(self, policy: BackendTLSPolicy) -> TargetTls:
        """The TLS a policy asks for, or its refusal; its ResolvedRefs (and Accepted when unusable) say which."""
        validation = policy.spec.validation
        where = f"BackendTLSPolicy {policy.namespace}/{policy.name}"
        names = tuple(
            SubjectNameIR(SanKind.DNS, san.hostname) if san.hostname else SubjectNameIR(SanKind.URI, san.uri or "")
            for san in validation.subject_alt_names
        ) or (SubjectNameIR(SanKind.DNS, validation.hostname),)
        if validation.well_known_ca_certificates is not None:
            self._say(policy, "ResolvedRefs", True, "ResolvedRefs", "no CA certificate reference to resolve")
            if validation.well_known_ca_certificates != SYSTEM_CAS:
                message = (
                    f"wellKnownCACertificates {validation.well_known_ca_certificates} is not supported (System is)"
                )
                self._say(policy, "Accepted", False, "Invalid", message)
                return TargetTls(refusal=Refusal("InvalidBackendTLS", f"{where}: {message}"))
            return TargetTls(UpstreamTlsIR(CaSource.SYSTEM, sni=validation.hostname, verify_names=names))
        bundle = self._ca_bundle(policy.namespace, validation.ca_certificate_refs)
        if bundle.problems:
            reason = "InvalidKind" if bundle.wrong_kind else "InvalidCACertificateRef"
            self._say(policy, "ResolvedRefs", False, reason, "; ".join(bundle.problems))
        else:
            self._say(policy, "ResolvedRefs", True, "ResolvedRefs", "every CA certificate reference resolved")
        if not bundle.pem:
            message = "no usable CA certificate: " + "; ".join(bundle.problems)
            self._say(policy, "Accepted", False, "NoValidCACertificate", message)
            return TargetTls(refusal=Refusal("InvalidCACertificateRef", f"{where}: {message}"))
        tls = UpstreamTlsIR(CaSource.INLINE, bundle.pem, validation.hostname, names)
        return TargetTls(tls)

    def _ca_bundle(self, namespace: str, refs: Sequence[LocalObjectReference]) -> _CaBundle:
        """The certificates of the references that can be used, and why each other one cannot. Using only the
        good ones trusts less than was asked, never more."""
        pems: list[str] = []
        problems: list[str] = []
        wrong_kind = False
        for ref in refs:
            where = f"{ref.kind} {namespace}/{ref.name}"
            if ref.group != "" or ref.kind not in ("ConfigMap", "Secret"):
                kind = f"{ref.group}/{ref.kind}" if ref.group else ref.kind
                problems.append(f"caCertificateRef kind {kind} is not supported (a ConfigMap or a Secret is)")
                wrong_kind = True
                continue
            data, problem = self._ca_data(namespace, ref)
            if problem is not None:
                problems.append(f"{where}: {problem}")
                continue
            pem = _pem_certificates(data)
            if pem is None:
                problems.append(f"{where}: {CA_KEY} holds no PEM certificate")
                continue
            pems.append(pem)
        return _CaBundle("".join(pems), tuple(problems), wrong_kind)

    def _ca_data(self, namespace: str, ref: LocalObjectReference) -> tuple[bytes, str | None]:
        if ref.kind == "ConfigMap":
            config_map = self._resources.get(ConfigMap, namespace, ref.name)
            if config_map is None:
                return b"", "not found"
            text = config_map.data.get(CA_KEY)
            return (text.encode(), None) if text is not None else (b"", f"has no key {CA_KEY}")
        secret = self._resources.get(Secret, namespace, ref.name)
        if secret is None:
            return b"", "not found"
        try:
            value = secret.value(CA_KEY)
        except ValueError as exc:
            return b"", str(exc)
        return (value, None) if value is not None else (b"", f"has no key {CA_KEY}")

    # --- Backends ------------------------------------------------------------------------------------------------

    def _resolve_backend(self, backend: Backend) -> TargetTls:
        policy = self._policy_of("Backend", backend.namespace, backend.name, None)
        if policy is not None:  # it wins over Backend.spec.tls: every field read here is one it sets
            return self._policy_tls[(policy.namespace, policy.name)]
        settings = backend.spec.tls
        if settings is not None:
            return self._own_settings(backend, settings)
        return self._implied(backend)

    def _sni(self, backend: Backend, explicit: str | None) -> str | Refusal | None:
        """The SNI: the one given, else the endpoints' hostname (None for IP and unix endpoints)."""
        if explicit is not None:
            return explicit
        hostnames = _sni_hostnames(backend)
        if len(hostnames) > 1:
            message = f"Backend {backend.ref}: endpoints {', '.join(hostnames)} need one SNI: set tls.sni"
            return Refusal("UnsupportedValue", message)
        return hostnames[0] if hostnames else None

    def _own_settings(self, backend: Backend, settings: BackendTLSSettings) -> TargetTls:
        """Backend.spec.tls. With neither CA references nor well-known CAs nor insecureSkipVerify, the system CAs:
        TLS that verifies nothing is only ever what was asked for in so many words."""
        sni = self._sni(backend, settings.sni)
        if isinstance(sni, Refusal):
            self._say(backend, UPSTREAM_TLS_CONDITION, False, sni.reason, sni.message)
            return TargetTls(refusal=sni)
        names = (SubjectNameIR(SanKind.DNS, sni),) if sni else ()
        if settings.insecure_skip_verify:
            self._say(backend, UPSTREAM_TLS_CONDITION, True, "InsecureSkipVerify", "TLS, the server not verified")
            return TargetTls(UpstreamTlsIR(CaSource.NONE, sni=sni))
        if settings.ca_certificate_refs:
            bundle = self._ca_bundle(backend.namespace, settings.ca_certificate_refs)
            if bundle.problems:
                self._say(backend, "ResolvedRefs", False, "InvalidCACertificateRef", "; ".join(bundle.problems))
            if not bundle.pem:
                message = f"Backend {backend.ref}: no usable CA certificate: " + "; ".join(bundle.problems)
                return TargetTls(refusal=Refusal("InvalidCACertificateRef", message))
            self._say(backend, UPSTREAM_TLS_CONDITION, True, "CACertificateRefs", "TLS with its CA certificates")
            return TargetTls(UpstreamTlsIR(CaSource.INLINE, bundle.pem, sni, names))
        well_known = settings.well_known_ca_certificates or SYSTEM_CAS
        if well_known != SYSTEM_CAS:
            message = f"Backend {backend.ref}: wellKnownCACertificates {well_known} is not supported (System is)"
            self._say(backend, UPSTREAM_TLS_CONDITION, False, "UnsupportedValue", message)
            return TargetTls(refusal=Refusal("UnsupportedValue", message))
        self._say(backend, UPSTREAM_TLS_CONDITION, True, "SystemCAs", "TLS with the system CAs")
        return TargetTls(UpstreamTlsIR(CaSource.SYSTEM, sni=sni, verify_names=names))

    def _implied(self, backend: Backend) -> TargetTls:
        """No TLS setting: plain, unless an fqdn endpoint is on port 443 (then every endpoint must be one)."""
        endpoints = backend.spec.endpoints
        on_443 = [e for e in endpoints if _on_tls_port(e)]
        if not on_443:
            return PLAIN
        if len(on_443) < len(endpoints):
            message = (
                f"Backend {backend.ref}: fqdn endpoints on port {TLS_PORT} (TLS) and others: "
                "say which speak TLS with tls or a BackendTLSPolicy"
            )
            self._say(backend, UPSTREAM_TLS_CONDITION, False, "UnsupportedValue", message)
            return TargetTls(refusal=Refusal("UnsupportedValue", message))
        sni = self._sni(backend, None)
        if isinstance(sni, Refusal):
            self._say(backend, UPSTREAM_TLS_CONDITION, False, sni.reason, sni.message)
            return TargetTls(refusal=sni)
        assert sni is not None  # every endpoint is an fqdn one
        self._say(backend, UPSTREAM_TLS_CONDITION, True, "ImpliedByPort", IMPLIED_BY_PORT)
        names = (SubjectNameIR(SanKind.DNS, sni),)
        return TargetTls(UpstreamTlsIR(CaSource.SYSTEM, sni=sni, verify_names=names), implied=True)
