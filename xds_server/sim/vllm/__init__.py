"""`xds-server sim vllm`: an OpenAI-compatible model server that behaves like vLLM under load.

`engine` schedules requests over `kvcache` with a latency model and no I/O; `api` reads requests, `metrics`
renders vLLM's Prometheus series, `server` is the aiohttp face and `config` the flags.
"""

from xds_server.sim.vllm.server import main

__all__ = ["main"]
