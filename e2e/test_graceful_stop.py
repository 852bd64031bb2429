"""`xds-server serve` stopping gracefully under a request in flight, with real Envoy and a testupstream: /readyz fails
at once, the ext_proc stream metering a streamed answer is waited for (not cut after a second), and the process
exits once it is done."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from pathlib import Path

from testing.envoy import Envoy
from testing.manifests import ai_gateway_route, ai_service_backend, gateway
from testing.ports import free_port
from testing.processes import Serve
from testing.sims import b64, start_testupstream
from testing.web import Response, eventually, http_get, request

CHUNKS, GAP_MS = 60, 100  # a streamed answer of about 6 s


def streamed_answer() -> str:
    chunk = {"object": "chat.completion.chunk", "model": "slow", "choices": [{"index": 0, "delta": {"content": "x"}}]}
    usage = {"prompt_tokens": 3, "completion_tokens": CHUNKS, "total_tokens": CHUNKS + 3}
    lines = [json.dumps(chunk)] * CHUNKS
    lines += [json.dumps({"object": "chat.completion.chunk", "model": "slow", "choices": [], "usage": usage}), "[DONE]"]
    return "\n".join(lines)


def test_a_stopping_control_plane_finishes_the_requests_in_flight_then_exits(tmp_path: Path) -> None:
    upstream = start_testupstream("slow", "127.0.4.31", tmp_path / "upstream.log")
    listen_port, xds_port, admin_port, extproc_port = free_port(), free_port(), free_port(), free_port()
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    documents = [gateway([listen_port]), ai_gateway_route("ai", {"slow": "slow"})]
    documents.append(ai_service_backend("slow", "127.0.4.31", upstream.port))
    (manifests / "all.yaml").write_text("---".join(documents))
    extra = ["--extproc-address", f"127.0.0.1:{extproc_port}", "--shutdown-grace", "20"]
    serve = Serve(manifests, xds_port, admin_port, tmp_path / "serve.log", extra)
    envoy: Envoy | None = None
    try:
        asyncio.run(serve.ready())
        envoy = Envoy(tmp_path, "default/gw", xds_port)
        asyncio.run(envoy.wait_live())
        url = f"http://127.0.0.1:{listen_port}"
        body = json.dumps({"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True})
        headers = {
            "content-type": "application/json",
            "x-response-type": "sse",
            "x-sse-gap-ms": str(GAP_MS),
            "x-response-body": b64(streamed_answer()),
        }
        eventually(lambda: request(url, "POST", "/v1/chat/completions", body.encode(), {}).status_code, "routes")
        answers: list[Response] = []
        streaming = threading.Thread(
            target=lambda: answers.append(request(url, "POST", "/v1/chat/completions", body.encode(), headers))
        )
        streaming.start()
        metering = "ext_proc.streams_started"
        eventually(lambda: asyncio.run(envoy.stat_total(metering)) >= 1 if envoy else False, "metering started")
        serve.process.send_signal(signal.SIGTERM)
        readyz = f"http://127.0.0.1:{admin_port}/readyz"
        ready = eventually(lambda: (answer := http_get(readyz, timeout=1))[0] == 503 and answer, "readyz failing")
        assert "shutting down" in ready[1], ready
        # Halfway through the answer the process still waits for its metering stream (it used to go after 1 s).
        time.sleep(CHUNKS * GAP_MS / 2000)
        assert serve.process.poll() is None, "serve exited with a request in flight"
        streaming.join(timeout=30)
        [answer] = answers
        assert answer.status_code == 200, answer.text[:300]
        assert answer.text.count("chat.completion.chunk") == CHUNKS + 1 and answer.text.rstrip().endswith("[DONE]")
        assert serve.process.wait(timeout=15) == 0  # and then it exits, well before its grace is over
        assert "stopping now" not in serve.log.read_text()
    finally:
        if envoy is not None:
            envoy.stop()
        if serve.process.poll() is None:
            serve.process.kill()
            serve.process.wait()
        upstream.kill()
