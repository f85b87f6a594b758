"""What evaluation adds on top of generation: CPU time of judging and scoring per 100 items.

A pairwise eval of N items (two judge games each, positions swapped) against the fake
OpenAI-compatible server, the judge answering at once: the CPU time of the judge's calls (the
client path, the cache) and of scoring (verdicts, summary with 1000 bootstrap resamples of the
win rate, the weighted score and the length-controlled win rate, which refits its model on every
resample), per 100 items; then the same eval again, read back from the cache (rescoring).

    python bench/bench_eval.py [--items 200]
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

from langgraph_moa.evaluation.datasets import Item, Scoring
from langgraph_moa.evaluation.judge import Judge, judge_agent
from langgraph_moa.evaluation.score import score_items
from langgraph_moa.evaluation.summary import Generation, summarise
from langgraph_moa.testing.fake_openai import FakeOpenAI


def verdict(body: dict[str, Any], number: int, choice: int) -> str:
    return "A thorough comparison would go here. [[A>B]]" if number % 3 else "Close. [[A=B]]"


async def judged(n: int, cache: Path) -> tuple[float, float, float]:
    """(wall s, judging CPU s, scoring CPU s) for one eval of ``n`` pairwise items."""
    items = [
        Item(f"i{k}", ({"role": "user", "content": f"question {k}"},), baseline="b " * (k % 40))
        for k in range(n)
    ]
    gens = {i.id: Generation(["an answer " * (1 + int(i.id[1:]) % 30)]) for i in items}
    judge = Judge(judge_agent("openai:judge"), SqliteCache(path=str(cache)), concurrency=16)
    wall, cpu = time.perf_counter(), time.process_time()
    results = await score_items(Scoring.pairwise, items, gens, judge=judge)
    judging = time.process_time() - cpu
    cpu = time.process_time()
    summarise("alpaca-eval", Scoring.pairwise, results, resamples=1000)
    return time.perf_counter() - wall, judging, time.process_time() - cpu


async def main(n: int) -> None:
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    asyncio.run(main(parser.parse_args().items))
