"""Serving the app of app.py with uvicorn: the server configuration (uvicorn's HTTP protocol
with a header deadline and a connection cap, transport.py), the listening socket, the start-up
lines for the operator, and :func:`run_server`, which serves until interrupted in one process
or several (workers.py)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp

from langgraph_moa.errors import MoAInputError
from langgraph_moa.serving.access import KEYS_ENV, is_loopback_host, load_keys
from langgraph_moa.serving.access_log import configure
from langgraph_moa.serving.app import (
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_PORT,
    check_limits,
    create_app,
)
from langgraph_moa.serving.errors import log_line
from langgraph_moa.serving.protocol import DEFAULT_MAX_MESSAGES
from langgraph_moa.serving.routes import Service
from langgraph_moa.serving.transport import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_READ_TIMEOUT_S,
    connection_cap,
    protocol_class,
)
from langgraph_moa.serving.workers import run_workers


def server_config(
    app: ASGIApp,
    *,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    log_level: str = "info",
    access_log: bool = True,
) -> Any:
    """The uvicorn configuration ``run_server`` uses for ``app``: uvicorn's HTTP protocol with a
    header deadline and a connection cap (transport.py), no websockets, no lifespan."""
    import uvicorn

    return uvicorn.Config(
        app,
        http=protocol_class(read_timeout_s=read_timeout_s, max_connections=max_connections),
        ws="none",
        log_level=log_level,
        access_log=access_log,
        lifespan="off",
        timeout_graceful_shutdown=5,
    )


def _listen(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, UnicodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise MoAInputError(f"cannot listen on {host}:{port}: {reason}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise MoAInputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def _check_process(port: int, workers: int, capture_dir: str | Path | None) -> None:
    """A MoAInputError for a port out of range, no workers, or workers with a capture."""
    if not 0 <= port <= 65535:
        raise MoAInputError(f"the port must be between 0 and 65535, got {port}")
    if workers < 1:
        raise MoAInputError(f"workers must be at least 1, got {workers}")
    if workers > 1 and capture_dir is not None:
        # one writer owns the capture files (its thread and rotation do not survive a fork)
        raise MoAInputError("--capture serves from one process: leave out --workers")


def _announce(
    service: Service,
    *,
    host: str,
    port: int,
    keys: Sequence[str],
    max_concurrency: int,
    connections: int,
    workers: int,
) -> None:
    """The start-up lines for the operator: the models not served and why, then where and how
    this server listens."""
    served = service.catalog.served.values()
    for s in served:
        if s.refusal is not None:
            log_line(f"not serving {s.id!r}: {s.refusal}")
    served_count = sum(1 for s in served if s.refusal is None)
    shown = f"[{host}]" if ":" in host else host
    auth = f"bearer keys ({len(keys)})" if keys else "no authentication"
    log_line(
        f"listening on http://{shown}:{port}/v1, {served_count} models, {auth}, "
        f"up to {max_concurrency} concurrent requests and {connections} connections"
        + (f" in each of {workers} worker processes" if workers > 1 else "")
    )
    if service.passthrough is not None:
        log_line(f"capturing pass-through traffic to {service.passthrough.sink.directory}")


def _serve_in_processes(config: Any, sock: socket.socket, service: Service, workers: int) -> None:
    """Serve on ``sock`` until interrupted, here or in ``workers`` processes; closes what the
    service owns on the serving loop as each server stops."""
    import uvicorn

    server = uvicorn.Server(config)

    async def serve(ready: Callable[[], None]) -> None:
        async def announce() -> None:  # tells the supervisor (workers.py) this one serves
            while not server.started:
                await asyncio.sleep(0.05)
            ready()

        announcing = asyncio.ensure_future(announce())
        try:
            await server.serve(sockets=[sock])
        finally:
            announcing.cancel()
            await service.aclose()

    def serve_here(ready: Callable[[], None] = lambda: None) -> None:
        # as uvicorn's Server.run does, with the close of what the service owns on that loop
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(serve(ready))

    if workers > 1:
        run_workers(serve_here, workers, log_line)
    else:
        serve_here()


def run_server(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    topologies_dir: str | Path | None = None,
    keys_file: str | Path | None = None,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    *,
    cache: Any = False,
    log_level: str = "info",
    access_log: bool = True,
    max_messages: int = DEFAULT_MAX_MESSAGES,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    capture_dir: str | Path | None = None,
    capture_config: str | Path | None = None,
    workers: int = 1,
    allow_providers: Sequence[str] = (),
) -> None:
    """Serve until interrupted, in ``workers`` processes (see :mod:`.workers`). Keys come from
    ``keys_file`` and ``MOA_SERVE_KEYS``; without any,
    only a loopback ``host`` is accepted. A client has ``read_timeout_s`` to send a request's
    headers, then as long again for its body; at most ``max_connections`` connections are held
    (fewer if the process's file-descriptor limit is low: half of it, the other half being kept
    for upstream requests), the one idle longest closed to make room; the kernel queues up to
    2048 more not yet accepted. Raises MoAInputError (one line) for a bad keys file, topologies
    folder or file, a limit below its minimum, a non-loopback host without keys, or an address
    that cannot be listened on."""
    _check_process(port, workers, capture_dir)
    check_limits(
        max_concurrency=max_concurrency,
        max_body_bytes=max_body_bytes,
        max_messages=max_messages,
        read_timeout_s=read_timeout_s,
        max_connections=max_connections,
    )
    keys = load_keys(keys_file)
    if not keys and not is_loopback_host(host):
        raise MoAInputError(
            f"refusing to listen on {host} without authentication: give --keys-file or set "
            f"{KEYS_ENV} (or listen on 127.0.0.1)"
        )
    sock = _listen(host, port)
    try:
        bound_port = int(sock.getsockname()[1])
        app = create_app(
            topologies_dir=topologies_dir,
            keys=keys,
            max_concurrency=max_concurrency,
            max_body_bytes=max_body_bytes,
            host=host,
            port=bound_port,
            cache=cache,
            max_messages=max_messages,
            read_timeout_s=read_timeout_s,
            capture_dir=capture_dir,
            capture_config=capture_config,
            allow_providers=allow_providers,
        )
    except BaseException:
        sock.close()
        raise
    service: Service = app.state.moa
    connections = connection_cap(max_connections)
    _announce(
        service,
        host=host,
        port=bound_port,
        keys=keys,
        max_concurrency=max_concurrency,
        connections=connections,
        workers=workers,
    )
    # this server's own access lines (access_log.py), not uvicorn's; INFO, as uvicorn's were
    configure(access_log and log_level.lower() in ("trace", "debug", "info"))
    config = server_config(
        app,
        read_timeout_s=read_timeout_s,
        max_connections=connections,
        log_level=log_level,
        access_log=False,
    )
    try:
        _serve_in_processes(config, sock, service, workers)
    finally:
        sock.close()
        service.runner.close()
