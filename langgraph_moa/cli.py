"""The ``moa`` command: ask a question, draw a topology's graph, list presets.

Bad input (topology, preset, provider, missing key, empty prompt) prints one line on stderr and
exits with code 2; a run that cannot produce an answer exits with 1. Never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn, cast

import typer
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.types import StreamMode
from rich.console import Console
from rich.markup import escape

from langgraph_moa.errors import MoAError, MoAInputError
from langgraph_moa.graphs.builder import AGGREGATOR, CRITIC, FALLBACK, PREPARE, build_graph
from langgraph_moa.graphs.state import MoAState
from langgraph_moa.nodes.calls import error_text
from langgraph_moa.providers import check_credentials
from langgraph_moa.result import answer_of, result_of
from langgraph_moa.topology import Topology, list_presets, load_preset, load_topology

DEFAULT_PRESET = "local"

app = typer.Typer(
    name="moa",
    help="Mixture-of-Agents on LangGraph: layered proposers, critique and aggregation.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False, soft_wrap=True)


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


# --- moa ask -------------------------------------------------------------------------------
def _describe(topology: Topology) -> str:
    shape = " -> ".join(str(len(layer.proposers)) for layer in topology.layers)
    critic = " -> critic" if topology.critic else ""
    return (
        f"{topology.name}: proposers {shape}{critic} -> aggregator "
        f"({topology.calls_per_query()} calls per query)"
    )


def _progress(node: str, update: dict[str, Any], topology: Topology, said: list[str]) -> None:
    """One stderr line per finished proposer, layer, critic; then announce the next stage."""
    proposals = update.get("layers") or []
    for p in proposals:
        label = p["node"] + (f"#{p['sample'] + 1}" if len(proposals) > 1 else "")
        if p["ok"]:
            cached = "  (cached)" if p["cached"] else ""
            err.print(f"  [green]done[/green]   {label}  {p['latency_s']:.2f}s{cached}")
        elif p["attempts"] == 0 and not p["cached"]:
            err.print(f"  [yellow]skipped[/yellow] {label}  {escape(p['error'] or '')}")
        else:
            reason = escape(p["error"] or "")
            err.print(f"  [red]failed[/red] {label}  {p['latency_s']:.2f}s  {reason}")
    last_join = f"L{len(topology.layers)}/join"
    if node.endswith("/join"):
        layer = node.split("/", 1)[0]
        err.print(f"[bold]layer {layer[1:]} complete[/bold]")
    if node == FALLBACK and (f := update.get("fallback")):
        err.print(
            f"[yellow]fallback[/yellow] answered with {escape(f['source'])}: {escape(f['reason'])}"
        )
    if node == AGGREGATOR and (a := update.get("aggregator")) and not a["ok"]:
        err.print(f"  [red]failed[/red] aggregator  {escape(a['error'] or '')}")
    for action in (update.get("ledger") or {}).get("actions", [])[len(said) :]:
        said.append(action)  # budget actions already printed this run
        err.print(f"[yellow]budget[/yellow] {escape(action)}")
    if node == CRITIC and (c := update.get("critique")):
        status = "[green]done[/green]" if c["ok"] else f"[red]failed[/red] {escape(c['error'])}"
        err.print(f"  critic {status}  {c['latency_s']:.2f}s")
    if node == last_join and topology.critic is not None:
        err.print("[bold]critic[/bold] reviewing the candidates")
    elif node == CRITIC or (node == last_join and topology.critic is None):
        err.print("[bold]aggregator[/bold] writing the final answer")


def _print_estimate(topology: Topology, prompt: str, as_json: bool) -> None:
    from langgraph_moa.budget import estimate
    from langgraph_moa.pricing import PriceTable

    est = estimate(topology, [HumanMessage(prompt)], prices=PriceTable(topology.prices))
    if as_json:
        stages = [
            {"stage": s, "prompt_tokens": p, "completion_tokens": c, "cost_usd": cost}
            for s, p, c, cost in est.stages
        ]
        out = {
            "calls": est.calls,
            "prompt_tokens": est.prompt_tokens,
            "completion_tokens": est.completion_tokens,
            "total_tokens": est.total_tokens,
            "cost_usd": est.cost_usd,
            "unpriced": est.unpriced,
            "stages": stages,
        }
        sys.stdout.write(json.dumps(out) + "\n")
        return
    width = max(len(s[0]) for s in est.stages)
    lines = [f"worst case for {topology.name!r} (every call writes its max_tokens):"]
    for stage, p, c, cost in est.stages:
        price = "price unknown" if cost is None else f"${cost:.4f}"
        lines.append(f"  {stage.ljust(width)}  {p:>7} in  {c:>6} out  {price}")
    total = "unknown" if est.unpriced else f"${est.cost_usd or 0:.4f}"
    lines.append(
        f"total: {est.calls} calls, {est.total_tokens} tokens "
        f"({est.prompt_tokens} in, {est.completion_tokens} out), {total}"
    )
    if est.unpriced:
        lines.append(f"no price for: {', '.join(est.unpriced)} (see prices: / MOA_PRICES)")
    sys.stdout.write("\n".join(lines) + "\n")


async def _ask(
    topology: Topology,
    prompt: str,
    thread: str | None,
    as_json: bool,
    quiet: bool,
    cache: Any = True,
) -> tuple[MoAState, float]:
    from langgraph_moa.checkpoints import open_checkpointer

    config: RunnableConfig = {"configurable": {"thread_id": thread}} if thread else {}
    inputs = {"messages": [HumanMessage(prompt)]}
    start = time.perf_counter()
    streamed = False
    said: list[str] = []

    async def run(checkpointer: Any) -> MoAState:
        nonlocal streamed
        graph = build_graph(topology, checkpointer=checkpointer, cache=cache)
        final: dict[str, Any] = {}
        modes: list[StreamMode] = ["updates", "messages", "values"]
        async for part in graph.astream(inputs, config, stream_mode=modes):
            mode, chunk = cast(tuple[str, Any], part)
            if mode == "values":
                final = chunk
            elif mode == "updates":
                for node, update in chunk.items():
                    if not quiet:
                        if node == PREPARE:  # its other writes are resets, not news
                            update = {"ledger": (update or {}).get("ledger")}
                        _progress(node, update or {}, topology, said)
            elif not as_json:
                message, meta = chunk
                if meta.get("langgraph_node") == AGGREGATOR and isinstance(message, AIMessageChunk):
                    text = message.text
                    if text:
                        sys.stdout.write(text)
                        sys.stdout.flush()
                        streamed = True
        return final  # type: ignore[return-value]

    if thread:
        async with open_checkpointer() as saver:
            state = await run(saver)
    else:
        state = await run(None)
    latency = time.perf_counter() - start
    if not as_json:
        if not streamed:
            sys.stdout.write(answer_of(state))
        sys.stdout.write("\n")
        sys.stdout.flush()
    return state, latency


@app.command()
def ask(
    prompt: Annotated[str, typer.Argument(help="The question or instruction.")],
    preset: PresetOpt = None,
    topology: TopologyOpt = None,
    thread: Annotated[
        str | None,
        typer.Option(help="Conversation thread id; turns of one thread see the earlier ones."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of streaming.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
    estimate_only: Annotated[
        bool,
        typer.Option("--estimate", help="Print the worst-case cost of the query; call nothing."),
    ] = False,
    cache: Annotated[
        Path | None,
        typer.Option(help="Keep identical proposer calls in this SQLite file across runs."),
    ] = None,
) -> None:
    """Answer PROMPT with a Mixture-of-Agents; the answer streams to stdout, progress to stderr."""
    if not prompt.strip():
        fail("the prompt is empty")
    topo = resolve_topology(preset, topology)
    if estimate_only:
        _print_estimate(topo, prompt, as_json)
        return
    check_credentials(topo)
    if not quiet:
        err.print(f"[bold]moa[/bold] {escape(_describe(topo))}")
    backend: Any = True
    if cache is not None:
        from langgraph_moa.caching import open_cache

        try:
            backend = open_cache(str(cache))
        except Exception as e:  # sqlite3 errors: unwritable folder, not a database...
            fail(f"cannot open the cache {str(cache)!r}: {error_text(e)}")
    state, latency = asyncio.run(_ask(topo, prompt, thread, as_json, quiet, backend))
    if not quiet:
        usage = state.get("usage") or {}
        cost = usage.get("cost_usd")
        cost_text = f", ${cost:.4f}" if cost is not None else ""
        degraded = " [yellow](degraded)[/yellow]" if state.get("degraded") else ""
        err.print(
            f"[dim]{latency:.2f}s, {usage.get('total_tokens', 0)} tokens{cost_text}[/dim]{degraded}"
        )
    if as_json:
        result = result_of(state, latency_s=latency)
        if thread:
            result["thread_id"] = thread
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")


# --- moa graph / presets -------------------------------------------------------------------
@app.command()
def graph(
    preset: PresetOpt = None,
    topology: TopologyOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="mermaid or ascii.")] = "mermaid",
) -> None:
    """Print the graph that runs for a topology (the same one Studio draws)."""
    if fmt not in ("mermaid", "ascii"):
        fail(f"unknown --format {fmt!r}; use mermaid or ascii")
    drawable = build_graph(resolve_topology(preset, topology)).get_graph()
    sys.stdout.write(drawable.draw_mermaid() if fmt == "mermaid" else drawable.draw_ascii() + "\n")


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
