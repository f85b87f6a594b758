"""The reply-size guard: a reply may not run past its ``max_tokens``, and no reply is kept past
:func:`reply_limit` characters.

An upstream that ignores the limit is cut off, and what it is counted at is capped. A streamed
reply is cut (the connection closed) once its text passes :data:`CUT_CHARS_PER_TOKEN`
characters a token of the limit (natural text averages 3 to 5; :class:`StopLongReplies`); a
whole reply whose reported completion tokens or text go past the limit is refused
(:func:`past_the_limit`), and one whose body passes what that text could take is not read
further (:func:`~langgraph_moa.llm.openai_client.limit_reply_bytes`, sized by
:func:`body_limit`). Either way the call fails with an error that says so, and is counted at its
prompt (as reported, or counted by :mod:`langgraph_moa.llm.token_bound` when the report never
came) plus ``max_tokens`` completion tokens a sample (:func:`capped`): the most an upstream that
honours the limit can charge, which is what the budget reserved for it.

Hand-written because no client library caps a reply that an upstream lets run on: the limit is
a request to the server, and the guard is what holds a server that ignores it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.messages import BaseMessage

from langgraph_moa.llm.token_bound import counter_for
from langgraph_moa.llm.usage import TokenUsage
from langgraph_moa.spec.agent import Agent

_MIN_REPLY_LIMIT = 100_000
CUT_CHARS_PER_TOKEN = 6  # a reply past this many characters a token of max_tokens is cut
# a whole reply's body: up to 6 bytes a character (JSON's \uXXXX escapes), plus its envelope
_BODY_BYTES_PER_TOKEN = CUT_CHARS_PER_TOKEN * 6
_BODY_ENVELOPE_BYTES = 4096
IGNORED = "the upstream ignored max_tokens"


def reply_limit(agent: Agent) -> int:
    """The most characters kept from one reply: far above what ``max_tokens`` allows (a token
    is about 4 characters), so only a broken or hostile upstream reaches it."""
    return max(_MIN_REPLY_LIMIT, agent.max_tokens * 16)


def body_limit(max_tokens: int, n: int) -> int:
    """The most bytes read of a whole reply of ``n`` samples of ``max_tokens`` each."""
    return max_tokens * n * _BODY_BYTES_PER_TOKEN + _BODY_ENVELOPE_BYTES


class ReplyTooLong(Exception):
    """An upstream reply passed its limit; the stream is closed there."""


class _QuietStop(logging.Filter):
    """LangChain logs a warning for every exception a callback raises, even one raised on
    purpose to stop a stream; the failure is in the call's record, so the log line is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "StopLongReplies" not in record.getMessage()


logging.getLogger("langchain_core.callbacks.manager").addFilter(_QuietStop())


class StopLongReplies(AsyncCallbackHandler):
    """Counts a streamed reply's characters and stops the request once past the limit (a
    callback with ``raise_error`` is how LangChain lets a caller abort a stream)."""

    raise_error = True

    def __init__(self, limit: int, max_tokens: int | None = None) -> None:
        self.limit = limit
        self.max_tokens = max_tokens  # when the limit is what max_tokens allows
        self.seen = 0

    @classmethod
    def for_request(cls, agent: Agent, max_tokens: int) -> StopLongReplies:
        """The guard of one streamed sample: cut at what ``max_tokens`` allows, unless that is
        above the agent's :func:`reply_limit`."""
        cut = max_tokens * CUT_CHARS_PER_TOKEN
        if cut < reply_limit(agent):
            return cls(cut, max_tokens)
        return cls(reply_limit(agent))

    async def on_llm_new_token(
        self, token: str | list[str | dict[str, Any]], **kwargs: Any
    ) -> None:
        self.seen += len(token) if isinstance(token, str) else len(str(token))
        if self.seen > self.limit:
            if self.max_tokens is not None:
                raise ReplyTooLong(
                    f"the upstream ignored max_tokens: the reply passed {self.limit} characters, "
                    f"more than {self.max_tokens} tokens allow; it was cut off there"
                )
            raise ReplyTooLong(f"the reply passed {self.limit} characters; it was cut off there")


def capped(model: str, messages: list[BaseMessage], usage: TokenUsage, allowed: int) -> TokenUsage:
    """What a reply that ran past its limit is counted at: its prompt (as reported, else
    counted from the messages for ``model``) and ``allowed`` completion tokens."""
    prompt = usage["prompt_tokens"] or counter_for(model).messages(messages)
    return {"prompt_tokens": prompt, "completion_tokens": allowed, "total_tokens": prompt + allowed}


def past_the_limit(
    text: str | None, usage: TokenUsage, max_tokens: int, allowed: int
) -> str | None:
    """Why a whole reply ran past ``max_tokens`` (its reported completion tokens, or its text
    by :data:`CUT_CHARS_PER_TOKEN`), or None."""
    # one token over is an end-of-text token some servers count (llama.cpp does), not a reply
    # that ran on
    if usage["completion_tokens"] > allowed + 1:
        return (
            f"{IGNORED}: it reported {usage['completion_tokens']} completion tokens for a limit "
            f"of {allowed}; counted at the limit"
        )
    chars = len(text or "")
    if chars > max_tokens * CUT_CHARS_PER_TOKEN:
        return (
            f"{IGNORED}: the reply was {chars} characters, more than {max_tokens} tokens allow "
            f"({math.ceil(chars / CUT_CHARS_PER_TOKEN)} tokens at the least); counted at the limit"
        )
    return None
