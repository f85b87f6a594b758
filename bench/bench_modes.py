"""Aggregator modes on the embedded model: accuracy, calls and seconds per item.

Seeded reasoning-gym ``basic_arithmetic`` items (a sum or difference of two digits) answered by the
``local`` preset (SmolLM2-135M, 3 differently prompted proposers) combined in several ways:

- ``single``: the first proposer's answer alone (one call);
- ``synthesize``: the preset as shipped (the model writes the answer from the 3 proposals);
- ``vote``: the majority number of the same 3 proposals (no aggregator call; ties and unread
  answers take the first proposal);
- ``select``: the model names the most consistent proposal (Universal Self-Consistency);
- ``early-stop``: two layers of the 3 proposers; when >= 60% of layer 1 give the same number,
  layer 2 is skipped; the aggregator synthesizes.

Every mode sees the same layer-1 proposals for an item: they are drawn once and then served from
the proposal cache (``cache_sampled``), so the modes differ only in how they combine them.
Seconds per item add the proposals' own time back to the runs that got them from the cache.
Every answer is scored by reading its last number (the ``number`` extractor) and comparing it with
reasoning-gym's scorer. Accuracy comes with a 95% Wilson interval. It is a 135M model: the
absolute figures are low, and only the differences between modes on the same proposals say
anything.

    python bench/bench_modes.py [--items 60] [--seed 42] [--modes single,vote,...]
                                [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from typing import Any

from langchain_core.messages import HumanMessage

from langgraph_moa import MoARunError, Topology, build_graph, load_preset
from langgraph_moa.nodes.extract import extract

MODES = ["single", "synthesize", "vote", "select", "early-stop"]
# Two one-digit terms added or subtracted, no negative operands ("Calculate 7 - 3."): harder
# items (reasoning-gym's default is up to 6 terms of up to 4 digits, negation and division) are
# beyond a 135M model in every mode, which compares nothing.
LEVEL = {
    "min_terms": 2,
    "max_terms": 2,
    "min_digits": 1,
    "max_digits": 1,
    "operators": ("+", "-"),
    "allow_negation": False,
}


def topologies() -> dict[str, Topology]:
    base = load_preset("local").model_dump(exclude_none=True)
    base["cache_sampled"] = True
    base["timeout_s"] = 1800.0  # a shared, loaded machine: slow is not failed here
    for agent in [*base["layers"][0]["proposers"], base["aggregator"]]:
        agent.pop("timeout_s", None)  # filled in from the preset's default: take the new one
    layer = base["layers"][0]
    aggregator = base["aggregator"]

    def variant(**changes: Any) -> Topology:
        return Topology.model_validate({**base, **changes})

    select = {**aggregator, "mode": "select", "temperature": 0.0, "max_tokens": 8}
    return {
        "synthesize": variant(),
        "vote": variant(
            aggregator={"mode": "vote", "extract": "number", "on_tie": "first"}
            | {"on_no_answer": "first", "model": aggregator["model"]}
        ),
        "select": variant(aggregator=select | {"on_no_answer": "first"}),
        "early-stop": variant(
            layers=[
                {**layer, "early_stop": {"agreement": 0.6, "extract": "number"}},
                {"proposers": layer["proposers"]},
            ]
        ),
    }


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def requests(state: dict[str, Any]) -> int:
    """Requests the run would have sent with nothing cached."""
    return sum(u["calls"] + u["cached_calls"] for u in state["usage"]["by_model"].values())


async def run(
    items: int, seed: int, modes: list[str], partial: str | None = None
) -> dict[str, Any]:
    import reasoning_gym  # a dev/bench dependency, preinstalled here

    dataset = reasoning_gym.create_dataset("basic_arithmetic", size=items, seed=seed, **LEVEL)
    # synthesize runs first: it draws the proposals the other modes then get from the cache
    graphs = {
        name: build_graph(t)
        for name, t in topologies().items()
        if name == "synthesize" or name in modes
    }
    rows: dict[str, list[tuple[bool, int, float]]] = {m: [] for m in MODES if m in modes}
    for k, entry in enumerate(dataset):
        question = entry["question"]

        def correct(text: str, entry: dict[str, Any] = entry) -> bool:
            found = extract(text, "number")
            return found is not None and dataset.score_answer(found, entry) >= 1.0

        proposals_s = 0.0
        for name, graph in graphs.items():
            start = time.perf_counter()
            try:
                state = await graph.ainvoke({"messages": [HumanMessage(question)]})
            except MoARunError as err:  # counted as a wrong answer, and said
                print(f"item {k + 1} {name}: the run failed: {err}", flush=True)
                if name in rows:
                    rows[name].append((False, 0, time.perf_counter() - start))
                if name == "synthesize" and "single" in rows:
                    rows["single"].append((False, 0, 0.0))
                continue
            wall = time.perf_counter() - start
            if name == "synthesize":  # the first run: its proposals were really made
                aggregator_s = state["aggregator"]["latency_s"]
                proposals_s = wall - aggregator_s
                first = state["layers"][0][0]
                if "single" in rows:
                    rows["single"].append((correct(first["text"] or ""), 1, first["latency_s"]))
            else:
                wall += proposals_s
            if name in rows:
                answer = str(state["messages"][-1].content)
                rows[name].append((correct(answer), requests(state), wall))
        done = {m: sum(r[0] for r in rows[m]) for m in rows}
        print(f"item {k + 1}/{items}: correct so far {done}", flush=True)
        if partial:  # what has been measured so far survives an interrupted run
            with open(partial, "w") as f:
                json.dump({"items": k + 1, "seed": seed, "modes": summarize(rows)}, f, indent=2)
    return summarize(rows)


def summarize(rows: dict[str, list[tuple[bool, int, float]]]) -> dict[str, Any]:
    summary = {}
    for mode in rows:
        items = len(rows[mode])
        hits = sum(r[0] for r in rows[mode])
        low, high = wilson(hits, items)
        summary[mode] = {
            "accuracy": hits / items if items else 0.0,
            "interval95": [round(low, 3), round(high, 3)],
            "correct": hits,
            "items": items,
            "calls_per_item": sum(r[1] for r in rows[mode]) / max(items, 1),
            "seconds_per_item": sum(r[2] for r in rows[mode]) / max(items, 1),
        }
    return summary


def plot(summary: dict[str, Any], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(summary)
    acc = [100 * summary[m]["accuracy"] for m in modes]
    low = [acc[i] - 100 * summary[m]["interval95"][0] for i, m in enumerate(modes)]
    high = [100 * summary[m]["interval95"][1] - acc[i] for i, m in enumerate(modes)]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar(modes, acc, yerr=[low, high], capsize=4, color="#93c5fd", edgecolor="#1d4ed8")
    for i, m in enumerate(modes):
        ax.text(i, 1, f"{summary[m]['calls_per_item']:.1f} calls", ha="center", fontsize=8)
    ax.set_ylabel("accuracy, % (95% interval)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}"
    )
    parser.add_argument("--json", help="write the summary here (after every item, too)")
    parser.add_argument("--plot", help="write a bar chart (PNG) here")
    args = parser.parse_args()
    start = time.perf_counter()
    modes = [m for m in args.modes.split(",") if m in MODES]
    summary = asyncio.run(run(args.items, args.seed, modes, args.json))
    print(f"\n{args.items} basic_arithmetic items {LEVEL}, seed {args.seed}, local preset")
    print(f"{'mode':<12}{'accuracy':>10}{'95% interval':>18}{'calls/item':>12}{'s/item':>9}")
    for mode, s in summary.items():
        low, high = s["interval95"]
        print(
            f"{mode:<12}{100 * s['accuracy']:>9.1f}%{f'{100 * low:.1f}-{100 * high:.1f}%':>18}"
            f"{s['calls_per_item']:>12.2f}{s['seconds_per_item']:>9.2f}"
        )
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"items": args.items, "seed": args.seed, "modes": summary}, f, indent=2)
    if args.plot:
        title = f"{args.items} basic_arithmetic items (seed {args.seed}), local preset"
        plot(summary, args.plot, title)


if __name__ == "__main__":
    main()
