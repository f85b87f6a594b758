"""Relabel a dataset with a MoA topology: every row through the graph, durable to the row and to
the call, with bounded concurrency, rate limits and a budget.

Each row runs through :func:`langgraph_moa.run.stream_run`, the run loop every door shares, in a
:func:`~langgraph_moa.llm.call_cache.row_scope` so each of its calls is cached as it finishes
(``<out>/calls.sqlite``), and is recorded in the run's ledger in one transaction when it ends.
Kill the process at any moment and rerun the same command: rows already recorded are skipped,
a row cut short runs again with its finished calls served from the cache.

Policies:
- ``concurrency`` rows run at once (default 16: a sensible load for an API account);
- rows already ``done`` are skipped; ``failed`` ones too unless ``retry_failed``, which runs
  only those; a row whose id was already read at another place is invalid (duplicate id);
- ``limit`` reads only the first N rows of the input (a trial; a larger limit later goes on);
- ``max_usd`` is the whole run's budget (every session's spending counts, failed rows' paid
  calls included): a row starts only if what is spent, plus the worst case of the rows running
  and of this one (:func:`langgraph_moa.batch.one_row.row_worst_case_usd`), stays within it; when
  the next row does not fit, it waits for the rows running to finish (their real cost replaces
  their worst case) and tries again; only when none is running and it still does not fit does
  the run stop cleanly (``stopped="budget"``, and ``stop_reason`` saying what was spent of the
  budget and what the next row could cost), ready to go on with a larger budget;
- ``turns="all"`` relabels every assistant turn of a multi-turn row, one graph run per turn,
  each turn's prompt holding the relabeled earlier turns (or, with
  ``turn_context="original"``, the row's own); the run records both settings, and a rerun of
  the same run with other values is refused (it would mix two kinds of record);
- a row that fails (all proposers of a layer down, the aggregator failed...) is recorded as
  failed with the error and the run goes on; so is a row whose record cannot be stored; an
  input row that cannot be read or checked is recorded as invalid (file:line and why);
  configuration errors (a missing key, extras) stop the run before any call;
- a disk or database failure (the ledger's or the call cache's: no space, a file-size limit, an
  I/O error) stops the run with one line naming the file and the condition
  (:class:`~langgraph_moa.errors.MoAStorageError`); no row is recorded as failed because of it,
  every row recorded before stays, and rerunning the same command runs the rest.

The Python API: :func:`relabel` / :func:`arelabel` take a file, a folder or an iterable of rows
(dicts in the input format), and return a :class:`RelabelRun` with counts, cost, paths and
the records. ``engine="ray"`` runs the rows on Ray actors (:mod:`langgraph_moa.batch.ray_engine`)
with the same ledger and cache. Costs in the summary, the estimate and the manifest are rounded to
the micro-dollar (:func:`~langgraph_moa.batch.feeding.round_usd`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from langgraph_moa.batch.batch_engine import run_in_waves
from langgraph_moa.batch.exports import ExportFormat, ExportResult, export_run
from langgraph_moa.batch.feeding import (
    CHUNK,
    BatchBudget,
    Plan,
    SessionProgress,
    drive_rows,
    round_usd,
    steady_gc,
)
from langgraph_moa.batch.ledger import Ledger, RowRecord, Totals
from langgraph_moa.batch.limits import RateGate, RateLimits
from langgraph_moa.batch.one_row import (
    TURN_CONTEXTS,
    TURNS,
    TurnContext,
    Turns,
    relabel_row,
    row_estimates,
)
from langgraph_moa.batch.ray_engine import require_ray, run_on_ray
from langgraph_moa.batch.row_check import InvalidRow, Row
from langgraph_moa.batch.rows import count_rows, input_files, read_rows, rows_of
from langgraph_moa.batch.rundir import (
    CACHE,
    Manifest,
    RunDir,
    check_name,
    describe_input,
    open_run_dir,
    run_name,
)
from langgraph_moa.batch.waves import DEFAULT_POLL_S
from langgraph_moa.errors import MoAError, MoAInputError, MoAStorageError
from langgraph_moa.graphs.builder import build_graph
from langgraph_moa.llm.call import error_text
from langgraph_moa.llm.call_cache import open_cache
from langgraph_moa.llm.chat_models import check_ready
from langgraph_moa.llm.openai_client import gate_requests
from langgraph_moa.llm.usage import unpriced_models
from langgraph_moa.spec.models import BatchPrices, PriceTable, has_batch_api
from langgraph_moa.spec.topology import Topology, resolve_topology
from langgraph_moa.sync_loop import run_sync

_DEFAULT_CONCURRENCY = 16

Input = str | Path | Iterable[Mapping[str, Any] | Row | InvalidRow]


def _unattended(topology: Topology | str | Path | None) -> Topology:
    """The topology a relabel runs: a Topology, a preset's name or a topology file's path (see
    :func:`~langgraph_moa.spec.topology.resolve_topology`); one that needs no person's review."""
    if isinstance(topology, Topology):
        found = topology
    elif isinstance(topology, Path) or Path(str(topology)).suffix in (".yaml", ".yml", ".json"):
        found = resolve_topology(path=topology)
    else:
        found = resolve_topology(preset=topology)
    if found.review != "none":
        raise MoAInputError(
            f"topology {found.name!r} pauses for a person's review; relabeling needs one that "
            "runs unattended (review: none)"
        )
    return found


@dataclass
class RelabelRun:
    """A relabel run's handle: where it is, what this session did, the run's totals."""

    path: Path
    manifest: Manifest
    session: SessionProgress
    totals: Totals
    cache_path: Path | None = None

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def ledger_path(self) -> Path:
        return self.path / "ledger.sqlite"

    @property
    def cost_usd(self) -> float:
        return round(self.totals["cost_usd"], 6)

    @property
    def stopped(self) -> str | None:
        return self.session.stopped

    @classmethod
    def open(cls, path: str | Path) -> RelabelRun:
        """An existing run directory (MoAInputError if it is not one, or if its ledger is
        damaged)."""
        run = RunDir.load(Path(path))
        ledger = Ledger(run.ledger_path, create=False)
        try:
            ledger.verify()
            totals = ledger.totals()
        finally:
            ledger.close()
        return cls(run.path, run.manifest, SessionProgress(), totals)

    def records(self, status: str | None = None) -> Iterator[RowRecord]:
        """The recorded rows (``status``: "done" or "failed" only), streamed from the ledger."""
        ledger = Ledger(self.ledger_path, create=False)
        try:
            yield from ledger.records(status)
        finally:
            ledger.close()

    def invalid_rows(self) -> Iterator[InvalidRow]:
        ledger = Ledger(self.ledger_path, create=False)
        try:
            yield from ledger.invalid_rows()
        finally:
            ledger.close()

    def export(
        self, fmt: ExportFormat, out: str | Path | None = None, *, include_degraded: bool = False
    ) -> ExportResult:
        """Write an export (see :mod:`langgraph_moa.batch.exports`); returns its path, how many
        rows it holds and what was left out, by reason."""
        return export_run(self, fmt, out, include_degraded=include_degraded)

    def summary(self) -> dict[str, Any]:
        """The JSON summary ``moa relabel --json`` prints."""
        return {
            "run": str(self.path),
            "name": self.name,
            "session": self.session.as_dict(),
            "totals": dict(self.totals) | {"cost_usd": self.cost_usd},
        }


@dataclass
class WorstCaseEstimate:
    """Worst case of the rows a session would run (nothing is called)."""

    rows: int = 0
    calls: int = 0
    tokens: int = 0
    cost_usd: float | None = 0.0
    unpriced: list[str] = field(default_factory=list)
    skipped: int = 0
    invalid: int = 0
    # with the batch engine: the same rows' worst case at batch prices (the calls to models
    # without a Batch API at their online price), and the waves a row goes through at most
    batch_cost_usd: float | None = None
    waves: int | None = None

    def as_dict(self) -> dict[str, Any]:
        found = {k: getattr(self, k) for k in self.__dataclass_fields__}
        found |= {"cost_usd": round_usd(self.cost_usd)}
        if self.waves is None:  # the online engines
            del found["batch_cost_usd"], found["waves"]
        else:
            found["batch_cost_usd"] = round_usd(self.batch_cost_usd)
        return found


def _open_input(
    source: Input, limit: int | None
) -> tuple[Iterator[Row | InvalidRow], str, list[Path] | None]:
    if limit is not None and limit < 1:
        raise MoAInputError("--limit must be at least 1")
    if isinstance(source, str | Path):
        path = Path(source)
        files = input_files(path)
        rows: Iterator[Row | InvalidRow] = read_rows(path)
        stem = path.name if path.is_dir() else path.stem
    else:
        files, rows, stem = None, rows_of(source), "rows"
    return (itertools.islice(rows, limit) if limit else rows), stem, files


def _check_turns(turns: str, turn_context: str) -> None:
    if turns not in TURNS:
        raise MoAInputError(f"unknown --turns {turns!r} (last or all)")
    if turn_context not in TURN_CONTEXTS:
        raise MoAInputError(f"unknown --turn-context {turn_context!r} (relabeled or original)")


def run_folder(
    source: Input, topology: Topology, out: str | Path = "runs", name: str | None = None
) -> Path:
    """The run folder a relabel of ``source`` with ``topology`` uses: ``out/name``, the name by
    default ``<topology>-<input>`` (what a message pointing at the run names); a ``name`` that
    is not one plain folder name is refused (MoAInputError)."""
    if name is not None:
        return Path(out) / check_name(name)
    if isinstance(source, str | Path):
        path = Path(source)
        stem = path.name if path.is_dir() else path.stem
    else:
        stem = "rows"
    return Path(out) / run_name(topology, stem)


def estimate_relabel(
    source: Input,
    *,
    topology: Topology | str | Path | None = None,
    out: str | Path = "runs",
    name: str | None = None,
    limit: int | None = None,
    retry_failed: bool = False,
    turns: Turns = "last",
    turn_context: TurnContext = "relabeled",
    engine: str = "local",
) -> WorstCaseEstimate:
    """The worst case (every call writes its max_tokens) of what a relabel session would run:
    rows, calls, tokens and $; with ``engine="batch"`` also at batch prices, and the waves.
    No call is made and nothing is written."""
    topo = _unattended(topology)
    _check_turns(turns, turn_context)
    rows, _, _ = _open_input(source, limit)
    path = run_folder(source, topo, out, name)
    ledger = (
        Ledger(path / "ledger.sqlite", create=False) if (path / "ledger.sqlite").is_file() else None
    )
    prices = PriceTable(topo.prices)
    found = WorstCaseEstimate()
    batch_prices = None
    if engine == "batch":
        batch_prices = _batch_prices(topo, None)
        found.batch_cost_usd, found.waves = 0.0, waves_of(topo)
    try:
        while chunk := list(itertools.islice(rows, CHUNK)):
            valid = [r for r in chunk if isinstance(r, Row)]
            found.invalid += len(chunk) - len(valid)
            seen = ledger.seen([r.id for r in valid]) if ledger else {}
            for row in valid:
                status = seen.get(row.id, (None, ""))[0]
                runs = status == "failed" if retry_failed else status is None
                if not runs:
                    found.skipped += 1
                    continue
                found.rows += 1
                for worst in row_estimates(
                    topo, row, prices, turns=turns, turn_context=turn_context
                ):
                    found.calls += worst.calls
                    found.tokens += worst.total_tokens
                    for model in worst.unpriced:
                        if model not in found.unpriced:
                            found.unpriced.append(model)
                    if found.cost_usd is not None and worst.cost_usd is not None:
                        found.cost_usd += worst.cost_usd
                if batch_prices is not None:
                    batched = row_estimates(
                        topo, row, batch_prices, turns=turns, turn_context=turn_context
                    )
                    for worst in batched:
                        if found.batch_cost_usd is not None and worst.cost_usd is not None:
                            found.batch_cost_usd += worst.cost_usd
    finally:
        if ledger is not None:
            ledger.close()
    if found.unpriced and found.cost_usd == 0:
        found.cost_usd = None
        found.batch_cost_usd = None if found.waves is not None else found.batch_cost_usd
    return found


def waves_of(topology: Topology) -> int:
    """The most waves a row of ``topology`` goes through under the batch engine: one per
    stage that calls a model with a Batch API (each layer's proposers, the judge of a layer's
    join, the critic, the aggregator, its judge)."""
    stages: list[list[str]] = []
    for number, layer in enumerate(topology.layers, 1):
        stages.append([a.model for a in layer.proposers])
        if (judge := topology.join_agent(number)) is not None:
            stages.append([judge.model])
    if topology.critic is not None:
        stages.append([topology.critic.model])
    if topology.aggregator.model is not None:
        stages.append([topology.aggregator.model])
    return sum(1 for models in stages if any(has_batch_api(m) for m in models))


async def arelabel(
    source: Input,
    *,
    topology: Topology | str | Path | None = None,
    out: str | Path = "runs",
    name: str | None = None,
    concurrency: int = _DEFAULT_CONCURRENCY,
    limit: int | None = None,
    max_usd: float | None = None,
    rate_limits: RateLimits | None = None,
    retry_failed: bool = False,
    engine: Literal["local", "ray", "batch"] = "local",
    ray_address: str | None = None,
    ray_workers: int | None = None,
    cache: str | Path | None = None,
    turns: Turns = "last",
    turn_context: TurnContext = "relabeled",
    on_record: Callable[[RowRecord], None] | None = None,
    on_progress: Callable[[SessionProgress], None] | None = None,
    detach: bool = False,
    poll_s: float = DEFAULT_POLL_S,
    finish_online_after: float | None = None,
    retry_online: bool = False,
) -> RelabelRun:
    """Relabel ``source`` (a JSONL/Parquet file, a folder of them, or an iterable of rows in the
    input format) with ``topology`` into ``out/name``; see the module docstring for the
    policies. Resumable: call it again with the same arguments to go on."""
    if concurrency < 1:
        raise MoAInputError("--concurrency must be at least 1")
    if max_usd is not None and not max_usd > 0:
        raise MoAInputError("--max-usd must be more than 0")
    topo = _unattended(topology)
    _check_turns(turns, turn_context)
    if name is not None:
        check_name(name)  # before anything is read or written
    if engine == "batch" and not isinstance(source, str | Path):
        source = list(source)  # each pass reads the rows again
    rows, stem, files = _open_input(source, limit)
    if engine == "ray":
        require_ray()
    elif engine not in ("local", "batch"):
        raise MoAInputError(f"unknown engine {engine!r} (local, ray or batch)")
    if engine != "batch" and (detach or retry_online or finish_online_after is not None):
        raise MoAInputError(
            "--detach, --retry-online and --finish-online-after go with --engine batch"
        )
    if not poll_s > 0:
        raise MoAInputError("--poll must be more than 0 seconds")
    if finish_online_after is not None and not finish_online_after > 0:
        raise MoAInputError("--finish-online-after must be more than 0 seconds")
    check_ready(topo, probe_local=True)
    if max_usd is not None:
        unpriced = unpriced_models(topo, PriceTable(topo.prices))
        if unpriced:
            raise MoAInputError(
                f"--max-usd needs a price for {', '.join(unpriced)} "
                "(add it under prices: in the topology or in MOA_PRICES)"
            )
    out_path = Path(out)
    run_label = name if name is not None else run_name(topo, stem)
    limits = rate_limits or RateLimits()
    settings = {
        "concurrency": concurrency,
        "limit": limit,
        "max_usd": max_usd,
        "rate_limits": limits.as_dict(),
        "retry_failed": retry_failed,
        "engine": engine,
        "turns": turns,
        "turn_context": turn_context,
    }
    if engine == "batch":
        settings |= {
            "poll_s": poll_s,
            "finish_online_after": finish_online_after,
            "retry_online": retry_online,
        }
    cache_path = Path(cache) if cache is not None else out_path / CACHE
    with open_run_dir(
        out_path,
        run_label,
        topo,
        input_info=describe_input(files, str(source) if files else "python iterable"),
        settings=settings,
        engine=engine,
    ) as (run, session):
        ledger = Ledger(run.ledger_path)
        tally = SessionProgress(total=count_rows(Path(str(source))) if files else None)
        if limit and tally.total is not None:
            tally.total = min(tally.total, limit)
        try:
            before = ledger.totals()
            budget = BatchBudget(
                max_usd,
                before["cost_usd"],
                topo,
                turns=turns,
                turn_context=turn_context,
                prices=_batch_prices(topo, finish_online_after) if engine == "batch" else None,
            )
            plan = Plan(ledger, retry_failed, tally)
            try:
                backend = open_cache(str(cache_path))
            except Exception as err:
                raise MoAInputError(
                    f"cannot open the cache {str(cache_path)!r}: {error_text(err)}"
                ) from None
            gate = RateGate(limits) if limits else None
            finished = False
            try:
                with gate_requests(gate) if gate else contextlib.nullcontext(), steady_gc():
                    if engine == "ray":
                        await run_on_ray(
                            topo,
                            plan,
                            rows,
                            source=Path(str(source)) if files else None,
                            limit=limit,
                            budget=budget,
                            concurrency=concurrency,
                            cache_path=cache_path,
                            limits=limits,
                            address=ray_address,
                            workers=ray_workers,
                            on_record=on_record,
                            on_progress=on_progress,
                        )
                    elif engine == "batch":
                        waves = await run_in_waves(
                            topo,
                            folder=run.path,
                            ledger=ledger,
                            rows=lambda: _open_input(source, limit)[0],
                            tally=tally,
                            budget=budget,
                            cache=backend,
                            concurrency=concurrency,
                            retry_failed=retry_failed,
                            turns=turns,
                            turn_context=turn_context,
                            detach=detach,
                            poll_s=poll_s,
                            finish_online_after=finish_online_after,
                            retry_online=retry_online,
                            on_record=on_record,
                            on_progress=on_progress,
                        )
                        if detach and waves.in_progress + waves.submitted:
                            tally.stopped = "detached"
                    else:
                        graph = build_graph(topo, cache=backend)
                        await drive_rows(
                            lambda row: relabel_row(
                                graph, topo, row, turns=turns, turn_context=turn_context
                            ),
                            plan,
                            rows,
                            concurrency=concurrency,
                            budget=budget,
                            on_record=on_record,
                            on_progress=on_progress,
                        )
                finished = True
            except asyncio.CancelledError:
                tally.stopped = "interrupted"
                raise
            except MoAStorageError as err:
                tally.stopped = "storage"
                raise MoAStorageError(
                    f"{err}; the rows finished before it are recorded: rerun to go on"
                ) from None
            finally:
                try:
                    totals = ledger.totals()
                except MoAError:
                    if finished:
                        raise
                    totals = before  # the first error is the one to tell
                session.new_rows = tally.done + tally.failed
                session.stopped = tally.stopped
                run.manifest.counts = {
                    k: v for k, v in totals.items() if k != "cost_usd" and isinstance(v, int)
                }
                run.manifest.cost_usd = round(totals["cost_usd"], 6)
                if tally.batch is not None:
                    run.manifest.batch = tally.batch
        finally:
            ledger.close()
    return RelabelRun(run.path, run.manifest, tally, totals, cache_path)


def _batch_prices(topology: Topology, finish_online_after: float | None) -> PriceTable:
    """What the batch engine reserves: batch prices for the models with a Batch API, unless
    stragglers may be finished online (then the online price, the most they may cost)."""
    if finish_online_after is not None:
        return PriceTable(topology.prices)
    batched = frozenset(a.model for a in topology.agents() if has_batch_api(a.model))
    return BatchPrices(topology.prices, batched=batched)


def relabel(source: Input, **options: Any) -> RelabelRun:
    """:func:`arelabel` from synchronous code (on the process's shared event loop)."""
    return run_sync(lambda: arelabel(source, **options))
