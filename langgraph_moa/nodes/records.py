"""What a model call writes into the graph's state: the usage delta of its outcomes
(:func:`usage_update`, merged by the state's ``usage`` reducer) and the record of each call or
sample (:func:`call_record`, :func:`skipped_record`). The call itself is made in
:mod:`langgraph_moa.llm.call`, which knows nothing of the graph's state.
"""

from __future__ import annotations

from langgraph_moa.llm.call import Outcome
from langgraph_moa.llm.usage import zero_usage
from langgraph_moa.nodes.context_window import Trim
from langgraph_moa.nodes.state import CallRecord, Usage, add_usage
from langgraph_moa.spec.agent import Agent
from langgraph_moa.spec.models import PriceTable


def usage_update(model: str, outcomes: list[Outcome], requests: int, prices: PriceTable) -> Usage:
    """The state's usage delta for these outcomes (a failed request counts, with 0 tokens).

    A call served from the cache counts 0 tokens and $0 (nothing was paid now); what it cost
    when it was made is kept beside that, in the model's ``cached_*`` fields (see
    :class:`~langgraph_moa.nodes.state.ModelUsage`), with ``cached_unknown`` counting cached
    samples whose cache entry did not keep its usage."""
    prompt = sum(o.usage["prompt_tokens"] for o in outcomes)
    completion = sum(o.usage["completion_tokens"] for o in outcomes)
    total = sum(o.usage["total_tokens"] for o in outcomes)
    # a sample answered through a Batch API is priced at the batch price
    batched = [o for o in outcomes if o.batch]
    online_cost = prices.cost(
        model,
        sum(o.usage["prompt_tokens"] for o in outcomes if not o.batch),
        sum(o.usage["completion_tokens"] for o in outcomes if not o.batch),
    )
    cost = online_cost
    saved = None
    if batched:
        batched_prompt = sum(o.usage["prompt_tokens"] for o in batched)
        batched_completion = sum(o.usage["completion_tokens"] for o in batched)
        batch_cost = prices.cost(model, batched_prompt, batched_completion, batch=True)
        cost = None if online_cost is None or batch_cost is None else online_cost + batch_cost
        at_online = prices.cost(model, batched_prompt, batched_completion)
        if at_online is not None and batch_cost is not None:
            saved = at_online - batch_cost
    cached = [o for o in outcomes if o.cached]
    made = [o.cached_usage for o in cached if o.cached_usage is not None]
    delta: Usage = {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "cost_usd": None,
        "unpriced": [],
        "by_model": {
            model: {
                "calls": requests,
                "cached_calls": 1 if any(o.cached for o in outcomes) else 0,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": total,
                "cost_usd": cost,
            }
        },
    }
    if batched:  # requests, as ``calls`` counts them: one per request, not per sample
        delta["by_model"][model]["batch_calls"] = len({o.batch_part for o in batched})
        if saved is not None:  # what the same tokens would have cost online, less the bill
            delta["by_model"][model]["batch_saved_usd"] = saved
    if cached:
        made_prompt = sum(u["prompt_tokens"] for u in made)
        made_completion = sum(u["completion_tokens"] for u in made)
        delta["by_model"][model] |= {
            "cached_prompt_tokens": made_prompt,
            "cached_completion_tokens": made_completion,
            "cached_cost_usd": prices.cost(model, made_prompt, made_completion),
            "cached_unknown": len(cached) - len(made),
        }
    return add_usage(None, delta)


def call_record(
    agent: Agent, node: str, outcome: Outcome, trimmed: Trim | None = None
) -> CallRecord:
    """The state's record of one call (or one sample of a call)."""
    record: CallRecord = {
        "name": agent.name or node,
        "node": node,
        "model": agent.model,
        "ok": outcome.ok,
        "text": outcome.text,
        "error": outcome.error,
        "latency_s": round(outcome.latency_s, 4),
        "usage": outcome.usage,
        "attempts": outcome.attempts,
        "cached": outcome.cached,
        "trimmed": trimmed,
        "finish_reason": outcome.finish_reason,
    }
    if outcome.batch:
        record["batch"] = True
    return record


def skipped_record(agent: Agent, node: str) -> CallRecord:
    """The record of a call the budget plan left out."""
    skipped = Outcome(None, "skipped to stay within budget", 0.0, zero_usage(), attempts=0)
    return call_record(agent, node, skipped)
