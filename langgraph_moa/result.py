"""The result of a turn as every door reports it (CLI ``--json``, Python, later the servers)."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage

from langgraph_moa.llm.text import text_of
from langgraph_moa.nodes.state import MoAState, empty_usage


def answer_of(state: MoAState) -> str:
    """The final answer of the latest turn (the last AI message), or "" if there is none."""
    for message in reversed(state.get("messages") or []):
        if isinstance(message, AIMessage):
            return text_of(message)
    return ""


def result_of(state: MoAState, *, latency_s: float | None = None) -> dict[str, Any]:
    """A JSON-able summary: answer, layers, critique, the aggregator's record (latency, attempts,
    finish reason), usage, degraded, latency_s, plus the budget ledger and how a fallback
    answered (both None when unused), how the aggregator's mode chose (``aggregation``) and the
    layers' early-stop checks."""
    return {
        "answer": answer_of(state),
        "layers": state.get("layers") or [],
        "critique": state.get("critique"),
        "aggregator": state.get("aggregator"),
        "usage": state.get("usage") or empty_usage(),
        "degraded": bool(state.get("degraded")),
        "latency_s": None if latency_s is None else round(latency_s, 3),
        "ledger": state.get("ledger"),
        "fallback": state.get("fallback"),
        "aggregation": state.get("aggregation"),
        "early_stop": state.get("early_stop") or [],
        "joins": state.get("joins") or [],
    }
