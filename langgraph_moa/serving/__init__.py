"""``moa serve``: Mixture-of-Agents topologies behind an OpenAI-compatible HTTP API, each preset
and topology file under its own model id."""

from langgraph_moa.serving.access import KEYS_ENV, SelfAddress, is_loopback_host, load_keys
from langgraph_moa.serving.app import (
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_PORT,
    create_app,
    run_server,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_PORT",
    "KEYS_ENV",
    "SelfAddress",
    "create_app",
    "is_loopback_host",
    "load_keys",
    "run_server",
]
