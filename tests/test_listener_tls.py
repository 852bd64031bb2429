"""An HTTPS listener's certificate check: what a Secret must hold to be served, and what the refusal says (never the
key itself)."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from translators.gatewayapi.listener_tls import check_key_pair


def pair(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.example")])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, password: bytes | None = None) -> bytes:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()  # type: serialization.KeySerializationEncryption
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_a_certificate_and_its_own_key_are_served(kind: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa.generate_private_key(65537, 2048)
    assert check_key_pair(pair(key), key_pem(key)) is None
    # A chain: the leaf first, then what signed it; the key is the leaf's.
    assert check_key_pair(pair(key) + pair(ec.generate_private_key(ec.SECP256R1())), key_pem(key)) is None


def test_what_cannot_be_served_is_said_without_quoting_the_key() -> None:
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    certificate, secret = pair(key), key_pem(key)
    cases = {
        (b"Hello world\n", secret): "tls.crt holds no PEM certificate",  # the conformance suite's malformed Secret
        (certificate, b"Hello world\n"): "tls.key holds no unencrypted PEM private key",
        (certificate, key_pem(key, b"pass")): "tls.key holds no unencrypted PEM private key",
        (certificate, key_pem(other)): "tls.key is not the private key of the first certificate in tls.crt",
        (pair(other) + certificate, secret): "tls.key is not the private key of the first certificate in tls.crt",
    }
    for (chain, private_key), expected in cases.items():
        said = check_key_pair(chain, private_key)
        assert said == expected
        assert "PRIVATE" not in said and "BEGIN" not in said
