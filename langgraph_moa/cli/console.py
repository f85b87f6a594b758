"""A run in the terminal: progress on stderr, the answer streaming on stdout, review prompts.

Used by every `moa` command that runs the graph (ask, resume, fork).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Durability
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.spinner import Spinner
from rich.table import Table

from langgraph_moa.graphs import estimate
from langgraph_moa.graphs.names import (
    AGGREGATOR,
    CRITIC,
    FALLBACK,
    RANK,
    REVIEW,
    SELECT,
    WINDOW,
    layer_exit,
    layer_of,
    proposer_node,
)
from langgraph_moa.llm.usage import check_priced
from langgraph_moa.run import (
    AnswerToken,
    NodeFinished,
    Progress,
    ReviewPause,
    RunFinished,
    stream_run,
)
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.topology import Topology

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
class TurnResult:
    """What a drive produced: the final state, its wall time, and a pending review, if any."""

    state: dict[str, Any]
    latency_s: float
    review: dict[str, Any] | None = None
    streamed: bool = False
    said: list[str] = field(default_factory=list)


def _stage_before_aggregator(topology: Topology) -> str:
    """The node after which the aggregator starts: the last layer's last node (its join, or
    the join's judge), the critic, or the review."""
    stages = [layer_exit(topology, len(topology.layers)), CRITIC if topology.critic else None]
    if topology.review == "before_aggregate":
        stages.append(REVIEW)
    stages.append(
        {"select": SELECT, "rank": RANK, "self-moa-seq": WINDOW}.get(topology.aggregator.mode)
    )
    return [s for s in stages if s][-1]


class _Display:
    """What the terminal shows while a run goes: nothing (``--quiet``), the base class."""

    def started(self, node: str) -> None:
        """A proposer sent its request(s)."""

    def update(self, node: str, update: dict[str, Any]) -> None:
        """A node finished and wrote ``update``."""

    def answering(self) -> None:
        """The first token of the final answer is about to be written to stdout."""

    def close(self) -> None:
        """The run ended, paused or was interrupted: leave the terminal clean."""


class _LogDisplay(_Display):
    """Plain lines on stderr, one per finished call and stage: for logs, pipes and CI."""

    def __init__(self, topology: Topology, said: list[str]) -> None:
        self.topology = topology
        self.said = said

    def update(self, node: str, update: dict[str, Any]) -> None:
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
        _say_notes(node, update, self.said)
        if node == AGGREGATOR and (a := update.get("aggregator")) and not a["ok"]:
            err.print(f"  [red]failed[/red] aggregator  {escape(a['error'] or '')}")
        if node == CRITIC and (c := update.get("critique")):
            status = "[green]done[/green]" if c["ok"] else f"[red]failed[/red] {escape(c['error'])}"
            err.print(f"  critic {status}  {c['latency_s']:.2f}s")
        if node.endswith("/join"):
            err.print(f"[bold]layer {layer_of(node)} complete[/bold]")
        for join in update.get("joins") or []:  # what a layer's join passed on, and why
            err.print(f"  join   L{join['layer']}  {escape(join['reason'])}")
        last = layer_exit(self.topology, len(self.topology.layers))
        if node == last and self.topology.critic is not None:
            err.print("[bold]critic[/bold] reviewing the candidates")
        if node == _stage_before_aggregator(self.topology):
            err.print(f"[bold]aggregator[/bold] {escape(_aggregator_step(self.topology))}")


def _aggregator_step(topology: Topology) -> str:
    """What the aggregator does next, in the mode it runs in: only synthesizing modes have a
    model write the answer; vote, select and rank (without fuse) pass a candidate on as written."""
    agg = topology.aggregator
    synthesizes = [
        what
        for what, rule in (("a tie", agg.on_tie), ("no readable answer", agg.on_no_answer))
        if rule == "synthesize"
    ]
    if agg.mode == "vote":
        step = "counting the votes: the majority candidate is the answer, as written"
        if synthesizes:
            return step + f" ({' or '.join(synthesizes)} is synthesized by a model)"
        return step + " (no model call)"
    if agg.mode == "select":
        step = "taking the selected candidate as the answer, as written"
        if agg.on_no_answer == "synthesize":
            return step + " (if none was named, a model synthesizes them all)"
        return step
    if agg.mode == "rank" and agg.fuse is None:
        return "taking the best-ranked candidate as the answer, as written"
    if agg.mode == "rank":
        return f"writing the final answer from the top {agg.fuse} candidates"
    return "writing the final answer"


def _say_notes(node: str, update: dict[str, Any], said: list[str]) -> None:
    """Lines worth keeping above any live display: fallback, review, budget actions."""
    if node == FALLBACK and (f := update.get("fallback")):
        err.print(
            f"[yellow]fallback[/yellow] answered with {escape(f['source'])}: {escape(f['reason'])}"
        )
    if node == REVIEW and (r := update.get("review")):
        err.print(
            f"[bold]review[/bold] edited {r['edited'] or 'none'}, dropped {r['dropped'] or 'none'}"
        )
    for check in update.get("early_stop") or []:
        if check["stopped"]:
            err.print(
                f"[bold]early stop[/bold] after layer {check['layer']}: {escape(check['reason'])}"
            )
    if node == AGGREGATOR and (a := update.get("aggregation")) and a.get("mode") != "synthesize":
        err.print(f"[bold]{escape(a['mode'])}[/bold] {escape(a.get('reason') or '')}")
    for action in (update.get("ledger") or {}).get("actions", [])[len(said) :]:
        said.append(action)  # budget actions already printed this run
        err.print(f"[yellow]budget[/yellow] {escape(action)}")


@dataclass
class _Row:
    """One line of the live display: a proposer node, the critic or the aggregator."""

    label: str
    model: str
    status: str = "waiting"  # waiting, running, answering, done, failed, skipped, cached
    started: float | None = None
    seconds: float | None = None
    tokens: int = 0
    detail: str = ""


_ICONS = {
    "waiting": "[dim]·[/dim]",
    "done": "[green]✓[/green]",
    "cached": "[green]✓[/green]",
    "failed": "[red]✗[/red]",
    "skipped": "[yellow]-[/yellow]",
}


class _LiveDisplay(_Display):
    """A live table on a terminal's stderr: a row per proposer (spinner and elapsed time while
    it runs, then done or failed with seconds and tokens), the critic and the aggregator.

    It stops (leaving its last frame) when the answer starts streaming to the same terminal, so
    the two never overwrite each other.
    """

    def __init__(self, topology: Topology, said: list[str], state: dict[str, Any]) -> None:
        self.topology = topology
        self.said = said
        self.rows: dict[str, _Row] = {}
        for i, layer in enumerate(topology.layers, start=1):
            for agent in layer.proposers:
                node = proposer_node(i, agent.name or "")
                self.rows[node] = _Row(node, agent.model)
        if topology.critic is not None:
            self.rows[CRITIC] = _Row(CRITIC, topology.critic.model)
        self.rows[AGGREGATOR] = _Row(AGGREGATOR, topology.aggregator.model)
        for layer_records in state.get("layers") or []:  # a resumed run: what already ran
            self._proposals(layer_records)
        self.live = Live(
            get_renderable=self._render, console=err, refresh_per_second=8, transient=False
        )
        self.live.start()

    def _render(self) -> Table:
        table = Table.grid(padding=(0, 1))
        now = time.perf_counter()
        for row in self.rows.values():
            seconds: float | None
            if row.status in ("running", "answering"):
                icon: Any = Spinner("dots", style="cyan")
                seconds = now - (row.started or now)
            else:
                icon = _ICONS.get(row.status, " ")
                seconds = row.seconds
            timing = f"{seconds:5.1f}s" if seconds is not None else ""
            tokens = f"{row.tokens} tok" if row.tokens else ""
            table.add_row(
                icon,
                escape(row.label),
                f"[dim]{escape(row.model)}[/dim]",
                row.status,
                timing,
                tokens,
                escape(row.detail[:70]),
            )
        return table

    def _run(self, node: str) -> None:
        row = self.rows.get(node)
        if row is not None and row.status == "waiting":
            row.status, row.started = "running", time.perf_counter()

    def _finish(self, node: str, records: list[dict[str, Any]]) -> None:
        row = self.rows.get(node)
        if row is None or not records:
            return
        failed = [r for r in records if not r["ok"]]
        if all(r["attempts"] == 0 and not r["cached"] for r in failed) and failed == records:
            row.status = "skipped"
        elif failed:
            row.status = "failed"
        elif all(r["cached"] for r in records):
            row.status = "cached"
        else:
            row.status = "done"
        row.seconds = max(r["latency_s"] for r in records)
        row.tokens = sum(r["usage"]["total_tokens"] for r in records)
        if failed:
            row.detail = failed[0]["error"] or ""
            if len(records) > 1:
                row.detail = f"{len(records) - len(failed)}/{len(records)} ok: {row.detail}"
        elif records[0].get("finish_reason") == "length":
            row.detail = "cut at max_tokens"

    def _proposals(self, records: list[dict[str, Any]]) -> None:
        by_node: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            by_node.setdefault(record["node"], []).append(record)
        for node, mine in by_node.items():
            self._finish(node, mine)

    def started(self, node: str) -> None:
        self._run(node)

    def update(self, node: str, update: dict[str, Any]) -> None:
        if node != REVIEW:
            self._proposals(update.get("layers") or [])
        for check in update.get("early_stop") or []:  # layers an early stop skipped
            for skipped in check["skipped_nodes"]:
                if (row := self.rows.get(skipped)) is not None:
                    row.status, row.detail = "skipped", "early stop"
            if check["stopped"]:
                self._run(CRITIC if self.topology.critic is not None else AGGREGATOR)
        _say_notes(node, update, self.said)
        if node == CRITIC and (c := update.get("critique")):
            self._finish(CRITIC, [c])
        if node in (AGGREGATOR, FALLBACK) and (a := update.get("aggregator")):
            self._finish(AGGREGATOR, [a])
        if node == layer_exit(self.topology, len(self.topology.layers)):
            self._run(CRITIC)
        if node == _stage_before_aggregator(self.topology):
            self._run(AGGREGATOR)

    def answering(self) -> None:
        self._run(AGGREGATOR)
        self.rows[AGGREGATOR].status = "answering"
        self.close()

    def close(self) -> None:
        if self.live.is_started:
            self.live.stop()


def _display_for(
    topology: Topology, *, quiet: bool, said: list[str], state: dict[str, Any] | None = None
) -> _Display:
    """The display for a run: none with --quiet, live on a terminal, plain lines elsewhere."""
    if quiet:
        return _Display()
    if err.is_terminal and not err.is_dumb_terminal:
        return _LiveDisplay(topology, said, state or {})
    return _LogDisplay(topology, said)


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
    state: dict[str, Any] | None = None,
) -> TurnResult:
    """Run (or resume) the graph, showing progress and streaming the aggregator's tokens.

    ``state`` is what the thread already holds, for a display that resumes a run.
    """
    run = TurnResult(state={}, latency_s=0.0, said=said if said is not None else [])
    display = _display_for(topology, quiet=quiet, said=run.said, state=state)
    try:
        async for event in stream_run(
            graph,
            inputs,
            config,
            tokens=not as_json,
            durability=durability,
            deadline_s=topology.deadline_s,
        ):
            if isinstance(event, Progress):
                if event.kind == "proposer_started":
                    display.started(event.node)
            elif isinstance(event, NodeFinished):
                display.update(event.node, event.update)
            elif isinstance(event, AnswerToken):
                if not run.streamed:
                    display.answering()
                sys.stdout.write(event.text)
                sys.stdout.flush()
                run.streamed = True
            elif isinstance(event, ReviewPause):
                run.review = event.review
            elif isinstance(event, RunFinished):
                run.state, run.latency_s = event.state, event.latency_s
    finally:
        display.close()
    return run


def print_estimate(topology: Topology, prompt: str, as_json: bool) -> None:
    prices = PriceTable(topology.prices)
    check_priced(topology, prices)
    est = estimate(topology, [HumanMessage(prompt)], prices=prices)
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
