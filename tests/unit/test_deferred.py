"""The deferred side of the call seam: the body a deferred request carries is what the model's
integration would send, a Batch API's reply reads back as an online reply, batch prices, and
the wave store's states (queued, submitted, answered, retried, given up)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from langgraph_moa.batch.wave_store import RowDeferral, WaveStore
from langgraph_moa.llm.deferred import DeferredRequest, replies_of, request_body
from langgraph_moa.llm.model_pool import CallExtras, ModelPool
from langgraph_moa.spec.agent import Agent
from langgraph_moa.spec.models import BatchPrices, PriceTable, has_batch_api
from langgraph_moa.spec.topology import Price

MESSAGES = [SystemMessage("Be brief."), HumanMessage("Why is the sky blue?")]


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-unit")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-unit")


async def test_an_openai_body_is_the_integrations_own_without_streaming() -> None:
    pool = ModelPool(Agent(model="openai:gpt-4o-mini", temperature=0.3, max_tokens=50, n=2))
    extras = CallExtras(
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        options={"response_format": {"type": "json_object"}},
    )
    body = request_body(extras.prepare(pool.get(2)), MESSAGES)
    assert body["model"] == "gpt-4o-mini" and body["n"] == 2 and body["temperature"] == 0.3
    assert body["tools"][0]["function"]["name"] == "f"
    assert body["response_format"] == {"type": "json_object"}
    assert "stream" not in body and "stream_options" not in body
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    json.dumps(body)  # plain JSON, as a batch file holds it


async def test_an_openai_reply_reads_back_with_usage_and_finish_reason() -> None:
    pool = ModelPool(Agent(model="openai:gpt-4o-mini", n=2))
    reply = {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": f"a{i}"}, "finish_reason": f}
            for i, f in enumerate(("stop", "length"))
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
    }
    first, second = replies_of(pool.get(2), reply)
    assert (first.content, second.content) == ("a0", "a1")
    assert first.response_metadata["finish_reason"] == "stop"
    assert second.response_metadata["finish_reason"] == "length"
    assert first.usage_metadata is not None and first.usage_metadata["total_tokens"] == 11


async def test_an_anthropic_body_sends_its_sdk_extras_as_fields_and_reads_back() -> None:
    pool = ModelPool(Agent(model="anthropic:claude-haiku-4-5", temperature=0.2, max_tokens=40))
    body = request_body(pool.get(), MESSAGES)
    assert body["model"] == "claude-haiku-4-5" and body["max_tokens"] == 40
    assert body["temperature"] == 0.2 and "extra_body" not in body
    assert body["system"] == "Be brief."
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": "Rayleigh scattering."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 4},
    }
    (reply,) = replies_of(pool.get(), message)
    assert reply.content == "Rayleigh scattering."
    assert reply.response_metadata["stop_reason"] == "end_turn"
    assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] == 4


def test_batch_prices_are_declared_or_half_for_providers_with_a_batch_tier() -> None:
    table = PriceTable(
        {
            "openai:m": Price(input_per_mtok=2, output_per_mtok=8),
            "openai:d": Price(
                input_per_mtok=2, output_per_mtok=8, batch_input_per_mtok=1.5,
                batch_output_per_mtok=3,
            ),
            "groq:g": Price(input_per_mtok=1, output_per_mtok=1),
        },
        env=False,
    )  # fmt: skip
    assert table.cost("openai:m", 1_000_000, 1_000_000, batch=True) == pytest.approx(5.0)
    assert table.cost("openai:d", 1_000_000, 1_000_000, batch=True) == pytest.approx(4.5)
    assert table.cost("groq:g", 1_000_000, 0, batch=True) == pytest.approx(1.0)  # no tier
    assert has_batch_api("anthropic:claude-haiku-4-5") and not has_batch_api("groq:g")
    reserved = BatchPrices({"openai:m": Price(input_per_mtok=2, output_per_mtok=8)},
                           batched=frozenset({"openai:m"}))  # fmt: skip
    assert reserved.cost("openai:m", 1_000_000, 0) == pytest.approx(1.0)


def test_the_wave_store_moves_requests_through_their_states(tmp_path: Path) -> None:
    store = WaveStore(tmp_path / "batches.sqlite")
    try:
        row = RowDeferral(store, "r1", {"openai:m"})
        key = row.key("L1/a", 0, {"model": "m"})
        assert key == RowDeferral(store, "r1", set()).key("L1/a", 0, {"model": "m"})
        assert key != RowDeferral(store, "r2", set()).key("L1/a", 0, {"model": "m"})
        request = DeferredRequest(key, "openai:m", {"model": "m"}, attempts=2)
        row.defer(request)
        row.defer(request)  # asked twice in one pass: queued once
        assert store.queue("r1", row.requests) == 1 and store.queue("r1", row.requests) == 0
        assert row.answer(key) is None and store.waiting() == 1
        ((found, model, tried, _, _),) = list(store.queued(["openai:m"]))
        assert (found, model, tried) == (key, "openai:m", 1)
        batch = store.add_batch(1, "openai", "openai:m", tmp_path / "f.jsonl", [key], 10)
        store.submitted(batch.id, "batch_1")
        (batch,) = store.batches("submitted")
        store.record_results(batch, [(f"{key}-1", None, "HTTP 500: busy", True)])
        assert store.end_batch(batch.id, "completed") == 0
        assert store.answer(key) is None  # queued again, as its second try
        assert [t for _, _, t, _, _ in store.queued(["openai:m"])] == [2]
        batch = store.add_batch(2, "openai", "openai:m", tmp_path / "g.jsonl", [key], 10)
        store.submitted(batch.id, "batch_2")
        (batch,) = store.batches("submitted")
        store.record_results(batch, [(f"{key}-1", '{"stale": 1}', None, False)])  # old try
        assert store.end_batch(batch.id, "expired") == 1  # no tries left: ended, in words
        answer = store.answer(key)
        assert answer is not None and answer.body is None
        assert answer.error is not None and "expired" in answer.error
        assert store.waiting() == 0
    finally:
        store.close()
