"""Any LangChain chat model in a topology, end to end: an ``init_chat_model`` provider
(``anthropic:``) through the real langchain-anthropic -> anthropic SDK path against a fake
Anthropic Messages API, mixed with the fake OpenAI server; and models a user registers.

The module's tests share one event loop, as every run of the CLI, ``moa serve`` and the sync API
does: langchain-anthropic shares one HTTP client per base URL across event loops, and a
keep-alive connection opened on a closed loop breaks the next loop's first request after it was
sent (langchain-ai/langchain#35783).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatResult
from pydantic import SecretStr

from langgraph_moa import (
    ChatMixtureOfAgents,
    Topology,
    build_graph,
    register_model,
    register_provider,
)
from langgraph_moa.testing.fake_anthropic import FakeAnthropic, text_of_content
from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import ANTHROPIC_KEY, one_line_error, run_moa

FAST_RETRY = {"attempts": 3, "initial_s": 0.05, "max_s": 0.2}
PYTHON_PAGE = Path(__file__).resolve().parents[2] / "docs" / "jobs" / "python.md"
same_loop = pytest.mark.asyncio(loop_scope="module")


def topo(proposers: list[str], aggregator: str, **extra: object) -> Topology:
    return Topology.model_validate(
        {
            "layers": [{"proposers": [{"model": m} for m in proposers]}],
            "aggregator": {"model": aggregator},
            "retry": FAST_RETRY,
            **extra,
        }
    )


async def ask(topology: Topology, prompt: str = "Why is the sky blue?") -> dict:
    return await build_graph(topology, cache=False).ainvoke({"messages": [HumanMessage(prompt)]})


def record(state: dict, node: str) -> dict:
    return next(p for layer in state["layers"] for p in layer if p["node"] == node)


@same_loop
async def test_an_anthropic_model_proposes_and_aggregates_beside_an_openai_one(
    claude: FakeAnthropic, fake: FakeOpenAI
) -> None:
    topology = topo(["openai:a", "anthropic:claude-haiku-4-5"], "anthropic:claude-opus-4-1")
    chunks: list[str] = []
    final: dict = {}
    graph = build_graph(topology, cache=False)
    async for mode, data in graph.astream(
        {"messages": [HumanMessage("Why is the sky blue?")]}, stream_mode=["messages", "values"]
    ):
        item: Any = data
        if mode == "messages" and item[1].get("langgraph_node") == "aggregator":
            assert isinstance(item[0], AIMessageChunk)
            chunks.append(str(item[0].content))
        elif mode == "values":
            final = item

    # the proposer's request, in Anthropic's format, with the key from ANTHROPIC_API_KEY
    (proposal,) = claude.requests_for("claude-haiku-4-5")
    assert claude.key_of(proposal) == ANTHROPIC_KEY
    assert proposal.body["messages"] == [{"role": "user", "content": "Why is the sky blue?"}]
    assert proposal.body["max_tokens"] == 512 and proposal.body["temperature"] == 0.7
    # the aggregator saw both proposals (OpenAI's and Anthropic's) and streamed its answer
    (synthesis,) = claude.requests_for("claude-opus-4-1")
    assert synthesis.body["stream"] is True
    # the references come last, after the conversation
    last = text_of_content(synthesis.body["messages"][-1]["content"])
    assert "Answer 1 from a." in last and "Answer 1 from claude-haiku-4-5." in last
    assert "".join(chunks) == "Answer 1 from claude-opus-4-1."
    assert final["messages"][-1].content == "Answer 1 from claude-opus-4-1."

    # records: usage from usage_metadata, cost from the price table, one attempt each
    mine = record(final, "L1/claude-haiku-4-5")
    assert mine["ok"] and mine["attempts"] == 1 and mine["finish_reason"] == "end_turn"
    assert mine["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    agg = final["aggregator"]
    assert agg["ok"] and agg["model"] == "anthropic:claude-opus-4-1"
    assert agg["usage"]["prompt_tokens"] > 20 and agg["usage"]["completion_tokens"] == 4
    by_model = final["usage"]["by_model"]
    assert by_model["anthropic:claude-haiku-4-5"]["cost_usd"] == pytest.approx(
        (5 * 1.00 + 4 * 5.00) / 1e6
    )
    opus = by_model["anthropic:claude-opus-4-1"]
    assert opus["cost_usd"] == pytest.approx(
        (opus["prompt_tokens"] * 15.00 + opus["completion_tokens"] * 75.00) / 1e6
    )
    assert final["usage"]["unpriced"] == ["openai:a"] and final["degraded"] is False


@pytest.mark.slow
@same_loop
async def test_anthropic_failures_are_retried_timed_out_and_recorded(
    claude: FakeAnthropic, fake: FakeOpenAI
) -> None:
    claude.behave("claude-flaky", faults=[529])  # overloaded once
    claude.behave("claude-bad", always=400, error_message="bad request for key {key}")
    claude.behave("claude-slow", always="hang", hang_s=5)
    claude.behave("claude-unpriced", usage={"input_tokens": 7, "output_tokens": 3})
    topology = Topology.model_validate(
        {
            "layers": [
                {
                    "proposers": [
                        {"model": "anthropic:claude-flaky"},
                        {"model": "anthropic:claude-bad"},
                        {"model": "anthropic:claude-slow", "timeout_s": 1},
                        {"model": "anthropic:claude-unpriced"},
                    ]
                }
            ],
            "aggregator": {"model": "openai:agg"},
            "retry": {"attempts": 2, "initial_s": 0.05, "max_s": 0.1},
        }
    )
    state = await ask(topology)
    flaky = record(state, "L1/claude-flaky")
    assert flaky["ok"] and flaky["attempts"] == 2 and len(claude.requests_for("claude-flaky")) == 2
    assert flaky["text"] == "Answer 2 from claude-flaky."
    bad = record(state, "L1/claude-bad")  # a 400 is not retried; the echoed key is masked
    assert len(claude.requests_for("claude-bad")) == 1
    assert bad["error"] == "HTTP 400: bad request for key ***" and bad["attempts"] == 1
    slow = record(state, "L1/claude-slow")
    assert slow["error"] == "timed out after 1s (2 attempts)" and slow["attempts"] == 2
    assert len(claude.requests_for("claude-slow")) == 2
    unpriced = record(state, "L1/claude-unpriced")
    assert unpriced["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    usage = state["usage"]
    assert "anthropic:claude-unpriced" in usage["unpriced"]
    assert usage["by_model"]["anthropic:claude-unpriced"]["cost_usd"] is None
    assert usage["by_model"]["anthropic:claude-bad"]["calls"] == 1
    assert state["degraded"] is True and state["messages"][-1].content == "Answer 1 from agg."
    assert ANTHROPIC_KEY not in repr(state)


@same_loop
async def test_a_cut_anthropic_stream_is_not_taken_for_an_answer(
    claude: FakeAnthropic, fake: FakeOpenAI
) -> None:
    claude.behave("claude-cut", truncate=True)  # the stream stops before its stop reason
    topology = topo(["openai:a"], "anthropic:claude-cut", fallback="best_proposal")
    graph = build_graph(topology, cache=False)
    state: dict = {}
    async for mode, data in graph.astream(  # streamed, as a chat client is answered
        {"messages": [HumanMessage("Why?")]}, stream_mode=["messages", "values"]
    ):
        if mode == "values":
            state = cast(dict, data)
    assert claude.requests_for("claude-cut")[0].body["stream"] is True
    agg = state["aggregator"]
    assert not agg["ok"] and agg["error"].startswith("truncated stream: ")
    assert state["messages"][-1].content == "Answer 1 from a." and state["degraded"] is True


@same_loop
async def test_an_unreachable_langchain_model_is_retried_and_recorded(
    fake: FakeOpenAI, registry: list[str]
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = ChatAnthropic(  # type: ignore[call-arg]
        model="claude-haiku-4-5",
        base_url=f"http://127.0.0.1:{port}",
        api_key=SecretStr(ANTHROPIC_KEY),
        max_retries=0,
    )
    registry.append("down:claude")
    register_model("down:claude", down)
    state = await ask(topo(["down:claude", "openai:a"], "openai:agg"))
    gone = record(state, "L1/claude")
    assert gone["error"].startswith("connection failed: ") and gone["attempts"] == 3
    assert gone["error"].endswith("(3 attempts)") and ANTHROPIC_KEY not in gone["error"]
    assert state["degraded"] is True and state["messages"][-1].content == "Answer 1 from agg."


@same_loop
async def test_registered_models_propose_and_aggregate_through_the_python_api(
    fake: FakeOpenAI, registry: list[str]
) -> None:
    # a user's own models (langchain-core's fake stands in for whatever they configured)
    proposer = GenericFakeChatModel(messages=iter([AIMessage("Rayleigh scattering.")]))
    judge = GenericFakeChatModel(messages=iter([AIMessage("Short waves scatter most.")]))
    registry += ["mine:proposer", "mine:judge"]
    register_model("mine:proposer", proposer)
    register_model("mine:judge", judge)
    chat = ChatMixtureOfAgents(topology=topo(["openai:a", "mine:proposer"], "mine:judge"))
    reply = await chat.ainvoke("Why is the sky blue?")

    assert reply.content == "Short waves scatter most."
    assert len(fake.requests_for("a")) == 1 and len(fake.requests) == 1
    record = reply.response_metadata
    by_model = record["usage"]["by_model"]
    assert by_model["mine:proposer"]["calls"] == 1 and by_model["mine:judge"]["calls"] == 1
    assert {"mine:proposer", "mine:judge"} <= set(record["usage"]["unpriced"])
    assert record["degraded"] is False


@same_loop
async def test_a_factory_provider_is_retried_like_any_other(
    fake: FakeOpenAI, registry: list[str]
) -> None:
    class Overloaded(Exception):
        status_code = 503

    replies = iter([Overloaded("busy"), AIMessage("second try")])

    def factory(model: str, **settings: object) -> GenericFakeChatModel:
        class Flaky(GenericFakeChatModel):
            async def _agenerate(
                self,
                messages: list[BaseMessage],
                stop: list[str] | None = None,
                run_manager: Any = None,
                **kwargs: Any,
            ) -> ChatResult:
                reply = next(replies)
                if isinstance(reply, Exception):
                    raise reply
                return await super()._agenerate(messages, stop, run_manager, **kwargs)

        return Flaky(messages=iter([AIMessage("second try")]))

    registry.append("house")
    register_provider("house", factory)
    state = await ask(topo(["house:m1"], "openai:agg"))
    house = record(state, "L1/m1")
    assert house["ok"] and house["attempts"] == 2 and house["text"] == "second try"


@same_loop
async def test_an_openai_compatible_provider_registered_by_url(
    fake: FakeOpenAI, registry: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.append("house")
    register_provider("house", base_url=fake.base_url, api_key_env="HOUSE_TOKEN")
    monkeypatch.setenv("HOUSE_TOKEN", "house-token-123")
    state = await ask(topo(["house:m1"], "openai:agg"))
    (request,) = fake.requests_for("m1")
    assert request.headers["authorization"] == "Bearer house-token-123"
    assert record(state, "L1/m1")["text"] == "Answer 1 from m1."


@pytest.mark.slow
def test_the_cli_says_in_one_line_what_to_install_or_which_providers_exist(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    missing = tmp_path / "gemini.yaml"
    missing.write_text(
        "layers:\n  - proposers: [{model: 'google_genai:gemini-2.5-flash'}]\n"
        "aggregator: {model: 'openai:agg'}\n"
    )
    env = dict(os.environ) | {"GOOGLE_API_KEY": "g-test-123456"}
    one_line_error(
        run_moa("ask", "hi", "--topology", str(missing), env=env),
        "pip install langchain-google-genai",
    )
    unknown = tmp_path / "typo.yaml"
    unknown.write_text(
        "layers:\n  - proposers: [{model: 'antropic:claude'}]\naggregator: {model: 'openai:agg'}\n"
    )
    result = run_moa("ask", "hi", "--topology", str(unknown))
    one_line_error(result, "unknown provider 'antropic'")
    assert re.search(r"openai.*together.*anthropic.*google_genai", result.stderr)
    assert fake.requests == []


@pytest.mark.slow
def test_the_docs_example_runs_as_pasted(claude: FakeAnthropic, fake: FakeOpenAI) -> None:
    blocks = re.findall(r"```python\n(.*?)```", PYTHON_PAGE.read_text(encoding="utf-8"), re.S)
    (code,) = [b for b in blocks if "register_model" in b]
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Answer 1 from claude-opus-4-1.")
    assert "input_tokens" in done.stdout
    assert len(claude.requests_for("claude-haiku-4-5")) == 1
    assert len(claude.requests_for("claude-opus-4-1")) == 1
    assert len(fake.requests_for("gpt-4o-mini")) == 1
