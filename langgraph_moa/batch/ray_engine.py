"""``engine="ray"``: the rows of a relabel run on Ray actors, each running the MoA graph with
asyncio inside.

The driver reads and checks the input, skips what the ledger holds and keeps the budget, exactly
as the in-process engine does (:func:`langgraph_moa.batch.core.drive_rows`); only the row itself
runs elsewhere: on one of ``workers`` async actors (default: one per CPU of the cluster), each
taking up to ``concurrency / workers`` rows at once and running them with
:func:`~langgraph_moa.batch.core.relabel_row`, the same function the in-process engine calls.
Records come back to the driver, which writes them to the ledger, so resume works by row id as
before. Actors share the run's call cache file (on a cluster of several machines it must be on
storage they all see); rate limits are split evenly between actors.

Actors read provider keys from their own environment (a local Ray started here inherits the
driver's); keys are never passed through Ray. ``address`` joins a running cluster; otherwise a
local one is started for the run and stopped after it.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from langgraph_moa.batch.core import Budget, Plan, Tally, drive_rows, relabel_row
from langgraph_moa.batch.ledger import RowRecord
from langgraph_moa.batch.limits import RateGate, RateLimits
from langgraph_moa.batch.rows import InvalidRow, Row
from langgraph_moa.extras import require_extra
from langgraph_moa.graphs.builder import build_graph
from langgraph_moa.llm.openai_client import gate_requests
from langgraph_moa.nodes.cache import open_cache
from langgraph_moa.spec.topology import Topology, parse_topology

__all__ = ["RowWorker", "require_ray", "run_on_ray"]


def require_ray() -> None:
    require_extra("ray", "--engine ray")


class RowWorker:
    """A Ray actor's state: the graph, the cache and the rate gate, made once per actor."""

    def __init__(self, topology: dict[str, Any], cache_path: str, limits: dict[str, Any]) -> None:
        self.topology = parse_topology(topology, source="the run's topology")
        self.graph = build_graph(self.topology, cache=open_cache(cache_path))
        rates = RateLimits(**limits)
        self.gate = RateGate(rates) if rates else None

    async def run(self, row: dict[str, Any]) -> RowRecord:
        task = relabel_row(self.graph, self.topology, Row(**row))
        if self.gate is None:
            return await task
        with gate_requests(self.gate):
            return await task


def _split(limits: RateLimits, workers: int) -> dict[str, Any]:
    return {
        "rpm": {k: v / workers for k, v in limits.rpm.items()},
        "tpm": {k: v / workers for k, v in limits.tpm.items()},
    }


async def run_on_ray(
    topology: Topology,
    plan: Plan,
    rows: Iterator[Row | InvalidRow],
    *,
    budget: Budget,
    concurrency: int,
    cache_path: Path,
    limits: RateLimits,
    address: str | None,
    workers: int | None,
    on_record: Callable[[RowRecord], None] | None,
    on_progress: Callable[[Tally], None] | None,
) -> None:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    actors: list[Any] = []
    try:
        count = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        per_actor = max(1, math.ceil(concurrency / count))
        options: Any = {"num_cpus": 0.01, "max_concurrency": per_actor}
        actor_class: Any = ray.remote(**options)(RowWorker)
        actors += [
            actor_class.remote(
                topology.model_dump(mode="json"), str(cache_path), _split(limits, count)
            )
            for _ in range(count)
        ]
        turn = 0

        async def run_one(row: Row) -> RowRecord:
            nonlocal turn
            actor = actors[turn % len(actors)]
            turn += 1
            ref = actor.run.remote(asdict(row))
            try:
                record: RowRecord = await ref
            except asyncio.CancelledError:
                ray.cancel(ref)
                raise
            return record

        await drive_rows(
            run_one,
            plan,
            rows,
            concurrency=concurrency,
            budget=budget,
            on_record=on_record,
            on_progress=on_progress,
        )
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            ray.shutdown()
