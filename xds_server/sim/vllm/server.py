"""The HTTP face of the simulator: OpenAI endpoints, health and metrics over aiohttp, one engine per process."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import uuid
from collections.abc import Awaitable, Callable, Sequence

import orjson
import structlog
from aiohttp import web

from xds_server.sim import openai
from xds_server.sim.vllm import api
from xds_server.sim.vllm.config import Settings, parse_args
from xds_server.sim.vllm.engine import Engine, Generation, GenerationRequest, QueueFull
from xds_server.sim.vllm.metrics import CONTENT_TYPE, ServerInfo, render

log = structlog.get_logger("vllm-sim")

# Long prompts are the point of a prefix-cache simulator; aiohttp's default 1 MiB body limit would cut them off.
MAX_BODY_BYTES = 64 * 1024 * 1024
# Streams still being written when SIGTERM arrives get this long to finish before the process exits.
SHUTDOWN_GRACE_SECONDS = 2.0

Parser = Callable[[openai.JsonObject], api.ParsedRequest]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ModelServer:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.rng = random.Random(settings.seed)
        self.info = ServerInfo(
            model_name=settings.served_models[0],
            max_loras=settings.engine.max_loras,
            block_size=settings.engine.block_size,
            num_gpu_blocks=settings.engine.kv_cache_blocks,
        )
        self.identity = {"x-inference-pod": settings.pod_name, "x-inference-port": str(settings.port)}
        if settings.pod_namespace:
            self.identity["x-inference-namespace"] = settings.pod_namespace

    async def add_identity(self, _request: web.Request, response: web.StreamResponse) -> None:
        """Every answer names the pod, so tests and operators see which endpoint the picker chose."""
        response.headers.update(self.identity)

    async def health(self, _request: web.Request) -> web.Response:
        return web.Response()

    async def models(self, _request: web.Request) -> web.Response:
        names = [*self.settings.served_models, *self.settings.lora_adapters]
        return _json(200, openai.model_list(names, owned_by="vllm"))

    async def metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=render(self.engine.stats(), self.info).encode(), headers={"Content-Type": CONTENT_TYPE}
        )

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, api.parse_chat, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, api.parse_completion, chat=False)

    async def _complete(self, request: web.Request, parse: Parser, chat: bool) -> web.StreamResponse:
        try:
            body = api.read_body(await request.read())
            adapter = self._adapter_for(api.model_of(body))
            parsed = parse(body)
            answer = api.plan_answer(parsed, self.settings.mode, self.settings.max_model_len, self.rng)
            generation = self.engine.submit(
                GenerationRequest(parsed.prompt_tokens, answer.tokens, adapter, answer.finish_reason)
            )
        except api.ApiError as exc:
            return _json(exc.status, exc.body())
        except QueueFull as exc:
            return _json(429, openai.error(str(exc), "rate_limit_error", "queue_full"))
        completion_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        try:
            if parsed.stream:
                return await self._stream(request, generation, parsed, completion_id, chat)
            text = "".join([token async for token in generation.tokens()])
            prompt_tokens, output_tokens = len(parsed.prompt_tokens), len(answer.tokens)
            if chat:
                result = openai.chat_completion(completion_id, parsed.model, text, prompt_tokens, output_tokens)
            else:
                result = openai.text_completion(completion_id, parsed.model, text, prompt_tokens, output_tokens)
            result["choices"][0]["finish_reason"] = answer.finish_reason
            return _json(200, result)
        finally:
            # A client that disconnects cancels this handler; its sequence must not keep a slot and KV blocks.
            self.engine.abort(generation)

    async def _stream(
        self, request: web.Request, generation: Generation, parsed: api.ParsedRequest, completion_id: str, chat: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        model, finish = parsed.model, generation.request.finish_reason
        usage = openai.usage(len(parsed.prompt_tokens), len(generation.request.output_tokens))
        events: list[openai.JsonObject] = []
        try:
            async for token in generation.tokens():
                if chat:
                    await response.write(openai.sse_event(openai.chat_chunk(completion_id, model, token)))
                else:
                    await response.write(openai.sse_event(openai.text_completion_chunk(completion_id, model, token)))
            if chat:
                events.append(openai.chat_chunk(completion_id, model, None, finish))
                if parsed.include_usage:
                    events.append(openai.chat_chunk(completion_id, model, None, chunk_usage=usage))
            else:
                events.append(openai.text_completion_chunk(completion_id, model, "", finish))
                if parsed.include_usage:
                    events.append(openai.text_completion_usage_chunk(completion_id, model, usage))
            await response.write(b"".join(openai.sse_event(event) for event in events) + openai.SSE_DONE)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client left mid-stream; the caller aborts the sequence
        return response

    def _adapter_for(self, model: str) -> str | None:
        """None for the base model, the adapter's name for a LoRA; any other name is the 404 vLLM gives."""
        if model in self.settings.served_models:
            return None
        if model in self.settings.lora_adapters:
            return model
        raise api.ApiError(404, f"The model `{model}` does not exist.", "invalid_request_error", "model_not_found")


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown paths and methods answer with the OpenAI error envelope too, like every error of the project."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _json(exc.status, openai.error(exc.reason, "invalid_request_error", None))


def build_app(server: ModelServer) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_errors])
    app.on_response_prepare.append(server.add_identity)
    app.router.add_get("/health", server.health)
    app.router.add_get("/metrics", server.metrics)
    app.router.add_get("/v1/models", server.models)
    app.router.add_post("/v1/chat/completions", server.chat_completions)
    app.router.add_post("/v1/completions", server.completions)
    return app


async def serve(settings: Settings) -> int:
    engine = Engine(settings.engine)
    engine_task = asyncio.create_task(engine.run(), name="vllm-sim-engine")
    engine_task.add_done_callback(_engine_stopped)
    # handler_cancellation: a disconnected client cancels its handler, which aborts its sequence (as vLLM does).
    server = ModelServer(settings, engine)
    runner = web.AppRunner(
        build_app(server),
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
    except OSError as exc:
        log.error("cannot listen", host=settings.host, port=settings.port, error=str(exc))
        await runner.cleanup()
        return 1
    bound_host, bound_port = runner.addresses[0][:2]
    server.identity["x-inference-port"] = str(bound_port)  # differs from the flag when it was 0
    log.info(
        f"vllm simulator {settings.pod_name} serving {', '.join(settings.served_models)} "
        f"on http://{bound_host}:{bound_port}",
        lora_adapters=list(settings.lora_adapters),
        max_num_seqs=settings.engine.max_num_seqs,
        kv_cache_blocks=settings.engine.kv_cache_blocks,
        block_size=settings.engine.block_size,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()
    engine_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await engine_task
    return 0


def _engine_stopped(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("engine loop failed; requests will hang", error=repr(task.exception()))


def _json(status: int, body: openai.JsonObject) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def main(argv: Sequence[str]) -> int:
    settings = parse_args(argv)
    if settings.ignored_flags:
        log.warning("ignoring flags this simulator does not model", flags=list(settings.ignored_flags))
    return asyncio.run(serve(settings))
