"""``moa serve --workers N``: N processes answering on one listening socket.

A run's orchestration is CPU-bound Python, so one process uses one core however many requests it
holds. With ``--workers N`` the parent binds the socket and builds the app as usual (so bad
input is still one line before anything starts), then forks N workers that each serve it; the
kernel hands each new connection to one of them. Each worker has its own runs loop, clients and
limits (``--max-concurrency`` and the connection cap apply per worker).

The parent supervises: a worker that dies is replaced, and Ctrl-C or SIGTERM stops them all
(each finishes gracefully, as a single ``moa serve`` does). Forking happens before any thread
exists (the runs loop starts on first use, in each worker). uvicorn's own supervisor cannot be
used: it starts workers with ``spawn`` and pickles the configuration, and the guarded HTTP
protocol class of :mod:`langgraph_moa.serving.transport` is made per server, not importable.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

__all__ = ["run_workers"]

STOP_GRACE_S = 10.0
# A worker that dies sooner than this after it started is not replaced: it would fail again.
EARLY_EXIT_S = 5.0


def run_workers(serve: Callable[[], None], workers: int, log: Callable[[str], None]) -> None:
    """Run ``serve`` in ``workers`` forked processes until Ctrl-C or SIGTERM; replace any that
    dies meanwhile (all stop if one dies right after starting). ``log`` says so, one line each."""
    if not hasattr(os, "fork"):  # no fork on this platform: serve in this process
        serve()
        return
    context = multiprocessing.get_context("fork")
    processes: list[Any] = []
    started: dict[int, float] = {}
    stopping = False

    def start() -> Any:
        process = context.Process(target=serve, daemon=False)
        process.start()
        started[process.sentinel] = time.monotonic()
        return process

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        processes = [start() for _ in range(workers)]
        while not stopping:
            ended = wait([p.sentinel for p in processes], timeout=0.5)
            for k, process in enumerate(processes):
                if process.sentinel not in ended or stopping:
                    continue
                said = f"worker {process.pid} exited with code {process.exitcode}"
                if time.monotonic() - started.pop(process.sentinel) < EARLY_EXIT_S:
                    log(f"{said} as it started; stopping")
                    stopping = True
                else:
                    log(f"{said}; replacing it")
                    processes[k] = start()
    finally:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join(STOP_GRACE_S)
            if process.is_alive():
                process.kill()
                process.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.stderr.flush()
