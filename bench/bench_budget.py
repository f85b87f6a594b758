"""How much of `moa relabel --max-usd` is spent when the run stops, against the fake upstream.

The fake server runs in a child process and answers every model with a 35-word reply (within
the topology's max_tokens of 40) at a fixed latency, with usage counted a word a token; the
topology prices every model at $1 per 1,000 tokens. For each of 5 budgets (multiples of one
row's worst case) a fresh run of the same rows, 16 in flight, stops at the budget; the table
gives what was spent, spent / budget (goal: between 0.75 and 1, never above 1), the rows done
and left, rows/s, and the stop's own words; then 100 of the rows without a budget, for the
rate (with a small budget only a few rows' worst cases fit at once, so fewer run at a time).
The load average is printed before and after (2
shared cores: rows/s moves with the load, the ratio does not).

    python bench/bench_budget.py [--rows 400] [--latency 0.05] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_relabel import Upstream  # this folder's (run as a script)

from langgraph_moa.batch import relabel
from langgraph_moa.batch.one_row import row_worst_case_usd
from langgraph_moa.batch.row_check import Row
from langgraph_moa.batch.rows import rows_of
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.topology import load_topology

FACTORS = (4.0, 6.0, 10.0, 20.0, 40.0)  # budgets, in worst cases of one row
TOPOLOGY = (
    "name: priced\nlayers:\n"
    "  - proposers: [{name: a, model: 'openai:a', max_tokens: 40},\n"
    "                {name: b, model: 'openai:b', max_tokens: 40}]\n"
    "aggregator: {model: 'openai:agg', max_tokens: 40}\n"
    "prices:\n"
    + "".join(
        f"  'openai:{m}': {{input_per_mtok: 1000, output_per_mtok: 1000}}\n"
        for m in ("a", "b", "agg")
    )
)


def reply(body: dict[str, Any], number: int, choice: int) -> str:
    return " ".join(f"w{k}" for k in range(35))


def rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"r{k}",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Question number {k}: why is the sky blue?"},
            ],
        }
        for k in range(n)
    ]


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    items = rows(args.rows)
    print(f"load average before: {load()}")
    with tempfile.TemporaryDirectory() as tmp, Upstream(args.latency, reply):
        topo_path = Path(tmp) / "priced.yaml"
        topo_path.write_text(TOPOLOGY)
        topo = load_topology(topo_path)
        first = next(iter(rows_of(items[:1])))
        assert isinstance(first, Row)
        worst = row_worst_case_usd(topo, first, PriceTable(topo.prices))
        print(
            f"{args.rows} rows, {args.concurrency} in flight, upstream latency {args.latency}s; "
            f"one row's worst case ${worst:.4f}"
        )
        header = (
            f"{'budget $':>9} {'x worst':>7} {'spent $':>9} {'spent/budget':>12} "
            f"{'done':>5} {'left':>5} {'rows/s':>7}  stop"
        )
        print(header)
        print("-" * len(header))
        ratios = []
        for k, factor in enumerate(FACTORS):
            budget = worst * factor
            start = time.perf_counter()
            run = relabel(
                items,
                topology=topo,
                out=Path(tmp) / f"run{k}",
                max_usd=budget,
                concurrency=args.concurrency,
            )
            wall = time.perf_counter() - start
            spent = run.totals["cost_usd"]
            ratios.append(spent / budget)
            done = run.totals["done"] + run.totals["failed"]
            print(
                f"{budget:>9.4f} {factor:>7.1f} {spent:>9.4f} {spent / budget:>12.3f} "
                f"{done:>5} {args.rows - done:>5} {done / wall:>7.1f}  "
                f"{run.session.stop_reason or run.stopped or 'finished'}"
            )
        # the same rows without a budget: the rate a budget's reservations hold back from
        start = time.perf_counter()
        free = relabel(
            items[:100], topology=topo, out=Path(tmp) / "free", concurrency=args.concurrency
        )
        wall = time.perf_counter() - start
        done = free.totals["done"]
        print(f"without a budget: {done} rows at {done / wall:.1f} rows/s")
    print(
        f"spent/budget: min {min(ratios):.3f}, max {max(ratios):.3f} "
        f"(goal: >= 0.75 with rows left, never > 1)"
    )
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
