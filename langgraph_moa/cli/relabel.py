"""``moa relabel`` and ``moa export``: a dataset through a MoA topology, and its exports.

Parsing and rendering only; the work is :mod:`langgraph_moa.batch`. Progress goes to stderr (a
live bar on a terminal, a line every few seconds otherwise, nothing with ``--quiet``); ``--json``
prints one summary object on stdout at the end. Bad input is one ``moa: error:`` line, exit 2,
with nothing written (see ``main`` in :mod:`langgraph_moa.cli.commands`).
"""

from __future__ import annotations

import asyncio
import enum
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from langgraph_moa.errors import MoAInputError

if TYPE_CHECKING:
    from langgraph_moa.batch import (
        RelabelRun,
        Tally,
    )

__all__ = ["export_command", "relabel_command"]


class Engine(enum.StrEnum):
    local = "local"
    ray = "ray"


class Format(enum.StrEnum):
    sft = "sft"
    dpo = "dpo"
    traces = "traces"


def _topology(preset: str | None, topology: Path | None) -> Any:
    from langgraph_moa.batch import resolve_topology

    if preset and topology:
        raise MoAInputError("give either --preset or --topology, not both")
    return resolve_topology(topology or preset)


def _eta(tally: Tally) -> str:
    eta = tally.eta_s
    return "-" if eta is None else time.strftime("%H:%M:%S", time.gmtime(eta))


def _line(tally: Tally) -> str:
    return (
        f"{tally.done} done, {tally.failed} failed, {tally.invalid} invalid, "
        f"{tally.skipped} skipped | {tally.calls} calls ({tally.cached_calls} cached), "
        f"{tally.tokens} tokens, ${tally.cost_usd:.4f} | {tally.rows_per_s:.2f} rows/s, "
        f"ETA {_eta(tally)}"
    )


class _Display:
    """Progress on stderr: a live bar on a terminal, else a line every 5 s."""

    def __init__(self, quiet: bool) -> None:
        from langgraph_moa.cli.console import err

        self.quiet = quiet
        self.live = not quiet and err.is_terminal
        self.last = 0.0
        self.progress = Progress(
            TextColumn("[bold]relabel[/bold]"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[line]}"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )
        self.task = self.progress.add_task("rows", total=None, line="")

    def __enter__(self) -> _Display:
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()

    def __call__(self, tally: Tally) -> None:
        from langgraph_moa.cli.console import err

        if self.live:
            self.progress.update(
                self.task,
                total=tally.total,
                completed=tally.seen - tally.running,
                line=_line(tally),
            )
        elif not self.quiet and time.monotonic() - self.last >= 5.0:
            self.last = time.monotonic()
            err.print(f"[dim]relabel: {escape(_line(tally))}[/dim]")


def relabel_command(
    source: Annotated[
        Path, typer.Argument(metavar="INPUT", help="JSONL or Parquet file, or a folder of them.")
    ],
    preset: Annotated[str | None, typer.Option("--preset", "-p", help="Preset name.")] = None,
    topology: Annotated[
        Path | None, typer.Option("--topology", "-t", help="Topology file (.yaml/.json).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder of runs (each run in its own folder).")] = Path(
        "runs"
    ),
    name: Annotated[
        str | None, typer.Option(help="The run's name (default: <topology>-<input>).")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Rows in flight at once.")] = 16,
    limit: Annotated[int | None, typer.Option(help="Only the first N rows (a trial).")] = None,
    max_usd: Annotated[
        float | None, typer.Option(help="The run's budget in USD; stops cleanly when reached.")
    ] = None,
    rpm: Annotated[
        list[str] | None,
        typer.Option(help="Requests/min: N, PROVIDER=N or PROVIDER:MODEL=N (repeatable)."),
    ] = None,
    tpm: Annotated[
        list[str] | None, typer.Option(help="Tokens/min, scoped like --rpm (repeatable).")
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Run again only the failed rows.")
    ] = False,
    estimate: Annotated[
        bool, typer.Option("--estimate", help="Worst-case $ and calls; call nothing.")
    ] = False,
    engine: Annotated[Engine, typer.Option(help="local (asyncio) or ray.")] = Engine.local,
    ray_address: Annotated[
        str | None, typer.Option(help="Join this Ray cluster (HOST:PORT); default: a local one.")
    ] = None,
    ray_workers: Annotated[
        int | None, typer.Option(help="Ray actors (default: one per CPU).")
    ] = None,
    cache: Annotated[
        Path | None, typer.Option(help="Call cache file (default: <out>/calls.sqlite).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
) -> None:
    """Relabel a dataset with a MoA topology into --out; rerun the same command to go on where
    it stopped (finished rows and calls are never paid for twice)."""
    from langgraph_moa.batch import arelabel, estimate_relabel, parse_limits

    topo = _topology(preset, topology)
    if estimate:
        found = estimate_relabel(
            source, topology=topo, out=out, name=name, limit=limit, retry_failed=retry_failed
        )
        if as_json:
            sys.stdout.write(json.dumps(found.as_dict()) + "\n")
            return
        cost = "unknown" if found.cost_usd is None else f"${found.cost_usd:.4f}"
        unpriced = f" (no price for {', '.join(found.unpriced)})" if found.unpriced else ""
        sys.stdout.write(
            f"worst case for {found.rows} rows: {found.calls} calls, {found.tokens} tokens, "
            f"{cost}{unpriced}; {found.skipped} already done, {found.invalid} invalid\n"
        )
        return
    limits = parse_limits(rpm, tpm)
    with _Display(quiet) as display:
        run = asyncio.run(
            arelabel(
                source,
                topology=topo,
                out=out,
                name=name,
                concurrency=concurrency,
                limit=limit,
                max_usd=max_usd,
                rate_limits=limits,
                retry_failed=retry_failed,
                engine=engine.value,
                ray_address=ray_address,
                ray_workers=ray_workers,
                cache=cache,
                on_progress=display,
            )
        )
    _report(run, as_json=as_json, quiet=quiet)


def _report(run: RelabelRun, *, as_json: bool, quiet: bool) -> None:
    from langgraph_moa.cli.console import err

    if as_json:
        sys.stdout.write(json.dumps(run.summary()) + "\n")
    if not quiet:
        t = run.totals
        err.print(
            f"relabel: {escape(_line(run.session))}\n"
            f"run {escape(str(run.path))}: {t['done']} done, {t['failed']} failed, "
            f"{t['invalid']} invalid, ${t['cost_usd']:.4f} in all"
        )
    if run.stopped == "budget":
        reason = run.session.stop_reason or "stopped at the budget (--max-usd)"
        err.print(
            f"[yellow]moa: note:[/yellow] {escape(reason)}; rerun with a larger --max-usd to go on"
        )


def export_command(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="A run folder (<out>/<name>).")],
    fmt: Annotated[Format, typer.Option("--format", "-f", help="sft, dpo or traces.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write (default: inside the run folder)."),
    ] = None,
    include_degraded: Annotated[
        bool,
        typer.Option(
            "--include-degraded", help="Keep rows where a call failed or a fallback answered."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Export a relabel run: OpenAI fine-tuning JSONL (sft), TRL preference pairs (dpo), or one
    Parquet row per LLM call (traces)."""
    from langgraph_moa.batch import RelabelRun
    from langgraph_moa.cli.console import err

    run = RelabelRun.open(run_dir)
    path, count = run.export(fmt.value, output, include_degraded=include_degraded)
    if as_json:
        sys.stdout.write(json.dumps({"path": str(path), "rows": count, "format": fmt.value}) + "\n")
    else:
        err.print(f"wrote {count} rows to {escape(str(path))}")
