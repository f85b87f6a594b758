"""What evaluation adds on top of generation: CPU time of judging and scoring per 100 items, and
an eval's throughput against the relabel runner's on the same topology.

A pairwise eval of N items (two judge games each, positions swapped) against the fake
OpenAI-compatible server, the judge answering at once: the CPU time of the judge's calls (the
client path, the cache) and of scoring (verdicts, summary with 1000 bootstrap resamples of the
win rate, the weighted score and the length-controlled win rate, which refits its model on every
resample), per 100 items; then the same eval again, read back from the cache (rescoring). Then
the same eval judged by a topology (a panel of two judges and a settling call: three calls per
judgment), its judging CPU against one judge's measured in the same run, and its rescoring.

Throughput: N gold-answer items through a 1 x 3 + aggregator topology on the fake server (every
call 200 ms), 16 in flight, with ``arelabel`` (the relabel runner alone) and with ``run_eval``
(the same runner, then exact-match scoring and the summary), alternately, twice each, the best
of each kept (the machine is shared). Goal: eval / relabel >= 0.95 (scoring is not the
bottleneck).

    python bench/bench_eval.py [--items 200] [--rows 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from langgraph.cache.sqlite import SqliteCache

from langgraph_moa.batch.runner import arelabel
from langgraph_moa.evaluation.datasets import Benchmark, Item, Scoring
from langgraph_moa.evaluation.driver import Side, TopologyGenerator, run_eval
from langgraph_moa.evaluation.judge import Judge, judge_agent
from langgraph_moa.evaluation.score import score_items
from langgraph_moa.evaluation.summary import Generation, summarise
from langgraph_moa.spec.agent import Agent
from langgraph_moa.spec.topology import Topology
from langgraph_moa.testing.fake_openai import FakeOpenAI

CALL_S = 0.2
IN_FLIGHT = 16


def verdict(body: dict[str, Any], number: int, choice: int) -> str:
    return "A thorough comparison would go here. [[A>B]]" if number % 3 else "Close. [[A=B]]"


def panel() -> Topology:
    """A topology judge: two judges, the first one settles (every call at temperature 0)."""
    judge = {"model": "openai:judge", "temperature": 0, "max_tokens": 1024}
    return Topology.model_validate(
        {
            "name": "panel",
            "layers": [{"proposers": [judge, judge | {"model": "openai:judge2"}]}],
            "aggregator": judge,
        }
    )


async def judged(
    n: int, cache: Path, by: Agent | Topology | None = None
) -> tuple[float, float, float]:
    """(wall s, judging CPU s, scoring CPU s) for one eval of ``n`` pairwise items, judged by
    ``by`` (default: one model)."""
    items = [
        Item(f"i{k}", ({"role": "user", "content": f"question {k}"},), baseline="b " * (k % 40))
        for k in range(n)
    ]
    gens = {i.id: Generation(["an answer " * (1 + int(i.id[1:]) % 30)]) for i in items}
    judge = Judge(by or judge_agent("openai:judge"), SqliteCache(path=str(cache)), concurrency=16)
    wall, cpu = time.perf_counter(), time.process_time()
    results = await score_items(Scoring.pairwise, items, gens, judge=judge)
    judging = time.process_time() - cpu
    cpu = time.process_time()
    summarise("alpaca-eval", Scoring.pairwise, results, resamples=1000)
    return time.perf_counter() - wall, judging, time.process_time() - cpu


def topology() -> Topology:
    return Topology.model_validate(
        {
            "name": "bench",
            "layers": [{"proposers": [{"model": f"openai:p{k}"} for k in range(3)]}],
            "aggregator": {"model": "openai:agg"},
        }
    )


async def throughput(server: FakeOpenAI, rows: int, folder: Path) -> None:
    for model in ("p0", "p1", "p2", "agg"):
        server.behave(model, latency_s=CALL_S, reply=lambda body, n, c: f"#### {n}")
    items = [
        Item(f"r{k}", ({"role": "user", "content": f"what is {k} + 0?"},), gold=str(k))
        for k in range(rows)
    ]
    bench = Benchmark("bench", "synthetic", Scoring.exact, items)
    relabel_rates: list[float] = []
    eval_rates: list[float] = []

    async def relabel_once(attempt: int) -> None:
        start = time.perf_counter()
        await arelabel(
            [{"id": i.id, "messages": list(i.messages)} for i in items],
            topology=topology(),
            out=folder / f"relabel-{attempt}",
            concurrency=IN_FLIGHT,
        )
        relabel_rates.append(rows / (time.perf_counter() - start))

    async def eval_once(attempt: int) -> dict[str, Any]:
        side = Side("bench", "candidate", TopologyGenerator(topology(), concurrency=IN_FLIGHT))
        start = time.perf_counter()
        summary = await run_eval(bench, side, folder=folder / f"eval-{attempt}")
        eval_rates.append(rows / (time.perf_counter() - start))
        return summary

    # twice each, in both orders (the machine is shared and warms up); the best of each kept
    await relabel_once(0)
    summary = await eval_once(0)
    summary = await eval_once(1)
    await relabel_once(1)
    scoring_cpu = summary["scoring_cpu_s"]
    after_generation = summary["wall_s"] - summary["generation_s"]
    relabel_rate, eval_rate = max(relabel_rates), max(eval_rates)
    ideal = IN_FLIGHT / (2 * CALL_S)
    print(
        f"{rows} rows, 1x3 + aggregator at {CALL_S * 1000:.0f} ms per call, {IN_FLIGHT} in flight "
        f"(ideal {ideal:.0f} rows/s)"
    )
    print(
        f"relabel runner: {relabel_rate:.2f} rows/s; eval: {eval_rate:.2f} items/s "
        f"(scoring CPU {scoring_cpu * 1000:.0f} ms, wall after generation "
        f"{after_generation * 1000:.0f} ms)"
    )
    print(f"eval / relabel throughput: {eval_rate / relabel_rate:.3f} (goal >= 0.95)")
    # what the eval adds after its generation (the same runner), against the runner's own wall
    # time: the ratio without the run-to-run variation of a shared machine
    runner_s = rows / relabel_rate
    print(
        f"eval's own share: {after_generation * 1000:.0f} ms after {runner_s:.1f} s of generation "
        f"-> {runner_s / (runner_s + after_generation):.3f}"
    )


async def main(n: int, rows: int) -> None:
    with FakeOpenAI() as server, tempfile.TemporaryDirectory() as folder:
        os.environ["OPENAI_BASE_URL"] = server.base_url
        os.environ["OPENAI_API_KEY"] = "sk-bench"
        server.behave("judge", reply=verdict)
        cache = Path(folder) / "judgments.sqlite"
        await judged(10, Path(folder) / "warm.sqlite")
        server.reset()
        wall, judging, scoring = await judged(n, cache)
        calls = len(server.requests_for("judge"))
        per = 100 / n
        print(f"{n} pairwise items, {calls} judge calls, wall {wall:.2f}s")
        print(
            f"judging CPU per 100 items: {judging * per * 1000:.0f} ms "
            f"({judging / max(calls, 1) * 1000:.2f} ms per judge call)"
        )
        print(
            f"scoring CPU per 100 items (3 metrics x 1000 bootstrap resamples): "
            f"{scoring * per * 1000:.0f} ms"
        )
        server.reset()
        wall2, judging2, scoring2 = await judged(n, cache)
        print(
            f"rescoring from the cache: {len(server.requests)} calls, wall {wall2:.2f}s, "
            f"CPU per 100 items {(judging2 + scoring2) * per * 1000:.0f} ms"
        )
        # the same eval judged by a panel (a topology: 3 calls per judgment), in the same run
        server.behave("judge2", reply=verdict)
        await judged(10, Path(folder) / "warm-panel.sqlite", panel())
        server.reset()
        panel_cache = Path(folder) / "panel.sqlite"
        wall3, judging3, _ = await judged(n, panel_cache, panel())
        calls3 = len(server.requests)
        print(
            f"judged by a panel (2 judges + 1 settling): {calls3} calls, wall {wall3:.2f}s, "
            f"judging CPU per 100 items {judging3 * per * 1000:.0f} ms "
            f"({judging3 / max(calls3, 1) * 1000:.2f} ms per call; "
            f"{judging3 / judging:.2f}x one judge's)"
        )
        server.reset()
        _, judging4, scoring4 = await judged(n, panel_cache, panel())
        print(
            f"rescoring the panel's eval from its judgments: {len(server.requests)} calls, "
            f"CPU per 100 items {(judging4 + scoring4) * per * 1000:.0f} ms"
        )
        await throughput(server, rows, Path(folder))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--rows", type=int, default=200)
    options = parser.parse_args()
    asyncio.run(main(options.items, options.rows))
