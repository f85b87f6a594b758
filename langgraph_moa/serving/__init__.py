"""``moa serve``: Mixture-of-Agents topologies behind an OpenAI-compatible HTTP API, each preset
and topology file under its own model id; with a capture directory, also pass-through models
whose traffic is recorded for relabeling (passthrough.py, capture.py).

The modules, by job: catalog.py (what models are served, their compiled graphs), protocol.py
(the whole OpenAI wire format), routes.py (the routes, rendering the run loop's events),
guard.py (keys, body size and time, the access log), app.py (the app factory), server.py
(uvicorn, the socket, workers); beside them access.py, errors.py, passthrough.py, capture.py,
runs.py, transport.py and workers.py."""

from langgraph_moa.serving.access import KEYS_ENV, SelfAddress, is_loopback_host, load_keys
from langgraph_moa.serving.app import (
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_PORT,
    create_app,
)
from langgraph_moa.serving.protocol import DEFAULT_MAX_MESSAGES
from langgraph_moa.serving.server import run_server, server_config
from langgraph_moa.serving.transport import DEFAULT_MAX_CONNECTIONS, DEFAULT_READ_TIMEOUT_S

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_MESSAGES",
    "DEFAULT_PORT",
    "DEFAULT_READ_TIMEOUT_S",
    "KEYS_ENV",
    "SelfAddress",
    "create_app",
    "is_loopback_host",
    "load_keys",
    "run_server",
    "server_config",
]
