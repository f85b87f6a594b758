"""Which messages of a row are turns for ``--turns all``, and a row's worst case over its
turns (what the budget reserves before the row starts)."""

from __future__ import annotations

import pytest

from langgraph_moa.batch.feeding import BatchBudget
from langgraph_moa.batch.one_row import row_estimates, row_worst_case_usd, turn_points
from langgraph_moa.batch.row_check import Row, check_row
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.topology import parse_topology

TOPOLOGY = parse_topology(
    {
        "name": "t",
        "layers": [{"proposers": [{"name": "a", "model": "openai:a", "max_tokens": 100}]}],
        "aggregator": {"model": "openai:agg", "max_tokens": 2000},
        "prices": {
            "openai:a": {"input_per_mtok": 1000, "output_per_mtok": 1000},
            "openai:agg": {"input_per_mtok": 1000, "output_per_mtok": 1000},
        },
    },
    source="test",
)
PRICES = PriceTable(TOPOLOGY.prices)
CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def row(messages: list[dict[str, object]]) -> Row:
    found = check_row({"id": "r", "messages": messages}, "f:1")
    assert isinstance(found, Row), found
    return found


def test_turns_are_the_answers_to_the_user() -> None:
    chat = row(
        [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},  # answered by a tool
            {"role": "tool", "tool_call_id": "c1", "content": "r"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2"},
        ]
    )
    assert turn_points(chat) == [4, 6]
    single = row([{"role": "user", "content": "q"}])
    assert turn_points(single) == [1]
    unanswered = row(
        [
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"},
        ]
    )
    assert turn_points(unanswered) == [1, 3]


def test_worst_case_sums_the_turns() -> None:
    chat = row(
        [
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "short"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2"},
        ]
    )
    last = row_worst_case_usd(TOPOLOGY, chat, PRICES)
    assert last == pytest.approx(row_estimates(TOPOLOGY, chat, PRICES)[0].cost_usd)
    relabeled = row_estimates(TOPOLOGY, chat, PRICES, turns="all")
    original = row_estimates(TOPOLOGY, chat, PRICES, turns="all", turn_context="original")
    assert len(relabeled) == len(original) == 2
    assert sum(e.calls for e in relabeled) == 4  # a proposer and the aggregator, twice
    # the first turn is the same; the second holds either the short original or an answer as
    # long as the aggregator may write (2000 tokens)
    assert relabeled[0].cost_usd == original[0].cost_usd
    assert original[1].cost_usd == pytest.approx(last)
    grown = relabeled[1].prompt_tokens - original[1].prompt_tokens
    assert grown >= 2 * (2000 - 2)  # two calls, each prompt holding the longer answer
    assert row_worst_case_usd(TOPOLOGY, chat, PRICES, turns="all") == pytest.approx(
        sum(e.cost_usd or 0.0 for e in relabeled)
    )
    assert row_worst_case_usd(
        TOPOLOGY, chat, PRICES, turns="all", turn_context="original"
    ) == pytest.approx(sum(e.cost_usd or 0.0 for e in original))
    assert chat.prompt[1] == {"role": "assistant", "content": "short"}  # the row untouched


def test_the_budget_reserves_every_turn() -> None:
    chat = row(
        [
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"},
        ]
    )
    every = row_worst_case_usd(TOPOLOGY, chat, PRICES, turns="all")
    last = row_worst_case_usd(TOPOLOGY, chat, PRICES)
    assert every > 2 * last * 0.99
    between = (last + every) / 2
    assert BatchBudget(between, 0.0, TOPOLOGY).admit(chat)
    assert not BatchBudget(between, 0.0, TOPOLOGY, turns="all").admit(chat)
    assert BatchBudget(every * 1.001, 0.0, TOPOLOGY, turns="all").admit(chat)
