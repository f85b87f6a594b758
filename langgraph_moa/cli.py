"""The ``moa`` command: ask, resume, history, fork, graph, presets.

Every run is kept in a thread store (SQLite by default, PostgreSQL with a URL; see
:mod:`langgraph_moa.checkpoints`), so a crashed run can be resumed, a thread's history listed
and a past stage forked. Bad input (topology, preset, provider, missing key, empty prompt,
unknown thread) prints one line on stderr and exits with code 2; a run that cannot produce an
answer exits with 1. Never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any, NoReturn, cast

import typer
import yaml
from langchain_core.messages import HumanMessage
from langgraph.types import Command, Durability
from rich.markup import escape

from langgraph_moa.checkpoints import open_checkpointer
from langgraph_moa.console import Run, ask_review, describe, drive, err, print_estimate, show_review
from langgraph_moa.errors import MoAError, MoAInputError, MoARunError
from langgraph_moa.graphs.builder import build_graph
from langgraph_moa.nodes.calls import error_text
from langgraph_moa.nodes.review import apply_edits, parse_decision
from langgraph_moa.providers import check_credentials
from langgraph_moa.result import answer_of, result_of
from langgraph_moa.threads import fork_config, history, run_config, topology_of_thread
from langgraph_moa.topology import (
    Topology,
    list_presets,
    load_preset,
    load_topology,
    parse_topology,
)

DEFAULT_PRESET = "local"

app = typer.Typer(
    name="moa",
    help="Mixture-of-Agents on LangGraph: layered proposers, critique and aggregation.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr, then exit (2: bad input, 1: the run failed)."""
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
    str,
    typer.Option(help="When checkpoints are written: sync (each step, safest), async, or exit."),
]


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise MoAInputError(f"cannot read {path!r}: {e.strerror}") from None


def _read_decision(path: Path) -> Any:
    text = _read_text(str(path))
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError):
        raise MoAInputError(f"decision file {str(path)!r} is not valid YAML/JSON") from None
    return parse_decision(data).model_dump()


def _cache_backend(cache: Path | None) -> Any:
    if cache is None:
        return True
    from langgraph_moa.caching import open_cache

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
    durability: str,
) -> Run:
    """Drive the run; at a review pause ask the person at the terminal, if there is one."""
    if durability not in ("sync", "async", "exit"):
        raise MoAInputError(f"unknown --durability {durability!r}; use sync, async or exit")
    mode = cast(Durability, durability)
    run = await drive(
        graph, topology, inputs, config, as_json=as_json, quiet=quiet, durability=mode
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
        )
        total += run.latency_s
    run.latency_s = total
    return run


def _finish(run: Run, thread: str, *, as_json: bool, quiet: bool) -> None:
    """Print the outcome: the answer (if not streamed), a summary line, or the review pause."""
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


# --- moa ask ---------------------------------------------------------------------------
@app.command()
def ask(
    prompt: Annotated[str, typer.Argument(help="The question or instruction.")],
    preset: PresetOpt = None,
    topology: TopologyOpt = None,
    thread: Annotated[
        str | None,
        typer.Option(help="Thread id: turns of one thread see the earlier ones (default: new)."),
    ] = None,
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
    durability: DurabilityOpt = "sync",
) -> None:
    """Answer PROMPT with a Mixture-of-Agents; the answer streams to stdout, progress to stderr."""
    if not prompt.strip():
        fail("the prompt is empty")
    topo = resolve_topology(preset, topology)
    if estimate_only:
        print_estimate(topo, prompt, as_json)
        return
    check_credentials(topo)
    backend = _cache_backend(cache)
    thread_id = thread or uuid.uuid4().hex[:12]
    if not quiet:
        err.print(f"[bold]moa[/bold] {escape(describe(topo))}, thread {thread_id}")

    async def go() -> Run:
        async with open_checkpointer(db) as saver:
            graph = build_graph(topo, checkpointer=saver, cache=backend)
            inputs = {"messages": [HumanMessage(prompt)]}
            return await _run_to_end(
                graph,
                topo,
                inputs,
                run_config(thread_id, topo),
                as_json=as_json,
                quiet=quiet,
                durability=durability,
            )

    _finish(asyncio.run(go()), thread_id, as_json=as_json, quiet=quiet)


@app.command()
def chat(
    preset: PresetOpt = None,
    topology: TopologyOpt = None,
    thread: Annotated[
        str | None, typer.Option(help="Continue this thread (default: a new one).")
    ] = None,
    quiet: QuietOpt = False,
    db: DbOpt = None,
) -> None:
    """Chat in the terminal, turn after turn, in a thread kept in the thread store.

    Type a message and press Enter; /exit or end of input (Ctrl-D) leaves.
    """
    topo = resolve_topology(preset, topology)
    check_credentials(topo)
    thread_id = thread or uuid.uuid4().hex[:12]
    err.print(
        f"[bold]moa chat[/bold] {escape(describe(topo))}, thread {thread_id} (/exit to leave)"
    )

    async def go() -> None:
        async with open_checkpointer(db) as saver:
            graph = build_graph(topo, checkpointer=saver)
            config = run_config(thread_id, topo)
            while True:
                err.print("[bold]you>[/bold] ", end="")
                line = await asyncio.to_thread(sys.stdin.readline)
                if not line or line.strip() == "/exit":
                    break
                if not line.strip():
                    continue
                try:
                    run = await _run_to_end(
                        graph,
                        topo,
                        {"messages": [HumanMessage(line.strip())]},
                        config,
                        as_json=False,
                        quiet=quiet,
                        durability="sync",
                    )
                except MoARunError as e:  # this turn failed; the chat goes on
                    err.print(f"[red]moa: error:[/red] {escape(str(e))}")
                    continue
                _finish(run, thread_id, as_json=False, quiet=True)

    asyncio.run(go())
    err.print(f"continue later with: moa chat --thread {thread_id}")


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
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "info",
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = True,
) -> None:
    """Serve the presets (and --topologies) as an OpenAI-compatible API: /v1/chat/completions
    and /v1/models, each topology under its own model id."""
    from langgraph_moa.serving import run_server

    run_server(
        host,
        port,
        topologies,
        keys_file,
        max_concurrency,
        max_body_bytes,
        log_level=log_level,
        access_log=access_log,
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
    durability: DurabilityOpt = "sync",
) -> None:
    """Finish a thread's interrupted run (a crash, or a pause for review).

    Proposals already checkpointed are not requested again.
    """
    resume_value = _read_decision(decision) if decision else None

    async def go() -> Run:
        async with open_checkpointer(db) as saver:
            topo = await topology_of_thread(saver, thread)
            check_credentials(topo)
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
            return await _run_to_end(
                graph, topo, inputs, config, as_json=as_json, quiet=quiet, durability=durability
            )

    _finish(asyncio.run(go()), thread, as_json=as_json, quiet=quiet)


@app.command("history")
def history_cmd(thread: ThreadOpt, as_json: JsonOpt = False, db: DbOpt = None) -> None:
    """List a thread's checkpoints, newest first: time, step, what had run, what runs next."""

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
        ran = ", ".join(e.ran) or "(input)"
        nxt = ", ".join(e.next) or "(end)"
        sys.stdout.write(
            f"{e.created_at[:23]}  step {e.step:>2}  {layer:<3}  {e.checkpoint_id}  "
            f"ran: {ran}  next: {nxt}\n"
        )


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
    durability: DurabilityOpt = "sync",
) -> None:
    """Go back to a stage of the thread's last turn, change proposals or the aggregator, and
    re-run only what comes after; the original branch stays in the thread."""
    edits: dict[str, str] = {}
    for item in edit or []:
        ref, sep, path = item.partition("=")
        if not sep or not ref or not path:
            fail(f"--edit takes REF=FILE, got {item!r}")
        edits[ref] = _read_text(path)

    async def go() -> Run:
        async with open_checkpointer(db) as saver:
            topo = await topology_of_thread(saver, thread)
            if aggregator:
                swapped = topo.aggregator.model_copy(update={"model": aggregator})
                spec = topo.model_dump(mode="json") | {
                    "aggregator": swapped.model_dump(mode="json")
                }
                topo = parse_topology(spec, source="--aggregator")
            check_credentials(topo)
            graph = build_graph(topo, checkpointer=saver)
            config = await fork_config(graph, topo, thread, at=at, edit=edits, drop=drop or [])
            config = run_config(thread, topo) | {"configurable": config["configurable"]}
            if not quiet:
                err.print(f"[bold]moa[/bold] forking thread {thread} after {at}")
            return await _run_to_end(
                graph, topo, None, config, as_json=as_json, quiet=quiet, durability=durability
            )

    _finish(asyncio.run(go()), thread, as_json=as_json, quiet=quiet)


# --- moa graph / presets -------------------------------------------------------------------
@app.command()
def graph(
    preset: PresetOpt = None,
    topology: TopologyOpt = None,
    fmt: Annotated[
        str | None, typer.Option("--format", "-f", help="mermaid (default), ascii, svg or html.")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file (.svg or .html: drawn offline)."),
    ] = None,
) -> None:
    """Print or draw the graph that runs for a topology (the same one Studio draws)."""
    from langgraph_moa.drawing import to_html, to_svg, write_drawing

    topo = resolve_topology(preset, topology)
    compiled = build_graph(topo)
    if output is not None and fmt is None:
        write_drawing(compiled, topo, output)
        err.print(f"wrote {output}")
        return
    kind = fmt or "mermaid"
    drawable = compiled.get_graph()
    renderers = {
        "mermaid": drawable.draw_mermaid,
        "ascii": lambda: drawable.draw_ascii() + "\n",
        "svg": lambda: to_svg(compiled, topo),
        "html": lambda: to_html(compiled, topo),
    }
    if kind not in renderers:
        fail(f"unknown --format {kind!r}; use mermaid, ascii, svg or html")
    text = renderers[kind]()
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as e:
        fail(f"cannot write {str(output)!r}: {e.strerror}")
    err.print(f"wrote {output}")


@app.command()
def presets() -> None:
    """List the shipped presets."""
    found = list_presets()
    width = max(len(name) for name in found)
    for name, description in found.items():
        sys.stdout.write(f"{name.ljust(width)}  {description}\n")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: user-facing errors become one line on stderr."""
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit:
        raise
    except MoAInputError as e:
        fail(str(e), 2)
    except MoAError as e:
        fail(str(e), 1)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Exception as e:  # never a traceback for the user
        fail(error_text(e), 1)


if __name__ == "__main__":
    main()
