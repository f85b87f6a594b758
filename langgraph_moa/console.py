"""A run in the terminal: progress on stderr, the answer streaming on stdout, review prompts.

Used by every `moa` command that runs the graph (ask, resume, fork).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, cast

from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Durability, StreamMode
from rich.console import Console
from rich.markup import escape

from langgraph_moa.graphs.names import (
    AGGREGATOR,
    CRITIC,
    FALLBACK,
    PREPARE,
    REVIEW,
    join_node,
    layer_of,
)
from langgraph_moa.topology import Topology

__all__ = ["Run", "ask_review", "describe", "drive", "err", "print_estimate"]

err = Console(stderr=True, highlight=False, soft_wrap=True)


def describe(topology: Topology) -> str:
    shape = " -> ".join(str(len(layer.proposers)) for layer in topology.layers)
    critic = " -> critic" if topology.critic else ""
    review = " -> review" if topology.review == "before_aggregate" else ""
    return (
        f"{topology.name}: proposers {shape}{critic}{review} -> aggregator "
        f"({topology.calls_per_query()} calls per query)"
    )


@dataclass
class Run:
    """What a drive produced: the final state, its wall time, and a pending review, if any."""

    state: dict[str, Any]
    latency_s: float
    review: dict[str, Any] | None = None
    streamed: bool = False
    said: list[str] = field(default_factory=list)


def _progress(node: str, update: dict[str, Any], topology: Topology, said: list[str]) -> None:
    """One stderr line per finished proposer, layer, critic; then announce the next stage."""
    proposals = update.get("layers") or []
    for p in proposals:
        label = p["node"] + (f"#{p['sample'] + 1}" if len(proposals) > 1 else "")
        if node == REVIEW:
            continue
        if p["ok"]:
            cached = "  (cached)" if p["cached"] else ""
            err.print(f"  [green]done[/green]   {label}  {p['latency_s']:.2f}s{cached}")
        elif p["attempts"] == 0 and not p["cached"]:
            err.print(f"  [yellow]skipped[/yellow] {label}  {escape(p['error'] or '')}")
        else:
            reason = escape(p["error"] or "")
            err.print(f"  [red]failed[/red] {label}  {p['latency_s']:.2f}s  {reason}")
    if node == FALLBACK and (f := update.get("fallback")):
        err.print(
            f"[yellow]fallback[/yellow] answered with {escape(f['source'])}: {escape(f['reason'])}"
        )
    if node == AGGREGATOR and (a := update.get("aggregator")) and not a["ok"]:
        err.print(f"  [red]failed[/red] aggregator  {escape(a['error'] or '')}")
    if node == REVIEW and (r := update.get("review")):
        err.print(
            f"[bold]review[/bold] edited {r['edited'] or 'none'}, dropped {r['dropped'] or 'none'}"
        )
    for action in (update.get("ledger") or {}).get("actions", [])[len(said) :]:
        said.append(action)  # budget actions already printed this run
        err.print(f"[yellow]budget[/yellow] {escape(action)}")
    if node == CRITIC and (c := update.get("critique")):
        status = "[green]done[/green]" if c["ok"] else f"[red]failed[/red] {escape(c['error'])}"
        err.print(f"  critic {status}  {c['latency_s']:.2f}s")
    last_join = join_node(len(topology.layers))
    if node.endswith("/join"):
        err.print(f"[bold]layer {layer_of(node)} complete[/bold]")
    stages_before_aggregator = [last_join, CRITIC if topology.critic else None]
    if topology.review == "before_aggregate":
        stages_before_aggregator.append(REVIEW)
    final_stage = [s for s in stages_before_aggregator if s][-1]
    if node == last_join and topology.critic is not None:
        err.print("[bold]critic[/bold] reviewing the candidates")
    if node == final_stage:
        err.print("[bold]aggregator[/bold] writing the final answer")


async def drive(
    graph: CompiledStateGraph[Any, Any, Any, Any],
    topology: Topology,
    inputs: Any,
    config: RunnableConfig,
    *,
    as_json: bool,
    quiet: bool,
    durability: Durability = "sync",
    said: list[str] | None = None,
) -> Run:
    """Run (or resume) the graph, showing progress and streaming the aggregator's tokens."""
    start = time.perf_counter()
    run = Run(state={}, latency_s=0.0, said=said if said is not None else [])
    modes: list[StreamMode] = ["updates", "messages", "values"]
    async for part in graph.astream(
        inputs,
        config,
        stream_mode=modes,
        durability=durability,  # type: ignore[arg-type]
    ):
        mode, chunk = cast(tuple[str, Any], part)
        if mode == "values":
            run.state = chunk
        elif mode == "updates":
            for node, update in chunk.items():
                if node == "__interrupt__":  # the run paused: keep what the review shows
                    for pending in update:
                        value = pending.value
                        if isinstance(value, dict) and value.get("kind") == "review":
                            run.review = value
                    continue
                if quiet:
                    continue
                if node == PREPARE:  # its other writes are resets, not news
                    update = {"ledger": (update or {}).get("ledger")}
                _progress(node, update or {}, topology, run.said)
        elif not as_json:
            message, meta = chunk
            answering = meta.get("langgraph_node") in (AGGREGATOR, FALLBACK)
            if answering and isinstance(message, AIMessageChunk) and (text := message.text):
                sys.stdout.write(text)
                sys.stdout.flush()
                run.streamed = True
    run.latency_s = time.perf_counter() - start
    return run


def print_estimate(topology: Topology, prompt: str, as_json: bool) -> None:
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


def show_review(review: dict[str, Any]) -> None:
    err.print("[bold]review[/bold] the candidates before the aggregator runs:")
    for c in review["candidates"]:
        err.print(f"[bold]{escape(c['ref'])}[/bold] ({escape(c['model'])})")
        err.print(escape(c["text"] or ""))
    if review.get("critique"):
        err.print(f"[bold]critique[/bold]\n{escape(review['critique'])}")


def ask_review(review: dict[str, Any]) -> dict[str, Any]:
    """Ask the person at the terminal: approve, edit or drop candidates."""
    show_review(review)
    refs = [c["ref"] for c in review["candidates"]]
    edit: dict[str, str] = {}
    drop: list[str] = []
    err.print(
        "commands: [bold]drop REF[/bold], [bold]edit REF[/bold] (end the text with a line "
        "'.'), [bold]ok[/bold] to run the aggregator"
    )
    while True:
        err.print("review> ", end="")
        line = sys.stdin.readline()
        if not line or line.strip() in ("ok", ""):
            return {"edit": edit, "drop": drop}
        verb, _, ref = line.strip().partition(" ")
        if ref not in refs or verb not in ("drop", "edit"):
            err.print(f"  say drop/edit with one of: {', '.join(refs)}; or ok")
            continue
        if verb == "drop":
            drop.append(ref)
            continue
        lines = []
        for text in sys.stdin:
            if text.rstrip("\n") == ".":
                break
            lines.append(text)
        edit[ref] = "".join(lines).strip()
