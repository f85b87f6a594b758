"""What a call served from the cache adds to the state's usage: $0 paid now, and beside it the
usage its cache entry kept (or a count of samples whose usage the entry did not keep)."""

from __future__ import annotations

from langgraph_moa.llm.call import Outcome
from langgraph_moa.llm.usage import TokenUsage
from langgraph_moa.nodes.records import usage_update
from langgraph_moa.nodes.state import add_usage
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.topology import Price

PRICES = PriceTable({"openai:m": Price(input_per_mtok=1.0, output_per_mtok=2.0)}, env=False)


def test_a_cached_call_is_free_now_and_keeps_what_it_cost_when_made() -> None:
    zero: TokenUsage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    made: TokenUsage = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
    hit = Outcome("x", None, 0.0, zero, attempts=0, cached=True, cached_usage=made)
    fresh = Outcome("y", None, 0.1, made)
    cached = usage_update("openai:m", [hit], 0, PRICES)["by_model"]["openai:m"]
    assert cached["calls"] == 0 and cached["cached_calls"] == 1
    assert cached["cost_usd"] == 0.0 and cached["prompt_tokens"] == 0
    assert cached["cached_prompt_tokens"] == 1000 and cached["cached_completion_tokens"] == 500
    assert cached["cached_cost_usd"] == PRICES.cost("openai:m", 1000, 500)
    assert cached["cached_unknown"] == 0
    paid = usage_update("openai:m", [fresh], 1, PRICES)
    assert "cached_cost_usd" not in paid["by_model"]["openai:m"]  # nothing cached: unchanged
    # an older cache entry without usage: counted as unknown, never as $0 made
    old = Outcome("z", None, 0.0, zero, attempts=0, cached=True)
    total = add_usage(
        add_usage(paid, usage_update("openai:m", [hit], 0, PRICES)),
        usage_update("openai:m", [old], 0, PRICES),
    )["by_model"]["openai:m"]
    assert total["calls"] == 1 and total["cached_calls"] == 2
    assert total["cost_usd"] == PRICES.cost("openai:m", 1000, 500)
    assert total["cached_cost_usd"] == PRICES.cost("openai:m", 1000, 500)
    assert total["cached_prompt_tokens"] == 1000 and total["cached_unknown"] == 1
