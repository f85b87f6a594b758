"""``engine="ray"``: a relabel run on Ray Data. Ray Data reads the input, actors run the rows
through the MoA graph with asyncio inside, and the driver writes each block of results to the
run's ledger.

The pipeline (the stages are in :mod:`langgraph_moa.batch.ray_stages`):

- **read**: one streaming read task on the driver's node reads the input with the project's own
  parser and sorts it against the ledger as the in-process engine does (same row ids, same
  invalid rows with file, line and reason, same skips for resume and ``retry_failed``, the same
  ``limit``), in chunks of a few rows;
- **map**: ``map_batches`` on a fixed pool of ``workers`` actors (default: one per CPU of the
  cluster), each running a chunk's rows at once with
  :func:`~langgraph_moa.batch.one_row.relabel_row` (the in-process engine's function) on its
  asyncio loop, with up to ``concurrency / workers`` rows in flight, an even share of the rate
  limits and the run's call cache file (on several machines it must be on storage they share);
- **write**: the driver, the ledger's one writer, takes each block as it comes and writes its
  records in one transaction; the ledger's primary key keeps a row from being recorded twice.

Resume works by row id as before; a chunk whose rows finished but whose block was not yet
written when the run stopped runs again, with each of its calls served from the cache.

Honest differences from the in-process engine: ``concurrency`` is rounded up to a multiple of
the workers; rows start in the order actors take chunks, not strictly in input order; with
``max_usd`` every row start asks the budget actor first (a round trip of about a millisecond),
which follows the in-process rule (wait for rows in flight to settle before stopping).
Rows fed from Python (not a file) are first spooled to a file in the run directory, which the
reader streams, and removed after.

Actors read provider keys from their own environment (a local Ray started here inherits the
driver's; on a cluster, the workers' own); keys are never passed through Ray. ``address``
joins a running cluster; otherwise a local one is started for the run and stopped after it.

Two things Ray prints on every run are kept off the run's stderr, each precisely, never by
lowering a log level (which would hide Ray's real errors too): the notice that a new local Ray
uses token authentication (Ray's default; a Python log record of Ray's, dropped by a filter on
that logger that lets the warning that authentication is *off* through); and, on a local Ray,
the error-level line the driver's core worker writes once about actors that may restart with
arguments in the object store (Ray Data hands every pool actor its settings by reference:
ray-project/ray#57733), by not having Ray restart those actors (``max_restarts=0``, while the
installed Ray Data still takes it). On one machine a restart brings little (an actor dies with
its process or the machine, not with a lost node): an actor that dies ends the run with its
error, the rows finished are kept, and a rerun goes on. On a cluster (``address``) Ray Data's
restarts stay on, and with them that line.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from langgraph_moa.batch.feeding import BatchBudget, Plan, SessionProgress
from langgraph_moa.batch.ledger import RowRecord
from langgraph_moa.batch.limits import RateLimits
from langgraph_moa.batch.row_check import InvalidRow, Row
from langgraph_moa.errors import MoAError
from langgraph_moa.extras import require_extra
from langgraph_moa.spec.topology import Topology

_MAX_CHUNK = 16  # rows per block, at most
_SPOOL = "ray-input.pickle"


def require_ray() -> None:
    require_extra("ray", "--engine ray")


def _split(limits: RateLimits, workers: int) -> dict[str, Any]:
    return {
        "rpm": {k: v / workers for k, v in limits.rpm.items()},
        "tpm": {k: v / workers for k, v in limits.tpm.items()},
    }


class _AuthDefaultNotice(logging.Filter):
    """Drops Ray's notice that a new local cluster uses token authentication (its default)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
    _AuthDefaultNotice()
)


def _takes_remote_args(dataset_class: Any) -> bool:
    """Whether this Ray Data's ``map_batches`` still takes Ray's remote arguments."""
    parameters = inspect.signature(dataset_class.map_batches).parameters.values()
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _moa_error(err: BaseException) -> MoAError | None:
    """The project's own error under Ray's wrappers (a bad Parquet file, a missing key...)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MoAError) and type(current).__module__.startswith("langgraph_moa"):
            return current
        current = getattr(current, "cause", None) or current.__cause__
    return None


@contextlib.contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """Ray Data's own progress lines and advice (per-worker memory requests, fewer blocks than
    actors, progress bars off) would mix with the run's progress on stderr; its errors stay."""
    logger = logging.getLogger("ray.data")
    level = logger.level
    logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
        try:
            yield
        finally:
            logger.setLevel(level)


async def run_on_ray(
    topology: Topology,
    plan: Plan,
    rows: Iterator[Row | InvalidRow],
    *,
    source: Path | None,
    limit: int | None,
    budget: BatchBudget,
    concurrency: int,
    cache_path: Path,
    limits: RateLimits,
    address: str | None,
    workers: int | None,
    on_record: Callable[[RowRecord], None] | None,
    on_progress: Callable[[SessionProgress], None] | None,
) -> None:
    """Run the plan on Ray: ``source`` is the input file or folder (read by Ray Data), or None
    for rows fed from Python (``rows``, already limited), which are spooled to a file first."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from langgraph_moa.batch import ray_stages  # needs the [ray] extra, checked before

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started_here = not ray.is_initialized()
    # a local Ray of the run's own, not a cluster named here or by RAY_ADDRESS
    local = started_here and address is None and not os.environ.get("RAY_ADDRESS")
    if started_here:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    spooled = plan.ledger.path.parent / _SPOOL
    stop = threading.Event()
    keeper: Any = None
    try:
        count = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        count = max(1, min(count, concurrency))
        slots = math.ceil(concurrency / count)
        chunk_rows = max(1, min(_MAX_CHUNK, math.ceil(slots / 4)))
        if budget.max_usd is not None:
            keeper_class: Any = ray.remote(num_cpus=0)(ray_stages.BudgetKeeper)
            keeper = keeper_class.remote(budget.max_usd, budget.spent)
        if source is None:
            await asyncio.to_thread(ray_stages.spool, rows, spooled)
        reading = ray_stages.Source(
            ledger=str(plan.ledger.path),
            retry_failed=plan.retry_failed,
            chunk_rows=chunk_rows,
            path=str(source) if source is not None else None,
            spool=None if source is not None else str(spooled),
            limit=limit,
            keeper=keeper,
        )
        context = DataContext.get_current()
        saved = (
            context.target_max_block_size,
            context.enable_progress_bars,
            context.print_on_execution_start,
        )
        # one chunk per block: a block is emitted as soon as it holds anything
        context.target_max_block_size = 1
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        # no restarts on a local Ray (see the module docstring), where this Ray still takes the
        # setting (Ray Data's ``**ray_remote_args``, deprecated since Ray 2.60)
        no_restarts: dict[str, Any] = (
            {"max_restarts": 0} if local and _takes_remote_args(ray.data.Dataset) else {}
        )
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
                dataset = ray.data.read_datasource(
                    ray_stages.RowsDatasource(reading),
                    override_num_blocks=1,
                    num_cpus=0.01,
                ).map_batches(
                    ray_stages.RowWorker,
                    fn_constructor_args=(
                        topology.model_dump(mode="json"),
                        str(cache_path),
                        _split(limits, count),
                        slots,
                        keeper,
                        budget.turns,
                        budget.turn_context,
                    ),
                    batch_size=1,
                    batch_format="pyarrow",
                    zero_copy_batch=True,
                    compute=ActorPoolStrategy(
                        size=count,
                        max_tasks_in_flight_per_actor=math.ceil(slots / chunk_rows) + 1,
                        max_concurrent_calls_per_actor=math.ceil(slots / chunk_rows) + 1,
                    ),
                    num_cpus=0.01,
                    **no_restarts,
                )
        finally:
            (
                context.target_max_block_size,
                context.enable_progress_bars,
                context.print_on_execution_start,
            ) = saved
        loop = asyncio.get_running_loop()

        def notify(records: list[RowRecord]) -> None:
            if on_record is not None:
                for record in records:
                    on_record(record)
            if on_progress is not None:
                on_progress(plan.tally)

        def write_blocks() -> None:
            """The ledger's one writer: each block's records in one transaction."""
            tally = plan.tally
            with _quiet_ray_data():
                for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                    chunk = ray_stages.unpack(block)
                    if chunk.records:  # as written: one that cannot be stored is a failure
                        chunk.records = plan.ledger.write(chunk.records)
                    if chunk.invalid:
                        plan.ledger.write_invalid(chunk.invalid)
                    for record in chunk.records:
                        tally.add(record)
                    tally.invalid += len(chunk.invalid)
                    tally.skipped += chunk.skipped
                    tally.seen += len(chunk.records) + len(chunk.invalid) + chunk.skipped
                    if chunk.refused:
                        tally.stopped = "budget"
                    loop.call_soon_threadsafe(notify, chunk.records)
                    if stop.is_set():
                        return

        try:
            await asyncio.to_thread(write_blocks)
        except asyncio.CancelledError:
            stop.set()
            raise
        except Exception as err:
            found = _moa_error(err)
            if found is None:
                raise
            raise found from None
        if keeper is not None and await keeper.closed.remote():
            plan.tally.stopped = "budget"
            plan.tally.stop_reason = await keeper.stop_reason.remote()
    finally:
        spooled.unlink(missing_ok=True)
        if keeper is not None:
            ray.kill(keeper)
        if started_here:
            ray.shutdown()
