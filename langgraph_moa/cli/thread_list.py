"""``moa threads``: the threads of a thread store, most recently active first, each with its
topology, turns, last activity, state and what its conversation cost.

LangGraph's checkpointers can list the checkpoints of a thread but have no call that lists the
threads themselves, so their ids come from one SQL query on the ``checkpoints`` table that
LangGraph's SQLite and PostgreSQL savers both create (the newest checkpoint id is the latest
activity: the ids are time-ordered). Everything else is read through LangGraph, by the thread's
own graph, as ``moa history`` reads it.

The cost is that of the conversation as it stands: the turns on the current branch, each
counted once (a turn's usage is in the state until the next turn starts). What branches left
behind by ``moa fork`` spent is not in it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from langgraph_moa.errors import MoAInputError

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.base import BaseCheckpointSaver


_LATEST = (
    "SELECT thread_id, MAX(checkpoint_id) AS latest FROM checkpoints "
    "WHERE checkpoint_ns = '' GROUP BY thread_id ORDER BY latest DESC LIMIT {}"
)


@dataclass
class ThreadSummary:
    thread_id: str
    topology: str | None  # None: a thread not made by moa
    turns: int  # the user's messages in the conversation
    last_activity: str  # ISO time of its newest checkpoint
    state: str  # "done", "paused" (for review), "unfinished" (crashed or interrupted), "empty"
    cost_usd: float | None  # None when no model used had a known price
    total_tokens: int
    checkpoints: int
    edits: int  # update_state checkpoints: forks and Studio edits


async def _thread_ids(saver: BaseCheckpointSaver[Any], limit: int) -> list[str]:
    """The ids of the ``limit`` most recently active threads, most recent first."""
    conn: Any = getattr(saver, "conn", None)
    lock: Any = getattr(saver, "lock", None)
    if conn is None or lock is None:
        raise MoAInputError(f"cannot list the threads of a {type(saver).__name__}")
    async with lock:
        if type(saver).__module__.startswith("langgraph.checkpoint.sqlite"):
            async with conn.execute(_LATEST.format("?"), (limit,)) as cursor:
                rows = await cursor.fetchall()
        else:  # PostgreSQL (psycopg), rows as dicts or tuples
            async with conn.cursor() as cursor:
                await cursor.execute(_LATEST.format("%s"), (limit,))
                rows = await cursor.fetchall()
    return [str(row["thread_id"] if isinstance(row, dict) else row[0]) for row in rows]


async def _summary(
    saver: BaseCheckpointSaver[Any], thread_id: str, graphs: dict[str, Any]
) -> ThreadSummary | None:
    from langchain_core.messages import HumanMessage

    from langgraph_moa.cli.threads import stored_topology
    from langgraph_moa.graphs.builder import build_graph

    try:
        topology = await stored_topology(saver, thread_id)
    except MoAInputError:  # a thread some other program wrote, or a topology no longer valid
        topology = None
    if topology is None:
        found = await saver.aget_tuple({"configurable": {"thread_id": thread_id}})
        if found is None:
            return None
        return ThreadSummary(
            thread_id, None, 0, found.checkpoint.get("ts", ""), "unknown", None, 0, 0, 0
        )
    spec = topology.model_dump_json()
    if spec not in graphs:  # threads of one topology share its graph
        graphs[spec] = build_graph(topology, checkpointer=saver)
    graph = graphs[spec]
    config: RunnableConfig = {"configurable": {"thread_id": thread_id}}
    snapshots = [s async for s in graph.aget_state_history(config)]
    if not snapshots:
        return None
    by_id = {s.config["configurable"]["checkpoint_id"]: s for s in snapshots}
    head = snapshots[0]
    # a turn's usage stays in the state until the next turn's input: add it up at each input
    # checkpoint of the current branch, and the head's for the turn in progress or last done
    ends = [] if (head.metadata or {}).get("source") == "input" else [head]
    node: Any = head
    while node is not None:
        if (node.metadata or {}).get("source") == "input":
            ends.append(node)
        parent = node.parent_config
        node = by_id.get(parent["configurable"]["checkpoint_id"]) if parent else None
    cost: float | None = None
    tokens = 0
    for snap in ends:
        usage = snap.values.get("usage") or {}
        tokens += int(usage.get("total_tokens") or 0)
        if usage.get("cost_usd") is not None:
            cost = (cost or 0.0) + float(usage["cost_usd"])
    messages = head.values.get("messages") or []
    if head.interrupts:
        state = "paused"
    elif head.next:
        state = "unfinished"
    else:
        state = "done" if messages else "empty"
    return ThreadSummary(
        thread_id=thread_id,
        topology=topology.name,
        turns=sum(1 for m in messages if isinstance(m, HumanMessage)),
        last_activity=head.created_at or "",
        state=state,
        cost_usd=cost,
        total_tokens=tokens,
        checkpoints=len(snapshots),
        edits=sum(1 for s in snapshots if (s.metadata or {}).get("source") == "update"),
    )


async def _list_threads(saver: BaseCheckpointSaver[Any], limit: int = 20) -> list[ThreadSummary]:
    """Summaries of the ``limit`` most recently active threads of the store."""
    graphs: dict[str, Any] = {}
    found = [await _summary(saver, t, graphs) for t in await _thread_ids(saver, limit)]
    return [s for s in found if s is not None]


def _table(rows: list[ThreadSummary]) -> str:
    header = ("THREAD", "TOPOLOGY", "TURNS", "STATE", "LAST ACTIVITY (UTC)", "TOKENS", "COST")
    cells = [header] + [
        (
            r.thread_id,
            r.topology or "-",
            str(r.turns),
            r.state + (f", {r.edits} edits" if r.edits else ""),
            r.last_activity[:19].replace("T", " "),
            str(r.total_tokens),
            f"${r.cost_usd:.4f}" if r.cost_usd is not None else "-",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n"
        for row in cells
    )


def threads_command(
    limit: Annotated[int, typer.Option(min=1, help="Show this many threads, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON list.")] = False,
    db: Annotated[
        str | None,
        typer.Option(help="Thread store: a SQLite path or postgresql:// URL (or $MOA_DB)."),
    ] = None,
) -> None:
    """List the threads of the thread store, most recently active first: topology, turns,
    state, last activity and what the conversation cost."""

    from langgraph_moa.cli.store import open_checkpointer

    async def summaries() -> list[ThreadSummary]:
        async with open_checkpointer(db) as saver:
            return await _list_threads(saver, limit)

    rows = asyncio.run(summaries())
    if as_json:
        sys.stdout.write(json.dumps([asdict(r) for r in rows], ensure_ascii=False) + "\n")
    elif rows:
        sys.stdout.write(_table(rows))
    else:
        sys.stderr.write("no threads in the thread store\n")
