"""MoA under failure: 100 queries of a 3x6 topology while the fake server fails 30% of proposer
requests (HTTP 500 or 429) and hangs on 5% of them.

Prints how many queries were answered (target: all), whether every failed request is accounted
for in the records, and the wall time per query against the same run without failures.

    python bench/bench_failures.py [--queries 100] [--concurrency 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

from langchain_core.messages import HumanMessage

from langgraph_moa import Topology, build_graph
from langgraph_moa.testing.fake_openai import FakeOpenAI

LAYERS, WIDTH = 3, 6
FAULTS: dict[int | str, float] = {500: 0.15, 429: 0.15, "hang": 0.05}
TIMEOUT_S = 1.0
RETRY = {"attempts": 4, "initial_s": 0.05, "max_s": 0.4}


def topology() -> Topology:
    layers = [
        {"proposers": [{"model": f"openai:l{layer}p{k}"} for k in range(WIDTH)]}
        for layer in range(LAYERS)
    ]
    return Topology.model_validate(
        {
            "layers": layers,
            "aggregator": {"model": "openai:agg"},
            "retry": RETRY,
            "timeout_s": TIMEOUT_S,
        }
    )


def configure(server: FakeOpenAI, faults: bool) -> None:
    for layer in range(LAYERS):
        for k in range(WIDTH):
            server.behave(
                f"l{layer}p{k}",
                latency_s=0.1 + 0.08 * ((k + layer) % WIDTH),
                random_faults=dict(FAULTS) if faults else {},
                retry_after=0.2,
                hang_s=30,
            )
    server.behave("agg", latency_s=0.3)


async def run(server: FakeOpenAI, queries: int, concurrency: int) -> tuple[list[float], list[Any]]:
    graph = build_graph(topology(), cache=False)
    await graph.ainvoke({"messages": [HumanMessage("warm-up")]})
    server.reset()
    gate = asyncio.Semaphore(concurrency)
    walls: list[float] = []

    async def one(q: int) -> Any:
        async with gate:
            start = time.perf_counter()
            try:
                state = await graph.ainvoke({"messages": [HumanMessage(f"question {q}")]})
            except Exception as err:  # a lost query: counted, not hidden
                return err
            walls.append(time.perf_counter() - start)
            return state

    results = await asyncio.gather(*(one(q) for q in range(queries)))
    return walls, results


def summary(walls: list[float]) -> str:
    walls = sorted(walls)
    p95 = walls[max(0, round(0.95 * len(walls)) - 1)]
    return f"median {statistics.median(walls):.3f} s, p95 {p95:.3f} s, max {walls[-1]:.3f} s"


async def main(queries: int, concurrency: int) -> None:
    with FakeOpenAI(seed=1) as server:
        os.environ["OPENAI_BASE_URL"] = server.base_url
        os.environ["OPENAI_API_KEY"] = "sk-bench"

        configure(server, faults=False)
        clean_walls, _ = await run(server, queries, concurrency)

        configure(server, faults=True)
        walls, results = await run(server, queries, concurrency)
        states = [r for r in results if isinstance(r, dict)]
        proposer_requests = [r for r in server.requests if r.model != "agg"]
        injected = [r for r in proposer_requests if r.fault is not None]
        records = [p for s in states for layer in s["layers"] for p in layer]
        attempts_recorded = sum(p["attempts"] for p in records)
        failed = [p for p in records if not p["ok"]]

        print(
            f"topology: {LAYERS} layers x {WIDTH} proposers + aggregator; "
            f"{queries} queries, {concurrency} at a time"
        )
        print(
            f"faults per proposer request: 500 {FAULTS[500]:.0%}, 429 {FAULTS[429]:.0%}, "
            f"hang {FAULTS['hang']:.0%}; timeout {TIMEOUT_S}s, up to {RETRY['attempts']} tries"
        )
        print(f"answered: {len(states)}/{queries} (lost: {queries - len(states)})")
        print(
            f"proposer requests: {len(proposer_requests)}, with an injected fault: "
            f"{len(injected)} ({len(injected) / len(proposer_requests):.1%})"
        )
        print(
            f"requests accounted for in records (attempts): {attempts_recorded}"
            f"/{len(proposer_requests)}"
        )
        print(
            f"proposals failed after all tries: {len(failed)} of {len(records)}, each with a "
            f"reason: {all(p['error'] for p in failed)}"
        )
        print(f"degraded answers: {sum(1 for s in states if s['degraded'])}/{len(states)}")
        print(f"wall time per query, no failures: {summary(clean_walls)}")
        print(f"wall time per query, failures:    {summary(walls)}")
        ratio = statistics.median(walls) / statistics.median(clean_walls)
        print(f"median ratio failures / no failures: {ratio:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(main(args.queries, args.concurrency))
