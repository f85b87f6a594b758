"""The ``moa`` command: ask, chat, resume, history, threads, fork, graph, presets.

Every run is kept in a thread store (SQLite by default, PostgreSQL with a URL; see
:mod:`langgraph_moa.cli.store`), so a crashed run can be resumed, a thread's history listed
and a past stage forked. Bad input (topology, preset, provider, missing key, empty prompt,
unknown thread) prints one line on stderr and exits with code 2; a run that cannot produce an
answer exits with 1. Never a traceback.

Each command imports the engine (LangGraph, LangChain, the thread store, the console) where it
runs, not with this module: ``moa --help`` and ``moa presets`` would otherwise spend a second
importing LangGraph they never use (tests/integration/test_startup.py checks what loads).
"""

from __future__ import annotations

import asyncio
import enum
import json
import sys
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, cast

import typer
from rich.markup import escape

from langgraph_moa.cli import collector
from langgraph_moa.cli.evaluate import eval_command, report_command
from langgraph_moa.cli.help import MoAGroup, MoATyper
from langgraph_moa.cli.interrupt import Interrupted, ctrl_c_cancels
from langgraph_moa.cli.logs import setup_logging
from langgraph_moa.cli.relabel import export_command, relabel_command
from langgraph_moa.cli.thread_list import threads_command
from langgraph_moa.errors import MoAError, MoAInputError, MoARunError
from langgraph_moa.extras import require_extra
from langgraph_moa.spec.files import read_text_file
from langgraph_moa.spec.topology import (
    DEFAULT_PRESET,
    Topology,
    list_presets,
    load_preset,
    load_topology,
    parse_topology,
    read_data_file,
)

if TYPE_CHECKING:
    from langgraph.types import Durability

    from langgraph_moa.cli.console import TurnResult

app = MoATyper(
    name="moa",
    cls=MoAGroup,
    help="Mixture-of-Agents on LangGraph: layered proposers, critique and aggregation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version() -> str:
    try:
        return version("langgraph-moa")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def _show_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"moa (langgraph-moa) {_version()}\n")
        raise typer.Exit()


# The commands that load the engine and run a graph: the collector stays off while they load it
# (see langgraph_moa.cli.collector); every other command gets it back at once.
RUN_COMMANDS = frozenset({"ask", "chat", "resume", "fork"})


@app.callback()
def _root(
    ctx: typer.Context,
    _version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_show_version, is_eager=True, help="Print the version."
        ),
    ] = False,
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose",
            "-v",
            count=True,
            help="Log to stderr: -v requests, retries, cache and budget; -vv debug; -vvv "
            "libraries too (or $MOA_LOG_LEVEL).",
        ),
    ] = 0,
) -> None:
    """Mixture-of-Agents on LangGraph: layered proposers, critique and aggregation."""
    setup_logging(verbose)
    if ctx.invoked_subcommand not in RUN_COMMANDS:
        collector.settle()


class DurabilityChoice(enum.StrEnum):
    sync = "sync"
    async_ = "async"
    exit = "exit"


class LogLevel(enum.StrEnum):
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"
    trace = "trace"


class GraphFormat(enum.StrEnum):
    mermaid = "mermaid"
    ascii = "ascii"
    svg = "svg"
    html = "html"


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr, then exit (2: bad input, 1: the run failed)."""
    from langgraph_moa.cli.console import err

    err.print(f"[red]moa: error:[/red] {escape(message)}")
    raise SystemExit(code)


def resolve_topology(preset: str | None, topology: Path | None) -> Topology:
    if preset and topology:
        raise MoAInputError("give either --preset or --topology, not both")
    if topology:
        return load_topology(topology)
    return load_preset(preset or DEFAULT_PRESET)


PresetOpt = Annotated[
    str | None, typer.Option("--preset", "-p", help=f"Preset name (default: {DEFAULT_PRESET}).")
]
TopologyOpt = Annotated[
    Path | None, typer.Option("--topology", "-t", help="Topology file (.yaml/.json).")
]
DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="Thread store: a SQLite path or postgresql:// URL (or $MOA_DB)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object at the end.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")]
ThreadOpt = Annotated[str, typer.Option("--thread", help="The thread id.")]
DurabilityOpt = Annotated[
    DurabilityChoice,
    typer.Option(help="When checkpoints are written: sync (each step, safest), async, or exit."),
]
SwitchOpt = Annotated[
    bool,
    typer.Option(
        "--switch-topology",
        help="Run an existing thread with the given --preset/--topology instead of its own.",
    ),
]


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


async def _thread_topology(
    saver: Any,
    thread: str | None,
    preset: str | None,
    topology: Path | None,
    *,
    switch: bool,
) -> Topology:
    """The topology to run: an existing thread keeps its own unless told to switch."""
    from langgraph_moa.cli.threads import stored_topology

    chosen = resolve_topology(preset, topology) if preset or topology else None
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


async def _preflight(topology: Topology) -> None:
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


def _resume_command(thread: str, db: str | None) -> str:
    return f"moa resume --thread {thread}" + (f" --db {db}" if db else "")


def _cache_backend(cache: Path | None) -> Any:
    from langgraph_moa.llm.call import error_text
    from langgraph_moa.llm.call_cache import open_cache

    if cache is None:
        return True
    try:
        return open_cache(str(cache))
    except Exception as e:  # sqlite3 errors: unwritable folder, not a database...
        fail(f"cannot open the cache {str(cache)!r}: {error_text(e)}")


async def _run_to_end(
    graph: Any,
    topology: Topology,
    inputs: Any,
    config: Any,
    *,
    as_json: bool,
    quiet: bool,
    durability: DurabilityChoice | str,
) -> TurnResult:
    """Drive the run; at a review pause ask the person at the terminal, if there is one."""
    from langgraph.types import Command

    from langgraph_moa.cli.console import ask_review, drive
    from langgraph_moa.graphs import parse_decision

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
        state=None if isinstance(inputs, dict) else dict((await graph.aget_state(config)).values),
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


def _finish(
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


# --- moa ask / chat ---------------------------------------------------------------------
@app.command()
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
    from langgraph_moa.cli.store import open_checkpointer
    from langgraph_moa.cli.threads import run_config
    from langgraph_moa.graphs.builder import build_graph

    prompt = _read_prompt(prompt)
    if not prompt.strip():
        fail("the prompt is empty")
    if estimate_only:
        print_estimate(resolve_topology(preset, topology), prompt, as_json)
        return
    backend = _cache_backend(cache)
    thread_id = thread or uuid.uuid4().hex[:12]

    async def go() -> tuple[TurnResult | None, Topology]:
        async with open_checkpointer(db) as saver:
            topo = await _thread_topology(saver, thread, preset, topology, switch=switch_topology)
            await _preflight(topo)
            if not quiet:
                err.print(f"[bold]moa[/bold] {escape(describe(topo))}, thread {thread_id}")
            graph = build_graph(topo, checkpointer=saver, cache=backend)
            config = run_config(thread_id, topo)
            try:
                async with ctrl_c_cancels(), _lock(db, thread_id):
                    run = await _run_to_end(
                        graph,
                        topo,
                        {"messages": [HumanMessage(prompt)]},
                        config,
                        as_json=as_json,
                        quiet=quiet,
                        durability=durability,
                    )
            except Interrupted:
                snapshot = await graph.aget_state(config)
                if snapshot.next:
                    fail(
                        f"interrupted; what finished is saved in thread {thread_id}: "
                        f"finish it with: {_resume_command(thread_id, db)}",
                        130,
                    )
                fail("interrupted before anything was saved", 130)
            return run, topo

    run, topo = asyncio.run(go())
    assert run is not None
    _finish(run, thread_id, as_json=as_json, quiet=quiet, topology=topo)


@app.command()
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
    from langgraph_moa.cli.store import open_checkpointer
    from langgraph_moa.cli.threads import run_config
    from langgraph_moa.graphs.builder import build_graph

    thread_id = thread or uuid.uuid4().hex[:12]

    async def turn(graph: Any, topo: Topology, saver: Any, config: Any, text: str) -> None:
        before = None
        try:
            async with ctrl_c_cancels(), _lock(db, thread_id):
                before = await graph.aget_state(config)
                run = await _run_to_end(
                    graph,
                    topo,
                    {"messages": [HumanMessage(text)]},
                    config,
                    as_json=False,
                    quiet=quiet,
                    durability="sync",
                )
        except Interrupted:
            # Forget the cancelled turn: the thread goes back to how it was before it.
            async with _lock(db, thread_id):
                if before is None:  # cancelled while waiting for another run: nothing ran
                    pass
                elif before.created_at is None:
                    await saver.adelete_thread(thread_id)
                else:
                    await graph.aupdate_state(before.config, None, as_node=END)
            sys.stdout.write("\n")
            err.print("[yellow]cancelled[/yellow] this turn; the thread does not keep it")
            return
        except MoARunError as e:  # this turn failed; the chat goes on
            err.print(f"[red]moa: error:[/red] {escape(str(e))}")
            return
        _finish(run, thread_id, as_json=False, quiet=True, topology=topo)

    async def go() -> None:
        async with open_checkpointer(db) as saver:
            topo = await _thread_topology(saver, thread, preset, topology, switch=switch_topology)
            await _preflight(topo)
            err.print(
                f"[bold]moa chat[/bold] {escape(describe(topo))}, thread {thread_id} "
                "(/exit to leave)"
            )
            graph = build_graph(topo, checkpointer=saver)
            config = run_config(thread_id, topo)
            collector.settle()  # loaded: the collector is back on while the prompt waits
            reader = LineReader(history_file)
            while True:
                line = await reader.read()
                if line is None or line.strip() == "/exit":
                    break
                if line.strip():
                    await turn(graph, topo, saver, config, line.strip())

    try:
        asyncio.run(go())
    except KeyboardInterrupt:  # Ctrl-C at the prompt: leave the chat
        err.print("")
    err.print(f"continue later with: moa chat --thread {thread_id}" + (f" --db {db}" if db else ""))


@app.command()
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
        LogLevel,
        typer.Option(help="uvicorn's log level: critical, error, warning, info, debug or trace."),
    ] = LogLevel.info,
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


# --- moa resume / history / fork --------------------------------------------------------
@app.command()
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
    from langgraph_moa.cli.store import open_checkpointer
    from langgraph_moa.cli.threads import run_config, topology_of_thread
    from langgraph_moa.graphs import apply_edits, parse_decision
    from langgraph_moa.graphs.builder import build_graph

    resume_value = _read_decision(decision) if decision else None

    async def go() -> tuple[TurnResult, Topology]:
        async with open_checkpointer(db) as saver, _lock(db, thread):
            topo = await topology_of_thread(saver, thread)
            await _preflight(topo)
            graph = build_graph(topo, checkpointer=saver)
            config = run_config(thread, topo)
            snapshot = await graph.aget_state(config)
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
            run = await _run_to_end(
                graph, topo, inputs, config, as_json=as_json, quiet=quiet, durability=durability
            )
            return run, topo

    run, topo = asyncio.run(go())
    _finish(run, thread, as_json=as_json, quiet=quiet, topology=topo)


@app.command("history")
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


app.command("threads")(threads_command)


@app.command()
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
    from langgraph_moa.cli.store import open_checkpointer
    from langgraph_moa.cli.threads import fork_config, run_config, topology_of_thread
    from langgraph_moa.graphs.builder import build_graph

    edits: dict[str, str] = {}
    for item in edit or []:
        ref, sep, path = item.partition("=")
        if not sep or not ref or not path:
            fail(f"--edit takes REF=FILE, got {item!r}")
        edits[ref] = read_text_file(path, what=f"the edit of {ref}")

    async def go() -> tuple[TurnResult, Topology]:
        async with open_checkpointer(db) as saver, _lock(db, thread):
            topo = await topology_of_thread(saver, thread)
            if aggregator:
                swapped = topo.aggregator.model_copy(update={"model": aggregator})
                spec = topo.model_dump(mode="json") | {
                    "aggregator": swapped.model_dump(mode="json")
                }
                topo = parse_topology(spec, source="--aggregator")
            await _preflight(topo)
            graph = build_graph(topo, checkpointer=saver)
            config = await fork_config(graph, topo, thread, at=at, edit=edits, drop=drop or [])
            config = run_config(thread, topo) | {"configurable": config["configurable"]}
            if not quiet:
                err.print(f"[bold]moa[/bold] forking thread {thread} after {at}")
            run = await _run_to_end(
                graph, topo, None, config, as_json=as_json, quiet=quiet, durability=durability
            )
            return run, topo

    run, topo = asyncio.run(go())
    _finish(run, thread, as_json=as_json, quiet=quiet, topology=topo)


# --- moa graph / presets -------------------------------------------------------------------
@app.command()
def graph(
    preset: PresetOpt = None,
    topology: TopologyOpt = None,
    fmt: Annotated[
        GraphFormat | None,
        typer.Option("--format", "-f", help="mermaid (default), ascii, svg or html."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file (.svg or .html: drawn offline)."),
    ] = None,
) -> None:
    """Print or draw the graph that runs for a topology (the same one Studio draws)."""
    from langgraph_moa.cli.console import err
    from langgraph_moa.cli.drawing import to_html, to_svg, write_drawing
    from langgraph_moa.graphs.builder import build_graph

    topo = resolve_topology(preset, topology)
    compiled = build_graph(topo)
    if output is not None and fmt is None:
        write_drawing(compiled, topo, output)
        err.print(f"wrote {output}")
        return
    kind = fmt.value if fmt else "mermaid"
    drawable = compiled.get_graph()
    renderers = {
        "mermaid": drawable.draw_mermaid,
        "ascii": lambda: _ascii(drawable),
        "svg": lambda: to_svg(compiled, topo),
        "html": lambda: to_html(compiled, topo),
    }
    text = renderers[kind]()
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as e:
        fail(f"cannot write {str(output)!r}: {e.strerror}")
    err.print(f"wrote {output}")


def _ascii(drawable: Any) -> str:
    require_extra("draw", "moa graph --format ascii")
    return str(drawable.draw_ascii()) + "\n"


@app.command()
def presets() -> None:
    """List the shipped presets."""
    found = list_presets()
    width = max(len(name) for name in found)
    for name, description in found.items():
        sys.stdout.write(f"{name.ljust(width)}  {description}\n")


app.command("relabel")(relabel_command)
app.command("export")(export_command)
app.command("eval")(eval_command)
app.command("report")(report_command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: usage errors and run errors alike become one line on stderr
    (``moa: error: ...``; exit 2 for bad input, 1 for a failed run, 130 for Ctrl-C)."""
    args = sys.argv[1:] if argv is None else argv
    collector.at_exit()
    collector.pause()  # until the command has loaded what it needs (see collector)
    try:
        # `moa` alone shows what it can do
        code = app(args=args or ["--help"], standalone_mode=False, prog_name="moa")
    except SystemExit:
        raise
    except typer.TyperException as e:  # click's usage errors (typer vendors click)
        ctx = getattr(e, "ctx", None)
        where = f"{ctx.command_path}: " if ctx is not None and ctx.command_path != "moa" else ""
        message = e.format_message().replace("Value error, ", "")
        fail(f"{where}{message}", getattr(e, "exit_code", 2))
    except (typer.Abort, KeyboardInterrupt):
        fail("interrupted", 130)
    except MoAInputError as e:
        fail(str(e), 2)
    except MoAError as e:
        fail(str(e), 1)
    except Exception as e:  # never a traceback for the user
        from langgraph_moa.llm.call import error_text

        fail(error_text(e), 1)
    finally:
        collector.unpause()
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
