"""``moa serve``: the presets (and a folder of topologies) as an OpenAI-compatible API.

Parsing only; the server is :mod:`langgraph_moa.serving`, imported when the command runs (it
needs the ``serve`` extra: FastAPI and uvicorn).
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

import typer

from langgraph_moa.extras import require_extra


class _LogLevel(enum.StrEnum):
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"
    trace = "trace"


def serve(
    host: Annotated[str, typer.Option(help="Address to bind (loopback unless keys are set).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8080,
    topologies: Annotated[
        Path | None, typer.Option(help="Also serve the topology files of this folder, by stem.")
    ] = None,
    keys_file: Annotated[
        Path | None, typer.Option(help="Bearer keys, one per line (also $MOA_SERVE_KEYS).")
    ] = None,
    max_concurrency: Annotated[
        int, typer.Option(help="Requests run at once; more get 429 at once.")
    ] = 16,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body (413 above).")] = (
        1024 * 1024
    ),
    max_messages: Annotated[
        int | None, typer.Option(help="Most messages in one request (400 above; 2000).")
    ] = None,
    read_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds a client has to send a request's headers, and its body (15)."),
    ] = None,
    max_connections: Annotated[
        int | None,
        typer.Option(help="Connections held at once; the longest idle is closed beyond (1024)."),
    ] = None,
    log_level: Annotated[
        _LogLevel,
        typer.Option(help="uvicorn's log level: critical, error, warning, info, debug or trace."),
    ] = _LogLevel.info,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = True,
    capture: Annotated[
        Path | None,
        typer.Option(
            help="Serve pass-through models (capture/ then provider:model) and record their "
            "exchanges in this folder."
        ),
    ] = None,
    capture_config: Annotated[
        Path | None,
        typer.Option(help="Capture aliases, sampling, dropped/hashed fields (YAML)."),
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Processes serving the port, each with its own limits.")
    ] = 1,
    allow_provider: Annotated[
        list[str] | None,
        typer.Option(
            help="Let capture/<provider:model> reach this provider though neither its key nor "
            "its base URL is set (e.g. vllm at its default local URL). Repeatable.",
        ),
    ] = None,
) -> None:
    """Serve the presets (and --topologies) as an OpenAI-compatible API: /v1/chat/completions
    and /v1/models, each topology under its own model id."""
    require_extra("serve", "moa serve")
    from langgraph_moa.serving import run_server

    # given limits only: the defaults live with the server (importing them needs FastAPI)
    given = {
        "max_messages": max_messages,
        "read_timeout_s": read_timeout,
        "max_connections": max_connections,
    }
    limits: dict[str, Any] = {name: value for name, value in given.items() if value is not None}

    run_server(
        host,
        port,
        topologies,
        keys_file,
        max_concurrency,
        max_body_bytes,
        log_level=log_level.value,
        **limits,
        access_log=access_log,
        capture_dir=capture,
        capture_config=capture_config,
        workers=workers,
        allow_providers=allow_provider or (),
    )
