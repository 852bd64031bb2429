"""Bearer tokens the control plane mints for backends whose providers take short-lived tokens, off the request path.

Vertex AI takes Google access tokens, minted from a service account's key: a JWT signed with the key (RS256),
exchanged at the key's `token_uri` (the OAuth 2.0 JWT-bearer grant). Azure OpenAI takes Microsoft Entra ID tokens,
minted with an application's client secret (the client-credentials grant at
`<authority>/<tenant>/oauth2/v2.0/token`; the authority is `$AZURE_AUTHORITY_HOST`, as Azure's own SDKs read it, or
the public cloud's).

Each token source of the latest build gets one task: it mints a token, keeps it, and mints the next one
`REFRESH_BEFORE` seconds before it expires; a failure is retried after 1 s, doubling to a minute, and said in the log
once per reason (never with a secret: only the policy and the endpoint's status). A request asks `token(policy)`
and gets the current token, or why there is none. Tokens live in this process's memory only: never logged, never in
Envoy's configuration or a `/debug` page.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import aiohttp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from translators.ir import TokenKind, TokenSourceIR

log = logging.getLogger(__name__)

REFRESH_BEFORE = 300.0  # seconds before expiry a token is replaced (providers' own clients use about this)
JWT_LIFETIME = 3600  # Google's maximum for a self-signed assertion
RETRY_FIRST, RETRY_MAX = 1.0, 60.0
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10)
DEFAULT_AZURE_AUTHORITY = "https://login.microsoftonline.com"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"


class MintError(Exception):
    """Why a token could not be minted, fit for a log line and a client's error (no secret in it)."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def google_assertion(service_account: dict[str, str], scope: str, now: int) -> str:
    """The JWT a service account signs to ask Google's token endpoint for an access token."""
    header = {"alg": "RS256", "typ": "JWT"}
    if service_account.get("private_key_id"):
        header["kid"] = service_account["private_key_id"]
    claims = {
        "iss": service_account["client_email"],
        "scope": scope,
        "aud": service_account.get("token_uri", GOOGLE_TOKEN_URI),
        "iat": now,
        "exp": now + JWT_LIFETIME,
    }
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}".encode()
    try:
        key = serialization.load_pem_private_key(service_account["private_key"].encode(), password=None)
    except (ValueError, TypeError):
        raise MintError("the service account's private_key cannot be read") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise MintError("the service account's private_key is not an RSA key")
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{_b64url(signature)}"


@dataclass
class _Token:
    source: TokenSourceIR
    value: str | None = None
    expires_at: float = 0.0  # monotonic
    problem: str | None = "not minted yet"
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class TokenMinter:
    """The tokens of the latest build's token sources, kept fresh. `follow` runs on the event loop."""

    def __init__(
        self,
        stopping: asyncio.Event | None = None,
        azure_authority: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stopping = stopping or asyncio.Event()
        self._azure_authority = (
            azure_authority or os.environ.get("AZURE_AUTHORITY_HOST") or DEFAULT_AZURE_AUTHORITY
        ).rstrip("/")
        self._clock = clock
        self._tokens: dict[str, _Token] = {}
        self._session: aiohttp.ClientSession | None = None
        self._closer: asyncio.Task[None] | None = None

    def follow(self, sources: Iterable[TokenSourceIR]) -> None:
        """Mints for new or changed sources (a rotated secret mints at once), forgets removed ones."""
        if self._closer is None:  # everything goes when the process is told to stop, the HTTP session included
            self._closer = asyncio.get_running_loop().create_task(self._close_when_stopping())
        wanted = {source.key: source for source in sources}
        for key in list(self._tokens):
            if key not in wanted or self._tokens[key].source != wanted[key]:
                self._forget(key)
        for key, source in wanted.items():
            if key not in self._tokens:
                entry = self._tokens[key] = _Token(source)
                entry.task = asyncio.get_running_loop().create_task(self._keep(entry), name=f"token {key}")

    def token(self, key: str) -> tuple[str | None, str]:
        """(the current token, "") or (None, why there is none)."""
        entry = self._tokens.get(key)
        if entry is None:
            return None, "no token source"
        if entry.value is not None and self._clock() < entry.expires_at:
            return entry.value, ""
        return None, entry.problem or "the token expired and a new one is not minted yet"

    async def _close_when_stopping(self) -> None:
        await self._stopping.wait()
        await self.close()

    async def close(self) -> None:
        for key in list(self._tokens):
            self._forget(key)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._closer is not None and self._closer is not asyncio.current_task():
            self._closer.cancel()

    def _forget(self, key: str) -> None:
        entry = self._tokens.pop(key)
        if entry.task is not None:
            entry.task.cancel()

    async def _keep(self, entry: _Token) -> None:
        delay = RETRY_FIRST
        said: str | None = None
        while not self._stopping.is_set():
            try:
                value, lifetime = await self._mint(entry.source)
            except MintError as exc:
                entry.problem = f"BackendSecurityPolicy {entry.source.key}: {exc}"
                if str(exc) != said:
                    log.warning("no token minted for %s: %s (retried)", entry.source.key, exc)
                    said = str(exc)
                wait, delay = delay, min(delay * 2, RETRY_MAX)
            else:
                entry.value, entry.expires_at, entry.problem = value, self._clock() + lifetime, None
                if said is not None:
                    log.info("token minted for %s", entry.source.key)
                said, delay = None, RETRY_FIRST
                wait = max(lifetime - REFRESH_BEFORE, min(lifetime / 2, 30.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)

    async def _mint(self, source: TokenSourceIR) -> tuple[str, float]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=REQUEST_TIMEOUT)
        if source.kind is TokenKind.GCP_SERVICE_ACCOUNT:
            account = json.loads(source.secret)
            url = account.get("token_uri", GOOGLE_TOKEN_URI)
            assertion = google_assertion(account, source.scope, int(time.time()))
            form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
        else:
            url = f"{self._azure_authority}/{source.tenant_id}/oauth2/v2.0/token"
            form = {
                "grant_type": "client_credentials",
                "client_id": source.client_id,
                "client_secret": source.secret,
                "scope": source.scope,
            }
        try:
            async with self._session.post(url, data=form) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MintError(f"the token endpoint {url} could not be reached ({type(exc).__name__})") from None
        return _token_of(url, status, text)


def _token_of(url: str, status: int, text: str) -> tuple[str, float]:
    """The access token and its lifetime in seconds from a token endpoint's answer (OAuth 2.0's shape)."""
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    if status != 200 or not isinstance(answer, dict):
        # OAuth errors name the problem (`error`, `error_description`) and never echo the credential.
        reason = answer.get("error") if isinstance(answer, dict) else None
        raise MintError(f"the token endpoint {url} answered {status}" + (f" ({str(reason)[:64]})" if reason else ""))
    token, lifetime = answer.get("access_token"), answer.get("expires_in")
    if not isinstance(token, str) or not token or not isinstance(lifetime, int | float | str):
        raise MintError(f"the token endpoint {url} answered without access_token or expires_in")
    try:
        return token, float(lifetime)
    except ValueError:
        raise MintError(f"the token endpoint {url} answered an expires_in that is not a number") from None
