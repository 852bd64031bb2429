"""The certificates of `certificates`, kept in Secrets of the controller namespace and shared by the replicas.

- `<service>-ca` (type `xds-server.io/ca`): the CA's certificate and key, a staged successor's, and the trust bundle.
- `<service>-server-tls` (type `kubernetes.io/tls`): the certificate ADS and ext_proc present, for the Service's
  DNS names, plus `ca.crt`.
Neither carries the provisioner's `managed-by` label: no Gateway owns them and no pass deletes them.

Every replica reads them at start and every `REFRESH_SECONDS`; whichever finds one missing or due writes it, with
the API server as the referee: a create that gets 409 (another replica created it first) or a replace that gets 409
(another replica changed it since it was read) reads the winner's and uses that. So all replicas present the same
server certificate and trust the same CAs, and a renewal reaches every replica's servers within a refresh, without a
restart (`xds_server.tls`).

`GatewayCertificates` is the provisioner's part: one client certificate per Gateway (in that Gateway's `-tls` Secret,
applied with its other objects), kept while current, adopted from the cluster when a Secret there holds a current one
(after a restart or a change of leader), issued otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from xds_server import metrics
from xds_server.kube.api import call
from xds_server.kube.certificates import (
    DEFAULT_LIFETIMES,
    Authority,
    KeyPair,
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
    rotated,
    server_current,
    service_names,
)
from xds_server.tls import ServerCertificate

log = logging.getLogger(__name__)

CA_SECRET_TYPE = "xds-server.io/ca"
TLS_SECRET_TYPE = "kubernetes.io/tls"
TLS_CERTIFICATE, TLS_KEY, TLS_CA = "tls.crt", "tls.key", "ca.crt"
REFRESH_SECONDS = 300.0
RETRY_SECONDS = 10.0
LABELS = {
    "app.kubernetes.io/name": "xds-server",
    "app.kubernetes.io/component": "control-plane-tls",
    "app.kubernetes.io/part-of": "xds-server",
}
ATTEMPTS = 3  # of a write that conflicts with another replica's, before waiting for the next refresh


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def secret_data(secret: Mapping[str, Any] | None) -> dict[str, bytes]:
    """A Secret's data, decoded (keys whose value is not base64 are left out)."""
    found: dict[str, bytes] = {}
    for key, value in ((secret or {}).get("data") or {}).items():
        try:
            found[str(key)] = base64.b64decode(str(value), validate=True)
        except ValueError:
            continue
    return found


def encoded(data: Mapping[str, bytes]) -> dict[str, str]:
    return {key: base64.b64encode(value).decode() for key, value in sorted(data.items())}


class CertificateError(Exception):
    """A Secret of ours holds something unusable; the message says which and what to do."""


class ControlPlaneCertificates:
    """The CA and the servers' certificate of this control plane (`service` in `namespace`)."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        service: str,
        lifetimes: Lifetimes = DEFAULT_LIFETIMES,
        clock: Callable[[], datetime.datetime] = utc_now,
    ) -> None:
        self._api = api
        self.namespace = namespace
        self.names = service_names(service, namespace)
        self.ca_secret = f"{service}-ca"
        self.server_secret = f"{service}-server-tls"
        self.lifetimes = lifetimes
        self._clock = clock
        self.authority: Authority | None = None
        self.server: ServerCertificate | None = None
        self.listeners: list[Callable[[], None]] = []  # told when the authority changed (the trust bundle to hand out)

    @property
    def server_name(self) -> str:
        """The name Envoys send as SNI and verify in the servers' certificate."""
        return self.names[-1]

    async def load(self) -> ServerCertificate:
        """At start: the CA and the servers' certificate, made if missing."""
        await self.refresh()
        assert self.server is not None
        return self.server

    async def run(self, stop: asyncio.Event) -> None:
        """Refreshes every `REFRESH_SECONDS` (sooner after a failure) until `stop`."""
        wait = REFRESH_SECONDS
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if stop.is_set():
                return
            try:
                await self.refresh()
                wait = REFRESH_SECONDS
            except (ApiException, aiohttp.ClientError, TimeoutError, CertificateError) as error:
                log.warning("certificates not refreshed (%s); retrying in %.0f s", error, RETRY_SECONDS)
                wait = RETRY_SECONDS

    async def refresh(self) -> None:
        authority = await self._authority()
        changed = self.authority is not None and authority.trust_pem != self.authority.trust_pem
        self.authority = authority
        if changed:
            for listener in self.listeners:
                listener()
        pair = await self._server_pair(authority)
        if self.server is None:
            self.server = ServerCertificate(pair.certificate_pem, pair.key_pem, authority.trust_pem)
        elif self.server.update(pair.certificate_pem, pair.key_pem, authority.trust_pem):
            expiry = pair.certificate.not_valid_after_utc
            log.info("server certificate or trust bundle renewed (the certificate valid until %s)", expiry)

    # --- the two Secrets -------------------------------------------------------------------------------------------

    def _path(self, name: str | None = None) -> str:
        base = f"/api/v1/namespaces/{self.namespace}/secrets"
        return base if name is None else f"{base}/{name}"

    async def _read(self, name: str) -> dict[str, Any] | None:
        try:
            return await call(self._api, "GET", self._path(name))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def _document(self, name: str, type_: str, data: Mapping[str, bytes], version: str | None) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": name, "namespace": self.namespace, "labels": dict(LABELS)}
        if version is not None:
            metadata["resourceVersion"] = version  # a replace only if nobody changed it since it was read
        return {"apiVersion": "v1", "kind": "Secret", "type": type_, "metadata": metadata, "data": encoded(data)}

    async def _write(
        self, existing: Mapping[str, Any] | None, name: str, type_: str, data: Mapping[str, bytes]
    ) -> bool:
        """Creates the Secret (no `existing`) or replaces `existing`; False when another replica got there first."""
        try:
            if existing is None:
                await call(self._api, "POST", self._path(), body=self._document(name, type_, data, None))
            else:
                version = str((existing.get("metadata") or {}).get("resourceVersion") or "")
                await call(self._api, "PUT", self._path(name), body=self._document(name, type_, data, version))
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    async def _authority(self) -> Authority:
        now = self._clock()
        for _ in range(ATTEMPTS):
            secret = await self._read(self.ca_secret)
            if secret is None:
                authority = first_authority(now, self.lifetimes.ca)
                if await self._write(None, self.ca_secret, CA_SECRET_TYPE, authority_data(authority)):
                    log.info("created the CA (Secret %s/%s)", self.namespace, self.ca_secret)
                    metrics.CERTIFICATES_ISSUED.labels("ca").inc()
                    return authority
                continue  # another replica created it: read theirs
            found = authority_of(secret_data(secret))
            if found is None:
                raise CertificateError(
                    f"Secret {self.namespace}/{self.ca_secret} holds no CA certificate and key; delete it to have a "
                    "new CA made (every Envoy then gets new certificates)"
                )
            changed = rotated(found, now, self.lifetimes)
            if changed is None:
                return found
            if await self._write(secret, self.ca_secret, CA_SECRET_TYPE, authority_data(changed)):
                log.info("CA rotation step: %d trusted CA(s), staged: %s", len(changed.trusted), bool(changed.staged))
                metrics.CERTIFICATES_ISSUED.labels("ca").inc()
                return changed
        raise CertificateError(f"Secret {self.namespace}/{self.ca_secret} kept changing under this replica's writes")

    async def _server_pair(self, authority: Authority) -> KeyPair:
        for _ in range(ATTEMPTS):
            now = self._clock()
            secret = await self._read(self.server_secret)
            data = secret_data(secret)
            pair = load_pair(data.get(TLS_CERTIFICATE, b""), data.get(TLS_KEY, b""))
            if pair is not None and server_current(pair, authority, self.names, now):
                return pair
            pair = issue_server(authority, self.names, now, self.lifetimes.server)
            written = {TLS_CERTIFICATE: pair.certificate_pem, TLS_KEY: pair.key_pem, TLS_CA: authority.trust_pem}
            if await self._write(secret, self.server_secret, TLS_SECRET_TYPE, written):
                log.info("issued the server certificate for %s", ", ".join(self.names))
                metrics.CERTIFICATES_ISSUED.labels("server").inc()
                return pair
        name = f"{self.namespace}/{self.server_secret}"
        raise CertificateError(f"Secret {name} kept changing under this replica's writes")


@dataclass(frozen=True)
class _Held:
    """A Gateway's certificate, when it falls due, and the trust bundle it was last found current against."""

    pair: KeyPair
    due: datetime.datetime
    trust: bytes


class GatewayCertificates:
    """Each Gateway's client certificate, for the provisioner (only the leader issues). A held certificate is checked
    in full (signature, name) once per trust bundle: a pass only compares the time with when it falls due."""

    def __init__(
        self,
        authority: Callable[[], Authority | None],
        lifetime: datetime.timedelta = Lifetimes.client,
        clock: Callable[[], datetime.datetime] = utc_now,
    ) -> None:
        self._authority = authority
        self.lifetime = lifetime
        self._clock = clock
        self._held: dict[str, _Held] = {}
        self.seeded = False  # the cluster's Secrets were looked at since this replica started leading

    @property
    def trust_pem(self) -> bytes:
        return self._current_authority().trust_pem

    def _current_authority(self) -> Authority:
        authority = self._authority()
        if authority is None:
            raise CertificateError("the CA is not loaded yet")
        return authority

    def adopt(self, secrets: Iterable[tuple[str, Mapping[str, Any]]], secret_name: Callable[[str], str]) -> None:
        """Takes the current certificates among the cluster's Secrets ((name, document) pairs): the Secret's name
        must be the one of the Gateway its certificate names."""
        authority, now = self._current_authority(), self._clock()
        for name, secret in secrets:
            data = secret_data(secret)
            pair = load_pair(data.get(TLS_CERTIFICATE, b""), data.get(TLS_KEY, b""))
            gateway = certificate_gateway(pair.certificate) if pair is not None else None
            if pair is None or gateway is None or secret_name(gateway) != name:
                continue
            if client_current(pair, authority, gateway, now):
                self._held[gateway] = _Held(pair, renew_at(pair.certificate), authority.trust_pem)
        self.seeded = True

    def pair(self, gateway: str) -> KeyPair:
        """The Gateway's current certificate, issued now if it has none that is current."""
        authority, now = self._current_authority(), self._clock()
        trust = authority.trust_pem
        held = self._held.get(gateway)
        if (
            held is not None
            and now < held.due
            and (held.trust == trust or client_current(held.pair, authority, gateway, now))
        ):
            if held.trust != trust:
                self._held[gateway] = replace(held, trust=trust)
            return held.pair
        pair = issue_client(authority, gateway, now, self.lifetime)
        self._held[gateway] = _Held(pair, renew_at(pair.certificate), trust)
        metrics.CERTIFICATES_ISSUED.labels("client").inc()
        log.info("issued the client certificate of Gateway %s", gateway)
        return pair

    def keep_only(self, gateways: Iterable[str]) -> None:
        wanted = set(gateways)
        for gone in self._held.keys() - wanted:
            del self._held[gone]

    def seconds_to_renewal(self) -> float | None:
        """Until the first certificate held is due (the provisioner's next pass issues it), None when none is held."""
        due = min((held.due for held in self._held.values()), default=None)
        return None if due is None else max(0.0, (due - self._clock()).total_seconds())


async def read_authority(api: client.ApiClient, namespace: str, service: str) -> Authority:
    """The CA a running control plane keeps (`<service>-ca` in its namespace), to issue a certificate with."""
    name = f"{service}-ca"
    try:
        secret = await call(api, "GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
    except ApiException as error:
        if error.status == 404:
            raise CertificateError(f"no Secret {namespace}/{name}: has `serve --kubernetes` run there yet?") from None
        raise
    authority = authority_of(secret_data(secret))
    if authority is None:
        raise CertificateError(f"Secret {namespace}/{name} holds no CA certificate and key")
    return authority
