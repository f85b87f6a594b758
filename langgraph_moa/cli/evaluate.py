"""``moa eval`` and ``moa report``: run a benchmark on a topology and score it; put runs side by
side.

Parsing and rendering only: the work is in :mod:`langgraph_moa.evaluation`. The judge is
``--judge provider:model``, or a topology (``--judge-preset``/``--judge-topology``, like the
``--baseline-*`` options). ``--rpm``/``--tpm`` hold every request of the eval (every side's
answers, the judgments) to one set of limits, through the relabel runner's request gate.
Everything a user can get wrong (unknown benchmark, missing data package, a judge without a key
or a judge topology that cannot be read, a gold file without its gold field, ``--limit 0``,
conflicting options, a malformed ``--rpm``) is checked before the first call and is one line on
stderr with exit code 2 (``MoAInputError``, rendered by the ``moa`` entry point). The judge
options are checked on every benchmark: on one scored against gold answers a judge is refused
too, as it would not be used. A folder made with other settings is refused the same way (see
:mod:`langgraph_moa.evaluation.driver`).

The printed summary counts, per side, the items judged, unjudged and failed, and shows "no data"
for a metric over no item (never ``nan``); ``--json`` prints strict JSON. When no item of a side
was judged the summary is still written and printed, and the command ends with one line saying
so and exit code 1 (``MoAError``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError

from langgraph_moa.errors import MoAError, MoAInputError
from langgraph_moa.extras import require_extra
from langgraph_moa.spec.agent import Agent
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.topology import Topology, resolve_topology

if TYPE_CHECKING:
    from langgraph.cache.base import BaseCache

    from langgraph_moa.evaluation.datasets import Benchmark
    from langgraph_moa.evaluation.driver import (
        Side,
    )

_JUDGMENTS_FILE = "judgments.sqlite"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "eval"


def _single_model(spec: str, option: str) -> Agent:
    """A model answering alone, greedily (temperature 0, seed 0: reproducible and cached)."""
    try:
        agent = Agent(name="single", model=spec, temperature=0.0, seed=0, max_tokens=256)
    except ValidationError as e:
        reason = "; ".join(x["msg"].removeprefix("Value error, ") for x in e.errors())
        raise MoAInputError(f"{option} {spec!r}: {reason}") from None
    return agent


def _topology(preset: str | None, topology: Path | None, model: str | None, what: str) -> Any:
    given = [x for x in (preset, topology, model) if x]
    if len(given) > 1:
        raise MoAInputError(f"give one of --{what}preset, --{what}topology or --{what}model")
    if model:
        return _single_model(model, f"--{what}model")
    if preset or topology:
        return resolve_topology(preset=preset, path=topology)
    return None


def _judge(model: str | None, preset: str | None, topology: Path | None) -> Agent | Topology:
    """The judge: one provider:model, or a topology (a preset or a file); ready to call."""
    from langgraph_moa.evaluation.judge import judge_agent, judge_topology

    if len([x for x in (model, preset, topology) if x]) > 1:
        raise MoAInputError("give one of --judge, --judge-preset or --judge-topology")
    if model:
        return judge_agent(model)
    return judge_topology(resolve_topology(preset=preset, path=topology))


def _preflight(chosen: Topology | Agent) -> None:
    from langgraph_moa.evaluation.judge import single_topology
    from langgraph_moa.llm.chat_models import check_ready
    from langgraph_moa.llm.usage import check_priced

    if isinstance(chosen, Agent):
        chosen = single_topology(chosen)
    check_ready(chosen, probe_local=True)
    check_priced(chosen, PriceTable(chosen.prices))


def _json_object(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise MoAInputError(
            f"--task-config is not valid JSON: {e.msg} (column {e.colno})"
        ) from None
    if not isinstance(value, dict):
        raise MoAInputError("--task-config must be a JSON object, e.g. '{\"max_digits\": 1}'")
    return value


def _side(
    chosen: Topology | Agent,
    role: str,
    cache: BaseCache[Any],
    concurrency: int,
    cache_file: Path,
    batch_poll_s: float | None = None,
) -> Side:
    from langgraph_moa.evaluation.driver import DirectGenerator, Side, TopologyGenerator

    if isinstance(chosen, Agent):
        return Side(
            name=f"single {chosen.model}",
            role=role,
            generate=DirectGenerator(chosen, cache, concurrency=concurrency),
            spec={"model": chosen.model},
        )
    return Side(
        name=chosen.name,
        role=role,
        generate=TopologyGenerator(
            chosen,
            concurrency=concurrency,
            cache_file=cache_file,
            options={} if batch_poll_s is None else {"engine": "batch", "poll_s": batch_poll_s},
        ),
        spec={"topology": chosen.model_dump(mode="json")},
    )


def _estimate(e: dict[str, Any]) -> str:
    """``61.2 (90% CI 55.0-67.1, n=80)``, or "no data (n=0)" for a metric over no item."""
    if e.get("value") is None:
        return f"no data (n={e.get('n', 0)})"
    low, high = e.get("low"), e.get("high")
    interval = "-" if low is None or high is None else f"{low:.1f}-{high:.1f}"
    return f"{e['value']:.1f} (90% CI {interval}, n={e['n']})"


def _scored_word(summary: dict[str, Any]) -> str:
    return "scored" if summary.get("scoring") == "exact" else "judged"


def _print_counts(summary: dict[str, Any]) -> None:
    """Per side: items judged, unjudged (with the first one's reason) and failed."""
    word = _scored_word(summary)
    for side in summary["topologies"]:
        c = side.get("counts")
        if not c:
            continue
        line = (
            f"  {side['role']:<9} items: {c['judged']} {word}, {c['unjudged']} un{word}, "
            f"{c['failed']} failed"
        )
        example = c.get("unjudged_example")
        if example:
            line += f" (first un{word}: item {example['id']!r}, {example['why']})"
        sys.stdout.write(line + "\n")


def _check_judged(summary: dict[str, Any], folder: Path) -> None:
    """Exit code 1, one line, when no item of a side was judged (the summary is written)."""
    word = _scored_word(summary)
    empty = []
    for side in summary["topologies"]:
        c = side.get("counts") or {}
        if c.get("judged") == 0:
            why = f"{c.get('unjudged', 0)} un{word}, {c.get('failed', 0)} failed"
            example = c.get("unjudged_example")
            if example:
                why += f"; item {example['id']!r}: {example['why']}"
            empty.append(f"no item of the {side['role']} ({side['name']}) was {word} ({why})")
    if empty:
        where = folder / "summary.json"
        raise MoAError(f"{'; '.join(empty)}; the counts are in {str(where)!r}")


def _print_summary(summary: dict[str, Any], folder: Path) -> None:
    scores = summary["scores"]
    metric = scores["metric"]
    lead = scores["metrics"][metric]
    out = sys.stdout
    out.write(
        f"{summary['benchmark']} ({summary['version']}), {summary['items']} items, "
        f"judge: {summary['judge'] or 'none'}\n"
    )
    for side in summary["topologies"]:
        c = side["cost"]
        usd, spent = c.get("usd_per_item"), c.get("spent_usd_per_item")
        unknown = c.get("unknown_cost_items") or 0
        own = f"unknown ({unknown} items)" if usd is None and unknown else "unpriced"
        line = (
            f"  {side['role']:<9} {side['name']}: calls/item {c.get('calls_per_item', 0):.1f}, "
            f"s/item {c.get('seconds_per_item', 0):.2f}, "
            f"own $/item {own if usd is None else f'{usd:.5f}'} "
            f"(spent {'unpriced' if spent is None else f'{spent:.5f}'}), "
            f"failed {100 * c.get('failed_rate', 0):.0f}%"
        )
        out.write(line + "\n")
    judging = summary.get("judge_usage")
    if judging:
        usd = judging.get("cost_usd")
        p50 = judging.get("latency_p50_s")
        out.write(
            f"  judge     {summary['judge']}: {judging['judgments']} judgments "
            f"({judging['cached']} read back, {judging['failed']} failed), "
            f"calls {judging['calls']}, tokens "
            f"{judging['prompt_tokens'] + judging['completion_tokens']}, "
            f"$ {'unpriced' if usd is None else f'{usd:.5f}'}, "
            f"s/judgment p50 {'-' if p50 is None else f'{p50:.2f}'}\n"
        )
    _print_counts(summary)
    out.write(f"  {metric}: {_estimate(lead)}\n")
    paired = scores.get("paired")
    if paired:
        d, b = paired["difference"], paired["baseline"]
        difference = (
            "no data"
            if None in (d.get("value"), d.get("low"), d.get("high"))
            else f"{d['value']:+.1f} ({d['low']:+.1f} to {d['high']:+.1f})"
        )
        out.write(f"  baseline {metric}: {_estimate(b)}; difference {difference}\n")
    out.write(f"  written to {folder}\n")


def eval_command(
    benchmark: Annotated[
        str,
        typer.Argument(
            help="alpaca-eval, arena-hard, mt-bench, gsm8k, reasoning-gym[:TASK], or a .jsonl "
            "file with a 'gold' or 'baseline' field per row."
        ),
    ],
    preset: Annotated[
        str | None, typer.Option("--preset", "-p", help="Preset to evaluate.")
    ] = None,
    topology: Annotated[
        Path | None, typer.Option("--topology", "-t", help="Topology file to evaluate.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Evaluate one provider:model, a single call.")
    ] = None,
    baseline_preset: Annotated[
        str | None, typer.Option("--baseline-preset", help="Compare with this preset.")
    ] = None,
    baseline_topology: Annotated[
        Path | None, typer.Option("--baseline-topology", help="Compare with this topology.")
    ] = None,
    baseline_model: Annotated[
        str | None, typer.Option("--baseline-model", help="Compare with one provider:model.")
    ] = None,
    judge: Annotated[
        str | None,
        typer.Option("--judge", help="The judge, one provider:model (pairwise and graded sets)."),
    ] = None,
    judge_preset: Annotated[
        str | None, typer.Option("--judge-preset", help="A preset as the judge (a panel).")
    ] = None,
    judge_topology: Annotated[
        Path | None,
        typer.Option("--judge-topology", help="A topology file as the judge (a panel)."),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", help="First N items.")] = None,
    task_config: Annotated[
        str | None,
        typer.Option(
            "--task-config",
            help="reasoning-gym only: the task's settings and seed as a JSON object, e.g. "
            '\'{"max_digits": 1, "allow_parentheses": false, "seed": 7}\'.',
        ),
    ] = None,
    calls_cache: Annotated[
        Path | None,
        typer.Option(
            "--calls-cache",
            help="Keep the generated calls in this SQLite file instead of the run's own, so "
            "evals of topologies with the same proposers share their proposals.",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder of eval runs.")] = Path("runs"),
    name: Annotated[str | None, typer.Option("--name", help="This run's folder name.")] = None,
    concurrency: Annotated[
        int,
        typer.Option("--concurrency", min=1, max=256, help="Items (and judge calls) in flight."),
    ] = 8,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="local (online calls) or batch: a topology's answers and a model judge's "
            "judgments through the providers' Batch APIs, in waves, at the batch price.",
        ),
    ] = "local",
    poll: Annotated[
        float,
        typer.Option("--poll", help="With --engine batch: the longest wait between polls (s)."),
    ] = 60.0,
    rpm: Annotated[
        list[str] | None,
        typer.Option(
            help="Requests/min for the whole eval (answers and judge): N, PROVIDER=N or "
            "PROVIDER:MODEL=N (repeatable), as in moa relabel."
        ),
    ] = None,
    tpm: Annotated[
        list[str] | None, typer.Option(help="Tokens/min, scoped like --rpm (repeatable).")
    ] = None,
    resamples: Annotated[
        int, typer.Option("--resamples", min=100, max=100000, help="Bootstrap resamples.")
    ] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Run a benchmark on a topology (or one model) and score it; rerun to resume."""
    require_extra("eval", "moa eval")  # before the imports below: they import numpy
    from langgraph_moa.batch.limits import RateGate, parse_limits
    from langgraph_moa.evaluation import strict_json
    from langgraph_moa.evaluation.datasets import Scoring, load_benchmark
    from langgraph_moa.evaluation.driver import CALLS_FILE, run_eval
    from langgraph_moa.evaluation.judge import Judge
    from langgraph_moa.llm.call_cache import open_cache
    from langgraph_moa.llm.openai_client import gate_requests

    limits = parse_limits(rpm, tpm)
    chosen = _topology(preset, topology, model, "")
    if chosen is None:
        raise MoAInputError("give --preset, --topology or --model: what should be evaluated?")
    other = _topology(baseline_preset, baseline_topology, baseline_model, "baseline-")
    bench: Benchmark = load_benchmark(
        benchmark, limit=limit, paired=other is not None, task_config=_json_object(task_config)
    )
    judged = bench.scoring is not Scoring.exact
    judge_given = [
        option
        for option, value in (
            ("--judge", judge),
            ("--judge-preset", judge_preset),
            ("--judge-topology", judge_topology),
        )
        if value
    ]
    if judged and not judge_given:
        raise MoAInputError(
            f"{bench.name} is scored by a judge: give --judge provider:model (e.g. "
            "openai:gpt-4.1), or --judge-preset/--judge-topology for a topology as the judge"
        )
    # checked on every benchmark: a bad judge option is an error even where none is used
    the_judge_spec = _judge(judge, judge_preset, judge_topology) if judge_given else None
    if not judged and judge_given:
        raise MoAInputError(
            f"{bench.name} is scored by exact match against its gold answers, not by a judge: "
            f"drop {judge_given[0]}"
        )
    for side in (chosen, other):
        if side is not None:
            _preflight(side)
    if engine not in ("local", "batch"):
        raise MoAInputError(f"unknown --engine {engine!r} (local or batch)")
    if not poll > 0:
        raise MoAInputError("--poll must be more than 0 seconds")
    batch_poll = poll if engine == "batch" else None
    side_name = chosen.name if isinstance(chosen, Topology) else f"single-{chosen.model}"
    default = f"{bench.name}-{side_name}"
    if other is not None:
        default += "-vs-" + (other.name if isinstance(other, Topology) else f"single-{other.model}")
    folder = out / _safe(name or default)
    folder.mkdir(parents=True, exist_ok=True)
    calls_file = calls_cache or folder / CALLS_FILE
    calls = open_cache(str(calls_file))
    sides = [_side(chosen, "candidate", calls, concurrency, calls_file, batch_poll)]
    if other is not None:
        sides.append(_side(other, "baseline", calls, concurrency, calls_file, batch_poll))
    the_judge = (
        Judge(the_judge_spec, open_cache(str(folder / _JUDGMENTS_FILE)), concurrency=concurrency)
        if the_judge_spec is not None
        else None
    )

    async def evaluate() -> dict[str, Any]:
        with gate_requests(RateGate(limits)) if limits else contextlib.nullcontext():
            return await run_eval(
                bench,
                sides[0],
                folder=folder,
                baseline=sides[1] if len(sides) > 1 else None,
                judge=the_judge,
                resamples=resamples,
                batch_poll_s=batch_poll,
            )

    summary = asyncio.run(evaluate())
    if as_json:
        sys.stdout.write(strict_json.dumps(summary) + "\n")
    else:
        _print_summary(summary, folder)
    _check_judged(summary, folder)


def report_command(
    runs: Annotated[Path, typer.Argument(help="A folder of eval runs (or one run).")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The Markdown report (JSON and PNGs beside it).")
    ] = Path("report.md"),
    objective: Annotated[
        str,
        typer.Option(
            "--objective",
            help="What the recommended side is chosen for: quality (the highest score, ties "
            "broken by the lower own $ per item) or cost (the cheapest side whose score is "
            "inside the best side's 90% interval).",
        ),
    ] = "quality",
) -> None:
    """Put eval runs side by side: a Markdown table naming the Pareto front and the recommended
    side, JSON, and quality-vs-cost/latency plots."""
    from langgraph_moa.evaluation.report import write_report

    written = write_report(runs, output, objective)
    sys.stdout.write(f"wrote {written['markdown']}, {written['json']}")
    for plot in written["plots"]:
        sys.stdout.write(f", {plot}")
    sys.stdout.write("\n")
