"""The two raw calls a reflector makes, LIST one page and open a WATCH stream, through kubernetes_asyncio's
`ApiClient` for its TLS, authentication and token refresh, but not its model layer: bodies are parsed with orjson
into plain dicts, which is several times faster than the generated models and keeps every field as the API server
sent it. kubernetes_asyncio is untyped; only this module touches it for reading.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import aiohttp
import orjson
from kubernetes_asyncio.client import ApiClient

Query = Sequence[tuple[str, str]]

CONNECT_TIMEOUT_S = 10.0


class ApiError(Exception):
    """A request the API server refused, with the code and reason of its Status answer."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message

    @classmethod
    def from_status(cls, status: int, body: bytes) -> ApiError:
        """From an HTTP error answer, or an ERROR watch event's object (a Status)."""
        try:
            parsed = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            parsed = {}
        return cls.from_object(parsed if isinstance(parsed, dict) else {}, status)

    @classmethod
    def from_object(cls, status_object: dict[str, Any], default_code: int = 0) -> ApiError:
        code = status_object.get("code")
        code = code if isinstance(code, int) else default_code
        error_type = Gone if code == 410 else NotFound if code == 404 else ApiError
        return error_type(code, str(status_object.get("reason") or ""), str(status_object.get("message") or ""))


class Gone(ApiError):
    """410: the resourceVersion (or continue token) is older than the history etcd still keeps."""


class NotFound(ApiError):
    """404 on a collection: the kind is not served (its CRD is not installed)."""


class RawApi:
    def __init__(self, api: ApiClient) -> None:
        self._api = api

    async def _get(self, path: str, query: Query, timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
        # `call_api` applies the configured credentials (refreshing a projected service-account token) and TLS;
        # `_preload_content=False` makes it return aiohttp's response unread and unchecked.
        response = await self._api.call_api(
            path,
            "GET",
            query_params=list(query),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=timeout,
        )
        return cast(aiohttp.ClientResponse, response)

    async def get_json(self, path: str, query: Query, timeout_s: float) -> dict[str, Any]:
        """One GET answered with a JSON object; an error answer raises ApiError."""
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=CONNECT_TIMEOUT_S)
        response = await self._get(path, query, timeout)
        async with response:
            body = await response.read()
        if response.status != 200:
            raise ApiError.from_status(response.status, body)
        parsed = orjson.loads(body)
        if not isinstance(parsed, dict):
            raise ApiError(response.status, "BadResponse", f"expected a JSON object, got {type(parsed).__name__}")
        return parsed

    @contextlib.asynccontextmanager
    async def stream(self, path: str, query: Query) -> AsyncIterator[aiohttp.StreamReader]:
        """A long-lived GET (a watch): its body, to read line by line. The connection is closed on the way out
        rather than reused, since the body is rarely read to its end."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S)
        response = await self._get(path, query, timeout)
        try:
            if response.status != 200:
                raise ApiError.from_status(response.status, await response.read())
            yield response.content
        finally:
            response.close()
