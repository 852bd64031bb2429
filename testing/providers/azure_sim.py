"""A loopback simulator of Azure OpenAI's data-plane API (deployments), strict where Azure is.

`python -m testing.providers.azure_sim --host H --port P --api-key KEY --deployment NAME=MODEL ...`

What it checks, as Azure does:
- the path `/openai/deployments/{deployment}/{chat/completions|completions|embeddings}` of a known deployment (404
  DeploymentNotFound otherwise), and an `api-version` query parameter of a published version (404 "Resource not found"
  without one, 400 for an unknown one);
- the `api-key` header, or `Authorization: Bearer <token>` with a token this simulator's Microsoft Entra ID token
  endpoint issued (`POST /{tenant}/oauth2/v2.0/token`, the client-credentials grant, for `--client-id` and
  `--client-secret`, scope `https://cognitiveservices.azure.com/.default`): 401 otherwise; any of the gateway's
  internal headers is an error naming it (a gateway must not leak them);
- a Content-Length, and a body that the official `openai` SDK's own request type accepts (`model` is optional:
  the deployment names the model).
It answers like Azure: OpenAI's shapes, `model` the deployment's model (not the deployment's name), and
`prompt_filter_results` / `content_filter_results`; streamed when asked. `GET /debug/requests` lists what came.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson
import pydantic
from aiohttp import web
from openai.types.chat import completion_create_params

# Versions Azure OpenAI publishes (a subset: GA and recent previews).
API_VERSIONS = frozenset({"2024-02-01", "2024-06-01", "2024-10-21", "2024-12-01-preview", "2025-01-01-preview"})
OPERATIONS = ("chat/completions", "completions", "embeddings")
_REQUEST = pydantic.TypeAdapter(completion_create_params.CompletionCreateParamsBase)
_LEAKS = ("x-ai-eg-", "x-gateway-destination-endpoint")
SCOPE = "https://cognitiveservices.azure.com/.default"
_FILTERED = {name: {"filtered": False, "severity": "safe"} for name in ("hate", "self_harm", "sexual", "violence")}


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class AzureSim:
    def __init__(
        self,
        api_key: str,
        deployments: dict[str, str],
        client: tuple[str, str, str] | None = None,
        lifetime: int = 3599,
    ) -> None:
        self.api_key = api_key
        self.deployments = deployments
        self.client = client  # (tenant, client id, client secret) the token endpoint accepts
        self.lifetime = lifetime
        self.tokens: dict[str, float] = {}  # issued token -> expiry (monotonic)
        self.requests: list[dict[str, Any]] = []

    async def token(self, request: web.Request) -> web.Response:
        """Microsoft Entra ID's client-credentials grant, as the v2.0 token endpoint answers it."""
        form = await request.post()
        self.requests.append({"method": "POST", "path": request.path, "headers": {}, "grant": form.get("grant_type")})
        tenant, client_id, secret = self.client or ("", "", "")
        if request.match_info["tenant"] != tenant:
            return web.json_response(
                {"error": "invalid_request", "error_description": "AADSTS90002: Tenant"}, status=400
            )
        if form.get("grant_type") != "client_credentials" or form.get("scope") != SCOPE:
            return web.json_response({"error": "invalid_request", "error_description": "grant or scope"}, status=400)
        if form.get("client_id") != client_id or form.get("client_secret") != secret:
            return web.json_response({"error": "invalid_client", "error_description": "AADSTS7000215"}, status=401)
        token = secrets.token_urlsafe(24)
        self.tokens[token] = time.monotonic() + self.lifetime
        return web.json_response({"token_type": "Bearer", "expires_in": self.lifetime, "access_token": token})

    def _authorized(self, request: web.Request) -> bool:
        if request.headers.get("api-key") == self.api_key:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme == "Bearer" and self.tokens.get(token, 0.0) > time.monotonic()

    async def health(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def debug(self, request: web.Request) -> web.Response:
        if request.method == "DELETE":
            self.requests.clear()
        return web.json_response(self.requests)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        secret = ("api-key", "authorization")
        headers = {k.lower(): ("<redacted>" if k.lower() in secret else v) for k, v in request.headers.items()}
        self.requests.append({"method": request.method, "path": request.path_qs, "headers": headers})
        deployment, operation = request.match_info["deployment"], request.match_info["operation"]
        version = request.query.get("api-version")
        if version is None:
            return _error(404, "404", "Resource not found")
        if version not in API_VERSIONS:
            return _error(400, "BadRequest", f"API version not supported: {version}")
        if not self._authorized(request):
            return _error(401, "401", "Access denied due to invalid subscription key or wrong API endpoint.")
        leaked = sorted(k for k in headers if k.startswith(_LEAKS))
        if leaked:
            return _error(400, "BadRequest", f"headers a gateway must not forward: {', '.join(leaked)}")
        if deployment not in self.deployments:
            return _error(404, "DeploymentNotFound", f"The API deployment {deployment} does not exist.")
        if request.content_length is None:
            return _error(411, "LengthRequired", "a Content-Length is required")
        if operation != "chat/completions":
            return _error(400, "OperationNotSupported", f"{operation} is not supported by this deployment")
        try:
            payload = orjson.loads(body)
            _REQUEST.validate_python({"model": deployment, **payload})
        except (orjson.JSONDecodeError, pydantic.ValidationError) as exc:
            return _error(400, "BadRequest", str(exc).splitlines()[0])
        self.requests[-1]["body"] = payload
        return await self._answer(request, self.deployments[deployment], payload)

    async def _answer(self, request: web.Request, model: str, payload: dict[str, Any]) -> web.StreamResponse:
        words = ["This", "is", "a", "test."]
        created = int(time.time())
        usage = {"prompt_tokens": 9, "completion_tokens": len(words), "total_tokens": 9 + len(words)}
        if payload.get("stream") is not True:
            message = {"role": "assistant", "content": " ".join(words), "refusal": None}
            choice = {"index": 0, "finish_reason": "stop", "message": message, "content_filter_results": _FILTERED}
            return web.json_response(
                {
                    "id": "chatcmpl-azure-sim",
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [choice],
                    "usage": usage,
                    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _FILTERED}],
                    "system_fingerprint": "fp_sim",
                }
            )
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        base = {"id": "chatcmpl-azure-sim", "object": "chat.completion.chunk", "created": created, "model": model}
        deltas = [{"role": "assistant", "content": ""}, *({"content": w + " "} for w in words)]
        for delta in deltas:
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        finish = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await response.write(b"data: " + orjson.dumps(finish) + b"\n\n")
        options = payload.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            await response.write(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response


def build_app(sim: AzureSim) -> web.Application:
    app = web.Application()
    app.router.add_get("/health", sim.health)
    app.router.add_route("*", "/debug/requests", sim.debug)
    app.router.add_post("/{tenant}/oauth2/v2.0/token", sim.token)
    operations = "|".join(OPERATIONS)
    app.router.add_post("/openai/deployments/{deployment}/{operation:" + operations + "}", sim.handle)
    return app


async def serve(sim: AzureSim, host: str, port: int) -> None:
    runner = web.AppRunner(build_app(sim), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"azure sim listening on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--deployment", action="append", default=[], help="NAME=MODEL (repeatable)")
    parser.add_argument("--client", help="TENANT:CLIENT_ID:CLIENT_SECRET the Entra ID token endpoint accepts")
    parser.add_argument("--token-lifetime", type=int, default=3599, help="seconds (default 3599)")
    args = parser.parse_args(argv)
    deployments = dict(d.split("=", 1) for d in args.deployment)
    client = tuple(args.client.split(":", 2)) if args.client else None
    sim = AzureSim(args.api_key, deployments, client, args.token_lifetime)
    asyncio.run(serve(sim, args.host, args.port))


if __name__ == "__main__":
    main(sys.argv[1:])
