"""Budgets (estimate, shrink, stop, ledger), the proposal cache and context fitting, end to end
against the fake server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langgraph.cache.base import BaseCache
from langgraph.cache.memory import InMemoryCache

from langgraph_moa import MoAInputError, MoARunError, Topology, build_graph, load_preset
from langgraph_moa.nodes.budget import estimate
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.testing.fake_openai import FakeOpenAI

# $1 per 1,000 tokens in and out: costs are easy to read.
PRICES = {
    m: {"input_per_mtok": 1000, "output_per_mtok": 1000}
    for m in ("openai:a", "openai:b", "openai:c", "openai:critic", "openai:agg")
}


def priced(budget: dict | None, *, critic: bool = True, layers: int = 1) -> Topology:
    spec: dict = {
        "layers": [
            {"proposers": [{"model": f"openai:{m}", "max_tokens": 100} for m in "abc"]}
            for _ in range(layers)
        ],
        "aggregator": {"model": "openai:agg", "max_tokens": 100},
        "prices": PRICES,
    }
    if critic:
        spec["critic"] = {"model": "openai:critic", "max_tokens": 100}
    if budget:
        spec["budget"] = budget
    return Topology.model_validate(spec)


async def ask(
    topology: Topology, prompt: str = "one two three", cache: BaseCache[Any] | bool = False
) -> dict:
    graph = build_graph(topology, cache=cache)
    return await graph.ainvoke({"messages": [HumanMessage(prompt)]})


def long_replies(fake: FakeOpenAI) -> None:
    """Proposers write their whole max_tokens: 100 words for the fake server, which counts a
    word as a token, and 100 tokens for the estimator too (4 characters each)."""
    for m in "abc":
        fake.behave(m, reply=lambda body, n, k: " ".join(["tok"] * 100))


def worst_usd(topology: Topology, prompt: str = "one two three") -> float:
    est = estimate(topology, [HumanMessage(prompt)], prices=PriceTable(topology.prices))
    assert est.cost_usd is not None
    return est.cost_usd


@pytest.mark.slow
def test_estimate_of_the_paper_moa() -> None:
    moa = load_preset("moa")
    est = estimate(moa, [HumanMessage("Why is the sky blue?")], prices=PriceTable())
    assert est.calls == 13
    assert est.completion_tokens == 13 * 512
    layer2 = dict((s, p) for s, p, _, _ in est.stages)["L2/qwen72"]
    assert layer2 > 6 * 512  # sees all six layer-1 answers at their worst
    assert est.cost_usd and 0.01 < est.cost_usd < 0.1
    assert est.unpriced == []


@pytest.mark.slow
async def test_budget_drops_the_critic_first(fake: FakeOpenAI) -> None:
    full = priced(None)
    without_critic = worst_usd(priced(None, critic=False))
    budget = (worst_usd(full) + without_critic) / 2
    long_replies(fake)  # the layer really costs its worst case: no room comes back
    state = await ask(priced({"max_usd": budget}))
    ledger = state["ledger"]
    assert ledger["actions"] == ["dropped the critic to stay within budget"]
    assert ledger["skipped"] == ["critic"]
    assert fake.requests_for("critic") == []
    assert state["critique"]["error"] == "skipped to stay within budget"
    assert len(fake.requests) == 4 and state["degraded"] is True
    assert ledger["spent_usd"] <= budget and ledger["max_usd"] == budget


@pytest.mark.slow
async def test_budget_then_trims_proposers(fake: FakeOpenAI) -> None:
    long_replies(fake)
    budget = room_for_a_and_b()
    state = await ask(priced({"max_usd": budget}))
    ledger = state["ledger"]
    assert ledger["actions"][0] == "dropped the critic to stay within budget"
    assert ledger["actions"][1:] == ["trimmed L1/c to stay within budget"]
    assert fake.requests_for("c") == []
    assert record_error(state, "L1/c") == "skipped to stay within budget"
    assert state["messages"][-1].content == "Answer 1 from agg."
    assert state["usage"]["cost_usd"] <= budget


def room_for_a_and_b() -> float:
    """A budget between the worst case of a, b and the aggregator, and that of a, b, c and it."""
    three = priced(None, critic=False)
    two = three.model_dump()
    two["layers"][0]["proposers"] = two["layers"][0]["proposers"][:2]
    return (worst_usd(three) + worst_usd(Topology.model_validate(two))) / 2


def record_error(state: dict, node: str) -> str | None:
    return next(p["error"] for p in state["layers"][0] if p["node"] == node)


async def test_budget_stops_before_any_call(fake: FakeOpenAI) -> None:
    with pytest.raises(MoARunError, match=r"over budget: even the smallest plan could cost \$"):
        await ask(priced({"max_usd": 0.01}))
    assert fake.requests == []
    with pytest.raises(MoARunError, match=r"tokens > max_tokens 50 "):
        await ask(priced({"max_tokens": 50}))
    assert fake.requests == []


async def test_token_budget_trims_too(fake: FakeOpenAI) -> None:
    topology = priced(None, critic=False)
    est = estimate(topology, [HumanMessage("one two three")], prices=PriceTable(topology.prices))
    state = await ask(priced({"max_tokens": est.total_tokens - 1}, critic=False))
    assert state["ledger"]["actions"] == ["trimmed L1/c to stay within budget"]
    assert state["usage"]["total_tokens"] < est.total_tokens


async def test_a_cheap_layer_gives_back_what_the_worst_case_took(fake: FakeOpenAI) -> None:
    two_layers = priced(None, critic=False, layers=2)
    state = await ask(priced({"max_usd": worst_usd(two_layers) * 0.9}, critic=False, layers=2))
    actions = state["ledger"]["actions"]
    assert actions[0] == "trimmed L2/c to stay within budget"  # planned at the start...
    assert actions[1] == "restored L2/c: layer 1 cost less than its worst case"  # ...undone
    assert len(fake.requests_for("c")) == 2 and state["ledger"]["skipped"] == []


async def test_usd_budget_needs_prices(fake: FakeOpenAI) -> None:
    topology = Topology.model_validate(
        {
            "layers": [{"proposers": [{"model": "openai:mystery"}]}],
            "aggregator": {"model": "openai:agg"},
            "budget": {"max_usd": 1},
        }
    )
    # configuration, refused before any call (issue 9: it used to fail as a run error)
    with pytest.raises(
        MoAInputError, match=r"budget\.max_usd needs a price for openai:mystery, openai:agg"
    ):
        await ask(topology)
    assert fake.requests == []


async def test_identical_calls_come_from_the_cache(fake: FakeOpenAI) -> None:
    cache: InMemoryCache[Any] = InMemoryCache()
    topology = Topology.model_validate(
        {
            "layers": [
                {
                    "proposers": [
                        {"model": "openai:det", "temperature": 0},
                        {"model": "openai:hot", "temperature": 0.9},
                        {"model": "openai:seeded", "temperature": 0.9, "seed": 7},
                    ]
                }
            ],
            "aggregator": {"model": "openai:agg"},
            "prices": PRICES | {"openai:det": {"input_per_mtok": 1000, "output_per_mtok": 1000}},
        }
    )
    first = await ask(topology, cache=cache)
    second = await ask(topology, cache=cache)
    assert len(fake.requests_for("det")) == 1 and len(fake.requests_for("seeded")) == 1
    assert len(fake.requests_for("hot")) == 2  # sampled without a seed: never cached
    det = second["layers"][0][0]
    assert det["cached"] and det["attempts"] == 0 and det["text"] == first["layers"][0][0]["text"]
    usage = second["usage"]["by_model"]["openai:det"]
    assert usage == usage | {"calls": 0, "cached_calls": 1, "total_tokens": 0, "cost_usd": 0.0}
    assert first["usage"]["by_model"]["openai:det"]["cost_usd"] > 0


async def test_cache_sampled_and_failures(fake: FakeOpenAI) -> None:
    cache: InMemoryCache[Any] = InMemoryCache()
    fake.behave("flaky", faults=[400])
    topology = Topology.model_validate(
        {
            "layers": [
                {
                    "proposers": [
                        {"model": "openai:hot", "temperature": 1.0},
                        {"model": "openai:flaky", "temperature": 0},
                    ]
                }
            ],
            "aggregator": {"model": "openai:agg"},
            "cache_sampled": True,
        }
    )
    first = await ask(topology, cache=cache)
    assert first["layers"][0][1]["ok"] is False
    second = await ask(topology, cache=cache)
    assert len(fake.requests_for("hot")) == 1  # the user asked to cache sampled calls
    assert len(fake.requests_for("flaky")) == 2  # a failure is never cached
    assert second["layers"][0][1]["ok"] and not second["layers"][0][1]["cached"]


@pytest.mark.slow
def test_sqlite_cache_across_processes(fake: FakeOpenAI, tmp_path: Path) -> None:
    spec = tmp_path / "t.yaml"
    spec.write_text(
        "layers:\n  - proposers: [{model: 'openai:det', temperature: 0}]\n"
        "aggregator: {model: 'openai:agg'}\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "langgraph_moa.cli",
        "ask",
        "hi",
        "-t",
        str(spec),
        "--json",
        "--quiet",
        "--cache",
        str(tmp_path / "c.sqlite"),
    ]
    for _ in range(2):
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=120)
        assert out.returncode == 0, out.stderr
    assert len(fake.requests_for("det")) == 1
    assert '"cached": true' in out.stdout


async def test_references_are_trimmed_to_the_context_window(fake: FakeOpenAI) -> None:
    long_answer = " ".join(["word"] * 400)  # ~500 tokens each
    for m in ("a", "b"):
        fake.behave(m, reply=lambda body, n, k: long_answer)
    topology = Topology.model_validate(
        {
            "layers": [{"proposers": [{"model": "openai:a"}, {"model": "openai:b"}]}],
            "aggregator": {"model": "openai:agg", "context_window": 1200, "max_tokens": 200},
        }
    )
    state = await ask(topology, "Summarize.")
    system = fake.requests_for("agg")[0].last
    assert system.count(" [...]") == 2  # both references cut, both kept
    assert len(system) < 2 * len(long_answer)
    trim = state["aggregator"]["trimmed"]
    assert trim["window"] == 1200 and trim["references_dropped"] == 0
    assert trim["references_after"] < trim["references_before"]
    assert fake.requests_for("agg")[0].messages[-2]["content"] == "Summarize."  # never cut
    assert state["layers"][0][0]["trimmed"] is None  # layer 1 had nothing to trim


@pytest.mark.slow
def test_estimate_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "langgraph_moa.cli", "ask", "Why?", "-p", "moa", "--estimate"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")},
    )
    assert out.returncode == 0, out.stderr  # no key needed: nothing is called
    assert "L2/dbrx" in out.stdout and "total: 13 calls" in out.stdout


@pytest.mark.slow
def test_cli_reports_budget_and_fallback(fake: FakeOpenAI, tmp_path: Path) -> None:
    import json

    long_replies(fake)
    fake.behave("agg", always=500)
    spec = priced({"max_usd": room_for_a_and_b()})
    path = tmp_path / "t.json"
    path.write_text(json.dumps(spec.model_dump(mode="json") | {"fallback": "best_proposal"}))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "langgraph_moa.cli",
            "ask",
            "one two three",
            "-t",
            str(path),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert sorted(result["ledger"]["skipped"]) == ["L1/c", "critic"]
    assert result["fallback"]["policy"] == "best_proposal" and result["degraded"] is True
    assert result["answer"] == " ".join(["tok"] * 100)
    for line in (
        "budget dropped the critic to stay within budget",
        "skipped L1/c  skipped to stay within budget",
        "fallback answered with L1/a",
    ):
        assert line in out.stderr
