"""Compose the message lists each agent receives from the conversation and earlier answers."""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
)

from langgraph_moa.nodes.prompts import (
    CRITIC_REQUEST_PROMPT,
    CRITIC_SYSTEM_PROMPT,
    CRITIQUE_SECTION,
    SYNTHESIZE_PROMPT,
)

__all__ = ["critic_messages", "numbered", "synthesis_messages"]


def numbered(texts: Sequence[str]) -> str:
    """``1. first\\n2. second``: the paper's layout for references."""
    return "\n".join(f"{i}. {text.strip()}" for i, text in enumerate(texts, 1))


def _text(message: BaseMessage) -> str:
    return message.text if isinstance(message.text, str) else str(message.content)


def _split_system(conversation: Sequence[BaseMessage]) -> tuple[list[str], list[BaseMessage]]:
    system = [_text(m) for m in conversation if isinstance(m, SystemMessage)]
    rest = [m for m in conversation if not isinstance(m, SystemMessage)]
    return system, rest


def synthesis_messages(
    conversation: Sequence[BaseMessage],
    *,
    role: str | None = None,
    references: Sequence[str] = (),
    critique: str | None = None,
) -> list[BaseMessage]:
    """Messages for a proposer or the aggregator.

    The system message holds, in order: the agent's role, the conversation's own system text,
    then (when there are earlier answers) the synthesize instruction with the numbered
    references, then the critique. The conversation follows unchanged.
    """
    system_parts, rest = _split_system(conversation)
    parts = [p for p in [role, *system_parts] if p and p.strip()]
    if references:
        section = SYNTHESIZE_PROMPT.format(references=numbered(references))
        if critique:
            section += CRITIQUE_SECTION.format(critique=critique.strip())
        parts.append(section)
    if not parts:
        return list(rest)
    return [SystemMessage("\n\n".join(parts)), *rest]


def _transcript(conversation: Sequence[BaseMessage]) -> str:
    lines = []
    for m in conversation:
        who = (
            "System"
            if isinstance(m, SystemMessage)
            else "User"
            if isinstance(m, HumanMessage)
            else "Assistant"
            if isinstance(m, AIMessage)
            else m.type.capitalize()
        )
        lines.append(f"[{who}]\n{_text(m).strip()}")
    return "\n\n".join(lines)


def critic_messages(
    conversation: Sequence[BaseMessage], candidates: Sequence[str], *, role: str | None = None
) -> list[BaseMessage]:
    """Messages for the critic: its instructions, then the conversation and candidates to review."""
    system = "\n\n".join(p for p in (role, CRITIC_SYSTEM_PROMPT) if p)
    request = CRITIC_REQUEST_PROMPT.format(
        conversation=_transcript(conversation), candidates=numbered(candidates)
    )
    return [SystemMessage(system), HumanMessage(request)]
