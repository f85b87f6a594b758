"""Fault tolerance at the HTTP boundary: retries, timeouts, deadlines, quorum, fallback, secrets.

Every failure is injected by the fake server; each test checks the run's outcome, the
`degraded` flag, the recorded reason and how many requests the server saw.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage

from langgraph_moa import MoAInputError, MoARunError, Topology, build_graph
from langgraph_moa.spec.topology import parse_topology
from langgraph_moa.testing.fake_openai import FakeOpenAI

FAST_RETRY = {"attempts": 3, "initial_s": 0.05, "max_s": 0.2}


def topo(proposers: list[dict], **extra: object) -> Topology:
    return Topology.model_validate(
        {
            "layers": [{"proposers": proposers, **extra.pop("layer", {})}],  # type: ignore[dict-item]
            "aggregator": {"model": "openai:agg"},
            "retry": FAST_RETRY,
            **extra,
        }
    )


async def ask(topology: Topology, prompt: str = "Why is the sky blue?") -> dict:
    graph = build_graph(topology, cache=False)
    return await graph.ainvoke({"messages": [HumanMessage(prompt)]})


def record(state: dict, node: str) -> dict:
    return next(p for layer in state["layers"] for p in layer if p["node"] == node)


async def test_500s_are_retried_until_success(fake: FakeOpenAI) -> None:
    fake.behave("a", faults=[500, 503])
    state = await ask(topo([{"model": "openai:a"}]))
    assert len(fake.requests_for("a")) == 3
    a = record(state, "L1/a")
    assert a["ok"] and a["attempts"] == 3 and a["text"] == "Answer 3 from a."
    assert state["degraded"] is False


async def test_persistent_500_is_recorded_after_every_attempt(fake: FakeOpenAI) -> None:
    fake.behave("a", always=500)
    state = await ask(topo([{"model": "openai:a"}, {"model": "openai:b"}]))
    assert len(fake.requests_for("a")) == 3
    a = record(state, "L1/a")
    assert not a["ok"] and a["error"] == "HTTP 500: injected failure 500 (3 attempts)"
    assert state["degraded"] is True
    assert state["messages"][-1].content == "Answer 1 from agg."


async def test_429_honours_retry_after(fake: FakeOpenAI) -> None:
    fake.behave("a", faults=[429], retry_after=0.6)
    state = await ask(topo([{"model": "openai:a"}]))
    first, second = fake.requests_for("a")
    assert second.started - first.started >= 0.6  # waited as told, not the 0.05 s backoff
    assert record(state, "L1/a")["ok"] and state["degraded"] is False


@pytest.mark.parametrize("status", [400, 401, 404])
async def test_client_errors_are_not_retried(fake: FakeOpenAI, status: int) -> None:
    fake.behave("a", always=status)
    state = await ask(topo([{"model": "openai:a"}, {"model": "openai:b"}]))
    assert len(fake.requests_for("a")) == 1
    a = record(state, "L1/a")
    assert a["error"] == f"HTTP {status}: injected failure {status}" and a["attempts"] == 1
    assert state["degraded"] is True


async def test_a_hang_longer_than_the_timeout(fake: FakeOpenAI) -> None:
    fake.behave("slow", always="hang", hang_s=5)
    proposers: list[dict[str, object]] = [
        {"model": "openai:slow", "timeout_s": 0.3, "retry": {"attempts": 2, "initial_s": 0.05}},
        {"model": "openai:b"},
    ]
    start = time.perf_counter()
    state = await ask(topo(proposers))
    assert time.perf_counter() - start < 3
    assert len(fake.requests_for("slow")) == 2
    slow = record(state, "L1/slow")
    assert slow["error"] == "timed out after 0.3s (2 attempts)"
    assert state["degraded"] is True and state["messages"][-1].content


async def test_malformed_json_and_empty_completions_are_failures(fake: FakeOpenAI) -> None:
    fake.behave("bad", always="malformed")
    fake.behave("empty", always="empty")
    state = await ask(
        topo([{"model": "openai:bad"}, {"model": "openai:empty"}, {"model": "openai:a"}])
    )
    assert record(state, "L1/bad")["error"].startswith("malformed response")
    assert record(state, "L1/empty")["error"] == "empty completion"
    assert len(fake.requests_for("bad")) == 1 and len(fake.requests_for("empty")) == 1
    assert fake.requests_for("agg")[0].last.count("\n1. ") == 1  # only a's answer passed on
    assert state["degraded"] is True


async def test_connection_refused(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a loopback port with nobody listening
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("GROQ_BASE_URL", f"http://127.0.0.1:{closed}/v1")
    state = await ask(topo([{"model": "groq:gone"}, {"model": "openai:a"}]))
    gone = record(state, "L1/gone")
    assert gone["error"].startswith("connection failed") and gone["attempts"] == 3
    assert fake.requests_for("gone") == []
    assert state["degraded"] is True


async def test_layer_deadline_keeps_what_it_has(fake: FakeOpenAI) -> None:
    fake.behave("slow", latency_s=3)
    fake.behave("sampled", supports_n=False, latency_s=0.05)
    topology = topo(
        [{"model": "openai:fast"}, {"model": "openai:slow"}, {"model": "groq:sampled", "n": 2}],
        layer={"deadline_s": 0.5},
    )
    start = time.perf_counter()
    state = await ask(topology)
    assert time.perf_counter() - start < 2
    slow = record(state, "L1/slow")
    assert slow["error"] == "timed out: the layer's deadline of 0.5s passed"
    assert [p["ok"] for p in state["layers"][0]] == [True, False, True, True]
    assert state["degraded"] is True
    assert fake.requests_for("agg")[0].last.count("\n3. ") == 1  # three answers passed on


async def test_quorum_met_goes_on_degraded(fake: FakeOpenAI) -> None:
    fake.behave("a", always=500)
    state = await ask(
        topo(
            [{"model": "openai:a"}, {"model": "openai:b"}, {"model": "openai:c"}],
            layer={"min_proposals": 2},
        )
    )
    assert state["degraded"] is True
    assert record(state, "L1/a")["error"].startswith("HTTP 500")
    assert state["messages"][-1].content == "Answer 1 from agg."


async def test_quorum_missed_fails_listing_every_failure(fake: FakeOpenAI) -> None:
    fake.behave("a", always=500)
    fake.behave("b", always=401)
    with pytest.raises(MoARunError) as info:
        await ask(
            topo(
                [{"model": "openai:a"}, {"model": "openai:b"}, {"model": "openai:c"}],
                layer={"min_proposals": 2},
            )
        )
    message = str(info.value)
    assert "layer 1 got 1 of 3 proposals, below its quorum of 2" in message
    assert "L1/a: HTTP 500: injected failure 500 (3 attempts)" in message
    assert "L1/b: HTTP 401: injected failure 401" in message
    assert fake.requests_for("agg") == []


async def test_fallback_best_proposal(fake: FakeOpenAI) -> None:
    fake.behave("agg", always=400)
    state = await ask(
        topo([{"model": "openai:a"}, {"model": "openai:b"}], fallback="best_proposal")
    )
    assert state["messages"][-1].content == "Answer 1 from a."
    assert state["fallback"] == {
        "policy": "best_proposal",
        "source": "L1/a",
        "reason": "the aggregator failed: HTTP 400: injected failure 400",
        "ok": True,
        "error": None,
    }
    assert state["aggregator"]["ok"] is False and state["degraded"] is True


async def test_fallback_model(fake: FakeOpenAI) -> None:
    fake.behave("agg", always=503)
    topology = topo([{"model": "openai:a"}], fallback={"model": "openai:spare"})
    graph = build_graph(topology, cache=False)
    assert "fallback" in graph.get_graph().nodes  # the fallback is a visible node
    state = await graph.ainvoke({"messages": [HumanMessage("q")]})
    assert state["messages"][-1].content == "Answer 1 from spare."
    assert state["fallback"]["source"] == "openai:spare"
    assert len(fake.requests_for("agg")) == 3  # retried before falling back
    spare = fake.requests_for("spare")[0]
    assert spare.last == fake.requests_for("agg")[0].last  # same synthesis request
    assert state["usage"]["by_model"]["openai:spare"]["calls"] == 1
    assert state["degraded"] is True


async def test_failed_critic_is_recorded_and_skipped(fake: FakeOpenAI) -> None:
    fake.behave("critic", always=500)
    state = await ask(topo([{"model": "openai:a"}], critic={"model": "openai:critic"}))
    assert state["critique"]["ok"] is False
    assert state["critique"]["error"] == "HTTP 500: injected failure 500 (3 attempts)"
    assert "reviewer" not in fake.requests_for("agg")[0].last
    assert state["messages"][-1].content == "Answer 1 from agg."


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"retry": {"attempts": 0}}, "retry.attempts: Input should be greater than or equal to 1"),
        ({"retry": {"initial_s": -1}}, "retry.initial_s: Input should be greater than 0"),
        ({"retry": {"initial_s": 2, "max_s": 1}}, "retry: max_s (1.0) must be at least initial_s"),
        ({"timeout_s": 0}, "timeout_s: Input should be greater than 0"),
        ({"budget": {"max_usd": -1}}, "budget.max_usd: Input should be greater than 0"),
        ({"budget": {"max_tokens": 0}}, "budget.max_tokens: Input should be greater than 0"),
        ({"budget": {}}, "budget: set max_usd, max_tokens or both"),
        ({"fallback": "pray"}, "fallback"),
        (
            {"layers": [{"proposers": [{"model": "openai:a"}], "min_proposals": 2}]},
            "layers.0: min_proposals (2) is above the layer's size (1)",
        ),
        (
            {"layers": [{"proposers": [{"model": "openai:a"}], "min_proposals": 0}]},
            "layers.0.min_proposals: Input should be greater than or equal to 1",
        ),
        (
            {"layers": [{"proposers": [{"model": "openai:a"}], "deadline_s": -2}]},
            "layers.0.deadline_s: Input should be greater than 0",
        ),
        (
            {"layers": [{"proposers": [{"model": "openai:a", "retry": {"max_s": 0}}]}]},
            "layers.0.proposers.0.retry.max_s: Input should be greater than 0",
        ),
        (
            {"layers": [{"proposers": [{"model": "openai:a", "context_window": -5}]}]},
            "layers.0.proposers.0.context_window: Input should be greater than 0",
        ),
    ],
)
def test_bad_resilience_settings_name_the_field(change: dict, expected: str) -> None:
    spec = {"layers": [{"proposers": [{"model": "openai:a"}]}], "aggregator": {"model": "openai:b"}}
    with pytest.raises(MoAInputError) as info:
        parse_topology(spec | change)
    assert expected in str(info.value)


def test_quorum_counts_samples() -> None:
    layer = {"proposers": [{"model": "openai:a", "n": 3}], "min_proposals": 3}
    topology = Topology.model_validate({"layers": [layer], "aggregator": {"model": "openai:b"}})
    assert topology.layers[0].min_proposals == 3


def test_effective_settings_reach_every_agent() -> None:
    topology = Topology.model_validate(
        {
            "layers": [
                {"proposers": [{"model": "openai:a"}, {"model": "openai:b", "timeout_s": 5}]}
            ],
            "aggregator": {"model": "openai:c", "retry": {"attempts": 1}},
            "retry": {"attempts": 5},
            "timeout_s": 30,
        }
    )
    a, b = topology.layers[0].proposers
    assert (a.timeout_s, a.retry and a.retry.attempts) == (30, 5)
    assert b.timeout_s == 5
    assert topology.aggregator.retry and topology.aggregator.retry.attempts == 1


@pytest.mark.slow
def test_keys_never_persist(fake: FakeOpenAI, tmp_path: Path) -> None:
    """Every artefact of a CLI run: the thread store, the cache file, the JSON output."""
    import os
    import subprocess
    import sys

    from tests.conftest import TEST_KEY

    fake.behave("a", always=401)  # an error path too
    spec = tmp_path / "t.yaml"
    spec.write_text(
        "layers:\n  - proposers: [{model: 'openai:a'}, {model: 'openai:b', temperature: 0}]\n"
        "aggregator: {model: 'openai:agg'}\n"
    )
    env = dict(os.environ, MOA_DB=str(tmp_path / "threads.sqlite"))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "langgraph_moa.cli",
            "ask",
            "hello",
            "-t",
            str(spec),
            "--json",
            "--thread",
            "k",
            "--cache",
            str(tmp_path / "cache.sqlite"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "HTTP 401" in out.stdout  # the failure is recorded...
    artefacts = {
        "stdout": out.stdout.encode(),
        "stderr": out.stderr.encode(),
        **{p.name: p.read_bytes() for p in tmp_path.iterdir() if p.suffix.startswith(".sqlite")},
    }
    assert {"threads.sqlite", "cache.sqlite"} <= set(artefacts)
    for name, blob in artefacts.items():
        assert TEST_KEY.encode() not in blob, name  # ...but never the key
    assert fake.requests_for("a")[0].headers["authorization"] == f"Bearer {TEST_KEY}"
