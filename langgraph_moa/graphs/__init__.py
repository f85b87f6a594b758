"""Graphs built from topologies, and their state."""

from langgraph_moa.graphs.builder import build_graph, build_state_graph
from langgraph_moa.nodes.state import MoAInput, MoAState

__all__ = ["MoAInput", "MoAState", "build_graph", "build_state_graph"]
