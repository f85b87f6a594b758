"""``moa serve --workers N``: N processes answering on one listening socket.

A run's orchestration is CPU-bound Python, so one process uses one core however many requests it
holds. With ``--workers N`` the parent binds the socket and builds the app as usual (so bad
input is still one line before anything starts), then forks N workers that each serve it; the
kernel hands each new connection to one of them. Each worker has its own runs loop, clients and
limits (``--max-concurrency`` and the connection cap apply per worker).

The parent supervises: a worker that dies is replaced, whenever it dies, once it had started
serving (it says so through a shared flag when uvicorn is listening); one that dies before it
ever served would only fail again, so then all stop, with one line saying so. Ctrl-C or SIGTERM
stops them all (each finishes gracefully, as a single ``moa serve`` does).

Forking happens before any thread exists (the runs loop starts on first use, in each worker).
uvicorn's own supervisor cannot be used: it starts workers with ``spawn`` and pickles the
configuration, and the guarded HTTP protocol class of :mod:`langgraph_moa.serving.transport`
is made per server, not importable.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

STOP_GRACE_S = 10.0


def run_workers(
    serve: Callable[[Callable[[], None]], None], workers: int, log: Callable[[str], None]
) -> None:
    """Run ``serve(ready)`` in ``workers`` forked processes until Ctrl-C or SIGTERM; ``serve``
    calls ``ready()`` once it is serving. A worker that dies after that is replaced, whatever
    its age; one that dies before stops them all (it would fail again). ``log`` says so, one
    line each."""
    if not hasattr(os, "fork"):  # no fork on this platform: serve in this process
        serve(lambda: None)
        return
    context = multiprocessing.get_context("fork")
    processes: list[Any] = []
    served: dict[int, Any] = {}  # a process's sentinel -> its "has served" flag
    stopping = False

    def start() -> Any:
        flag = context.Value("b", 0, lock=False)

        def ready() -> None:
            flag.value = 1

        process = context.Process(target=serve, args=(ready,), daemon=False)
        process.start()
        served[process.sentinel] = flag
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
                process.join(1.0)  # reaped, so that its exit code is known
                said = f"worker {process.pid} exited with code {process.exitcode}"
                if not served.pop(process.sentinel).value:
                    log(f"{said} before it served; stopping")
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
