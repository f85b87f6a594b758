"""What durability costs: checkpoint overhead per query and a thread's size on disk.

A 3x6 topology + aggregator (19 calls) runs against the fake OpenAI-compatible server with no
model latency, so what is measured is the orchestration plus checkpointing. Each configuration
(no checkpointer; SQLite and PostgreSQL with durability sync, async, exit) runs the same queries,
each on a new thread; the figures are medians, as overhead over the no-checkpointer run.
Then the bytes one query leaves in each store are printed per layer.

    python bench/bench_checkpoints.py [--queries 30] [--postgres postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import tempfile
import time
import uuid
from typing import Any

from langchain_core.messages import HumanMessage

from langgraph_moa import Topology, build_graph
from langgraph_moa.cli.store import open_checkpointer
from langgraph_moa.cli.threads import history
from langgraph_moa.testing.fake_openai import FakeOpenAI

LAYERS, WIDTH = 3, 6


def topology() -> Topology:
    layers = [
        {"proposers": [{"model": f"openai:l{layer}p{k}"} for k in range(WIDTH)]}
        for layer in range(LAYERS)
    ]
    return Topology.model_validate({"layers": layers, "aggregator": {"model": "openai:agg"}})


async def timed(checkpointer: Any, durability: str, queries: int) -> list[float]:
    graph = build_graph(topology(), checkpointer=checkpointer, cache=False)
    walls = []
    for q in range(queries + 1):
        config = {"configurable": {"thread_id": f"bench-{uuid.uuid4().hex}"}}
        start = time.perf_counter()
        await graph.ainvoke(
            {"messages": [HumanMessage(f"question {q}")]},
            config,
            durability=durability if checkpointer is not None else None,
        )
        if q:  # the first query warms up clients and the store
            walls.append(time.perf_counter() - start)
    return walls


async def bytes_per_layer(db: str) -> dict[str, int]:
    """Bytes one query's thread takes in the store, grouped by the layer that wrote them."""
    thread = f"size-{uuid.uuid4().hex}"
    async with open_checkpointer(db) as saver:
        graph = build_graph(topology(), checkpointer=saver, cache=False)
        config = {"configurable": {"thread_id": thread}}
        await graph.ainvoke({"messages": [HumanMessage("how big?")]}, config)
        entries = await history(graph, thread)
    stage = {e.checkpoint_id: (f"layer {e.layer}" if e.layer else "other") for e in entries}
    sizes: dict[str, int] = {}
    if db.startswith("postgres"):
        import psycopg

        with psycopg.connect(db) as conn:
            rows = conn.execute(
                "SELECT checkpoint_id, pg_column_size(c.*) FROM checkpoints c WHERE thread_id=%s "
                "UNION ALL SELECT checkpoint_id, pg_column_size(w.*) FROM checkpoint_writes w "
                "WHERE thread_id=%s",
                (thread, thread),
            ).fetchall()
            blobs = conn.execute(
                "SELECT coalesce(sum(pg_column_size(b.*)), 0) FROM checkpoint_blobs b "
                "WHERE thread_id=%s",
                (thread,),
            ).fetchone()
        sizes["channel blobs"] = int(blobs[0]) if blobs else 0
    else:
        with sqlite3.connect(db) as conn:
            rows = conn.execute(
                "SELECT checkpoint_id, length(checkpoint) + length(metadata) FROM checkpoints "
                "WHERE thread_id=? UNION ALL SELECT checkpoint_id, length(value) FROM writes "
                "WHERE thread_id=?",
                (thread, thread),
            ).fetchall()
    for checkpoint_id, size in rows:
        key = stage.get(checkpoint_id, "other")
        sizes[key] = sizes.get(key, 0) + int(size)
    return sizes


async def main(queries: int, postgres: str | None) -> None:
    with FakeOpenAI() as server, tempfile.TemporaryDirectory() as tmp:
        os.environ["OPENAI_BASE_URL"] = server.base_url
        os.environ["OPENAI_API_KEY"] = "sk-bench"
        sqlite_db = os.path.join(tmp, "bench.sqlite")
        stores = [("sqlite", sqlite_db)] + ([("postgres", postgres)] if postgres else [])

        # the baseline is measured before and after the stores, to average out drift
        first_base = statistics.median(await timed(None, "exit", queries))
        measured = []
        for name, db in stores:
            async with open_checkpointer(db) as saver:
                for durability in ("sync", "async", "exit"):
                    wall = statistics.median(await timed(saver, durability, queries))
                    measured.append((name, durability, wall))
        base = (first_base + statistics.median(await timed(None, "exit", queries))) / 2
        print(
            f"topology: {LAYERS} layers x {WIDTH} proposers + aggregator, no model latency; "
            f"{queries} queries per configuration (median)"
        )
        print(f"{'store':<10} {'durability':<10} {'ms/query':>9} {'overhead ms':>12} {'ratio':>6}")
        print(f"{'none':<10} {'-':<10} {base * 1000:>9.1f} {0:>12.1f} {1:>6.2f}")
        for name, durability, wall in measured:
            overhead = (wall - base) * 1000
            print(
                f"{name:<10} {durability:<10} {wall * 1000:>9.1f} {overhead:>12.1f} "
                f"{wall / base:>6.2f}"
            )
        for name, db in stores:
            sizes = await bytes_per_layer(db)
            total = sum(sizes.values())
            parts = ", ".join(f"{k}: {v / 1024:.1f} KiB" for k, v in sorted(sizes.items()))
            print(f"{name}: one query's thread takes {total / 1024:.1f} KiB ({parts})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("MOA_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"),
        help="PostgreSQL URL, or '' to skip it",
    )
    args = parser.parse_args()
    asyncio.run(main(args.queries, args.postgres or None))
