"""Graphs for LangGraph Studio and ``langgraph dev``/the LangGraph server, one per preset.

Listed in ``langgraph.json``. Building a graph needs no API key (keys are checked when a run
starts), so every preset can be opened and drawn.
"""

from __future__ import annotations

from langgraph_moa.graphs.builder import build_graph
from langgraph_moa.topology import load_preset

local = build_graph(load_preset("local"))
moa = build_graph(load_preset("moa"))
moa_lite = build_graph(load_preset("moa-lite"))
moa_gpt4o = build_graph(load_preset("moa-gpt4o"))
self_moa = build_graph(load_preset("self-moa"))
openpipe = build_graph(load_preset("openpipe"))
