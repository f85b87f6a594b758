"""Graphs built from topologies, and their state; with what the doors need of the graph's steps
(a reviewer's decision and edits, a topology's worst-case estimate), so that no door imports
:mod:`langgraph_moa.nodes`. The node names are in :mod:`langgraph_moa.graphs.names`.

A user needs :func:`build_graph`, :func:`build_state_graph` and :class:`MoAState` (also at the
package root); the other names are for the doors (cli, batch).
"""

from typing import TYPE_CHECKING

from langgraph_moa.faces import lazy_face

if TYPE_CHECKING:
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

# Loaded on first use (langgraph_moa/faces.py): importing graphs/names.py (the CLI's
# display does) must not load the whole stack behind the face.
_HOME = {
    **dict.fromkeys(["build_graph", "build_state_graph"], "langgraph_moa.graphs.builder"),
    **dict.fromkeys(["Estimate", "estimate"], "langgraph_moa.nodes.budget"),
    **dict.fromkeys(["apply_edits", "parse_decision"], "langgraph_moa.nodes.review"),
    "MoAState": "langgraph_moa.nodes.state",
}

__getattr__, __dir__ = lazy_face(__name__, _HOME, __all__)
