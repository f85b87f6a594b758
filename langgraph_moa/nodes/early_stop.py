"""Early stop (adaptive depth): after a layer with an ``early_stop`` setting, its last node (the
join, or the join's judge node when the join asks a model) checks whether all of the layer's
answers agree (the share giving the most common extracted answer, or their mean pairwise word
overlap) and, if they do, the graph goes straight on to the final steps. The check is recorded
either way; the layers it skips are listed, and cost nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph_moa.nodes.extract import tally
from langgraph_moa.nodes.hygiene import candidates, mean_similarity
from langgraph_moa.nodes.names import join_node, layer_exit, proposer_node
from langgraph_moa.nodes.propose import Node
from langgraph_moa.nodes.state import EarlyStopRecord, MoAState
from langgraph_moa.spec.combining import EarlyStop
from langgraph_moa.spec.topology import Topology


def _measure(setting: EarlyStop, texts: list[str]) -> tuple[str, float, float, str, bool]:
    """(measure, value, threshold, what was seen, whether it is enough to stop)."""
    if setting.agreement is not None:
        counted = tally(texts, setting.extract or "", setting.pattern)
        value, threshold = counted.agreement, setting.agreement
        top = counted.top
        seen = (
            f"{counted.votes[top[0]]} of {len(texts)} answers give {top[0]!r}"
            + (" (tied)" if len(top) > 1 else "")
            if top
            else f"no answer could be read by extract {setting.extract!r}"
        )
        return "agreement", value, threshold, seen, bool(top) and value >= threshold
    threshold = setting.similarity or 0.0
    value = mean_similarity(texts)
    seen = f"mean word overlap of {len(texts)} answers is {value:.2f}"
    return "similarity", value, threshold, seen, len(texts) >= 2 and value >= threshold


def with_early_stop(join: Node, *, layer: int, setting: EarlyStop, topology: Topology) -> Node:
    """``join`` followed by the agreement check of ``layer``."""
    later = range(layer + 1, len(topology.layers) + 1)
    skipped_nodes: list[str] = []
    for number in later:  # its proposers, its join, then its join's judge node if it has one
        proposers = topology.layers[number - 1].proposers
        skipped_nodes += [proposer_node(number, a.name or "") for a in proposers]
        skipped_nodes += dict.fromkeys([join_node(number), layer_exit(topology, number)])

    async def join_and_check(state: MoAState) -> dict[str, Any]:
        update = await join(state)
        # every answer of the layer: this layer's join record is in ``update``, not yet in state
        texts = [p["text"] or "" for p in candidates(state, layer)]
        measure, value, threshold, seen, stop = _measure(setting, texts)
        verdict = "at least" if stop else "below"
        reason = f"{seen}: {measure} {value:.2f} is {verdict} the threshold {threshold:g}"
        if stop:
            reason += f"; layers {', '.join(map(str, later))} skipped"
        record = EarlyStopRecord(
            layer=layer,
            stopped=stop,
            measure=measure,
            value=round(value, 4),
            threshold=threshold,
            reason=reason,
            skipped_layers=list(later) if stop else [],
            skipped_nodes=skipped_nodes if stop else [],
        )
        return {**update, "early_stop": [record]}

    return join_and_check


def route_after_check(
    layer: int, next_nodes: list[str], stop_target: str
) -> Callable[[MoAState], list[str] | str]:
    """The conditional edge after ``layer``'s join: on to the next layer, or (stopped) to the
    final steps."""

    def route(state: MoAState) -> list[str] | str:
        stopped = any(c["layer"] == layer and c["stopped"] for c in state.get("early_stop") or [])
        return stop_target if stopped else next_nodes

    route.__name__ = f"early_stop_L{layer}"
    return route
