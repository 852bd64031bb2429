"""The token minter (xds_server/tokens.py) against token endpoints served in-process on loopback: Google's JWT-bearer
grant (the assertion's RS256 signature and claims checked as Google checks them) and Entra ID's client-credentials
grant. Tokens are minted off the request path, refreshed before they expire, retried after a failure, re-minted
when the secret changes, and never logged."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from testing.ports import free_port
from translators.ir import TokenKind, TokenSourceIR
from translators.upstream import AZURE_SCOPE, GCP_SCOPE
from xds_server.tokens import TokenMinter

SECRET = "entra-unit-not-a-real-secret"


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Endpoint:
    """A token endpoint: Google's (JWT bearer) at /token, Entra ID's (client credentials) at /<tenant>/oauth2/..."""

    public_key: rsa.RSAPublicKey
    url: str = ""
    lifetime: int = 3599
    refuse: bool = False
    issued: list[str] = field(default_factory=list)

    async def google(self, request: web.Request) -> web.Response:
        form = await request.post()
        assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
        header, claims, signature = str(form["assertion"]).split(".")
        self.public_key.verify(
            _unb64(signature), f"{header}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256()
        )  # raises on a bad signature: the test fails
        decoded = json.loads(_unb64(claims))
        assert json.loads(_unb64(header))["alg"] == "RS256"
        assert decoded["iss"] == "gateway@proj.iam.gserviceaccount.com" and decoded["aud"] == f"{self.url}/token"
        assert decoded["scope"] == GCP_SCOPE and 0 < decoded["exp"] - decoded["iat"] <= 3600
        return self._token()

    async def entra(self, request: web.Request) -> web.Response:
        form = await request.post()
        if self.refuse or form.get("client_secret") != SECRET:
            return web.json_response({"error": "invalid_client", "error_description": "AADSTS7000215"}, status=401)
        assert request.match_info["tenant"] == "tenant-1" and form["client_id"] == "app-1"
        assert form["grant_type"] == "client_credentials" and form["scope"] == AZURE_SCOPE
        return self._token()

    def _token(self) -> web.Response:
        token = f"token-{len(self.issued)}"
        self.issued.append(token)
        return web.json_response({"access_token": token, "expires_in": self.lifetime, "token_type": "Bearer"})


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[Endpoint, rsa.RSAPrivateKey]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    served = Endpoint(key.public_key())
    app = web.Application()
    app.router.add_post("/token", served.google)
    app.router.add_post("/{tenant}/oauth2/v2.0/token", served.entra)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    served.url = f"http://127.0.0.1:{port}"
    yield served, key
    await runner.cleanup()


def _google_source(endpoint: Endpoint, key: rsa.RSAPrivateKey) -> TokenSourceIR:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    account = {
        "type": "service_account",
        "client_email": "gateway@proj.iam.gserviceaccount.com",
        "private_key_id": "k1",
        "private_key": pem.decode(),
        "token_uri": f"{endpoint.url}/token",
    }
    return TokenSourceIR(TokenKind.GCP_SERVICE_ACCOUNT, "default/gcp", json.dumps(account), GCP_SCOPE)


def _entra_source(secret: str = SECRET) -> TokenSourceIR:
    return TokenSourceIR(TokenKind.AZURE_CLIENT_SECRET, "default/entra", secret, AZURE_SCOPE, "app-1", "tenant-1")


async def _until(check: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not reached in time")


async def test_a_google_token_is_minted_with_a_signed_assertion_and_refreshed_before_it_expires(
    endpoint: tuple[Endpoint, rsa.RSAPrivateKey],
) -> None:
    served, key = endpoint
    served.lifetime = 2  # refreshed halfway, as a token shorter than the refresh margin must be
    minter = TokenMinter()
    try:
        minter.follow([_google_source(served, key)])
        await _until(lambda: minter.token("default/gcp")[0] == "token-0")
        await _until(lambda: minter.token("default/gcp")[0] == "token-1")  # a new one before the first expired
    finally:
        await minter.close()


async def test_an_entra_token_is_retried_after_a_refusal_and_the_reason_never_shows_the_secret(
    endpoint: tuple[Endpoint, rsa.RSAPrivateKey], caplog: pytest.LogCaptureFixture
) -> None:
    served, _ = endpoint
    served.refuse = True
    minter = TokenMinter(azure_authority=served.url)
    caplog.set_level(logging.INFO)
    try:
        minter.follow([_entra_source()])
        await _until(lambda: "answered 401 (invalid_client)" in minter.token("default/entra")[1])
        token, why = minter.token("default/entra")
        assert token is None and why.startswith("BackendSecurityPolicy default/entra:")
        served.refuse = False
        await _until(lambda: minter.token("default/entra")[0] == "token-0")  # retried after a second
    finally:
        await minter.close()
    assert SECRET not in caplog.text and "token-0" not in caplog.text


async def test_a_changed_secret_mints_again_and_a_removed_source_is_forgotten(
    endpoint: tuple[Endpoint, rsa.RSAPrivateKey],
) -> None:
    served, _ = endpoint
    minter = TokenMinter(azure_authority=served.url)
    try:
        minter.follow([_entra_source("wrong")])
        await _until(lambda: "401" in minter.token("default/entra")[1])
        minter.follow([_entra_source()])  # the Secret was fixed: a new source, minted at once
        await _until(lambda: minter.token("default/entra")[0] is not None)
        minter.follow([])
        assert minter.token("default/entra") == (None, "no token source")
    finally:
        await minter.close()


async def test_an_unreachable_endpoint_is_said_with_the_url_and_no_secret() -> None:
    minter = TokenMinter(azure_authority=f"http://127.0.0.1:{free_port()}")
    try:
        minter.follow([_entra_source()])
        await _until(lambda: "could not be reached" in minter.token("default/entra")[1])
        assert SECRET not in minter.token("default/entra")[1]
    finally:
        await minter.close()
