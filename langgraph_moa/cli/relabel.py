"""``moa relabel`` and ``moa export``: a dataset through a MoA topology, and its exports.

Parsing and rendering only; the work is :mod:`langgraph_moa.batch`. Progress goes to stderr (a
live line on a terminal, a line every few seconds otherwise, nothing with ``--quiet``); ``--json``
prints one summary object on stdout at the end. Bad input is one ``moa: error:`` line, exit 2,
with nothing written (see ``main`` in :mod:`langgraph_moa.cli.app`). Ctrl-C stops the run
(the rows finished are kept) and says in one line how many rows are done and that the same
command goes on (exit 130).

The live line is laid out here, not with rich's Progress columns, because it must fit the
terminal's width by leaving out its less important parts (the counts are always shown whole),
where Progress would cut it anywhere: it is a rich renderable drawn by ``Live`` at each refresh
from the run's tally, so it always shows the current counts. Costs are shown to 4 decimals.
"""

from __future__ import annotations

import asyncio
import enum
import json
import re
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from langgraph_moa.cli.interrupt import Interrupted, ctrl_c_cancels
from langgraph_moa.spec.topology import resolve_topology

if TYPE_CHECKING:
    from langgraph_moa.batch import (
        RelabelRun,
        SessionProgress,
    )


class _Engine(enum.StrEnum):
    local = "local"
    ray = "ray"
    batch = "batch"


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(text: str) -> float:
    """A duration as ``--finish-online-after`` takes it: seconds, or a number with s, m, h or
    d (``90s``, ``30m``, ``2h``, ``1d``)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    if found is None or float(found[1]) <= 0:
        raise typer.BadParameter(f"{text!r} is not a duration (90s, 30m, 2h, 1d or seconds)")
    return float(found[1]) * _UNITS[found[2] or "s"]


class _Format(enum.StrEnum):
    sft = "sft"
    prompt_completion = "prompt-completion"
    dpo = "dpo"
    openai_dpo = "openai-dpo"
    traces = "traces"


class Turns(enum.StrEnum):
    last = "last"
    all = "all"


class TurnContext(enum.StrEnum):
    relabeled = "relabeled"
    original = "original"


def _clock(seconds: float | None) -> str:
    return "-" if seconds is None else time.strftime("%H:%M:%S", time.gmtime(seconds))


def _parts(tally: SessionProgress) -> dict[str, str]:
    """The pieces of a progress line, by name."""
    total = None if tally.total is None else max(tally.total, tally.finished)
    return {
        "rows": f"{tally.finished}/{total}" if total is not None else f"{tally.finished} rows",
        "counts": (
            f"{tally.done} done, {tally.failed} failed, {tally.invalid} invalid, "
            f"{tally.skipped} skipped"
        ),
        "cost": f"${tally.cost_usd:.4f}",
        "eta": f"ETA {_clock(tally.eta_s)}",
        "rate": f"{tally.rows_per_s:.2f} rows/s",
        "calls": f"{tally.calls} calls ({tally.cached_calls} cached)",
        "tokens": f"{tally.tokens} tokens",
        "running": f"{tally.running} running",
        "elapsed": _clock(tally.elapsed_s),
        "batch": _batch_part(tally),
    }


def _batch_part(tally: SessionProgress) -> str:
    """The batch engine's part of the line: waves, batches running and ended, rows waiting for
    a wave, stragglers sent online, and what the batch price saved on the rows done."""
    batch = tally.batch
    if batch is None:
        return ""
    text = (
        f"wave {batch.get('waves', 0)}: {batch.get('in_progress', 0)} batches running, "
        f"{batch.get('ended', 0)} ended, {tally.waiting} rows waiting"
    )
    if batch.get("online"):
        text += f", {batch['online']} sent online"
    return text + f", ${tally.batch_saved_usd:.4f} saved"


# The live line's optional parts, most important first: the first ones that fit are shown (the
# bar, when the total is known, at its narrowest; it then takes what room is left, up to a limit).
_OPTIONAL = ("batch", "cost", "eta", "bar", "rate", "calls", "tokens", "running", "elapsed")
# The order they are shown in, each group joined by ", ", groups by " | ".
_GROUPS = (
    ("counts",),
    ("batch",),
    ("cost",),
    ("calls", "tokens"),
    ("running", "rate", "eta"),
    ("elapsed",),
)
_BAR_MIN, _BAR_MAX = 10, 40


def _line(tally: SessionProgress, kept: tuple[str, ...] = _OPTIONAL) -> str:
    """The progress line's text (the counts, and the ``kept`` optional parts)."""
    parts = _parts(tally)
    groups = [
        ", ".join(parts[k] for k in g if (k == "counts" or k in kept) and parts[k]) for g in _GROUPS
    ]
    return f"{parts['rows']} | " + " | ".join(g for g in groups if g)


def fit_line(tally: SessionProgress, width: int) -> Text:
    """The live line for a terminal ``width`` columns wide: ``relabel``, the finished rows of
    the total and the counts by status (always whole: a terminal too narrow wraps them), then
    what else fits, most important first, a bar among them when the total is known."""

    def size(kept: tuple[str, ...]) -> int:
        bar = _BAR_MIN + 1 if "bar" in kept else 0
        return len("relabel " + _line(tally, kept)) + bar

    kept: tuple[str, ...] = ()
    for name in _OPTIONAL:
        if name == "bar" and not tally.total:
            continue
        if size((*kept, name)) <= width:
            kept = (*kept, name)
    line = Text("relabel", style="bold")
    if "bar" in kept and tally.total:
        bar = min(_BAR_MAX, width - size(kept) + _BAR_MIN)
        filled = round(bar * min(tally.finished / tally.total, 1.0))
        line.append(" ")
        line.append("━" * filled, style="bar.finished" if filled == bar else "bar.complete")
        line.append("━" * (bar - filled), style="bar.back")
    line.append(" " + _line(tally, kept))
    return line


class _Display:
    """Progress on stderr: a live line on a terminal, else a line every 5 s."""

    def __init__(self, quiet: bool) -> None:
        from langgraph_moa.cli.console import err

        self.quiet = quiet
        self.live = not quiet and err.is_terminal
        self.last = 0.0
        self.tally: SessionProgress | None = None
        self.view = Live(self, console=err, transient=True, refresh_per_second=4)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if self.tally is None:
            yield Text("relabel: starting", style="dim")
        else:
            yield fit_line(self.tally, options.max_width)

    def __enter__(self) -> _Display:
        if self.live:
            self.view.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.view.stop()

    def __call__(self, tally: SessionProgress) -> None:
        """Called as rows start and finish; the live line reads ``tally`` at each refresh."""
        from langgraph_moa.cli.console import err

        self.tally = tally
        if not self.live and not self.quiet and time.monotonic() - self.last >= 5.0:
            self.last = time.monotonic()
            err.print(f"[dim]relabel: {escape(_line(tally))}[/dim]")


def _interrupted(path: Path, tally: SessionProgress | None) -> None:
    """The one line Ctrl-C leaves: what is kept, and how to go on."""
    from langgraph_moa.batch import RelabelRun
    from langgraph_moa.cli.console import err

    kept = "nothing was recorded yet"
    if (path / "manifest.json").is_file():
        try:
            done = RelabelRun.open(path).totals["done"]
        except Exception:  # a run folder cut short at its creation: say what is known
            done = None
        if done is not None:
            session = f", {tally.done} of them in this session" if tally else ""
            kept = f"{done} rows are done and kept in {path}{session}"
    args = sys.argv[1:]
    again = shlex.join(["moa", *args]) if args[:1] == ["relabel"] else "the same command"
    line = f"interrupted; {kept}; to go on, rerun {again}"
    err.print(f"[red]moa: error:[/red] {escape(line)}")


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
    engine: Annotated[
        _Engine,
        typer.Option(
            help="local (asyncio), ray, or batch: the providers' Batch APIs, wave by wave, at "
            "their batch price."
        ),
    ] = _Engine.local,
    detach: Annotated[
        bool,
        typer.Option(
            "--detach",
            help="With --engine batch: submit the next wave and exit; rerun to poll and go on.",
        ),
    ] = False,
    poll: Annotated[
        float,
        typer.Option(
            "--poll",
            help="With --engine batch: the longest wait between two polls, in seconds (polls "
            "start 2 s apart and grow to it).",
        ),
    ] = 60.0,
    finish_online_after: Annotated[
        str | None,
        typer.Option(
            help="With --engine batch: send a wave's requests still running after this long "
            "online (90s, 30m, 2h, 1d)."
        ),
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="Join this Ray cluster (HOST:PORT); default: a local one.")
    ] = None,
    ray_workers: Annotated[
        int | None, typer.Option(help="Ray actors (default: one per CPU).")
    ] = None,
    cache: Annotated[
        Path | None, typer.Option(help="Call cache file (default: <out>/calls.sqlite).")
    ] = None,
    turns: Annotated[
        Turns,
        typer.Option(
            help="last: relabel the answer after the prompt; all: every assistant turn of a "
            "conversation, one graph run each."
        ),
    ] = Turns.last,
    turn_context: Annotated[
        TurnContext,
        typer.Option(
            help="With --turns all, what a turn's prompt holds of the earlier turns: their "
            "relabeled answers, or the original ones."
        ),
    ] = TurnContext.relabeled,
    retry_online: Annotated[
        bool,
        typer.Option(
            "--retry-online",
            help="With --engine batch: retry a request that failed inside a batch online, not "
            "in the next wave.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
) -> None:
    """Relabel a dataset with a MoA topology into --out; rerun the same command to go on where
    it stopped (finished rows and calls are never paid for twice)."""
    from langgraph_moa.batch import arelabel, estimate_relabel, parse_limits
    from langgraph_moa.batch.runner import run_folder

    topo = resolve_topology(preset=preset, path=topology)
    if estimate:
        found = estimate_relabel(
            source,
            topology=topo,
            out=out,
            name=name,
            limit=limit,
            retry_failed=retry_failed,
            turns=turns.value,
            turn_context=turn_context.value,
            engine=engine.value,
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
        if found.waves is not None:
            batch = "unknown" if found.batch_cost_usd is None else f"${found.batch_cost_usd:.4f}"
            sys.stdout.write(
                f"with --engine batch: {batch} at batch prices (online {cost}), in at most "
                f"{found.waves} waves\n"
            )
        return
    online_after = None if finish_online_after is None else _duration(finish_online_after)
    limits = parse_limits(rpm, tpm)
    display = _Display(quiet)

    async def until_ctrl_c() -> RelabelRun:
        async with ctrl_c_cancels():
            return await arelabel(
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
                turns=turns.value,
                turn_context=turn_context.value,
                on_progress=display,
                detach=detach,
                poll_s=poll,
                finish_online_after=online_after,
                retry_online=retry_online,
            )

    try:
        with display:
            run = asyncio.run(until_ctrl_c())
    except (Interrupted, KeyboardInterrupt):
        _interrupted(run_folder(source, topo, out, name), display.tally)
        raise SystemExit(130) from None
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
    if run.stopped == "detached":
        err.print(
            "[yellow]moa: note:[/yellow] a wave is at the providers' Batch APIs; rerun the same "
            "command to poll and go on"
        )
    if run.stopped == "budget":
        reason = run.session.stop_reason or "stopped at the budget (--max-usd)"
        err.print(
            f"[yellow]moa: note:[/yellow] {escape(reason)}; rerun with a larger --max-usd to go on"
        )


def export_command(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="A run folder (<out>/<name>).")],
    fmt: Annotated[
        _Format,
        typer.Option("--format", "-f", help="sft, prompt-completion, dpo, openai-dpo or traces."),
    ],
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
    """Export a relabel run: OpenAI fine-tuning JSONL (sft), TRL prompt-completion rows, TRL
    preference pairs (dpo) or OpenAI's (openai-dpo), or one Parquet row per LLM call (traces).
    Says what it wrote and what it left out, by reason."""
    from langgraph_moa.batch import RelabelRun
    from langgraph_moa.cli.console import err

    run = RelabelRun.open(run_dir)
    written = run.export(fmt.value, output, include_degraded=include_degraded)
    if as_json:
        sys.stdout.write(json.dumps(written.as_dict()) + "\n")
    else:
        err.print(escape(written.describe()), soft_wrap=True)
