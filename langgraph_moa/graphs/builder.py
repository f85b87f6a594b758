"""Topology -> LangGraph StateGraph.

Shape: ``prepare`` -> every proposer of layer 1 (concurrent, one named node each, e.g.
``L1/qwen72``) -> ``L1/join`` -> layer 2 ... -> ``critic`` (optional) -> ``aggregator``.
What runs is exactly what ``get_graph()`` draws.
"""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.runnables import RunnableLambda
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from langgraph_moa.graphs.state import MoAInput, MoAState
from langgraph_moa.nodes.aggregate import make_aggregator
from langgraph_moa.nodes.control import make_join, make_prepare
from langgraph_moa.nodes.critique import make_critic
from langgraph_moa.nodes.propose import Node, make_proposer
from langgraph_moa.pricing import PriceTable
from langgraph_moa.topology import Topology

__all__ = [
    "AGGREGATOR",
    "CRITIC",
    "PREPARE",
    "build_graph",
    "build_state_graph",
    "join_node",
    "proposer_node",
]

PREPARE = "prepare"
CRITIC = "critic"
AGGREGATOR = "aggregator"


def proposer_node(layer: int, name: str) -> str:
    return f"L{layer}/{name}"


def join_node(layer: int) -> str:
    return f"L{layer}/join"


def _add(graph: StateGraph[Any, Any, Any, Any], name: str, node: Node) -> None:
    """Add an async node that also runs under the sync API (``invoke``/``stream``)."""

    def run_sync(state: MoAState) -> dict[str, Any]:
        # LangGraph runs sync nodes in worker threads, where no event loop is running.
        return asyncio.run(node(state))

    graph.add_node(name, RunnableLambda(run_sync, afunc=node, name=name))


def build_state_graph(topology: Topology) -> StateGraph[Any, Any, Any, Any]:
    """The uncompiled graph, for users who want to add to it before compiling."""
    prices = PriceTable(topology.prices)
    graph: StateGraph[Any, Any, Any, Any] = StateGraph(MoAState, input_schema=MoAInput)
    _add(graph, PREPARE, make_prepare(topology))
    graph.add_edge(START, PREPARE)
    previous = PREPARE
    for layer_no, layer in enumerate(topology.layers, 1):
        nodes, position = [], 0
        for agent in layer.proposers:
            node = proposer_node(layer_no, agent.name or "")
            _add(
                graph,
                node,
                make_proposer(
                    agent, layer=layer_no, first_index=position, node=node, prices=prices
                ),
            )
            graph.add_edge(previous, node)
            nodes.append(node)
            position += agent.n
        join = join_node(layer_no)
        _add(graph, join, make_join(layer_no))
        graph.add_edge(nodes, join)
        previous = join
    last = len(topology.layers)
    if topology.critic is not None:
        _add(
            graph, CRITIC, make_critic(topology.critic, last_layer=last, node=CRITIC, prices=prices)
        )
        graph.add_edge(previous, CRITIC)
        previous = CRITIC
    _add(
        graph,
        AGGREGATOR,
        make_aggregator(topology.aggregator, last_layer=last, node=AGGREGATOR, prices=prices),
    )
    graph.add_edge(previous, AGGREGATOR)
    graph.add_edge(AGGREGATOR, END)
    return graph


def build_graph(
    topology: Topology, *, checkpointer: BaseCheckpointSaver[Any] | bool | None = None
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """A compiled graph for ``topology``: invoke/stream it with ``{"messages": [...]}``.

    With a checkpointer and ``config={"configurable": {"thread_id": ...}}`` a thread keeps its
    conversation, so a second turn sees the first and its answer.
    """
    return build_state_graph(topology).compile(checkpointer=checkpointer, name=topology.name)
