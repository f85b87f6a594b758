"""Human review before aggregation, and the edits a person can make to proposals.

With ``review: before_aggregate`` the ``review`` node pauses the run with LangGraph's
``interrupt()``, showing the last layer's candidates (and the critique). It resumes with a
decision: approve as they are, edit some, drop some. The same edits serve ``moa fork``.
A proposal is named by its node (``L2/qwen72``), or ``node#k`` for sample k of an agent with n > 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langgraph.types import interrupt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from langgraph_moa.errors import MoAInputError, MoARunError
from langgraph_moa.nodes.hygiene import answer_layer, proposal_ref
from langgraph_moa.nodes.propose import Node
from langgraph_moa.nodes.state import MoAState, Proposal
from langgraph_moa.spec.files import describe_validation_error

_DROPPED = "dropped by the reviewer"


class _ReviewDecision(BaseModel):
    """What the reviewer decided; an empty decision approves every candidate as it is."""

    model_config = ConfigDict(extra="forbid")

    approve: bool = True
    edit: dict[str, str] = Field(default_factory=dict, description="proposal -> new text")
    drop: list[str] = Field(default_factory=list, description="proposals to leave out")


def parse_decision(value: Any, *, source: str | None = None) -> _ReviewDecision:
    """A validated decision; MoAInputError naming ``source`` (e.g. the decision file) if any."""
    if isinstance(value, _ReviewDecision):
        return value
    try:
        return _ReviewDecision.model_validate(value if value is not None else {})
    except ValidationError as err:
        where = f" in {source}" if source else ""
        detail = describe_validation_error(err)
        raise MoAInputError(f"invalid review decision{where}: {detail}") from None


def apply_edits(
    proposals: Sequence[Proposal], edit: Mapping[str, str], drop: Sequence[str]
) -> list[Proposal]:
    """The proposals that change: edited texts, dropped ones marked failed with a reason.

    Raises MoAInputError naming any reference that is not a proposal of these.
    """
    refs = {proposal_ref(p, proposals): p for p in proposals}
    unknown = [r for r in [*edit, *drop] if r not in refs]
    if unknown:
        known = ", ".join(refs)
        raise MoAInputError(f"no proposal {', '.join(map(repr, unknown))}; known: {known}")
    changed: list[Proposal] = []
    for ref, text in edit.items():
        if not text.strip():
            raise MoAInputError(f"the edit of {ref} is empty (drop it instead)")
        changed.append(Proposal(**{**refs[ref], "text": text, "ok": True, "error": None}))
    for ref in drop:
        changed.append(Proposal(**{**refs[ref], "ok": False, "error": _DROPPED}))
    return changed


def make_review(*, last_layer: int) -> Node:
    async def review(state: MoAState) -> dict[str, Any]:
        """Pause for a person; apply their decision to the last layer's candidates."""
        proposals = state["layers"][answer_layer(state, last_layer) - 1]
        critique = state.get("critique")
        decision = parse_decision(
            interrupt(
                {
                    "kind": "review",
                    "candidates": [
                        {"ref": proposal_ref(p, proposals), "model": p["model"], "text": p["text"]}
                        for p in proposals
                        if p["ok"]
                    ],
                    "critique": critique["text"] if critique and critique["ok"] else None,
                    "how": 'resume with {"edit": {ref: text}, "drop": [ref, ...]} or {} to approve',
                }
            )
        )
        changed = apply_edits(proposals, decision.edit, decision.drop)
        merged = {p["index"]: p for p in [*proposals, *changed]}
        if not any(p["ok"] for p in merged.values()):
            raise MoARunError("the reviewer dropped every candidate: nothing to aggregate")
        record = {"edited": list(decision.edit), "dropped": list(decision.drop)}
        return {"layers": changed, "review": record}

    return review
