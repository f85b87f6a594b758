"""Aggregator modes on the embedded model, measured with ``moa eval``: accuracy, calls and
seconds per item, and the report's table and plot.

A thin driver over the command line: it writes one topology file per mode (the ``local`` preset,
SmolLM2-135M with 3 differently prompted proposers, combined in that mode), runs
``moa eval reasoning-gym:basic_arithmetic --topology <mode>.yaml`` for each on the same seeded
items, one greedy call of the same model (``--model local:smollm2``), then ``moa report``.

- ``synthesize``: the preset as shipped (the model writes the answer from the 3 proposals);
- ``vote``: the majority number of the same 3 proposals (no aggregator call; ties and unread
  answers take the first proposal);
- ``select``: the model names the most consistent proposal (Universal Self-Consistency);
- ``early-stop``: two layers of the 3 proposers; when >= 60% of layer 1 give the same number,
  layer 2 is skipped; the aggregator synthesizes.

Every mode sees the same layer-1 proposals of an item: all evals share one call cache
(``--calls-cache``) and the topologies set ``cache_sampled``, so the proposals are drawn once (by
``synthesize``, which runs first) and the other modes pay only for their own calls. The
``moa eval`` summaries therefore count only the calls each eval really sent; this script adds the
shared proposals back (calls and seconds, from the ``synthesize`` run's records) so each row says
what the mode costs on its own. Items: sums and differences of two one-digit numbers, no
parentheses or negative operands ("Calculate 7 - 3."): reasoning-gym's default level (up to 6
terms of up to 4 digits) is beyond a 135M model in every mode, which compares nothing.

    python bench/bench_modes.py [--items 150] [--seed 42] [--out bench/results/modes-runs]
                                [--modes synthesize,vote,...] [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from langgraph_moa import Topology, load_preset

MODES = ["synthesize", "vote", "select", "early-stop"]
LEVEL: dict[str, Any] = {
    "min_terms": 2,
    "max_terms": 2,
    "min_digits": 1,
    "max_digits": 1,
    "operators": ["+", "-"],
    "allow_parentheses": False,  # with parentheses allowed, reasoning-gym draws negative terms
    "allow_negation": False,
}
PROPOSER_TOKENS = 96  # arithmetic answers are short; the CPU is shared
AGGREGATOR_TOKENS = 96


def topologies() -> dict[str, Topology]:
    base = load_preset("local").model_dump(exclude_none=True)
    base["cache_sampled"] = True
    base["timeout_s"] = 1800.0  # a shared, loaded machine: slow is not failed here
    for agent in base["layers"][0]["proposers"]:
        agent.pop("timeout_s", None)  # filled in from the preset's default: take the new one
        agent["max_tokens"] = PROPOSER_TOKENS
    base["aggregator"].pop("timeout_s", None)
    base["aggregator"]["max_tokens"] = AGGREGATOR_TOKENS
    layer = base["layers"][0]
    aggregator = base["aggregator"]

    def variant(name: str, **changes: Any) -> Topology:
        return Topology.model_validate({**base, "name": f"local-{name}", **changes})

    select = {**aggregator, "mode": "select", "temperature": 0.0, "max_tokens": 8}
    return {
        "synthesize": variant("synthesize"),
        "vote": variant(
            "vote",
            aggregator={"mode": "vote", "extract": "number", "on_tie": "first"}
            | {"on_no_answer": "first", "model": aggregator["model"]},
        ),
        "select": variant("select", aggregator=select | {"on_no_answer": "first"}),
        "early-stop": variant(
            "early-stop",
            layers=[
                {**layer, "early_stop": {"agreement": 0.6, "extract": "number"}},
                {"proposers": layer["proposers"]},
            ],
        ),
    }


def wilson(hits: int, n: int, z: float = 1.645) -> tuple[float, float]:
    """A 90% Wilson interval (the eval's bootstrap is 90% too, and gives 0-0 at 0 hits)."""
    if n == 0:
        return 0.0, 0.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def moa(*args: str) -> None:
    command = [sys.executable, "-m", "langgraph_moa.cli", *args]
    print("$ moa " + " ".join(args[:2]) + " ...", flush=True)
    subprocess.run(command, check=True)


def records(folder: Path) -> dict[str, dict[str, Any]]:
    """item id -> its relabel record (calls sent and from the cache, per-call records)."""
    found: dict[str, dict[str, Any]] = {}
    for db in folder.glob("candidate-turn1/ledger.sqlite"):
        with sqlite3.connect(db) as conn:
            for (text,) in conn.execute("SELECT record FROM rows WHERE status = 'done'"):
                record = json.loads(text)
                found[str(record["id"])] = record
    return found


def proposals_seconds(record: dict[str, Any]) -> float:
    """The seconds a synthesize row spent before its aggregator call: its layer-1 proposals."""
    aggregator = (record.get("result") or {}).get("aggregator") or {}
    return max(0.0, record["latency_s"] - (aggregator.get("latency_s") or 0.0))


def summarize(out: Path, modes: list[str]) -> dict[str, Any]:
    """Per mode, on the items its eval finished (always the first ones: the evals grow together):
    accuracy with a 90% interval, and calls and seconds per item as the mode costs on its own
    (the shared proposals counted in)."""
    scored = {}
    for mode in ["single", *modes]:
        path = out / mode / "items.jsonl"
        if path.is_file():
            with path.open(encoding="utf-8") as f:
                scored[mode] = {r["id"]: r for r in map(json.loads, f)}
    proposals = records(out / "synthesize")
    summary: dict[str, Any] = {}
    for mode, rows in scored.items():
        own = records(out / mode)
        hits = calls = seconds = 0.0
        timed = 0
        done = sorted(set(rows) & (set(proposals) if mode != "single" else set(rows)))
        for ident in done:
            hits += rows[ident]["score"] == 1.0
            if mode == "single":  # one call; its time where it was not read from the cache
                calls += 1
                if rows[ident]["generation"]["calls"]:
                    seconds += rows[ident]["generation"]["latency_s"] or 0.0
                    timed += 1
                continue
            record = own[ident]
            calls += record["calls"] + record["cached_calls"]
            seconds += record["latency_s"]
            if mode != "synthesize":  # its layer-1 proposals came from synthesize's run
                seconds += proposals_seconds(proposals[ident])
        n = len(done)
        low, high = wilson(int(hits), n)
        summary[mode] = {
            "accuracy": hits / n if n else 0.0,
            "interval90": [round(low, 3), round(high, 3)],
            "correct": int(hits),
            "items": n,
            "calls_per_item": calls / max(n, 1),
            # None: every single call was read back from the cache (a resumed eval)
            "seconds_per_item": (
                seconds / max(timed if mode == "single" else n, 1)
                if mode != "single" or timed
                else None
            ),
        }
    return summary


def plot(summary: dict[str, Any], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(summary)
    acc = [100 * summary[m]["accuracy"] for m in modes]
    low = [acc[i] - 100 * summary[m]["interval90"][0] for i, m in enumerate(modes)]
    high = [100 * summary[m]["interval90"][1] - acc[i] for i, m in enumerate(modes)]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar(modes, acc, yerr=[low, high], capsize=4, color="#93c5fd", edgecolor="#1d4ed8")
    for i, m in enumerate(modes):
        s = summary[m]
        secs = s["seconds_per_item"]
        took = "cached" if secs is None else f"{secs:.1f} s"
        ax.text(
            i,
            1,
            f"{s['calls_per_item']:.1f} calls\n{took}",
            ha="center",
            fontsize=8,
        )
    ax.set_ylabel("accuracy, % (90% interval)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=150)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default="bench/results/modes-runs")
    parser.add_argument("--modes", default=",".join(MODES), help=f"of {', '.join(MODES)}")
    parser.add_argument("--concurrency", default="2")
    parser.add_argument(
        "--step", type=int, default=30, help="grow every eval by this many items per round"
    )
    parser.add_argument("--json", help="write the summary here")
    parser.add_argument("--plot", help="write a bar chart (PNG) of the modes here")
    parser.add_argument(
        "--no-run", action="store_true", help="only summarize the evals already in --out"
    )
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m in MODES]
    if "synthesize" not in modes:
        modes.insert(0, "synthesize")  # it draws the proposals the others reuse
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = str(out / "calls.sqlite")
    config = json.dumps(LEVEL | {"seed": args.seed})
    common = ["--task-config", config, "--out", str(out)]
    common += ["--concurrency", args.concurrency, "--calls-cache", cache]
    bench = "reasoning-gym:basic_arithmetic"
    start = time.perf_counter()
    for mode in modes:
        path = out / f"{mode}.yaml"
        data = topologies()[mode].model_dump(mode="json", exclude_none=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    # Every eval grows by --step items a round (an eval resumes: done items are read back), so
    # an interrupted run has all modes on the same first items.
    limit = 0
    while limit < args.items and not args.no_run:
        limit = min(args.items, limit + args.step)
        size = ["--limit", str(limit)]
        moa("eval", bench, "--model", "local:smollm2", "--name", "single", *size, *common)
        for mode in modes:
            topology = str(out / f"{mode}.yaml")
            moa("eval", bench, "--topology", topology, "--name", mode, *size, *common)
        moa("report", str(out), "-o", str(out / "report.md"))
        print(f"{limit} items done, {time.perf_counter() - start:.0f} s", flush=True)
    summary = summarize(out, modes)
    n = max((s["items"] for s in summary.values()), default=0)
    print(f"\n{n} basic_arithmetic items {LEVEL}, seed {args.seed}, local preset")
    print(f"{'mode':<12}{'accuracy':>10}{'90% interval':>18}{'calls/item':>12}{'s/item':>9}")
    for mode, s in summary.items():
        low, high = s["interval90"]
        print(
            f"{mode:<12}{100 * s['accuracy']:>9.1f}%{f'{100 * low:.1f}-{100 * high:.1f}%':>18}"
            f"{s['calls_per_item']:>12.2f}{s['seconds_per_item'] or float('nan'):>9.2f}"
        )
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        report = {"items": n, "seed": args.seed, "level": LEVEL, "modes": summary}
        Path(args.json).write_text(json.dumps(report, indent=2), encoding="utf-8")
    if args.plot:
        title = f"{n} basic_arithmetic items (seed {args.seed}), local preset"
        plot(summary, args.plot, title)


if __name__ == "__main__":
    main()
