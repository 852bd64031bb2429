"""AWS Signature Version 4 for the requests the gateway forwards to Bedrock, with the standard library only.

`sign` returns the headers to set on a request whose method, host, path, query and body are final: SigV4 hashes
all of them, so any mutation after signing (a body rewrite, a host rewrite) makes AWS refuse the request with 403.
It signs exactly `host`, `x-amz-content-sha256`, `x-amz-date` and, with temporary credentials,
`x-amz-security-token`: the headers an Envoy filter adds or rewrites later (content-length, user-agent, x-request-id,
tracing) stay outside the signature and cannot break it.

The canonical request is AWS's, as for every service but S3:
- the URI is the path as sent on the wire (already percent-encoded once: a model ARN's `/` travels as `%2F`),
  normalized (no `.`/`..` segments, no empty segments) and percent-encoded once more, so `%2F` is signed as
  `%252F` and a literal `:` as `%3A`;
- the query's names and values are decoded, then encoded with only the unreserved characters left as they are,
  and the pairs sorted;
- the payload hash is the hex SHA-256 of the body, sent in `x-amz-content-sha256` too.

The credentials come from the translation (translators.aws_credentials reads the Secret an AWSCredentials policy
names).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
# RFC 3986's unreserved characters: the only ones SigV4 leaves unencoded (besides `/` in the URI).
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")


@dataclass(frozen=True)
class AwsCredentials:
    """An access key, with the session token of temporary credentials (STS)."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        token = "None" if self.session_token is None else "'<redacted>'"
        return (
            f"AwsCredentials(access_key_id={self.access_key_id!r}, secret_access_key='<redacted>', "
            f"session_token={token})"
        )


def sign(
    credentials: AwsCredentials,
    region: str,
    service: str,
    method: str,
    host: str,
    path: str,
    query: str,
    body: bytes,
    now: datetime,
) -> list[tuple[str, str]]:
    """The headers to set (lowercase names): authorization, x-amz-date, x-amz-content-sha256, and
    x-amz-security-token when there is a session token. Signs exactly host, x-amz-content-sha256, x-amz-date (and the
    token): nothing an Envoy filter may add later. `path` is the path as sent on the wire (already percent-encoded
    once); the canonical URI encodes it once more, as AWS does for every service but S3. `host` is the Host header
    (with its port when the request's Host header carries one); `now` must be timezone-aware."""
    if now.tzinfo is None:
        raise ValueError("now: a timezone-aware datetime is required (SigV4 signs UTC times)")
    timestamp = now.astimezone(UTC).strftime(TIMESTAMP_FORMAT)
    date = timestamp[:8]
    payload_hash = hashlib.sha256(body).hexdigest()
    signed: dict[str, str] = {"host": host, "x-amz-content-sha256": payload_hash, "x-amz-date": timestamp}
    if credentials.session_token is not None:
        signed["x-amz-security-token"] = credentials.session_token
    names = sorted(signed)
    signed_headers = ";".join(names)
    canonical_request = "\n".join(
        [
            method.upper(),
            canonical_uri(path),
            canonical_query(query),
            "".join(f"{name}:{_trim(signed[name])}\n" for name in names),
            signed_headers,
            payload_hash,
        ]
    )
    scope = f"{date}/{region}/{service}/{TERMINATOR}"
    signature = signature_of(canonical_request, credentials.secret_access_key, timestamp, region, service)
    authorization = (
        f"{ALGORITHM} Credential={credentials.access_key_id}/{scope}, SignedHeaders={signed_headers}, "
        f"Signature={signature}"
    )
    headers = [("authorization", authorization), ("x-amz-date", timestamp), ("x-amz-content-sha256", payload_hash)]
    if credentials.session_token is not None:
        headers.append(("x-amz-security-token", credentials.session_token))
    return headers


def signature_of(canonical_request: str, secret_access_key: str, timestamp: str, region: str, service: str) -> str:
    """The hex signature of a canonical request made at `timestamp` (YYYYMMDDTHHMMSSZ)."""
    scope = f"{timestamp[:8]}/{region}/{service}/{TERMINATOR}"
    digest = hashlib.sha256(canonical_request.encode()).hexdigest()
    string_to_sign = "\n".join([ALGORITHM, timestamp, scope, digest])
    key = signing_key(secret_access_key, timestamp[:8], region, service)
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def signing_key(secret_access_key: str, date: str, region: str, service: str) -> bytes:
    """The key derived for one day (`date` is YYYYMMDD), region and service."""
    key = f"AWS4{secret_access_key}".encode()
    for part in (date, region, service, TERMINATOR):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def canonical_uri(path: str) -> str:
    """The path normalized (RFC 3986 dot segments removed, empty segments dropped, a trailing `/` kept) and
    percent-encoded once more: `/model/a%2Fb:0/converse` -> `/model/a%252Fb%3A0/converse`."""
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment and segment != ".":
            segments.append(segment)
    normalized = "/" + "/".join(segments)
    if path.endswith("/") and segments:
        normalized += "/"
    return _encode(normalized, keep=b"/")


def canonical_query(query: str) -> str:
    """Each name and value decoded then encoded (only unreserved characters kept), the pairs sorted; a name without
    `=` gets an empty value."""
    pairs: list[tuple[str, str]] = []
    for item in query.split("&") if query else []:
        name, _, value = item.partition("=")
        pairs.append((_encode(unquote(name)), _encode(unquote(value))))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def _encode(text: str, keep: bytes = b"") -> str:
    return "".join(chr(byte) if byte in _UNRESERVED or byte in keep else f"%{byte:02X}" for byte in text.encode())


def _trim(value: str) -> str:
    """SigV4's Trimall: no leading or trailing spaces, runs of spaces as one."""
    return " ".join(value.split())


# The shared credentials file.
