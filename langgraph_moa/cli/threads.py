"""Durable threads: the config a run is stored under, and going back in a thread's history.

Every run records its topology (as JSON) in the checkpoint metadata, so ``moa resume``,
``moa history`` and ``moa fork`` rebuild exactly the graph that ran. A fork takes the state right
after a stage ran, applies the user's edits as that stage (LangGraph's ``update_state(...,
as_node=...)``), and re-runs only what comes after; the original branch stays in the thread.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import StateSnapshot

from langgraph_moa.errors import MoAInputError
from langgraph_moa.graphs import apply_edits
from langgraph_moa.graphs.names import (
    CRITIC,
    PREPARE,
    REVIEW,
    join_node,
    layer_exit,
    layer_of,
    proposer_node,
)
from langgraph_moa.spec.topology import Topology, parse_topology

_TOPOLOGY_KEY = "moa_topology"


def run_config(thread_id: str, topology: Topology, **extra: Any) -> RunnableConfig:
    """The config to run ``topology`` on ``thread_id``; its checkpoints remember the topology."""
    config: dict[str, Any] = {
        "configurable": {"thread_id": thread_id},
        "metadata": {_TOPOLOGY_KEY: topology.model_dump_json()},
        **extra,
    }
    return cast(RunnableConfig, config)


async def stored_topology(
    checkpointer: BaseCheckpointSaver[Any], thread_id: str
) -> Topology | None:
    """The topology of the thread's latest run, or None if there is no such thread."""
    found = await checkpointer.aget_tuple({"configurable": {"thread_id": thread_id}})
    if found is None:
        return None
    spec = (found.metadata or {}).get(_TOPOLOGY_KEY)
    if not isinstance(spec, str):
        raise MoAInputError(f"thread {thread_id!r} was not made by moa (no topology recorded)")
    return parse_topology(json.loads(spec), source=f"topology of thread {thread_id!r}")


async def topology_of_thread(checkpointer: BaseCheckpointSaver[Any], thread_id: str) -> Topology:
    """The topology of the thread's latest run; MoAInputError if the thread is unknown."""
    topology = await stored_topology(checkpointer, thread_id)
    if topology is None:
        raise MoAInputError(f"no thread {thread_id!r} in the thread store")
    return topology


@dataclass
class HistoryEntry:
    """One checkpoint: which nodes had just run, what runs next, when, and where it sits among
    the thread's branches."""

    checkpoint_id: str
    parent_id: str | None
    step: int
    created_at: str
    ran: list[str]  # for an edit: the node it was written as (candidates if unclear)
    next: list[str]
    layer: int | None  # the proposer layer the checkpoint belongs to, if any
    source: str  # LangGraph's: "input", "loop", "update" (an edit or fork point), "fork"
    edit: bool  # written by update_state (moa fork, Studio), not by a node that ran
    changes: list[str]  # for an edit: what it changed ("edited L2/a", "dropped L1/b", "messages")
    current: bool  # on the thread's current branch (what the next run continues from)
    branches: int  # checkpoints made from this one; 2 or more: the thread forks here


def _layer_of(nodes: Sequence[str]) -> int | None:
    return next((n for n in map(layer_of, nodes) if n is not None), None)


async def _snapshots(graph: CompiledStateGraph[Any, Any, Any, Any], thread_id: str) -> list[Any]:
    config: RunnableConfig = {"configurable": {"thread_id": thread_id}}
    return [s async for s in graph.aget_state_history(config)]


def _id(config: RunnableConfig | None) -> str | None:
    return config["configurable"]["checkpoint_id"] if config else None


def _writers_of(graph: CompiledStateGraph[Any, Any, Any, Any], nxt: Sequence[str]) -> list[str]:
    """The nodes an edit that leads to ``nxt`` can have been written as.

    LangGraph records no ``as_node`` with an ``update_state`` checkpoint, but the edit runs that
    node's edges, so the nodes that run next are its successors: the node is the one whose edges
    (conditional ones included) reach all of them.
    """
    targets: dict[str, set[str]] = {}
    for edge in graph.get_graph().edges:
        targets.setdefault(edge.source, set()).add(edge.target)
    wanted = set(nxt) or {END}
    return sorted(n for n, reach in targets.items() if n != START and wanted <= reach)


def _changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """What an edit changed, proposal by proposal, then the other keys it touched."""
    old = {(p["layer"], p["index"]): p for layer in before.get("layers", []) for p in layer}
    new = {(p["layer"], p["index"]): p for layer in after.get("layers", []) for p in layer}
    found: list[str] = []
    for key in sorted(old.keys() | new.keys()):
        was, now = old.get(key), new.get(key)
        if was == now:
            continue
        ref = (now or was or {}).get("node", f"L{key[0]}#{key[1]}")
        if now is None or (was is not None and was["ok"] and not now["ok"]):
            found.append(f"dropped {ref}")
        elif was is None:
            found.append(f"added {ref}")
        elif was.get("text") != now.get("text"):
            found.append(f"edited {ref}")
        else:
            found.append(f"changed {ref}")
    found += [
        key
        for key in sorted(before.keys() | after.keys())
        if key != "layers" and _unset_if_empty(before.get(key)) != _unset_if_empty(after.get(key))
    ]
    return found


def _unset_if_empty(value: Any) -> Any:
    """An empty record list (a run's fresh start) reads as not written."""
    return None if value == [] else value


async def history(
    graph: CompiledStateGraph[Any, Any, Any, Any], thread_id: str
) -> list[HistoryEntry]:
    """Every checkpoint of the thread, newest first, on every branch."""
    snapshots = await _snapshots(graph, thread_id)
    by_id = {_id(s.config): s for s in snapshots}
    children: dict[str | None, int] = {}
    for snap in snapshots:
        parent_id = _id(snap.parent_config)
        children[parent_id] = children.get(parent_id, 0) + 1
    current: set[str | None] = set()
    head = snapshots[0] if snapshots else None
    while head is not None:  # the newest checkpoint and its ancestors: the current branch
        current.add(_id(head.config))
        head = by_id.get(_id(head.parent_config))
    entries = []
    for snap in snapshots:
        checkpoint_id, parent = _id(snap.config), _id(snap.parent_config)
        metadata = snap.metadata or {}
        source = str(metadata.get("source", ""))
        edit = source == "update"
        before = by_id.get(parent)
        if edit:
            ran = _writers_of(graph, snap.next)
            # of several candidates, those that ran just before the edit are the ones it redoes
            # (a final answer edited after the aggregator ran, not as the fallback)
            grand = by_id.get(_id(before.parent_config)) if before is not None else None
            redone = [n for n in ran if grand is not None and n in grand.next]
            ran = redone or ran
            changes = _changes(before.values if before else {}, snap.values)
        else:
            ran = list(before.next) if before is not None else []
            changes = []
        entries.append(
            HistoryEntry(
                checkpoint_id=str(checkpoint_id),
                parent_id=parent,
                step=int(metadata.get("step", -1)),
                created_at=snap.created_at or "",
                ran=ran,
                next=list(snap.next),
                layer=_layer_of(ran) or _layer_of(list(snap.next)),
                source=source,
                edit=edit,
                changes=changes,
                current=checkpoint_id in current,
                branches=children.get(checkpoint_id, 0),
            )
        )
    return entries


def _stage_of(node: str, topology: Topology) -> str:
    """The stage a fork point names: a proposer of the topology stands for its layer's join."""
    stages = [PREPARE]
    for i in range(1, len(topology.layers) + 1):  # a join, and its judge's node if it has one
        stages += dict.fromkeys([join_node(i), layer_exit(topology, i)])
    if topology.critic is not None:
        stages.append(CRITIC)
    if topology.review == "before_aggregate":
        stages.append(REVIEW)
    if node in stages:
        return node
    for i, layer in enumerate(topology.layers, start=1):
        if node in {proposer_node(i, agent.name or "") for agent in layer.proposers}:
            return join_node(i)
    raise MoAInputError(
        f"cannot fork at {node!r}: no such stage in topology {topology.name!r}; name a "
        f"proposer (e.g. {proposer_node(1, topology.layers[0].proposers[0].name or '')}) or "
        f"one of {', '.join(stages)}"
    )


async def fork_config(
    graph: CompiledStateGraph[Any, Any, Any, Any],
    topology: Topology,
    thread_id: str,
    *,
    at: str,
    edit: Mapping[str, str] | None = None,
    drop: Sequence[str] = (),
) -> RunnableConfig:
    """Fork the thread's latest turn right after stage ``at`` ran, with proposals edited or
    dropped; returns the config to continue from (``graph.ainvoke(None, config)``)."""
    stage = _stage_of(at, topology)
    snapshots: list[StateSnapshot] = await _snapshots(graph, thread_id)
    if not snapshots:
        raise MoAInputError(f"no thread {thread_id!r} in the thread store")
    target = _checkpoint_after(snapshots, stage)
    if target is None:
        raise MoAInputError(
            f"thread {thread_id!r} has no checkpoint after {stage} in its last turn"
        )
    values = target.values
    changes: dict[str, Any] = {}
    if edit or drop:
        proposals = [p for layer in values.get("layers", []) for p in layer]
        last_ran = _last_layer_ran(stage, topology)
        late = [r for r in [*(edit or {}), *drop] if (layer_of(r) or 0) > last_ran]
        if late:
            raise MoAInputError(
                f"{', '.join(late)} had not run yet at {stage}: fork at a later stage to edit it"
            )
        changed = apply_edits(proposals, dict(edit or {}), list(drop))
        merged = {(p["layer"], p["index"]): p for p in [*proposals, *changed]}
        for layer in sorted({p["layer"] for p in changed}):
            if not any(p["ok"] for (n, _), p in merged.items() if n == layer):
                raise MoAInputError(
                    f"dropping {', '.join(drop)} leaves layer {layer} with no proposal: "
                    "nothing to synthesize (keep or edit at least one)"
                )
        changes["layers"] = changed
    return await graph.aupdate_state(target.config, changes or None, as_node=stage)


def _last_layer_ran(stage: str, topology: Topology) -> int:
    if stage == PREPARE:
        return 0
    return layer_of(stage) or len(topology.layers)


def _checkpoint_after(snapshots: Sequence[StateSnapshot], stage: str) -> StateSnapshot | None:
    """The newest checkpoint of the current branch's last turn written just after ``stage``."""
    by_id = {s.config["configurable"]["checkpoint_id"]: s for s in snapshots}
    current: StateSnapshot | None = snapshots[0]
    while current is not None:
        parent_id = (
            current.parent_config["configurable"]["checkpoint_id"]
            if current.parent_config
            else None
        )
        parent = by_id.get(parent_id) if parent_id else None
        if parent is not None and stage in parent.next:
            return current
        if parent is not None and PREPARE in parent.next:
            return None  # reached the start of the last turn
        current = parent
    return None
