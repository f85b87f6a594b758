"""ChatMixtureOfAgents as a LangChain chat model, against the fake OpenAI-compatible server."""

from __future__ import annotations

import time

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel

from langgraph_moa import Topology
from langgraph_moa.chat_model import ChatMixtureOfAgents
from langgraph_moa.nodes.prompts import AFTER_TOOLS_PROMPT
from langgraph_moa.testing.fake_openai import FakeOpenAI


def moa(**extra: object) -> ChatMixtureOfAgents:
    topology = Topology.model_validate(
        {
            "layers": [{"proposers": [{"model": "openai:a"}, {"model": "openai:b"}]}],
            "aggregator": {"model": "openai:agg"},
            **extra,
        }
    )
    return ChatMixtureOfAgents(topology=topology, proposal_cache=False)


def server_usage(fake: FakeOpenAI) -> int:
    """Tokens the fake server billed (it counts words) for every request it saw."""
    total = 0
    for r in fake.requests:
        prompt = sum(len(str(m.get("content") or "").split()) for m in r.messages)
        total += prompt + 4  # every default reply is four words
    return total


async def test_ainvoke_sums_usage_and_carries_the_record(fake: FakeOpenAI) -> None:
    message = await moa().ainvoke("Why is the sky blue?")
    assert message.content == "Answer 1 from agg."
    assert message.usage_metadata is not None
    assert message.usage_metadata["total_tokens"] == server_usage(fake)
    assert len(fake.requests) == 3
    meta = message.response_metadata
    assert [p["node"] for p in meta["layers"][0]] == ["L1/a", "L1/b"]
    assert meta["degraded"] is False and "critique" in meta and "cost_usd" in meta


def test_invoke_works_inside_and_outside_an_event_loop(fake: FakeOpenAI) -> None:
    assert moa().invoke("hi").content == "Answer 1 from agg."


async def test_stream_yields_the_answer_tokens_in_order_after_the_proposers(
    fake: FakeOpenAI,
) -> None:
    fake.behave("agg", reply=lambda body, n, k: "one two three four five")
    fake.behave("b", latency_s=0.3)
    arrivals: list[float] = []
    texts: list[str] = []
    last = None
    async for chunk in moa().astream("count"):
        arrivals.append(time.perf_counter())
        assert isinstance(chunk.content, str)
        texts.append(chunk.content)
        last = chunk
    assert "".join(texts) == "one two three four five"
    assert texts[:5] == ["one", " two", " three", " four", " five"]
    assert last is not None and last.usage_metadata and last.usage_metadata["total_tokens"] > 0
    assert last.response_metadata["layers"]
    proposers_done = max(r.finished for r in fake.requests if r.model in ("a", "b"))
    assert arrivals[0] >= proposers_done  # no token before every proposer has answered


def test_sync_stream_and_batch(fake: FakeOpenAI) -> None:
    model = moa()
    assert "".join(str(c.content) for c in model.stream("hi")) == "Answer 1 from agg."
    answers = model.batch(["one", "two", "three"])
    assert sorted(str(a.content) for a in answers) == [
        "Answer 2 from agg.",
        "Answer 3 from agg.",
        "Answer 4 from agg.",
    ]
    assert len(fake.requests_for("agg")) == 4


async def test_abatch(fake: FakeOpenAI) -> None:
    answers = await moa().abatch(["one", "two"])
    assert len(answers) == 2 and len(fake.requests_for("a")) == 2


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"18 C and sunny in {city}"


async def test_tools_go_to_the_aggregator_only(fake: FakeOpenAI) -> None:
    fake.behave(
        "agg", tool_calls=lambda body, n: [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    )
    message = await moa().bind_tools([get_weather]).ainvoke("Weather in Paris?")
    assert message.tool_calls[0]["name"] == "get_weather"
    assert message.tool_calls[0]["args"] == {"city": "Paris"}
    (agg,) = fake.requests_for("agg")
    assert agg.body["tools"][0]["function"]["name"] == "get_weather"
    assert all("tools" not in r.body for r in fake.requests if r.model in ("a", "b"))


async def test_a_tool_transcript_reaches_proposers_as_a_digest(fake: FakeOpenAI) -> None:
    history = [
        HumanMessage("Weather in Paris?"),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "c1"}]),
        ToolMessage("18 C and sunny in Paris", tool_call_id="c1", name="get_weather"),
        HumanMessage("So, should I bring an umbrella?"),
    ]
    await moa().bind_tools([get_weather]).ainvoke(history)
    proposer = fake.requests_for("a")[0].messages
    assert [m["role"] for m in proposer] == ["user", "assistant", "user"]
    assert proposer[1]["content"] == (
        '[called get_weather({"city": "Paris"})]\n[get_weather returned: 18 C and sunny in Paris]'
    )
    aggregator = fake.requests_for("agg")[0].messages
    assert [m["role"] for m in aggregator] == ["user", "assistant", "tool", "user", "user"]


class Verdict(BaseModel):
    """Whether to bring an umbrella."""

    umbrella: bool
    reason: str


async def test_with_structured_output(fake: FakeOpenAI) -> None:
    fake.behave(
        "agg",
        tool_calls=lambda body, n: [
            {"name": "Verdict", "arguments": {"umbrella": False, "reason": "sunny"}}
        ],
    )
    verdict = await moa().with_structured_output(Verdict).ainvoke("Umbrella?")
    assert verdict == Verdict(umbrella=False, reason="sunny")
    assert fake.requests_for("agg")[0].body["tool_choice"] in (
        "required",
        {"type": "function", "function": {"name": "Verdict"}},
    )


async def test_inside_a_langchain_agent_with_a_tool(fake: FakeOpenAI) -> None:
    """LangChain 1.x's agent loop (`create_agent`; LangGraph's `create_react_agent` is
    deprecated) with MoA as its model."""

    def agg_behaviour(body: dict, number: int) -> list[dict] | None:
        seen_result = any(m["role"] == "tool" for m in body["messages"])
        return None if seen_result else [{"name": "get_weather", "arguments": {"city": "Oslo"}}]

    fake.behave(
        "agg",
        tool_calls=agg_behaviour,
        reply=lambda body, n, k: "Bring sunglasses, not an umbrella.",
    )
    agent = create_agent(moa(), [get_weather])
    state = await agent.ainvoke({"messages": [HumanMessage("What should I pack for Oslo?")]})
    kinds = [m.type for m in state["messages"]]
    assert kinds == ["human", "ai", "tool", "ai"]
    assert state["messages"][2].content == "18 C and sunny in Oslo"  # the tool really ran
    assert state["messages"][-1].content == "Bring sunglasses, not an umbrella."
    assert len(fake.requests_for("agg")) == 2 and len(fake.requests_for("a")) == 2
    second_round = fake.requests_for("a")[1].messages
    assert second_round[-1] == {"role": "user", "content": AFTER_TOOLS_PROMPT}
    assert "[get_weather returned: 18 C and sunny in Oslo]" in second_round[-2]["content"]


async def test_request_options_reach_the_aggregator(fake: FakeOpenAI) -> None:
    await moa().ainvoke("hi", temperature=0.1, max_tokens=42)
    agg = fake.requests_for("agg")[0].body
    assert agg["temperature"] == 0.1 and agg["max_completion_tokens"] == 42
    assert fake.requests_for("a")[0].body["temperature"] == 0.7
