"""Graphs for LangGraph Studio and ``langgraph dev``/the LangGraph server.

Listed in ``langgraph.json``: one ready-made graph per shipped preset, plus ``configurable``, a
graph factory whose topology comes from the assistant's config (graph id ``moa-custom``).
Building a graph needs no API key (keys are checked when a run starts), so every graph can be
opened and drawn.
"""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph

from langgraph_moa.graphs.builder import build_graph
from langgraph_moa.graphs.context import Context, topology_from_config
from langgraph_moa.spec.topology import load_preset

local = build_graph(load_preset("local"))
moa = build_graph(load_preset("moa"))
moa_lite = build_graph(load_preset("moa-lite"))
moa_gpt4o = build_graph(load_preset("moa-gpt4o"))
self_moa = build_graph(load_preset("self-moa"))
openpipe = build_graph(load_preset("openpipe"))
vote = build_graph(load_preset("vote"))
usc = build_graph(load_preset("usc"))
rank_fuse = build_graph(load_preset("rank-fuse"))


def configurable(config: RunnableConfig) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Graph factory: the MoA that the assistant's ``topology`` or ``preset`` describes.

    The server calls this for every read, state update and run of a thread. The topology is
    read from ``config["configurable"]`` (an assistant setting) rather than from run context,
    so each of those calls builds the same nodes.
    """
    return build_graph(topology_from_config(config), context_schema=Context)
