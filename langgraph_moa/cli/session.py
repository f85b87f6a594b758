"""One turn on a thread, the same for ``ask``, ``chat``, ``resume`` and ``fork``.

:func:`open_session` opens the thread store, takes the thread's lock when asked to (``resume``
and ``fork`` hold it throughout; ``ask`` and ``chat`` take it around each run, see
:meth:`Session.lock`), resolves the topology, checks that it can run (:func:`preflight`) and
builds the graph. :meth:`Session.run` drives a run to its end, asking the person at the
terminal at a review pause; :func:`finish` prints its outcome once the store is closed, and
:func:`run_and_finish` does both for a command that runs one turn.

Like the commands, this module imports the engine where it runs, not with the module: ``moa
--help`` must not load LangGraph (tests/integration/test_startup.py).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from rich.markup import escape

from langgraph_moa.cli import collector
from langgraph_moa.cli.options import DurabilityChoice
from langgraph_moa.errors import MoAInputError
from langgraph_moa.spec.topology import DEFAULT_PRESET, Topology, load_preset, resolve_topology

if TYPE_CHECKING:
    from langgraph.types import Durability

    from langgraph_moa.cli.console import TurnResult


async def thread_topology(
    saver: Any,
    thread: str | None,
    preset: str | None,
    topology: Path | None,
    *,
    switch: bool,
) -> Topology:
    """The topology to run: an existing thread keeps its own unless told to switch."""
    from langgraph_moa.cli.threads import stored_topology

    chosen = resolve_topology(preset=preset, path=topology) if preset or topology else None
    stored = await stored_topology(saver, thread) if thread else None
    if stored is None:
        return chosen or load_preset(DEFAULT_PRESET)
    if chosen is None:
        return stored
    if switch or chosen.model_dump() == stored.model_dump():
        return chosen
    raise MoAInputError(
        f"thread {thread!r} runs topology {stored.name!r}, not {chosen.name!r}: leave out "
        "--preset/--topology to continue it, or add --switch-topology"
    )


async def preflight(topology: Topology) -> None:
    """Before anything runs: extras, keys, the local model's build, prices for a USD budget;
    then the model stack is loaded, so that the run's first requests do not wait for it."""
    from langgraph_moa.llm.chat_models import check_ready, warm_up
    from langgraph_moa.llm.model_pool import make_models
    from langgraph_moa.llm.usage import check_priced
    from langgraph_moa.spec.models import PriceTable

    check_ready(topology, probe_local=True)
    check_priced(topology, PriceTable(topology.prices))
    await warm_up(topology)
    make_models(topology)


def _lock(db: str | None, thread: str) -> Any:
    """One run at a time on a thread (other processes included): a second one waits."""
    from langgraph_moa.cli.console import err
    from langgraph_moa.cli.store import thread_lock

    return thread_lock(
        db,
        thread,
        on_wait=lambda: err.print(
            f"[yellow]waiting[/yellow]: another run is writing thread {escape(thread)}"
        ),
    )


def resume_command(thread: str, db: str | None) -> str:
    """The command that finishes ``thread``'s interrupted run."""
    return f"moa resume --thread {thread}" + (f" --db {db}" if db else "")


@dataclass
class Session:
    """An open thread: its store, the topology it runs, the graph built for it and the config
    its next run uses (``fork`` replaces it with the fork's)."""

    db: str | None
    thread_id: str
    saver: Any
    topology: Topology
    graph: Any
    config: Any

    def lock(self) -> Any:
        """The thread's lock (an async context manager), for a command that takes it per run."""
        return _lock(self.db, self.thread_id)

    async def run(
        self, inputs: Any, *, as_json: bool, quiet: bool, durability: DurabilityChoice | str
    ) -> TurnResult:
        """Drive the run; at a review pause ask the person at the terminal, if there is one."""
        from langgraph.types import Command

        from langgraph_moa.cli.console import ask_review, drive
        from langgraph_moa.graphs import parse_decision

        graph, topology, config = self.graph, self.topology, self.config
        mode = cast("Durability", getattr(durability, "value", durability))
        collector.settle()  # the engine is loaded and the graph built: the run starts now
        run = await drive(
            graph,
            topology,
            inputs,
            config,
            as_json=as_json,
            quiet=quiet,
            durability=mode,
            state=None
            if isinstance(inputs, dict)
            else dict((await graph.aget_state(config)).values),
        )
        total = run.latency_s
        while run.review is not None and sys.stdin.isatty() and not as_json:
            decision = parse_decision(ask_review(run.review)).model_dump()
            run = await drive(
                graph,
                topology,
                Command(resume=decision),
                config,
                as_json=as_json,
                quiet=quiet,
                durability=mode,
                said=run.said,
                state=run.state,
            )
            total += run.latency_s
        run.latency_s = total
        return run


@asynccontextmanager
async def open_session(
    db: str | None,
    thread_id: str,
    topology: Callable[[Any], Awaitable[Topology]],
    *,
    hold_lock: bool = False,
    cache: Any = True,
    announce: Callable[[Topology], None] | None = None,
) -> AsyncIterator[Session]:
    """Open the thread store ``db``; with ``hold_lock``, take ``thread_id``'s lock for the whole
    block; choose the topology (``topology(saver)``), preflight it, ``announce`` it, and build
    its graph (with ``cache``, see ``build_graph``)."""
    from langgraph_moa.cli.store import open_checkpointer
    from langgraph_moa.cli.threads import run_config
    from langgraph_moa.graphs.builder import build_graph

    async with open_checkpointer(db) as saver, AsyncExitStack() as held:
        if hold_lock:
            await held.enter_async_context(_lock(db, thread_id))
        topo = await topology(saver)
        await preflight(topo)
        if announce is not None:
            announce(topo)
        graph = build_graph(topo, checkpointer=saver, cache=cache)
        yield Session(db, thread_id, saver, topo, graph, run_config(thread_id, topo))


def _say_if_truncated(state: dict[str, Any], topology: Topology | None) -> None:
    """A note on stderr when the answer stopped at its token limit, not at its end."""
    from langgraph_moa.cli.console import err

    aggregator = state.get("aggregator") or {}
    if aggregator.get("finish_reason") != "length":
        return
    limit = f" of {topology.aggregator.max_tokens} tokens" if topology else ""
    err.print(
        f"[yellow]moa: note:[/yellow] the answer was cut at the aggregator's limit{limit} "
        "(finish reason 'length'); raise aggregator.max_tokens in the topology for a longer one"
    )


def finish(
    run: TurnResult, thread: str, *, as_json: bool, quiet: bool, topology: Topology | None = None
) -> None:
    """Print the outcome: the answer (if not streamed), a summary line, or the review pause."""
    from langgraph_moa.cli.console import err, show_review
    from langgraph_moa.result import answer_of, result_of

    state = run.state
    if run.review is not None:
        if as_json:
            out = {"thread_id": thread, "paused": "review", "review": run.review}
            sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
        else:
            show_review(run.review)
        err.print(
            f"[yellow]paused[/yellow] for review: resume with "
            f"[bold]moa resume --thread {thread} --decision FILE[/bold]"
        )
        return
    if not as_json:
        if not run.streamed:
            sys.stdout.write(answer_of(state))  # type: ignore[arg-type]
        sys.stdout.write("\n")
        sys.stdout.flush()
    _say_if_truncated(state, topology)
    if not quiet:
        usage = state.get("usage") or {}
        cost = usage.get("cost_usd")
        cost_text = f", ${cost:.4f}" if cost is not None else ""
        degraded = " [yellow](degraded)[/yellow]" if state.get("degraded") else ""
        err.print(
            f"[dim]{run.latency_s:.2f}s, {usage.get('total_tokens', 0)} tokens{cost_text}, "
            f"thread {thread}[/dim]{degraded}"
        )
    if as_json:
        result = result_of(state, latency_s=run.latency_s)  # type: ignore[arg-type]
        result["thread_id"] = thread
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")


def run_and_finish(
    turn: Callable[[], Coroutine[Any, Any, tuple[TurnResult, Topology]]],
    thread: str,
    *,
    as_json: bool,
    quiet: bool,
) -> None:
    """Run one turn (an ``open_session`` block returning its run and topology) to its end,
    then print its outcome with the store closed."""
    run, topology = asyncio.run(turn())
    finish(run, thread, as_json=as_json, quiet=quiet, topology=topology)
