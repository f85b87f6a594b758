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

from langgraph_moa.llm.text import text_of

# A reference gets at least this many tokens, or it is not sent at all.
MIN_REFERENCE_TOKENS = 32

# Appended to a reference that was shortened.
_CUT_MARKER = " [...]"

# Tokens a chat message costs beyond its text (role, separators).
_MESSAGE_OVERHEAD = 4


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


def message_tokens(messages: Sequence[BaseMessage]) -> int:
    """Estimate the tokens of chat messages: their text plus a small overhead per message."""
    return sum(estimate_tokens(text_of(m)) + _MESSAGE_OVERHEAD for m in messages)


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
