"""Topology -> LangGraph StateGraph.

Shape: ``prepare`` -> every proposer of layer 1 (concurrent, one named node each, e.g.
``L1/qwen72``) -> ``L1/join`` (-> ``L1/select`` or ``L1/rank`` when the layer's join asks a
model) -> layer 2 ... -> ``critic`` (optional) -> ``review`` (optional) -> the mode's deciding
node (``select``, ``rank`` or ``window``; none for synthesize and vote) -> ``aggregator``. A
layer with ``early_stop`` leaves its last node by a conditional edge: to the next layer's
proposers, or straight to the first of those final nodes.
What runs is exactly what ``get_graph()`` draws.

Each node is its coroutine wrapped in :class:`NodeRunnable`, which runs it under the async API
directly and under the sync API on the shared loop. LangChain's ``RunnableLambda`` would do the
same, but around every call it opens a callback run of its own (LangGraph already opens one per
node task) and inspects the function's signature twice: about 0.25 ms of CPU per node on the
development machine, as much as the rest of LangGraph's work on the node.
"""

from __future__ import annotations

from typing import Any, Protocol

from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.cache.base import BaseCache
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from langgraph_moa.llm.call_cache import DEFAULT_CACHE, ProposalCache
from langgraph_moa.nodes.aggregate import make_aggregator, make_fallback, route_after_aggregator
from langgraph_moa.nodes.critique import make_critic
from langgraph_moa.nodes.early_stop import route_after_check, with_early_stop
from langgraph_moa.nodes.join import make_join
from langgraph_moa.nodes.layer_join import make_layer_judge, with_layer_vote
from langgraph_moa.nodes.names import (
    AGGREGATOR,
    CRITIC,
    FALLBACK,
    PREPARE,
    RANK,
    REVIEW,
    SELECT,
    WINDOW,
    join_node,
    layer_exit,
    proposer_node,
)
from langgraph_moa.nodes.prepare import make_prepare
from langgraph_moa.nodes.propose import Node, make_proposer
from langgraph_moa.nodes.rank import make_ranker
from langgraph_moa.nodes.review import make_review
from langgraph_moa.nodes.select import make_selector
from langgraph_moa.nodes.state import MoAInput, MoAState
from langgraph_moa.nodes.verdict import make_verdict
from langgraph_moa.nodes.window import make_window
from langgraph_moa.spec.combining import Aggregator
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.topology import Topology
from langgraph_moa.sync_loop import run_sync


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


class _Deciding(Protocol):
    def __call__(
        self, agg: Aggregator, *, last_layer: int, node: str, prices: PriceTable
    ) -> Node: ...


# The node that decides before the aggregator answers, for the modes that call a model for it.
_DECIDING: dict[str, tuple[str, _Deciding]] = {
    "select": (SELECT, make_selector),
    "rank": (RANK, make_ranker),
    "self-moa-seq": (WINDOW, make_window),
}


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
    backend = DEFAULT_CACHE if cache is True else None if cache is False else cache
    proposal_cache = (
        # "is not None": an empty cache has len() 0, and is still the cache to fill
        ProposalCache(backend, cache_sampled=topology.cache_sampled)
        if backend is not None
        else None
    )
    final_cache = proposal_cache.for_final_answers() if proposal_cache else None
    graph: StateGraph[MoAState, Any, MoAInput, MoAState] = StateGraph(
        MoAState, input_schema=MoAInput, context_schema=context_schema
    )
    _add(graph, PREPARE, make_prepare(topology, prices=prices))
    graph.add_edge(START, PREPARE)
    last = len(topology.layers)
    agg = topology.aggregator
    # the nodes after the layers, in order: critic, review, the mode's deciding step, aggregator
    finals: list[tuple[str, Node]] = []
    if topology.critic is not None:
        finals.append(
            (
                CRITIC,
                make_critic(
                    topology.critic, last_layer=last, node=CRITIC, prices=prices, cache=final_cache
                ),
            )
        )
    if topology.review == "before_aggregate":
        finals.append((REVIEW, make_review(last_layer=last)))
    deciding = _DECIDING.get(agg.mode)
    if deciding is not None:
        name, factory = deciding
        finals.append((name, factory(agg, last_layer=last, node=name, prices=prices)))
    can_fall_back = topology.fallback != "fail"
    if agg.mode == "synthesize":
        aggregator = make_aggregator(
            agg,
            last_layer=last,
            node=AGGREGATOR,
            prices=prices,
            can_fall_back=can_fall_back,
            references=agg.references,
            cache=final_cache,
        )
    else:
        aggregator = make_verdict(
            agg,
            last_layer=last,
            node=AGGREGATOR,
            prices=prices,
            can_fall_back=can_fall_back,
            limits=_proposer_limits(topology),
        )
    finals.append((AGGREGATOR, aggregator))

    layer_nodes = [
        [proposer_node(number, a.name or "") for a in layer.proposers]
        for number, layer in enumerate(topology.layers, 1)
    ]
    previous = PREPARE
    for layer_no, layer in enumerate(topology.layers, 1):
        position = 0
        for agent, node in zip(layer.proposers, layer_nodes[layer_no - 1], strict=True):
            proposer = make_proposer(
                agent,
                layer=layer_no,
                first_index=position,
                node=node,
                prices=prices,
                deadline_s=layer.deadline_s,
                cache=proposal_cache,
                references=layer.references,
            )
            _add(graph, node, proposer)
            if previous:
                graph.add_edge(previous, node)
            position += agent.n
        join = join_node(layer_no)
        # the layer's last nodes: its join, then (a join that asks a model) the judge's node
        steps: list[tuple[str, Node]] = [(join, make_join(layer_no, topology, prices=prices))]
        judge_agent = topology.join_agent(layer_no)
        if layer.join is not None and layer.join.mode == "vote":
            steps[0] = (join, with_layer_vote(steps[0][1], layer=layer_no, setting=layer.join))
        elif layer.join is not None and judge_agent is not None:
            name = layer_exit(topology, layer_no)
            judged = make_layer_judge(
                judge_agent, layer=layer_no, setting=layer.join, node=name, prices=prices
            )
            steps.append((name, judged))
        exit_name, exit_node = steps[-1]
        if layer.early_stop is not None:  # a conditional edge: the next layer, or the finals
            steps[-1] = (
                exit_name,
                with_early_stop(
                    exit_node, layer=layer_no, setting=layer.early_stop, topology=topology
                ),
            )
            following = layer_nodes[layer_no]
            route = route_after_check(layer_no, following, finals[0][0])
            graph.add_conditional_edges(exit_name, route, [*following, finals[0][0]])
            previous = ""
        else:
            previous = exit_name
        for name, node_fn in steps:
            _add(graph, name, node_fn)
        graph.add_edge(layer_nodes[layer_no - 1], join)
        if len(steps) > 1:
            graph.add_edge(join, exit_name)
    for name, node_fn in finals:
        _add(graph, name, node_fn)
        graph.add_edge(previous, name)
        previous = name
    if topology.fallback == "fail":
        graph.add_edge(AGGREGATOR, END)
    else:
        policy = topology.fallback
        _add(
            graph,
            FALLBACK,
            make_fallback(
                policy,
                last_layer=last,
                node=FALLBACK,
                prices=prices,
                cache=final_cache,
                limits=_proposer_limits(topology),
            ),
        )
        graph.add_conditional_edges(AGGREGATOR, route_after_aggregator, [FALLBACK, END])
        graph.add_edge(FALLBACK, END)
    return graph


def _proposer_limits(topology: Topology) -> dict[str, int]:
    """Each proposer node's max_tokens (an answer given verbatim may have stopped there)."""
    return {
        proposer_node(number, a.name or ""): a.max_tokens
        for number, layer in enumerate(topology.layers, 1)
        for a in layer.proposers
    }


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
