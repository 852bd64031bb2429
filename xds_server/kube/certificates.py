"""The certificates of mutual TLS between the Envoys and the control plane (DESIGN.md decision 15). Pure: issuing,
reading, and when to renew; `tls_secrets` keeps them in Secrets, the provisioner hands each Gateway its own.

- **CA**: ECDSA P-256, 10 years. When a third of its lifetime is left a new CA is *staged*: trusted at once (it joins
  the trust bundle every server and Envoy reads) but signing nothing until it has been trusted for
  `Lifetimes.ca_propagation` (1 day), so every Envoy and replica trusts it before the first certificate it signs is
  shown to them. The old CA stays trusted until it expires, so what it signed stays valid until renewed.
- **Server** (ADS and ext_proc, shared by the replicas): 1 year, the control-plane Service's DNS names, serverAuth.
- **Client** (one per Gateway, for all of its Envoys): 30 days, serial unique, one URI SAN naming the Gateway
  (`spiffe://xds-server/gateway/<ns>/<name>`, see `xds_server.identity`), clientAuth.

A leaf certificate is renewed when less than a third of its lifetime is left, or when it no longer fits: another
name, a CA no longer trusted, a key that does not match. Lifetimes are measured from notBefore, which is set a little
in the past (at most 5 minutes) for clocks slightly behind.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from xds_server.identity import gateway_of_names, gateway_uri

PrivateKey = ec.EllipticCurvePrivateKey
DAY = datetime.timedelta(days=1)
MAX_BACKDATE = datetime.timedelta(minutes=5)
RENEW_FRACTION = 3  # renewed when less than 1/3 of the lifetime is left
CA_NAME = "xds-server CA"


@dataclass(frozen=True)
class Lifetimes:
    ca: datetime.timedelta = 3650 * DAY
    server: datetime.timedelta = 365 * DAY
    client: datetime.timedelta = 30 * DAY
    ca_propagation: datetime.timedelta = DAY  # a staged CA is trusted this long before it signs


DEFAULT_LIFETIMES = Lifetimes()


@dataclass(frozen=True)
class KeyPair:
    certificate: x509.Certificate
    key: PrivateKey

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


@dataclass(frozen=True)
class Authority:
    """The CA that signs (`signing`), the one staged to replace it (`staged`), and every CA certificate accepted
    (`trusted`: those two and older ones not yet expired), newest first."""

    signing: KeyPair
    trusted: tuple[x509.Certificate, ...]
    staged: KeyPair | None = None

    @property
    def trust_pem(self) -> bytes:
        """The trust bundle: `ca.crt` of every certificate Secret, the servers' client CA list."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.trusted)

    def trusts(self, certificate: x509.Certificate, now: datetime.datetime) -> bool:
        """Signed by a trusted CA that has not expired."""
        return any(_signed_by(certificate, ca) and _valid_at(ca, now) for ca in self.trusted)


# --- reading -------------------------------------------------------------------------------------------------------


def load_pair(certificate_pem: bytes, key_pem: bytes) -> KeyPair | None:
    """A certificate and its key as stored; None when either does not parse or they do not belong together."""
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError:
        return None
    if not isinstance(key, PrivateKey) or key.public_key() != certificate.public_key():
        return None
    return KeyPair(certificate, key)


def load_certificates(pem: bytes) -> tuple[x509.Certificate, ...]:
    try:
        return tuple(x509.load_pem_x509_certificates(pem))
    except ValueError:
        return ()


def subject_names(certificate: x509.Certificate) -> tuple[list[str], list[str]]:
    """(DNS names, URIs) of the subject alternative names."""
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return sans.get_values_for_type(x509.DNSName), sans.get_values_for_type(x509.UniformResourceIdentifier)


def certificate_gateway(certificate: x509.Certificate) -> str | None:
    """The Gateway ("<ns>/<name>") a client certificate names."""
    return gateway_of_names(subject_names(certificate)[1])


def _signed_by(certificate: x509.Certificate, ca: x509.Certificate) -> bool:
    if certificate.issuer != ca.subject:
        return False
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _valid_at(certificate: x509.Certificate, now: datetime.datetime) -> bool:
    return certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc


# --- when to renew -------------------------------------------------------------------------------------------------


def renew_at(certificate: x509.Certificate) -> datetime.datetime:
    """When a third of the certificate's lifetime is left."""
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    return certificate.not_valid_after_utc - lifetime / RENEW_FRACTION


def renewal_due(certificate: x509.Certificate, now: datetime.datetime) -> bool:
    return now >= renew_at(certificate) or now < certificate.not_valid_before_utc


def server_current(pair: KeyPair, authority: Authority, names: Sequence[str], now: datetime.datetime) -> bool:
    """Whether the servers' certificate can stay: trusted, not due, exactly `names`."""
    dns, _ = subject_names(pair.certificate)
    return (
        sorted(dns) == sorted(names)
        and authority.trusts(pair.certificate, now)
        and not renewal_due(pair.certificate, now)
    )


def client_current(pair: KeyPair, authority: Authority, gateway: str, now: datetime.datetime) -> bool:
    """Whether a Gateway's certificate can stay: trusted, not due, naming that Gateway."""
    return (
        certificate_gateway(pair.certificate) == gateway
        and authority.trusts(pair.certificate, now)
        and not renewal_due(pair.certificate, now)
    )


# --- issuing -------------------------------------------------------------------------------------------------------


def _new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# RFC 5280's upper bound on a common name. A Gateway's namespace and name can be 63 + 253 characters; the name that
# counts is the SPIFFE URI in the subject alternative names, so a longer subject is cut.
MAX_COMMON_NAME = 64


def _builder(
    subject: str, public_key: ec.EllipticCurvePublicKey, now: datetime.datetime, lifetime: datetime.timedelta
) -> x509.CertificateBuilder:
    backdate = min(MAX_BACKDATE, lifetime / 10)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject[:MAX_COMMON_NAME])]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - backdate)
        .not_valid_after(now + lifetime)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def new_authority(now: datetime.datetime, lifetime: datetime.timedelta) -> KeyPair:
    """A self-signed CA that signs leaf certificates only (path length 0)."""
    key = _new_key()
    # The serial in the name too: a staged CA must not share its subject with the one it replaces.
    subject = f"{CA_NAME} {now.strftime('%Y%m%dT%H%M%SZ')}"
    builder = _builder(subject, key.public_key(), now, lifetime)
    certificate = (
        builder.issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(certificate, key)


def _key_usage(signs_certificates: bool) -> x509.KeyUsage:
    """Signatures only (ECDSA keys encipher nothing), plus certificate and CRL signing for a CA."""
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def first_authority(now: datetime.datetime, lifetime: datetime.timedelta) -> Authority:
    ca = new_authority(now, lifetime)
    return Authority(ca, (ca.certificate,))


def rotated(authority: Authority, now: datetime.datetime, lifetimes: Lifetimes) -> Authority | None:
    """The authority's next state, None when nothing changes: a CA staged when a third of the signing CA's life is
    left; the staged CA signing once trusted for `ca_propagation`; expired CAs no longer trusted."""
    signing, staged = authority.signing, authority.staged
    if staged is None and renewal_due(signing.certificate, now):
        staged = new_authority(now, lifetimes.ca)
    elif staged is not None and now - staged.certificate.not_valid_before_utc >= lifetimes.ca_propagation:
        signing, staged = staged, None
    keep = [signing.certificate] + ([staged.certificate] if staged is not None else [])
    keep += [c for c in authority.trusted if _valid_at(c, now) and c not in keep]
    trusted = tuple(sorted(keep, key=lambda c: c.not_valid_before_utc, reverse=True))
    changed = Authority(signing, trusted, staged)
    return None if changed == authority else changed


def _leaf(
    authority: Authority,
    subject: str,
    names: Sequence[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    now: datetime.datetime,
    lifetime: datetime.timedelta,
) -> KeyPair:
    key = _new_key()
    ca = authority.signing
    certificate = (
        _builder(subject, key.public_key(), now, lifetime)
        .issuer_name(ca.certificate.subject)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return KeyPair(certificate, key)


def service_names(service: str, namespace: str) -> list[str]:
    """The DNS names a Service is reached by: `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc`, `<svc>.<ns>.svc.cluster.local`
    (the last one first in the certificate's common name)."""
    qualified = f"{service}.{namespace}"
    return [service, qualified, f"{qualified}.svc", f"{qualified}.svc.cluster.local"]


def issue_server(
    authority: Authority, names: Sequence[str], now: datetime.datetime, lifetime: datetime.timedelta
) -> KeyPair:
    return _leaf(authority, names[-1], [x509.DNSName(n) for n in names], ExtendedKeyUsageOID.SERVER_AUTH, now, lifetime)


def issue_client(authority: Authority, gateway: str, now: datetime.datetime, lifetime: datetime.timedelta) -> KeyPair:
    """A Gateway's certificate: its Envoys' identity towards ADS and ext_proc."""
    uri = gateway_uri(gateway)
    return _leaf(
        authority,
        f"gateway {gateway}",
        [x509.UniformResourceIdentifier(uri)],
        ExtendedKeyUsageOID.CLIENT_AUTH,
        now,
        lifetime,
    )


# --- the CA as a Secret's data -------------------------------------------------------------------------------------

CA_CERTIFICATE, CA_KEY = "ca.crt", "ca.key"
STAGED_CERTIFICATE, STAGED_KEY = "staged.crt", "staged.key"
TRUST_BUNDLE = "trust.crt"


def authority_data(authority: Authority) -> dict[str, bytes]:
    data = {
        CA_CERTIFICATE: authority.signing.certificate_pem,
        CA_KEY: authority.signing.key_pem,
        TRUST_BUNDLE: authority.trust_pem,
    }
    if authority.staged is not None:
        data[STAGED_CERTIFICATE], data[STAGED_KEY] = authority.staged.certificate_pem, authority.staged.key_pem
    return data


def authority_of(data: Mapping[str, bytes]) -> Authority | None:
    """The authority a CA Secret holds; None when it is not one (missing or broken keys)."""
    signing = load_pair(data.get(CA_CERTIFICATE, b""), data.get(CA_KEY, b""))
    if signing is None:
        return None
    staged = None
    if STAGED_CERTIFICATE in data:
        staged = load_pair(data[STAGED_CERTIFICATE], data.get(STAGED_KEY, b""))
    trusted = list(load_certificates(data.get(TRUST_BUNDLE, b"")))
    for ca in (signing, staged):
        if ca is not None and ca.certificate not in trusted:
            trusted.append(ca.certificate)
    ordered = tuple(sorted(trusted, key=lambda c: c.not_valid_before_utc, reverse=True))
    return Authority(signing, ordered, staged)
