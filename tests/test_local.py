"""The embedded offline model: a real (short) generation through llama.cpp, no network."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import HumanMessage

from langgraph_moa import MoAInputError, Topology, build_graph
from langgraph_moa.local_model import ChatLocalLlama, resolve_model_path


def test_packaged_model_is_found_without_importing_its_package() -> None:
    path = resolve_model_path("smollm2")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    with pytest.raises(MoAInputError, match="no such file"):
        resolve_model_path("/nowhere/model.gguf")


async def test_local_moa_run_generates_and_reports_usage() -> None:
    topology = Topology.model_validate(
        {
            "layers": [
                {
                    "proposers": [
                        {"name": "x", "model": "local:smollm2", "max_tokens": 8},
                        {"name": "y", "model": "local:smollm2", "max_tokens": 8},
                    ]
                }
            ],
            "aggregator": {"model": "local:smollm2", "max_tokens": 8},
        }
    )
    graph = build_graph(topology)
    chunks = []
    final = None
    async for mode, data in graph.astream(
        {"messages": [HumanMessage("Name a color.")]}, stream_mode=["messages", "values"]
    ):
        if mode == "messages" and data[1]["langgraph_node"] == "aggregator" and data[0].content:
            chunks.append(data[0].content)
        elif mode == "values":
            final = data
    assert final is not None
    answer = final["messages"][-1]
    assert answer.content.strip()
    assert len(chunks) >= 2 and "".join(chunks) == answer.content  # streamed token by token
    assert all(p["ok"] and p["text"] for p in final["layers"][0])
    usage = final["usage"]["by_model"]["local:smollm2"]
    assert usage["calls"] == 3
    assert 0 < usage["completion_tokens"] <= 3 * 8
    assert usage["prompt_tokens"] > 20
    assert final["usage"]["cost_usd"] == 0.0


async def test_concurrent_calls_are_serialized_safely() -> None:
    model = ChatLocalLlama(max_tokens=4, temperature=0.0)
    replies = await asyncio.gather(*(model.ainvoke("Say hi.") for _ in range(4)))
    assert len({r.content for r in replies}) == 1  # greedy decoding: same prompt, same reply
    assert all(r.usage_metadata and r.usage_metadata["output_tokens"] > 0 for r in replies)


async def test_samples_differ_unless_seeded() -> None:
    model = ChatLocalLlama(max_tokens=12, temperature=1.0)
    replies = {(await model.ainvoke("Tell me a random word.")).content for _ in range(3)}
    assert len(replies) > 1
    seeded = ChatLocalLlama(max_tokens=12, temperature=1.0, seed=7)
    again = {(await seeded.ainvoke("Tell me a random word.")).content for _ in range(2)}
    assert len(again) == 1
