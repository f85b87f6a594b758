"""Orchestration cost of the MoA graph against the fake OpenAI-compatible server.

3 layers x 6 proposers + aggregator (19 calls), proposer latencies spread over 100-500 ms.
The ideal wall time is the critical path: the slowest proposer of each layer, summed, plus the
aggregator. Prints the measured wall time as a ratio to it (target: within 10%) and the
orchestration overhead per LLM call (target: under 5 ms).

    python bench/bench_orchestration.py [--queries 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from langchain_core.messages import HumanMessage

from langgraph_moa import Topology, build_graph
from langgraph_moa.testing.fake_openai import FakeOpenAI

LAYERS, WIDTH = 3, 6
AGGREGATOR_LATENCY = 0.3


def proposer_latency(layer: int, k: int) -> float:
    """100..500 ms, in a different order in each layer."""
    return 0.1 + 0.08 * ((k + layer) % WIDTH)


async def main(queries: int) -> None:
    with FakeOpenAI() as server:
        os.environ["OPENAI_BASE_URL"] = server.base_url
        os.environ["OPENAI_API_KEY"] = "sk-bench"
        layers = []
        for layer in range(LAYERS):
            proposers = []
            for k in range(WIDTH):
                model = f"l{layer}p{k}"
                server.behave(model, latency_s=proposer_latency(layer, k))
                proposers.append({"model": f"openai:{model}"})
            layers.append({"proposers": proposers})
        server.behave("agg", latency_s=AGGREGATOR_LATENCY)
        topology = Topology.model_validate(
            {"layers": layers, "aggregator": {"model": "openai:agg"}}
        )
        graph = build_graph(topology)
        critical = (
            sum(max(proposer_latency(layer, k) for k in range(WIDTH)) for layer in range(LAYERS))
            + AGGREGATOR_LATENCY
        )
        calls = topology.calls_per_query()

        await graph.ainvoke({"messages": [HumanMessage("warm-up")]})
        walls = []
        for q in range(queries):
            start = time.perf_counter()
            state = await graph.ainvoke({"messages": [HumanMessage(f"question {q}")]})
            walls.append(time.perf_counter() - start)
            assert not state["degraded"]

        median = statistics.median(walls)
        ratio = median / critical
        overhead_ms = (median - critical) / calls * 1000
        print(f"topology: {LAYERS} layers x {WIDTH} proposers + aggregator ({calls} calls/query)")
        print(f"queries: {queries} (after one warm-up)")
        print(f"critical path (ideal): {critical:.3f} s")
        print(
            f"wall time per query: median {median:.3f} s, min {min(walls):.3f} s, "
            f"max {max(walls):.3f} s"
        )
        print(f"ratio wall / critical path: {ratio:.3f} (target <= 1.10)")
        print(f"orchestration overhead per LLM call: {overhead_ms:.2f} ms (target < 5 ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10)
    asyncio.run(main(parser.parse_args().queries))
