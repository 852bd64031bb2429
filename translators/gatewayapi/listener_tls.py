"""An HTTPS listener's certificates: its certificateRefs resolved to Secrets (in another namespace only where a
ReferenceGrant lets the Gateway refer to them) and checked: a PEM certificate chain in `tls.crt`, and in `tls.key` the
private key of its first certificate. A Secret that fails a check is named in the listener's status, never served."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from translators.backends import ReferenceGrants
from translators.ir import CertificateIR
from translators.loader import ResourceSet
from translators.resources import Gateway, Secret
from translators.resources.gateway_api import Listener, SecretObjectReference

CERTIFICATE_KEY, PRIVATE_KEY_KEY = "tls.crt", "tls.key"


def certificate_name(namespace: str, name: str) -> str:
    """The SDS resource name of a Secret's certificate: one per Secret, shared by every listener presenting it."""
    return f"secret/{namespace}/{name}"


@dataclass(frozen=True)
class RefProblem:
    reason: str  # a listener ResolvedRefs reason: InvalidCertificateRef or RefNotPermitted
    message: str


@dataclass(frozen=True)
class ListenerCertificates:
    certificates: tuple[CertificateIR, ...]  # in certificateRefs order
    problems: tuple[RefProblem, ...]


def _der(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_key_pair(chain: bytes, key: bytes) -> str | None:
    """Why `chain` and `key` (PEM) cannot be served together, or None when they can. Never quotes either."""
    try:
        certificates = x509.load_pem_x509_certificates(chain)
    except ValueError:
        return f"{CERTIFICATE_KEY} holds no PEM certificate"
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):  # TypeError: an encrypted key (Envoy has no password for it)
        return f"{PRIVATE_KEY_KEY} holds no unencrypted PEM private key"
    except UnsupportedAlgorithm:
        return f"{PRIVATE_KEY_KEY} holds a private key of an unsupported kind"
    if _der(certificates[0].public_key()) != _der(private_key.public_key()):
        return f"{PRIVATE_KEY_KEY} is not the private key of the first certificate in {CERTIFICATE_KEY}"
    return None


class ListenerTls:
    """Resolves certificateRefs, reading and checking each Secret once per translation."""

    def __init__(self, resources: ResourceSet, grants: ReferenceGrants) -> None:
        self._resources = resources
        self._grants = grants
        self._checked: dict[tuple[str, str], CertificateIR | str] = {}

    def certificates(self, gateway: Gateway, listener: Listener) -> ListenerCertificates:
        assert listener.tls is not None
        found: list[CertificateIR] = []
        problems: list[RefProblem] = []
        for ref in listener.tls.certificate_refs:
            resolved = self._resolve(gateway, ref)
            if isinstance(resolved, RefProblem):
                problems.append(resolved)
            else:
                found.append(resolved)
        if not listener.tls.certificate_refs:
            problems.append(RefProblem("InvalidCertificateRef", "tls.certificateRefs is empty"))
        return ListenerCertificates(tuple(found), tuple(problems))

    def _resolve(self, gateway: Gateway, ref: SecretObjectReference) -> CertificateIR | RefProblem:
        namespace = ref.namespace or gateway.namespace
        where = f"certificateRef {namespace}/{ref.name}"
        if (ref.group, ref.kind) != ("", "Secret"):
            kind = f"{ref.group}/{ref.kind}" if ref.group else ref.kind
            return RefProblem("InvalidCertificateRef", f"{where}: kind {kind} is not supported (a core Secret is)")
        if not self._grants.allows(gateway, "", "Secret", namespace, ref.name):
            return RefProblem("RefNotPermitted", f"{where}: Secret in namespace {namespace} needs a ReferenceGrant")
        key = (namespace, ref.name)
        if key not in self._checked:
            self._checked[key] = self._read(namespace, ref.name)
        checked = self._checked[key]
        if isinstance(checked, str):
            return RefProblem("InvalidCertificateRef", f"{where}: {checked}")
        return checked

    def _read(self, namespace: str, name: str) -> CertificateIR | str:
        """The Secret's certificate, or why it has none usable."""
        secret = self._resources.get(Secret, namespace, name)
        if secret is None:
            return "Secret not found"
        try:
            chain, key = secret.value(CERTIFICATE_KEY), secret.value(PRIVATE_KEY_KEY)
        except ValueError as exc:
            return str(exc)
        if chain is None or key is None:
            return f"the Secret needs keys {CERTIFICATE_KEY} and {PRIVATE_KEY_KEY} (type kubernetes.io/tls)"
        problem = check_key_pair(chain, key)
        if problem is not None:
            return problem
        return CertificateIR(certificate_name(namespace, name), chain.decode(), key.decode())
