"""Fit what an agent receives into its context window.

Token counts here are estimates that do not depend on any provider's tokenizer. When the
conversation plus the reference answers would overflow a model's window, the oldest earlier
turns go first, then the references share what is left: short ones stay whole, long ones are
cut at a word boundary, and if the share per reference becomes too small the last ones are
dropped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from langchain_core.messages import BaseMessage, SystemMessage
from typing_extensions import TypedDict

__all__ = [
    "KNOWN_CONTEXT_WINDOWS",
    "MIN_REFERENCE_TOKENS",
    "Trim",
    "context_window_for",
    "estimate_tokens",
    "fit_to_window",
    "message_tokens",
]

# A reference gets at least this many tokens, or it is not sent at all.
MIN_REFERENCE_TOKENS = 32

# Appended to a reference that was shortened.
_CUT_MARKER = " [...]"

# Tokens a chat message costs beyond its text (role, separators).
_MESSAGE_OVERHEAD = 4

# Context windows in tokens, keyed "provider:model"; a key ending in "*" matches by prefix.
KNOWN_CONTEXT_WINDOWS: dict[str, int] = {
    "openai:gpt-4o": 128000,
    "openai:gpt-4o-mini": 128000,
    "openai:gpt-4.1": 1047576,
    "openai:gpt-4.1-mini": 1047576,
    "together:Qwen/Qwen1.5-110B-Chat": 32768,
    "together:Qwen/Qwen1.5-72B-Chat": 32768,
    "together:microsoft/WizardLM-2-8x22B": 65536,
    "together:meta-llama/Llama-3-70b-chat-hf": 8192,
    "together:mistralai/Mixtral-8x22B-Instruct-v0.1": 65536,
    "together:databricks/dbrx-instruct": 32768,
    "local:smollm2": 8192,
    "local:smollm2-135m-instruct": 8192,
}


class Trim(TypedDict):
    """What fitting removed or shortened, for reporting; all counts are estimated tokens."""

    window: int
    # Tokens left for the references once the conversation (after dropping turns) and the
    # reserved tokens are taken out; never below 0.
    available_tokens: int
    references_before: int
    references_after: int
    references_dropped: int
    turns_dropped: int


def estimate_tokens(text: str) -> int:
    """Estimate the tokens in ``text``, assuming about 4 characters per token (English text).

    This is deliberately rough and the same for every provider; 0 for the empty string.
    """
    return math.ceil(len(text) / 4)


def _message_text(message: BaseMessage) -> str:
    text = message.text
    return str(text) if isinstance(text, str) else str(message.content)


def message_tokens(messages: Sequence[BaseMessage]) -> int:
    """Estimate the tokens of chat messages: their text plus a small overhead per message."""
    return sum(estimate_tokens(_message_text(m)) + _MESSAGE_OVERHEAD for m in messages)


def context_window_for(model: str, declared: int | None) -> int | None:
    """The context window of ``model`` ("provider:model"), or None when unknown.

    A ``declared`` window always wins; otherwise an exact key in the table, then the longest
    matching ``*`` prefix key.
    """
    if declared is not None:
        return declared
    if model in KNOWN_CONTEXT_WINDOWS:
        return KNOWN_CONTEXT_WINDOWS[model]
    prefixes = [
        key for key in KNOWN_CONTEXT_WINDOWS if key.endswith("*") and model.startswith(key[:-1])
    ]
    if not prefixes:
        return None
    return KNOWN_CONTEXT_WINDOWS[max(prefixes, key=len)]


def _drop_old_turns(
    conversation: Sequence[BaseMessage], available: int
) -> tuple[list[BaseMessage], int, int]:
    """Drop the oldest non-system turns (never the last message) until references fit."""
    kept = list(conversation)
    dropped = 0
    while available < MIN_REFERENCE_TOKENS:
        index = next((i for i, m in enumerate(kept[:-1]) if not isinstance(m, SystemMessage)), None)
        if index is None:
            break
        available += message_tokens([kept.pop(index)])
        dropped += 1
    return kept, available, dropped


def _cut(text: str, share: int) -> str:
    """Shorten ``text`` to at most ``share`` tokens, marker included, ending on a word."""
    limit = max(share * 4 - len(_CUT_MARKER), 0)
    head = text[:limit]
    if limit < len(text) and not text[limit].isspace():
        last_space = re.search(r"\s\S*\Z", head)
        if last_space and last_space.start() > 0:
            head = head[: last_space.start()]
    return head.rstrip() + _CUT_MARKER


def _fit_references(references: list[str], budget: int) -> list[str]:
    """Share ``budget`` tokens among the references (water-filling), dropping from the end."""
    costs = [estimate_tokens(r) for r in references]
    if sum(costs) <= budget:
        return list(references)
    count = len(references)
    while count and budget // count < MIN_REFERENCE_TOKENS:
        count -= 1
    # Whole references that fit in an equal share keep their text and give back the rest.
    remaining = set(range(count))
    while remaining:
        share = budget // len(remaining)
        small = {i for i in remaining if costs[i] <= share}
        if not small:
            break
        budget -= sum(costs[i] for i in small)
        remaining -= small
    share = budget // len(remaining) if remaining else 0
    return [_cut(references[i], share) if i in remaining else references[i] for i in range(count)]


def fit_to_window(
    conversation: Sequence[BaseMessage],
    references: Sequence[str],
    *,
    window: int | None,
    reserved_tokens: int,
) -> tuple[list[BaseMessage], list[str], Trim | None]:
    """Fit a conversation and its reference texts into ``window`` tokens.

    ``reserved_tokens`` is what the caller keeps aside: the agent's ``max_tokens`` plus its
    fixed system text. Returns the conversation (oldest turns possibly removed), the fitted
    references, and a ``Trim`` when anything was dropped or cut (else None). With no known
    window nothing changes.
    """
    if window is None:
        return list(conversation), list(references), None
    # The references travel in one more system message, hence its overhead.
    available = window - reserved_tokens - message_tokens(conversation) - _MESSAGE_OVERHEAD
    kept, available, turns_dropped = _drop_old_turns(conversation, available)
    budget = max(available, 0)
    fitted = _fit_references(list(references), budget)
    if not turns_dropped and fitted == list(references):
        return kept, fitted, None
    trim = Trim(
        window=window,
        available_tokens=budget,
        references_before=sum(estimate_tokens(r) for r in references),
        references_after=sum(estimate_tokens(r) for r in fitted),
        references_dropped=len(references) - len(fitted),
        turns_dropped=turns_dropped,
    )
    return kept, fitted, trim
