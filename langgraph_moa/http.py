"""The HTTP side of OpenAI-compatible providers: the openai client's own retries, tuned.

The openai client already retries what is worth retrying (429, 408, 409, 5xx, timeouts and
connection errors; never other 4xx), with exponential backoff and jitter, and honours a server's
Retry-After. This module only lets a topology set the backoff (``retry: {attempts, initial_s,
max_s}``) and counts the HTTP attempts each call made, so records can say how hard we tried.
"""

from __future__ import annotations

import contextvars
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai

from langgraph_moa.topology import Retry

__all__ = ["RetryingAsyncOpenAI", "count_attempts"]

# Longest Retry-After we wait for; beyond it the failure is reported instead.
MAX_RETRY_AFTER_S = 120.0

_attempts: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "moa_http_attempts", default=None
)


@contextmanager
def count_attempts() -> Iterator[list[int]]:
    """Count the HTTP requests sent inside this block (and tasks it starts): ``counter[0]``."""
    counter = [0]
    token = _attempts.set(counter)
    try:
        yield counter
    finally:
        _attempts.reset(token)


async def _on_request(request: Any) -> None:
    counter = _attempts.get()
    if counter is not None:
        counter[0] += 1


class RetryingAsyncOpenAI(openai.AsyncOpenAI):
    """``openai.AsyncOpenAI`` whose retry delays come from a :class:`Retry` setting."""

    def __init__(self, *, retry: Retry, timeout_s: float, **kwargs: Any) -> None:
        http_client = openai.DefaultAsyncHttpxClient(
            timeout=timeout_s, event_hooks={"request": [_on_request]}
        )
        super().__init__(
            max_retries=retry.attempts - 1, timeout=timeout_s, http_client=http_client, **kwargs
        )
        self._backoff = retry

    def _calculate_retry_timeout(
        self, remaining_retries: int, options: Any, response_headers: Any = None
    ) -> float:
        retry_after = self._parse_retry_after_header(response_headers)
        if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
            return float(min(retry_after, MAX_RETRY_AFTER_S))
        done = min(options.get_max_retries(self.max_retries) - remaining_retries, 60)
        delay = min(self._backoff.initial_s * 2.0**done, self._backoff.max_s)
        return delay * (1 - 0.25 * random.random())
