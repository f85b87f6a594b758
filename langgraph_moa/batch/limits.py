"""Rate limits for a batch: requests and tokens per minute, per model, provider or overall.

A limit is ``SCOPE=N``: scope ``openai:gpt-4o`` (one model), ``openai`` (every model of the
provider, one shared allowance) or ``*`` (every request). A request waits at every limit whose
scope covers it, before each HTTP attempt (retries included), through the model client's
request gate (:func:`langgraph_moa.llm.openai_client.gate_requests`).

Each limit is an ``aiolimiter`` leaky bucket holding half a second of the allowance (requests) or
1/20 of it (tokens), filling at a rate chosen so that no window of 60 s ever holds more than the
limit: with a bucket of size c and a rate r, a window of T seconds admits at most c + r*T, and one
more bucket's worth is kept in hand for requests held up on their way (the provider counts
arrivals). The half second lets a sender that was briefly late (a busy event loop) catch up
instead of losing that part of the allowance.
Tokens of a request are counted before it is sent: its messages at about 4 characters per token
plus its ``max_tokens`` (times ``n``).

A 429 pauses every limit covering the model for its Retry-After (or 1 s, doubling on each 429
in a row, up to 60 s), so the runs still waiting do not walk into the same wall; the request
itself is retried by the openai client, which honours Retry-After too.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import httpx2
from aiolimiter import AsyncLimiter

from langgraph_moa.errors import MoAInputError

_TOKEN_BURST = 20  # a token bucket holds 1/20 of a minute's allowance


@dataclass
class RateLimits:
    """Requests per minute and tokens per minute, by scope."""

    rpm: dict[str, float] = field(default_factory=dict)
    tpm: dict[str, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.rpm or self.tpm)

    def as_dict(self) -> dict[str, Any]:
        return {"rpm": self.rpm, "tpm": self.tpm}


def parse_limits(rpm: list[str] | None = None, tpm: list[str] | None = None) -> RateLimits:
    """``["600", "openai=3000", "openai:gpt-4o=500"]`` (a bare number is scope ``*``)."""

    def parse(items: list[str] | None, what: str) -> dict[str, float]:
        found: dict[str, float] = {}
        for item in items or []:
            scope, sep, value = item.rpartition("=")
            scope = scope.strip() if sep else "*"
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not math.isfinite(number) or number <= 0 or not scope:
                raise MoAInputError(
                    f"--{what} takes [SCOPE=]N with N > 0 (SCOPE: *, a provider or "
                    f"provider:model), got {item!r}"
                )
            found[scope] = number
        return found

    return RateLimits(parse(rpm, "rpm"), parse(tpm, "tpm"))


def _request_tokens(request: httpx2.Request) -> int:
    try:
        body = json.loads(request.content or b"{}")
    except (ValueError, httpx2.RequestNotRead):
        return 1
    chars = sum(len(json.dumps(m.get("content") or "")) for m in body.get("messages") or [])
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    return max(1, chars // 4 + int(limit) * int(body.get("n") or 1))


class _Bucket:
    def __init__(self, per_minute: float, size: float) -> None:
        self.size = size
        rate = max(per_minute - 2 * size, per_minute / 2) / 60.0  # per second
        self.limiter = AsyncLimiter(size, size / rate)
        self.paused_until = 0.0
        self.strikes = 0

    async def take(self, amount: float) -> None:
        while (wait := self.paused_until - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        await self.limiter.acquire(min(amount, self.size))


class RateGate:
    """The :class:`~langgraph_moa.llm.openai_client.RequestGate` of a batch's limits."""

    def __init__(self, limits: RateLimits) -> None:
        self.limits = limits
        self.requests: dict[str, _Bucket] = {
            scope: _Bucket(n, max(n / 120, 1.0)) for scope, n in limits.rpm.items()
        }
        self.tokens: dict[str, _Bucket] = {
            scope: _Bucket(n, max(n / _TOKEN_BURST, 1.0)) for scope, n in limits.tpm.items()
        }
        self.sent = 0
        self.refused = 0  # 429s seen
        self.waited_s = 0.0

    @staticmethod
    def _scopes(model: str) -> tuple[str, ...]:
        return (model, model.split(":", 1)[0], "*")

    async def before(self, model: str, request: httpx2.Request) -> None:
        start = time.monotonic()
        scopes = self._scopes(model)
        for scope in scopes:
            if (bucket := self.requests.get(scope)) is not None:
                await bucket.take(1)
        if self.tokens:
            amount = _request_tokens(request)
            for scope in scopes:
                if (bucket := self.tokens.get(scope)) is not None:
                    await bucket.take(amount)
        self.waited_s += time.monotonic() - start
        self.sent += 1

    def after(self, model: str, response: httpx2.Response) -> None:
        buckets = [
            b
            for table in (self.requests, self.tokens)
            for scope in self._scopes(model)
            if (b := table.get(scope)) is not None
        ]
        if response.status_code != 429:
            for bucket in buckets:
                bucket.strikes = 0
            return
        self.refused += 1
        for bucket in buckets:
            bucket.strikes += 1
            pause = _retry_after(response) or min(2.0 ** (bucket.strikes - 1), 60.0)
            bucket.paused_until = max(bucket.paused_until, time.monotonic() + pause)


def _retry_after(response: httpx2.Response) -> float | None:
    for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = response.headers.get(header)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds > 0:
            return min(seconds, 120.0)
    return None
