"""``moa ask``, ``chat``, ``resume``, ``fork`` and ``history``: the commands that run a turn on a
thread, or list one's checkpoints.

Each runs through :mod:`langgraph_moa.cli.session` (open the store, lock, topology, preflight,
graph, run, finish); what is here is each command's own part: reading the prompt, Ctrl-C's
meaning (``ask`` keeps what finished, ``chat`` drops the turn), the review decision to resume
with, the fork's edits. Every run is kept in a thread store (SQLite by default, PostgreSQL with
a URL; see :mod:`langgraph_moa.cli.store`), so a crashed run can be resumed, a thread's history
listed and a past stage forked.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from langgraph_moa.cli import collector
from langgraph_moa.cli.interrupt import Interrupted, ctrl_c_cancels
from langgraph_moa.cli.options import (
    DbOpt,
    DurabilityChoice,
    DurabilityOpt,
    JsonOpt,
    PresetOpt,
    QuietOpt,
    SwitchOpt,
    ThreadOpt,
    TopologyOpt,
    fail,
)
from langgraph_moa.cli.session import (
    Session,
    finish,
    open_session,
    resume_command,
    run_and_finish,
    thread_topology,
)
from langgraph_moa.errors import MoAInputError, MoARunError
from langgraph_moa.spec.files import read_data_file, read_text_file
from langgraph_moa.spec.topology import Topology, parse_topology, resolve_topology

if TYPE_CHECKING:
    from langgraph_moa.cli.console import TurnResult


def _read_decision(path: Path) -> Any:
    from langgraph_moa.graphs import parse_decision

    source = f"decision file {str(path)!r}"
    return parse_decision(read_data_file(path, what="decision file"), source=source).model_dump()


def _read_prompt(prompt: str) -> str:
    """The prompt argument, or standard input when it is ``-``."""
    if prompt != "-":
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:  # bytes the terminal's encoding could not decode
            raise MoAInputError("the prompt is not valid UTF-8 text") from None
        return prompt
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MoAInputError(f"the prompt on stdin is not UTF-8 (byte {e.start})") from None


def _cache_backend(cache: Path | None) -> Any:
    from langgraph_moa.llm.call import error_text
    from langgraph_moa.llm.call_cache import open_cache

    if cache is None:
        return True
    try:
        return open_cache(str(cache))
    except Exception as e:  # sqlite3 errors: unwritable folder, not a database...
        fail(f"cannot open the cache {str(cache)!r}: {error_text(e)}")


# --- moa ask / chat ---------------------------------------------------------------------
def ask(
    prompt: Annotated[
        str, typer.Argument(help="The question or instruction; - reads it from stdin.")
    ],
    preset: PresetOpt = None,
    topology: TopologyOpt = None,
    thread: Annotated[
        str | None,
        typer.Option(help="Thread id: turns of one thread see the earlier ones (default: new)."),
    ] = None,
    switch_topology: SwitchOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    estimate_only: Annotated[
        bool,
        typer.Option("--estimate", help="Print the worst-case cost of the query; call nothing."),
    ] = False,
    cache: Annotated[
        Path | None,
        typer.Option(help="Keep identical proposer calls in this SQLite file across runs."),
    ] = None,
    db: DbOpt = None,
    durability: DurabilityOpt = DurabilityChoice.sync,
) -> None:
    """Answer PROMPT with a Mixture-of-Agents; the answer streams to stdout, progress to stderr.

    A --thread keeps its topology. Ctrl-C stops the run and prints how to finish it.
    """
    from langchain_core.messages import HumanMessage

    from langgraph_moa.cli.console import describe, err, print_estimate

    prompt = _read_prompt(prompt)
    if not prompt.strip():
        fail("the prompt is empty")
    if estimate_only:
        print_estimate(resolve_topology(preset=preset, path=topology), prompt, as_json)
        return
    backend = _cache_backend(cache)
    thread_id = thread or uuid.uuid4().hex[:12]

    async def chosen(saver: Any) -> Topology:
        return await thread_topology(saver, thread, preset, topology, switch=switch_topology)

    def announce(topo: Topology) -> None:
        if not quiet:
            err.print(f"[bold]moa[/bold] {escape(describe(topo))}, thread {thread_id}")

    async def go() -> tuple[TurnResult, Topology]:
        async with open_session(db, thread_id, chosen, cache=backend, announce=announce) as session:
            try:
                async with ctrl_c_cancels(), session.lock():
                    run = await session.run(
                        {"messages": [HumanMessage(prompt)]},
                        as_json=as_json,
                        quiet=quiet,
                        durability=durability,
                    )
            except Interrupted:
                snapshot = await session.graph.aget_state(session.config)
                if snapshot.next:
                    fail(
                        f"interrupted; what finished is saved in thread {thread_id}: "
                        f"finish it with: {resume_command(thread_id, db)}",
                        130,
                    )
                fail("interrupted before anything was saved", 130)
            return run, session.topology

    run_and_finish(go, thread_id, as_json=as_json, quiet=quiet)


def chat(
    preset: PresetOpt = None,
    topology: TopologyOpt = None,
    thread: Annotated[
        str | None, typer.Option(help="Continue this thread (default: a new one).")
    ] = None,
    switch_topology: SwitchOpt = False,
    quiet: QuietOpt = False,
    db: DbOpt = None,
    history_file: Annotated[
        Path | None,
        typer.Option(
            "--history", help="Prompt history file (default: $MOA_CHAT_HISTORY or data folder)."
        ),
    ] = None,
) -> None:
    """Chat in the terminal, turn after turn, in a thread kept in the thread store.

    Enter sends; Up/Down and Ctrl-R recall earlier prompts (kept across sessions); /exit, Ctrl-D
    or Ctrl-C at the prompt leaves; Ctrl-C mid-answer drops the turn.
    """
    from langchain_core.messages import HumanMessage
    from langgraph.graph import END

    from langgraph_moa.cli.console import describe, err
    from langgraph_moa.cli.line_input import LineReader

    thread_id = thread or uuid.uuid4().hex[:12]

    async def turn(session: Session, text: str) -> None:
        before = None
        try:
            async with ctrl_c_cancels(), session.lock():
                before = await session.graph.aget_state(session.config)
                run = await session.run(
                    {"messages": [HumanMessage(text)]},
                    as_json=False,
                    quiet=quiet,
                    durability="sync",
                )
        except Interrupted:
            # Forget the cancelled turn: the thread goes back to how it was before it.
            async with session.lock():
                if before is None:  # cancelled while waiting for another run: nothing ran
                    pass
                elif before.created_at is None:
                    await session.saver.adelete_thread(thread_id)
                else:
                    await session.graph.aupdate_state(before.config, None, as_node=END)
            sys.stdout.write("\n")
            err.print("[yellow]cancelled[/yellow] this turn; the thread does not keep it")
            return
        except MoARunError as e:  # this turn failed; the chat goes on
            err.print(f"[red]moa: error:[/red] {escape(str(e))}")
            return
        finish(run, thread_id, as_json=False, quiet=True, topology=session.topology)

    async def chosen(saver: Any) -> Topology:
        return await thread_topology(saver, thread, preset, topology, switch=switch_topology)

    def announce(topo: Topology) -> None:
        err.print(
            f"[bold]moa chat[/bold] {escape(describe(topo))}, thread {thread_id} (/exit to leave)"
        )

    async def go() -> None:
        async with open_session(db, thread_id, chosen, announce=announce) as session:
            collector.settle()  # loaded: the collector is back on while the prompt waits
            reader = LineReader(history_file)
            while True:
                line = await reader.read()
                if line is None or line.strip() == "/exit":
                    break
                if line.strip():
                    await turn(session, line.strip())

    try:
        asyncio.run(go())
    except KeyboardInterrupt:  # Ctrl-C at the prompt: leave the chat
        err.print("")
    err.print(f"continue later with: moa chat --thread {thread_id}" + (f" --db {db}" if db else ""))


# --- moa resume / history / fork --------------------------------------------------------
def resume(
    thread: ThreadOpt,
    decision: Annotated[
        Path | None,
        typer.Option(help="Review decision (YAML/JSON): {edit: {REF: text}, drop: [REF]} or {}."),
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    db: DbOpt = None,
    durability: DurabilityOpt = DurabilityChoice.sync,
) -> None:
    """Finish a thread's interrupted run (a crash, or a pause for review).

    Proposals already checkpointed are not requested again.
    """
    from langgraph.types import Command

    from langgraph_moa.cli.console import ask_review, err
    from langgraph_moa.cli.threads import topology_of_thread
    from langgraph_moa.graphs import apply_edits, parse_decision

    resume_value = _read_decision(decision) if decision else None

    async def chosen(saver: Any) -> Topology:
        return await topology_of_thread(saver, thread)

    async def go() -> tuple[TurnResult, Topology]:
        async with open_session(db, thread, chosen, hold_lock=True) as session:
            snapshot = await session.graph.aget_state(session.config)
            if snapshot.interrupts:
                if resume_value is None and not sys.stdin.isatty():
                    raise MoAInputError(
                        f"thread {thread!r} is paused for review: give --decision FILE"
                    )
                if resume_value is not None:  # check the refs before anything runs
                    last_layer = snapshot.values["layers"][-1]
                    apply_edits(last_layer, resume_value["edit"], resume_value["drop"])
                inputs: Any = Command(resume=resume_value) if resume_value is not None else None
                if inputs is None:
                    review = snapshot.interrupts[0].value
                    inputs = Command(resume=parse_decision(ask_review(review)).model_dump())
            elif snapshot.next:
                if resume_value is not None:
                    raise MoAInputError(f"thread {thread!r} is not paused for review")
                inputs = None
            else:
                raise MoAInputError(f"thread {thread!r} has nothing to resume: its run finished")
            if not quiet:
                err.print(
                    f"[bold]moa[/bold] resuming thread {thread} at {', '.join(snapshot.next)}"
                )
            run = await session.run(inputs, as_json=as_json, quiet=quiet, durability=durability)
            return run, session.topology

    run_and_finish(go, thread, as_json=as_json, quiet=quiet)


def history_cmd(thread: ThreadOpt, as_json: JsonOpt = False, db: DbOpt = None) -> None:
    """List a thread's checkpoints, newest first: time, step, what had run, what runs next.

    * marks the current branch (what the next run continues from); an edit (moa fork, a Studio
    state edit) is labelled with the stage it was written as and what it changed; a checkpoint
    the thread forks at says how many branches leave it.
    """
    from langgraph_moa.cli.store import open_checkpointer
    from langgraph_moa.cli.threads import history, topology_of_thread
    from langgraph_moa.graphs.builder import build_graph

    async def go() -> list[Any]:
        async with open_checkpointer(db) as saver:
            topo = await topology_of_thread(saver, thread)
            return await history(build_graph(topo, checkpointer=saver), thread)

    entries = asyncio.run(go())
    if as_json:
        sys.stdout.write(json.dumps([vars(e) for e in entries]) + "\n")
        return
    for e in entries:
        layer = f"L{e.layer}" if e.layer else "-"
        ran = " | ".join(e.ran) if e.edit else ", ".join(e.ran)
        ran = ran or "(input)"
        if e.edit:  # a fork that changed nothing (e.g. to swap the aggregator) is just a fork
            ran += f" (edit: {', '.join(e.changes)})" if e.changes else " (fork)"
        nxt = ", ".join(e.next) or "(end)"
        fork = f"  [forks here: {e.branches} branches]" if e.branches > 1 else ""
        sys.stdout.write(
            f"{'*' if e.current else ' '} {e.created_at[:23]}  step {e.step:>2}  {layer:<3}  "
            f"{e.checkpoint_id}  ran: {ran}  next: {nxt}{fork}\n"
        )


def fork(
    thread: ThreadOpt,
    at: Annotated[
        str, typer.Option(help="The stage to fork after: a proposer, L2/join, critic...")
    ],
    edit: Annotated[
        list[str] | None, typer.Option(help="REF=FILE: replace a proposal's text (repeatable).")
    ] = None,
    drop: Annotated[
        list[str] | None, typer.Option(help="REF: leave a proposal out (repeatable).")
    ] = None,
    aggregator: Annotated[
        str | None, typer.Option(help="Swap the aggregator's model, e.g. openai:gpt-4o.")
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    db: DbOpt = None,
    durability: DurabilityOpt = DurabilityChoice.sync,
) -> None:
    """Go back to a stage of the thread's last turn, change proposals or the aggregator, and
    re-run only what comes after; the original branch stays in the thread."""
    from langgraph_moa.cli.console import err
    from langgraph_moa.cli.threads import fork_config, topology_of_thread

    edits: dict[str, str] = {}
    for item in edit or []:
        ref, sep, path = item.partition("=")
        if not sep or not ref or not path:
            fail(f"--edit takes REF=FILE, got {item!r}")
        edits[ref] = read_text_file(path, what=f"the edit of {ref}")

    async def chosen(saver: Any) -> Topology:
        topo = await topology_of_thread(saver, thread)
        if aggregator:
            swapped = topo.aggregator.model_copy(update={"model": aggregator})
            spec = topo.model_dump(mode="json") | {"aggregator": swapped.model_dump(mode="json")}
            topo = parse_topology(spec, source="--aggregator")
        return topo

    async def go() -> tuple[TurnResult, Topology]:
        async with open_session(db, thread, chosen, hold_lock=True) as session:
            forked = await fork_config(
                session.graph, session.topology, thread, at=at, edit=edits, drop=drop or []
            )
            session.config = session.config | {"configurable": forked["configurable"]}
            if not quiet:
                err.print(f"[bold]moa[/bold] forking thread {thread} after {at}")
            run = await session.run(None, as_json=as_json, quiet=quiet, durability=durability)
            return run, session.topology

    run_and_finish(go, thread, as_json=as_json, quiet=quiet)
