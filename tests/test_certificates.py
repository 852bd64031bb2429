"""The certificates of mutual TLS: what is issued (names, usages, chain), who a certificate names, when each is renewed
(a third of its lifetime left, or no longer fitting), the CA's staged rotation, and the provisioner's per-Gateway
certificates (kept, adopted from the cluster, issued, renewed on time)."""

from __future__ import annotations

import base64
import datetime

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from xds_server.identity import GATEWAY_URI_PREFIX, gateway_of_names, gateway_of_uri, gateway_uri
from xds_server.kube.certificates import (
    Authority,
    Lifetimes,
    authority_data,
    authority_of,
    certificate_gateway,
    client_current,
    first_authority,
    issue_client,
    issue_server,
    load_pair,
    renew_at,
    renewal_due,
    rotated,
    server_current,
    service_names,
    subject_names,
)
from xds_server.kube.tls_secrets import GatewayCertificates, encoded

NOW = datetime.datetime(2026, 12, 5, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
LIFETIMES = Lifetimes()
NAMES = service_names("xds-server", "system")


@pytest.fixture(scope="module")
def authority() -> Authority:
    return first_authority(NOW, LIFETIMES.ca)


def usages(certificate: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_a_gateway_is_named_by_one_spiffe_uri_and_nothing_else_passes_for_one() -> None:
    assert gateway_uri("team-a/gw") == "spiffe://xds-server/gateway/team-a/gw"
    assert gateway_of_uri("spiffe://xds-server/gateway/team-a/gw") == "team-a/gw"
    for other in (
        "spiffe://xds-server/gateway/team-a",
        "spiffe://xds-server/gateway/team-a/gw/extra",
        "spiffe://xds-server/gateway//gw",
        "spiffe://other/gateway/team-a/gw",
        "https://xds-server/gateway/team-a/gw",
        "",
    ):
        assert gateway_of_uri(other) is None, other
    with pytest.raises(ValueError):
        gateway_uri("no-slash")
    # A certificate naming two Gateways names none.
    assert gateway_of_names([GATEWAY_URI_PREFIX + "a/x", GATEWAY_URI_PREFIX + "b/y"]) is None
    assert gateway_of_names(["xds-server.system.svc", GATEWAY_URI_PREFIX + "a/x"]) == "a/x"


def test_the_ca_signs_leaves_only_and_the_leaves_carry_their_names_and_usages(authority: Authority) -> None:
    ca = authority.signing.certificate
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert ca.not_valid_after_utc - NOW == LIFETIMES.ca

    server = issue_server(authority, NAMES, NOW, LIFETIMES.server)
    server.certificate.verify_directly_issued_by(ca)
    assert subject_names(server.certificate) == (NAMES, [])
    assert NAMES == [
        "xds-server",
        "xds-server.system",
        "xds-server.system.svc",
        "xds-server.system.svc.cluster.local",
    ]
    assert usages(server.certificate) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert certificate_gateway(server.certificate) is None  # never an Envoy's identity

    client = issue_client(authority, "team-a/gw", NOW, LIFETIMES.client)
    client.certificate.verify_directly_issued_by(ca)
    assert subject_names(client.certificate) == ([], ["spiffe://xds-server/gateway/team-a/gw"])
    assert certificate_gateway(client.certificate) == "team-a/gw"
    assert usages(client.certificate) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not client.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    again = issue_client(authority, "team-a/gw", NOW, LIFETIMES.client)
    assert again.certificate.serial_number != client.certificate.serial_number
    assert again.key_pem != client.key_pem


def test_a_gateway_with_a_long_name_gets_its_certificate_named_in_full_by_its_uri(authority: Authority) -> None:
    # The Gateway API conformance suite's Gateways are like this one: the common name is cut at RFC 5280's 64
    # characters (the issuer refused the certificate before, and with it every Gateway's provisioning pass).
    gateway = "gateway-conformance-infra/gateway-with-a-name-long-enough-to-pass-sixty-four"
    client = issue_client(authority, gateway, NOW, LIFETIMES.client)
    [common_name] = client.certificate.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    assert len(str(common_name.value)) == 64 and str(common_name.value).startswith("gateway gateway-conformance-infra/")
    assert subject_names(client.certificate)[1] == [gateway_uri(gateway)]
    assert client_current(client, authority, gateway, NOW)


def test_a_stored_pair_must_parse_and_belong_together(authority: Authority) -> None:
    one = issue_client(authority, "a/gw", NOW, LIFETIMES.client)
    two = issue_client(authority, "a/gw", NOW, LIFETIMES.client)
    loaded = load_pair(one.certificate_pem, one.key_pem)
    assert loaded is not None and loaded.certificate == one.certificate
    assert load_pair(one.certificate_pem, two.key_pem) is None
    assert load_pair(b"not a certificate", one.key_pem) is None
    assert load_pair(one.certificate_pem, b"") is None


def test_a_leaf_is_renewed_when_a_third_of_its_lifetime_is_left(authority: Authority) -> None:
    client = issue_client(authority, "a/gw", NOW, LIFETIMES.client)
    certificate = client.certificate
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert renew_at(certificate) == certificate.not_valid_after_utc - lifetime / 3
    assert not renewal_due(certificate, NOW)
    assert not renewal_due(certificate, renew_at(certificate) - datetime.timedelta(seconds=1))
    assert renewal_due(certificate, renew_at(certificate))
    assert client_current(client, authority, "a/gw", NOW)
    assert not client_current(client, authority, "a/gw", renew_at(certificate))
    # About 20 days of 30: the Secret is rewritten well before the certificate expires.
    assert datetime.timedelta(days=19) < renew_at(certificate) - NOW < datetime.timedelta(days=21)

    server = issue_server(authority, NAMES, NOW, LIFETIMES.server)
    assert server_current(server, authority, NAMES, NOW)
    assert not server_current(server, authority, NAMES, NOW + 250 * DAY)
    assert not server_current(server, authority, service_names("renamed", "system"), NOW)


def test_a_certificate_no_longer_fitting_is_not_current(authority: Authority) -> None:
    client = issue_client(authority, "a/gw", NOW, LIFETIMES.client)
    assert not client_current(client, authority, "a/other", NOW)  # names another Gateway
    stranger = first_authority(NOW, LIFETIMES.ca)
    assert not client_current(client, stranger, "a/gw", NOW)  # a CA no longer trusted
    assert not client_current(issue_client(stranger, "a/gw", NOW, LIFETIMES.client), authority, "a/gw", NOW)
    # Very short lifetimes (the renewal tests') keep the same rule.
    short = issue_client(authority, "a/gw", NOW, datetime.timedelta(seconds=30))
    assert short.certificate.not_valid_before_utc == NOW - datetime.timedelta(seconds=3)
    assert not renewal_due(short.certificate, NOW + datetime.timedelta(seconds=10))
    assert renewal_due(short.certificate, NOW + datetime.timedelta(seconds=20))


def test_the_ca_rotates_in_stages_so_every_party_trusts_the_new_one_before_it_signs(authority: Authority) -> None:
    assert rotated(authority, NOW + 365 * DAY, LIFETIMES) is None  # nothing to do for years
    old = authority.signing.certificate
    # A third of its life left: a new CA is staged, trusted by all, signing nothing yet.
    when = renew_at(old) + datetime.timedelta(hours=1)
    old_leaf = issue_client(authority, "a/gw", when - DAY, LIFETIMES.client)
    staged = rotated(authority, when, LIFETIMES)
    assert staged is not None and staged.staged is not None
    assert staged.signing is authority.signing
    assert staged.trusted == (staged.staged.certificate, old)
    assert rotated(staged, when + datetime.timedelta(hours=1), LIFETIMES) is None  # propagating

    # Trusted for a day: it signs from now on; the old one stays trusted (its leaves are still in use).
    promoted = rotated(staged, when + 2 * DAY, LIFETIMES)
    assert promoted is not None and promoted.staged is None
    assert promoted.signing is staged.staged
    assert old in promoted.trusted
    assert client_current(old_leaf, promoted, "a/gw", when + 2 * DAY)  # not renewed merely for the new CA
    new_leaf = issue_client(promoted, "a/gw", when + 2 * DAY, LIFETIMES.client)
    assert new_leaf.certificate.issuer == promoted.signing.certificate.subject
    assert promoted.trusts(new_leaf.certificate, when + 2 * DAY)

    # Expired, the old CA leaves the bundle, and what it signed is no longer current.
    after = old.not_valid_after_utc + DAY
    pruned = rotated(promoted, after, LIFETIMES)
    assert pruned is not None and pruned.trusted == (promoted.signing.certificate,)


def test_the_ca_round_trips_through_its_secret(authority: Authority) -> None:
    staged = rotated(authority, renew_at(authority.signing.certificate), LIFETIMES)
    assert staged is not None
    for state in (authority, staged):
        loaded = authority_of(authority_data(state))
        assert loaded is not None
        assert loaded.signing.certificate == state.signing.certificate
        assert loaded.trusted == state.trusted
        assert (loaded.staged is None) == (state.staged is None)
    assert authority_of({}) is None
    assert authority_of({"ca.crt": authority.signing.certificate_pem, "ca.key": b"broken"}) is None


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime.datetime:
        return self.now


def secret(name: str, certificate_pem: bytes, key_pem: bytes) -> tuple[str, dict[str, object]]:
    return name, {"data": encoded({"tls.crt": certificate_pem, "tls.key": key_pem})}


def test_gateway_certificates_are_kept_adopted_issued_and_renewed_on_time(authority: Authority) -> None:
    clock = Clock()
    certificates = GatewayCertificates(lambda: authority, LIFETIMES.client, clock)
    names = {"a/one": "envoy-a-one-tls", "a/two": "envoy-a-two-tls", "a/three": "envoy-a-three-tls"}

    # What the cluster holds: a current certificate (adopted), one in the wrong Secret and an expired one (not).
    kept = issue_client(authority, "a/one", NOW - DAY, LIFETIMES.client)
    misplaced = issue_client(authority, "a/two", NOW, LIFETIMES.client)
    expired = issue_client(authority, "a/three", NOW - 40 * DAY, LIFETIMES.client)
    certificates.adopt(
        [
            secret(names["a/one"], kept.certificate_pem, kept.key_pem),
            secret(names["a/three"], misplaced.certificate_pem, misplaced.key_pem),
            secret(names["a/three"], expired.certificate_pem, expired.key_pem),
            ("broken", {"data": {"tls.crt": base64.b64encode(b"x").decode()}}),
        ],
        names.__getitem__,
    )
    assert certificates.seeded
    assert certificates.pair("a/one") is not None and certificates.pair("a/one").certificate == kept.certificate
    two = certificates.pair("a/two")
    assert two.certificate != misplaced.certificate and certificate_gateway(two.certificate) == "a/two"
    assert certificates.pair("a/two") is two  # the same until due

    # The next pass is due when the first certificate held is (a/one, issued a day earlier).
    assert certificates.seconds_to_renewal() == pytest.approx((renew_at(kept.certificate) - NOW).total_seconds())
    clock.now = renew_at(kept.certificate)
    renewed = certificates.pair("a/one")
    assert renewed.certificate != kept.certificate and client_current(renewed, authority, "a/one", clock.now)
    assert certificates.pair("a/two") is two  # not due yet

    certificates.keep_only(["a/two"])
    assert certificates.seconds_to_renewal() == pytest.approx((renew_at(two.certificate) - clock.now).total_seconds())
