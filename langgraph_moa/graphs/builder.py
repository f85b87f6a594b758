"""Topology -> LangGraph StateGraph.

Shape: ``prepare`` -> every proposer of layer 1 (concurrent, one named node each, e.g.
``L1/qwen72``) -> ``L1/join`` -> layer 2 ... -> ``critic`` (optional) -> ``aggregator``.
What runs is exactly what ``get_graph()`` draws.

Each node is its coroutine wrapped in :class:`NodeRunnable`, which runs it under the async API
directly and under the sync API on the shared loop. LangChain's ``RunnableLambda`` would do the
same, but around every call it opens a callback run of its own (LangGraph already opens one per
node task) and inspects the function's signature twice: about 0.25 ms of CPU per node on the
development machine, as much as the rest of LangGraph's work on the node.
"""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.cache.base import BaseCache
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from langgraph_moa.nodes.aggregate import make_aggregator, make_fallback, route_after_aggregator
from langgraph_moa.nodes.cache import DEFAULT_CACHE, ProposalCache
from langgraph_moa.nodes.critique import make_critic
from langgraph_moa.nodes.join import make_join
from langgraph_moa.nodes.names import (
    AGGREGATOR,
    CRITIC,
    FALLBACK,
    PREPARE,
    REVIEW,
    join_node,
    proposer_node,
)
from langgraph_moa.nodes.prepare import make_prepare
from langgraph_moa.nodes.propose import Node, make_proposer
from langgraph_moa.nodes.review import make_review
from langgraph_moa.nodes.state import MoAInput, MoAState
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.topology import Topology
from langgraph_moa.sync_loop import run_sync

__all__ = [
    "AGGREGATOR",
    "CRITIC",
    "FALLBACK",
    "PREPARE",
    "REVIEW",
    "MoAGraph",
    "build_graph",
    "build_state_graph",
    "join_node",
    "proposer_node",
]


class NodeRunnable(Runnable[MoAState, dict[str, Any]]):
    """An async node that also runs under the sync API (``invoke``/``stream``)."""

    def __init__(self, name: str, node: Node) -> None:
        self.name = name
        self.node = node

    def invoke(
        self, input: MoAState, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        # On the process's shared loop, in this run's context (see sync_loop).
        return run_sync(lambda: self.node(input))

    async def ainvoke(
        self, input: MoAState, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        return await self.node(input)


def _add(graph: StateGraph[Any, Any, Any, Any], name: str, node: Node) -> None:
    """Add an async node that also runs under the sync API (``invoke``/``stream``)."""
    graph.add_node(name, NodeRunnable(name, node))


# What build_graph returns: state MoAState, input MoAInput, output MoAState (any run context).
MoAGraph = CompiledStateGraph[MoAState, Any, MoAInput, MoAState]


def build_state_graph(
    topology: Topology,
    *,
    cache: BaseCache[Any] | bool = True,
    context_schema: type[Any] | None = None,
) -> StateGraph[MoAState, Any, MoAInput, MoAState]:
    """The uncompiled graph, for users who want to add to it before compiling.

    ``context_schema`` only describes run context to LangGraph tooling (Studio shows it); the
    topology itself is fixed when the graph is built.
    """
    prices = PriceTable(topology.prices)
    backend = DEFAULT_CACHE if cache is True else cache or None
    proposal_cache = (
        ProposalCache(backend, cache_sampled=topology.cache_sampled) if backend else None
    )
    graph: StateGraph[MoAState, Any, MoAInput, MoAState] = StateGraph(
        MoAState, input_schema=MoAInput, context_schema=context_schema
    )
    _add(graph, PREPARE, make_prepare(topology, prices=prices))
    graph.add_edge(START, PREPARE)
    previous = PREPARE
    for layer_no, layer in enumerate(topology.layers, 1):
        nodes, position = [], 0
        for agent in layer.proposers:
            node = proposer_node(layer_no, agent.name or "")
            proposer = make_proposer(
                agent,
                layer=layer_no,
                first_index=position,
                node=node,
                prices=prices,
                deadline_s=layer.deadline_s,
                cache=proposal_cache,
            )
            _add(graph, node, proposer)
            graph.add_edge(previous, node)
            nodes.append(node)
            position += agent.n
        join = join_node(layer_no)
        _add(graph, join, make_join(layer_no, topology, prices=prices))
        graph.add_edge(nodes, join)
        previous = join
    last = len(topology.layers)
    if topology.critic is not None:
        _add(
            graph, CRITIC, make_critic(topology.critic, last_layer=last, node=CRITIC, prices=prices)
        )
        graph.add_edge(previous, CRITIC)
        previous = CRITIC
    if topology.review == "before_aggregate":
        _add(graph, REVIEW, make_review(last_layer=last))
        graph.add_edge(previous, REVIEW)
        previous = REVIEW
    can_fall_back = topology.fallback != "fail"
    aggregator = make_aggregator(
        topology.aggregator,
        last_layer=last,
        node=AGGREGATOR,
        prices=prices,
        can_fall_back=can_fall_back,
    )
    _add(graph, AGGREGATOR, aggregator)
    graph.add_edge(previous, AGGREGATOR)
    if topology.fallback == "fail":
        graph.add_edge(AGGREGATOR, END)
    else:
        policy = topology.fallback
        _add(graph, FALLBACK, make_fallback(policy, last_layer=last, node=FALLBACK, prices=prices))
        graph.add_conditional_edges(AGGREGATOR, route_after_aggregator, [FALLBACK, END])
        graph.add_edge(FALLBACK, END)
    return graph


def build_graph(
    topology: Topology,
    *,
    checkpointer: BaseCheckpointSaver[Any] | bool | None = None,
    cache: BaseCache[Any] | bool = True,
    context_schema: type[Any] | None = None,
) -> MoAGraph:
    """A compiled graph for ``topology``: invoke/stream it with ``{"messages": [...]}``.

    With a checkpointer and ``config={"configurable": {"thread_id": ...}}`` a thread keeps its
    conversation, so a second turn sees the first and its answer. ``cache``: identical proposer
    calls are served from the process-wide in-memory cache by default; pass a LangGraph
    ``BaseCache`` (e.g. ``SqliteCache``) to keep them elsewhere, or False for none.
    """
    graph = build_state_graph(topology, cache=cache, context_schema=context_schema)
    return graph.compile(checkpointer=checkpointer, name=topology.name)
