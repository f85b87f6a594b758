"""Graphs built from topologies, and their state; with what the doors need of the graph's steps
(a reviewer's decision and edits, a topology's worst-case estimate), so that no door imports
:mod:`langgraph_moa.nodes`. The node names are in :mod:`langgraph_moa.graphs.names`.

A user needs :func:`build_graph`, :func:`build_state_graph` and :class:`MoAState` (also at the
package root); the other names are for the doors (cli, batch).
"""

from langgraph_moa.graphs.builder import build_graph, build_state_graph
from langgraph_moa.nodes.budget import Estimate, estimate
from langgraph_moa.nodes.review import apply_edits, parse_decision
from langgraph_moa.nodes.state import MoAState

__all__ = [
    "Estimate",
    "MoAState",
    "apply_edits",
    "build_graph",
    "build_state_graph",
    "estimate",
    "parse_decision",
]
