"""`xds-server serve` stopping gracefully under a request in flight, with real Envoy and the Anthropic simulator:
/readyz fails at once, the ext_proc stream translating a streamed answer (OpenAI chunks from Anthropic's events) is
waited for (not cut after a second), and the process exits once it is done. (An ordinary backend's answers need no
ext_proc at all: Envoy routes and meters them itself.)"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from pathlib import Path

from testing.envoy import Envoy
from testing.manifests import ai_gateway_route, gateway, keyed_backend
from testing.ports import free_port
from testing.processes import Serve
from testing.sims import start_anthropic_sim
from testing.web import Response, eventually, http_get, request

WORDS, GAP_SECONDS = 15, 0.5  # some ten events of the prompt's echo, each in two writes: several seconds
KEY = "sk-ant-graceful"


def test_a_stopping_control_plane_finishes_the_requests_in_flight_then_exits(tmp_path: Path) -> None:
    upstream = start_anthropic_sim("127.0.4.31", tmp_path / "upstream.log", KEY, GAP_SECONDS)
    listen_port, xds_port, admin_port, extproc_port = free_port(), free_port(), free_port(), free_port()
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    documents = [gateway([listen_port]), ai_gateway_route("ai", {"claude-slow": "claude"})]
    documents.append(keyed_backend("claude", "127.0.4.31", upstream.port, KEY, "Anthropic", None, "AnthropicAPIKey"))
    (manifests / "all.yaml").write_text("---".join(documents))
    extra = ["--extproc-address", f"127.0.0.1:{extproc_port}", "--shutdown-grace", "20"]
    serve = Serve(manifests, xds_port, admin_port, tmp_path / "serve.log", extra)
    envoy: Envoy | None = None
    try:
        asyncio.run(serve.ready())
        envoy = Envoy(tmp_path, "default/gw", xds_port)
        asyncio.run(envoy.wait_live())
        url = f"http://127.0.0.1:{listen_port}"
        prompt = " ".join(["word"] * WORDS)
        body = json.dumps({"model": "claude-slow", "messages": [{"role": "user", "content": prompt}], "stream": True})
        headers = {"content-type": "application/json"}
        probe = json.dumps({"model": "claude-slow", "messages": [{"role": "user", "content": "hi"}]}).encode()
        eventually(lambda: request(url, "POST", "/v1/chat/completions", probe, headers).status_code == 200, "routes")
        answers: list[Response] = []
        streaming = threading.Thread(
            target=lambda: answers.append(request(url, "POST", "/v1/chat/completions", body.encode(), headers))
        )
        started = asyncio.run(envoy.stat_total("ext_proc.streams_started"))
        streaming.start()
        translating = "ext_proc.streams_started"
        eventually(lambda: asyncio.run(envoy.stat_total(translating)) > started if envoy else False, "translating")
        serve.process.send_signal(signal.SIGTERM)
        readyz = f"http://127.0.0.1:{admin_port}/readyz"
        ready = eventually(lambda: (answer := http_get(readyz, timeout=1))[0] == 503 and answer, "readyz failing")
        assert "shutting down" in ready[1], ready
        # Seconds into the answer the process still waits for its translating stream (it used to go after 1 s).
        time.sleep(4 * GAP_SECONDS)
        assert serve.process.poll() is None, "serve exited with a request in flight"
        streaming.join(timeout=30)
        [answer] = answers
        assert answer.status_code == 200, answer.text[:300]
        assert '"finish_reason":"stop"' in answer.text and answer.text.rstrip().endswith("[DONE]"), answer.text[-300:]
        assert serve.process.wait(timeout=15) == 0  # and then it exits, well before its grace is over
        assert "stopping now" not in serve.log.read_text()
    finally:
        if envoy is not None:
            envoy.stop()
        if serve.process.poll() is None:
            serve.process.kill()
            serve.process.wait()
        upstream.kill()
