"""Compose the message lists each agent receives from the conversation and earlier answers."""

from __future__ import annotations

import json
from collections.abc import Sequence

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from langgraph_moa.llm.text import text_of
from langgraph_moa.nodes.context_window import Trim, estimate_tokens, fit_to_window
from langgraph_moa.nodes.prompts import (
    AFTER_TOOLS_PROMPT,
    CRITIC_REQUEST_PROMPT,
    CRITIC_SYSTEM_PROMPT,
    CRITIQUE_SECTION,
    JUDGE_SYSTEM_PROMPT,
    SYNTHESIZE_PROMPT,
)
from langgraph_moa.spec.agent import Agent
from langgraph_moa.spec.models import context_window_for


def numbered(texts: Sequence[str]) -> str:
    """``1. first\\n2. second``: the paper's layout for references."""
    return "\n".join(f"{i}. {text.strip()}" for i, text in enumerate(texts, 1))


_DIGEST_CHARS = 400


def _tool_digest(conversation: Sequence[BaseMessage]) -> list[BaseMessage]:
    """The conversation with tool traffic folded into plain assistant text.

    Proposers and the critic get no tool schemas, and providers refuse tool messages without
    them, so an assistant turn that called tools and the results it got become one short
    assistant message: ``[called get_weather({"city": "Paris"}) -> 18 C, sunny]``.
    """
    out: list[BaseMessage] = []
    for m in conversation:
        if isinstance(m, AIMessage) and m.tool_calls:
            calls = ", ".join(
                f"{c['name']}({json.dumps(c['args'], ensure_ascii=False)})" for c in m.tool_calls
            )
            text = text_of(m).strip()
            out.append(AIMessage(f"{text}\n[called {calls}]".strip()))
        elif isinstance(m, ToolMessage):
            result = text_of(m).strip()
            if len(result) > _DIGEST_CHARS:
                result = result[:_DIGEST_CHARS] + " [...]"
            note = f"[{m.name or 'tool'} returned: {result}]"
            if out and isinstance(out[-1], AIMessage):
                out[-1] = AIMessage(f"{text_of(out[-1])}\n{note}")
            else:
                out.append(AIMessage(note))
        else:
            out.append(m)
    if conversation and isinstance(conversation[-1], ToolMessage):
        out.append(HumanMessage(AFTER_TOOLS_PROMPT))
    return out


def _split_system(conversation: Sequence[BaseMessage]) -> tuple[list[str], list[BaseMessage]]:
    system = [text_of(m) for m in conversation if isinstance(m, SystemMessage)]
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

    The system message holds the agent's role and the conversation's own system text; the
    conversation follows unchanged; then, when there are earlier answers, one last user message
    holds the synthesize instruction with the numbered references, and the critique. So every
    request of a row starts with the same prefix (instructions, then the user's conversation)
    and only its end differs, which lets a provider's prompt cache (and a Batch API's) reuse
    the prefix across a row's calls.
    """
    system_parts, rest = _split_system(conversation)
    parts = [p for p in [role, *system_parts] if p and p.strip()]
    head: list[BaseMessage] = [SystemMessage("\n\n".join(parts))] if parts else []
    if not references:
        return [*head, *rest]
    section = SYNTHESIZE_PROMPT.format(references=numbered(references))
    if critique:
        section += CRITIQUE_SECTION.format(critique=critique.strip())
    return [*head, *rest, HumanMessage(section)]


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
        lines.append(f"[{who}]\n{text_of(m).strip()}")
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


def _window(agent: Agent) -> int | None:
    return context_window_for(agent.model, agent.context_window)


def fitted_synthesis_messages(
    agent: Agent,
    conversation: Sequence[BaseMessage],
    references: Sequence[str],
    *,
    critique: str | None = None,
    keep_tool_messages: bool = False,
) -> tuple[list[BaseMessage], Trim | None]:
    """:func:`synthesis_messages` for ``agent``, with references (and, if need be, earlier
    turns) trimmed to fit its context window; the trim, if any, is returned for the record.
    Tool traffic is folded into text unless ``keep_tool_messages`` (an agent with tools)."""
    if not keep_tool_messages:
        conversation = _tool_digest(conversation)
    system_parts, _ = _split_system(conversation)
    fixed = [agent.system_prompt or "", *system_parts, SYNTHESIZE_PROMPT, critique or ""]
    conv, refs, trim = fit_to_window(
        conversation,
        references,
        window=_window(agent),
        reserved_tokens=agent.max_tokens + estimate_tokens("\n\n".join(fixed)),
    )
    messages = synthesis_messages(
        conv, role=agent.system_prompt, references=refs, critique=critique
    )
    return messages, trim


def fitted_critic_messages(
    agent: Agent, conversation: Sequence[BaseMessage], candidates: Sequence[str]
) -> tuple[list[BaseMessage], Trim | None]:
    """:func:`critic_messages` with the candidates fitted to the critic's context window."""
    conversation = _tool_digest(conversation)
    fixed = "\n\n".join([agent.system_prompt or "", CRITIC_SYSTEM_PROMPT, CRITIC_REQUEST_PROMPT])
    conv, kept, trim = fit_to_window(
        conversation,
        candidates,
        window=_window(agent),
        reserved_tokens=agent.max_tokens + estimate_tokens(fixed),
    )
    return critic_messages(conv, kept, role=agent.system_prompt), trim


def fitted_judge_messages(
    agent: Agent,
    conversation: Sequence[BaseMessage],
    candidates: Sequence[str],
    request: str,
) -> tuple[list[BaseMessage], Trim | None]:
    """Messages for a model judging numbered ``candidates`` (select and rank modes): the judge's
    instructions, then ``request`` (a template with ``{conversation}``, ``{candidates}`` and
    ``{count}``) fitted to its context window. A trim cuts earlier turns before candidates."""
    conversation = _tool_digest(conversation)
    system = "\n\n".join(p for p in (agent.system_prompt, JUDGE_SYSTEM_PROMPT) if p)
    conv, kept, trim = fit_to_window(
        conversation,
        candidates,
        window=_window(agent),
        reserved_tokens=agent.max_tokens + estimate_tokens(system + request),
    )
    text = request.format(
        conversation=_transcript(conv), candidates=numbered(kept), count=len(kept)
    )
    return [SystemMessage(system), HumanMessage(text)], trim
