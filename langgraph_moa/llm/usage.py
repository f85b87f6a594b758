"""What a model call used and costs: the token counts a reply reports, the :class:`Meter` that
counts the requests of one piece of work as they end, and the check that a budget in USD can
price every model it may call.

Every request is counted as it ends, paid or not, in the :class:`Meter` of the work it belongs
to, if one is set (:func:`meter_calls`: a relabel row), so what a row spent is known even when
the row then fails; the meter prices each request with the run's price table. The graph's own
account of usage (its state's ``usage``) is written by :mod:`langgraph_moa.nodes.records`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage
from typing_extensions import TypedDict

from langgraph_moa.errors import MoAInputError
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.topology import Topology


class TokenUsage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def zero_usage() -> TokenUsage:
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def _count(value: Any) -> int:
    """A token count as reported: anything but a non-negative integer counts as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_of(message: BaseMessage) -> TokenUsage:
    """The usage a reply reports (LangChain's ``usage_metadata``)."""
    meta = getattr(message, "usage_metadata", None) or {}
    prompt, completion = _count(meta.get("input_tokens")), _count(meta.get("output_tokens"))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": _count(meta.get("total_tokens")) or prompt + completion,
    }


def token_usage(raw: dict[str, Any]) -> TokenUsage:
    """A usage read back from a cache entry (counts that are not whole numbers >= 0 read 0)."""
    prompt, completion = _count(raw.get("prompt_tokens")), _count(raw.get("completion_tokens"))
    total = _count(raw.get("total_tokens")) or prompt + completion
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


@dataclass
class Meter:
    """What the requests of one piece of work (a relabel row) were counted at, each added as
    it ends: requests sent (one with ``n`` samples counts once), calls served from the cache,
    tokens, and their cost with ``prices`` (``cost_usd`` None while no priced model was used)."""

    prices: PriceTable
    calls: int = 0
    cached_calls: int = 0
    batch_calls: int = 0  # of ``calls``, those answered through a provider's Batch API
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    unpriced: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, model: str, usage: TokenUsage, *, calls: int = 1, batch: bool = False) -> None:
        """Count a request that ended (``batch``: answered through a Batch API, at its price)."""
        self.calls += calls
        self.batch_calls += calls if batch else 0
        prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        cost = self.prices.cost(model, prompt, completion, batch=batch)
        if cost is None:
            if model not in self.unpriced:
                self.unpriced.append(model)
        else:
            self.cost_usd = (self.cost_usd or 0.0) + cost


_meter: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("moa_meter", default=None)


@contextlib.contextmanager
def meter_calls(prices: PriceTable) -> Iterator[Meter]:
    """Count every request made inside this block (and the tasks it starts) in a new meter."""
    meter = Meter(prices)
    token = _meter.set(meter)
    try:
        yield meter
    finally:
        _meter.reset(token)


def current_meter() -> Meter | None:
    """The meter of the work this request belongs to, if one is set."""
    return _meter.get()


def unpriced_models(topology: Topology, prices: PriceTable) -> list[str]:
    """The models the topology may call that have no price, each once, in topology order."""
    return list(dict.fromkeys(a.model for a in topology.agents() if prices.price(a.model) is None))


def check_priced(topology: Topology, prices: PriceTable) -> None:
    """A budget in USD needs a price for every model it may call: a configuration error (one
    line, before any call), never a run that fails half-way."""
    budget = topology.budget
    if budget is None or budget.max_usd is None:
        return
    unpriced = unpriced_models(topology, prices)
    if unpriced:
        raise MoAInputError(
            f"budget.max_usd needs a price for {', '.join(unpriced)} "
            "(add it under prices: in the topology or in MOA_PRICES)"
        )
