"""The names of the graph's nodes, as the doors read them (records, drawings, forks, progress).

The nodes name themselves (:mod:`langgraph_moa.nodes.names`); the doors reach that vocabulary
through the graph layer, never by importing :mod:`langgraph_moa.nodes` (an import-linter
contract). It only re-exports, so ruff's unused-import rule is off for it (pyproject.toml).
"""

from langgraph_moa.nodes.names import (
    AGGREGATOR,
    CRITIC,
    FALLBACK,
    PREPARE,
    RANK,
    REVIEW,
    SELECT,
    WINDOW,
    join_judge_node,
    join_node,
    layer_exit,
    layer_of,
    proposer_node,
)
