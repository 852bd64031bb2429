"""One request to the API server with the `kubernetes_asyncio` client's configuration (address, credentials), its
answer as a dict; anything but a 2xx is an `ApiException` with the status and body. Used by the writers of this
package for the few paths they touch, without the generated typed clients."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=10)
APPLY_PATCH = "application/apply-patch+yaml"  # server-side apply (JSON is YAML)


async def call(
    api: client.ApiClient,
    method: str,
    path: str,
    query: Sequence[tuple[str, str]] = (),
    body: Any = None,
    content_type: str = "application/json",
) -> dict[str, Any]:
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type
    response = await api.call_api(
        path,
        method,
        query_params=list(query),
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
        _preload_content=False,
        _request_timeout=REQUEST_TIMEOUT,
    )
    async with response:
        data = await response.read()
    if not 200 <= response.status < 300:
        error = ApiException(status=response.status, reason=response.reason)
        error.body = data.decode(errors="replace")
        raise error
    parsed = json.loads(data) if data else {}
    return parsed if isinstance(parsed, dict) else {}
