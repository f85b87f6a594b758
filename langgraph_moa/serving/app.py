"""The app factory of ``moa serve``: :func:`create_app` checks the limits, loads the catalog
(catalog.py) and the pass-through models (passthrough.py), and puts the routes (routes.py)
behind the guard (guard.py). Serving it is server.py's job."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from langgraph_moa.errors import MoAInputError
from langgraph_moa.serving.access import KeyRing, SelfAddress
from langgraph_moa.serving.capture import CaptureSink, load_capture_config
from langgraph_moa.serving.catalog import Catalog, Served, load_catalog
from langgraph_moa.serving.errors import APIError
from langgraph_moa.serving.guard import Guard
from langgraph_moa.serving.passthrough import PassThrough
from langgraph_moa.serving.protocol import DEFAULT_MAX_MESSAGES
from langgraph_moa.serving.routes import Service, add_error_handlers, add_routes
from langgraph_moa.serving.transport import DEFAULT_READ_TIMEOUT_S
from langgraph_moa.spec.providers import PROVIDERS

DEFAULT_HOST = "127.0.0.1"
# Not 8000: that is vLLM's usual port, which the `vllm` provider points at by default.
DEFAULT_PORT = 8080
DEFAULT_MAX_CONCURRENCY = 16
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


def check_limits(
    *,
    max_concurrency: int,
    max_body_bytes: int,
    max_messages: int,
    read_timeout_s: float,
    max_connections: int | None = None,
) -> None:
    """A MoAInputError for a limit below its minimum."""
    if max_concurrency < 1:
        raise MoAInputError(f"max concurrency must be at least 1, got {max_concurrency}")
    if max_body_bytes < 1:
        raise MoAInputError(f"the body limit must be at least 1 byte, got {max_body_bytes}")
    if max_messages < 1:
        raise MoAInputError(f"the message limit must be at least 1, got {max_messages}")
    if not read_timeout_s > 0:
        raise MoAInputError(f"the read timeout must be above 0 seconds, got {read_timeout_s}")
    if max_connections is not None and max_connections < 1:
        raise MoAInputError(f"max connections must be at least 1, got {max_connections}")


def _allowed_providers(names: Sequence[str], capture_dir: str | Path | None) -> frozenset[str]:
    """The providers ``--allow-provider`` names, checked: known, OpenAI-compatible, and only
    with a capture directory (nothing else is passed through)."""
    if names and capture_dir is None:
        raise MoAInputError("--allow-provider is for pass-through models: give --capture too")
    for name in names:
        spec = PROVIDERS.get(name)
        if spec is None or not spec.openai_compatible:
            known = ", ".join(sorted(p for p, s in PROVIDERS.items() if s.openai_compatible))
            raise MoAInputError(
                f"--allow-provider: {name!r} is not an OpenAI-compatible provider; known: {known}"
            )
    return frozenset(names)


def _passthrough(
    served: dict[str, Served],
    capture_dir: str | Path | None,
    capture_config: str | Path | None,
    here: SelfAddress,
    allowed: frozenset[str],
) -> PassThrough | None:
    """The pass-through models, if there is a capture directory; its aliases checked (none a
    served model id, each naming an upstream model)."""
    if capture_dir is None:
        if capture_config is not None:
            raise MoAInputError("a capture configuration needs a capture directory")
        return None
    config = load_capture_config(capture_config)
    for alias in config.aliases:
        if alias in served:
            raise MoAInputError(f"the capture alias {alias!r} is already a served model id")
    passthrough = PassThrough(CaptureSink(capture_dir, config), here, allowed)
    try:
        for alias in config.aliases:
            passthrough.resolve(alias)
    except APIError as e:
        passthrough.sink.close()
        raise MoAInputError(f"capture config: {e.message}") from None
    return passthrough


def create_app(
    *,
    topologies_dir: str | Path | None = None,
    keys: Sequence[str] = (),
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    cache: Any = False,
    max_messages: int = DEFAULT_MAX_MESSAGES,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    capture_dir: str | Path | None = None,
    capture_config: str | Path | None = None,
    allow_providers: Sequence[str] = (),
) -> FastAPI:
    """The OpenAI-compatible app. ``host``/``port`` are where it is served, so that topologies
    calling back into it can be refused; ``keys`` empty means no authentication; ``cache`` is
    passed to :func:`build_graph` (off by default: a long-running server would otherwise keep
    every cacheable proposal in memory); ``max_messages`` bounds a request's messages (and, in
    all, its content parts and tool calls); ``read_timeout_s`` is how long a request's body may
    take to arrive (408 after). ``capture_dir`` serves the pass-through models
    (``capture/<provider:model>`` and the aliases of ``capture_config``) and writes their
    exchanges there (capture.py); the app then owns a writer thread, closed by the service's
    ``aclose``. A pass-through reaches only the providers the operator configured (their base
    URL or key in the environment, or named in ``allow_providers``; see
    :meth:`PassThrough.configured`). Raises MoAInputError for a bad topologies folder or file (one
    named as a preset included), a limit below its minimum, a bad capture configuration, an
    unknown or non-OpenAI-compatible provider to allow, or a capture directory that cannot be
    written."""
    check_limits(
        max_concurrency=max_concurrency,
        max_body_bytes=max_body_bytes,
        max_messages=max_messages,
        read_timeout_s=read_timeout_s,
    )
    allowed = _allowed_providers(allow_providers, capture_dir)
    here = SelfAddress(host, port)
    served = load_catalog(topologies_dir, here)
    passthrough = _passthrough(served, capture_dir, capture_config, here, allowed)
    catalog = Catalog(served, cache=cache, passthrough=passthrough)
    service = Service(catalog, max_concurrency=max_concurrency, max_messages=max_messages)

    app = FastAPI(title="langgraph-moa", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.moa = service
    add_error_handlers(app)
    add_routes(app, service)
    app.add_middleware(
        Guard,
        keys=KeyRing(keys),
        max_body_bytes=max_body_bytes,
        read_timeout_s=read_timeout_s,
    )
    return app
