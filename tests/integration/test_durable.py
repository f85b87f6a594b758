"""Durable runs through the `moa` CLI: SQLite and PostgreSQL thread stores, a kill -9 and resume,
history, forks with exact call counts, and human review."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.types import Command

from langgraph_moa import Topology, build_graph
from langgraph_moa.cli.store import open_checkpointer
from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import MOA, one_line_error
from tests.conftest import run_moa as moa

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def ok_json(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def two_layers(tmp_path: Path) -> Path:
    path = tmp_path / "two.yaml"
    path.write_text(
        "name: two\nlayers:\n"
        "  - proposers: [{name: a1, model: 'openai:a1'}, {name: a2, model: 'openai:a2'}]\n"
        "  - proposers: [{name: fast, model: 'openai:fast'}, {name: slow, model: 'openai:slow'}]\n"
        "aggregator: {model: 'openai:agg'}\n"
    )
    return path


def counts(fake: FakeOpenAI) -> dict[str, int]:
    found: dict[str, int] = {}
    for r in fake.requests:
        found[r.model] = found.get(r.model, 0) + 1
    return found


def postgres_available() -> bool:
    try:
        import psycopg

        psycopg.connect(POSTGRES, connect_timeout=3).close()
        return True
    except Exception:
        return False


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_thread_stores_keep_turns(fake: FakeOpenAI, tmp_path: Path, store: str) -> None:
    if store == "postgres" and not postgres_available():
        pytest.fail("PostgreSQL on 127.0.0.1:5432 (database test) is needed for this test")
    db = str(tmp_path / "t.sqlite") if store == "sqlite" else POSTGRES
    topology = Topology.model_validate(
        {"layers": [{"proposers": [{"model": "openai:a"}]}], "aggregator": {"model": "openai:agg"}}
    )
    thread = f"turns-{uuid.uuid4().hex[:8]}"
    config: RunnableConfig = {"configurable": {"thread_id": thread}}
    async with open_checkpointer(db) as saver:
        graph = build_graph(topology, checkpointer=saver)
        await graph.ainvoke({"messages": [HumanMessage("first")]}, config)
    async with open_checkpointer(db) as saver:  # a new connection: the thread is on disk
        graph = build_graph(topology, checkpointer=saver)
        state = await graph.ainvoke({"messages": [HumanMessage("second")]}, config)
        snapshots = [s async for s in graph.aget_state_history(config)]
    assert [m.content for m in state["messages"]] == [
        "first",
        "Answer 1 from agg.",
        "second",
        "Answer 2 from agg.",
    ]
    assert len(snapshots) >= 10


@pytest.mark.slow
def test_cli_threads_in_postgres(fake: FakeOpenAI, two_layers: Path) -> None:
    if not postgres_available():
        pytest.fail("PostgreSQL on 127.0.0.1:5432 (database test) is needed for this test")
    thread = f"pg-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, MOA_DB=POSTGRES)
    ok_json(moa("ask", "q1", "-t", str(two_layers), "--thread", thread, "--json", env=env))
    entries = ok_json(moa("history", "--thread", thread, "--json", env=env))
    assert entries[0]["next"] == [] and any(e["ran"] == ["aggregator"] for e in entries)


@pytest.mark.slow
def test_kill_9_mid_layer_2_then_resume(fake: FakeOpenAI, two_layers: Path, tmp_path: Path) -> None:
    fake.behave("slow", latency_s=30)
    proc = subprocess.Popen(
        [*MOA, "ask", "Why?", "-t", str(two_layers), "--thread", "crash", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # layer 2 is in flight, its fast proposer done
            fast = fake.requests_for("fast")
            if fast and fast[0].status == 200 and fake.requests_for("slow"):
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        else:
            pytest.fail("layer 2 never started")
        time.sleep(0.5)  # let the finished proposal's checkpoint write land
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert fake.requests_for("agg") == []

    fake.behave("slow", latency_s=0)
    result = ok_json(moa("resume", "--thread", "crash", "--json"))
    assert result["answer"] == "Answer 1 from agg."
    # no completed proposer was called twice; only the one cut off by the kill
    assert counts(fake) == {"a1": 1, "a2": 1, "fast": 1, "slow": 2, "agg": 1}
    assert [p["node"] for p in result["layers"][1]] == ["L2/fast", "L2/slow"]
    one_line_error(moa("resume", "--thread", "crash"), "has nothing to resume")


@pytest.mark.slow
def test_history_and_forks_rerun_only_what_follows(
    fake: FakeOpenAI, two_layers: Path, tmp_path: Path
) -> None:
    ok_json(moa("ask", "Why?", "-t", str(two_layers), "--thread", "tt", "--json"))
    assert len(fake.requests) == 5
    history = ok_json(moa("history", "--thread", "tt", "--json"))
    ran = [e["ran"] for e in reversed(history)]
    assert ran[:4] == [[], ["__start__"], ["prepare"], ["L1/a1", "L1/a2"]]
    assert ["L2/join"] in ran and ran[-1] == ["aggregator"]
    before = len(history)

    # 1. edit a layer-2 proposal: only the aggregator runs again, and sees the edit
    fake.reset()
    edit = tmp_path / "edit.txt"
    edit.write_text("An edited answer about Rayleigh scattering.")
    out = ok_json(
        moa("fork", "--thread", "tt", "--at", "L2/join", "--edit", f"L2/slow={edit}", "--json")
    )
    assert counts(fake) == {"agg": 1}
    assert "2. An edited answer about Rayleigh scattering." in fake.requests[0].last
    assert out["layers"][1][1]["text"] == "An edited answer about Rayleigh scattering."

    # 2. drop a layer-1 proposal: layer 2 and the aggregator run again, without it
    fake.reset()
    ok_json(moa("fork", "--thread", "tt", "--at", "L1/a2", "--drop", "L1/a2", "--json"))
    assert counts(fake) == {"fast": 1, "slow": 1, "agg": 1}
    assert "Answer 1 from a2." not in fake.requests_for("fast")[0].last
    assert "Answer 1 from a1." in fake.requests_for("fast")[0].last

    # 3. swap the aggregator: one call, to the new model
    fake.reset()
    out = ok_json(
        moa("fork", "--thread", "tt", "--at", "L2/join", "--aggregator", "openai:agg2", "--json")
    )
    assert counts(fake) == {"agg2": 1} and out["answer"] == "Answer 1 from agg2."

    # the original branch is intact: its checkpoints are all still in the thread
    after = ok_json(moa("history", "--thread", "tt", "--json"))
    ids = {e["checkpoint_id"] for e in after}
    assert {e["checkpoint_id"] for e in history} <= ids and len(after) > before

    # bad forks: one line, exit 2
    one_line_error(moa("fork", "--thread", "tt", "--at", "L9/x"), "cannot fork at 'L9/x'")
    one_line_error(
        moa("fork", "--thread", "tt", "--at", "L1/join", "--drop", "L1/zz"),
        "no proposal 'L1/zz'",
    )
    one_line_error(
        moa("fork", "--thread", "tt", "--at", "L1/join", "--drop", "L2/fast"),
        "L2/fast had not run yet at L1/join",
    )
    one_line_error(moa("fork", "--thread", "nope", "--at", "L1/join"), "no thread 'nope'")
    one_line_error(moa("history", "--thread", "nope"), "no thread 'nope'")


@pytest.fixture
def reviewed(tmp_path: Path) -> Path:
    path = tmp_path / "review.yaml"
    path.write_text(
        "layers:\n  - proposers: [{name: a, model: 'openai:a'}, {name: b, model: 'openai:b'},"
        " {name: c, model: 'openai:c'}]\n"
        "critic: {model: 'openai:critic'}\nreview: before_aggregate\n"
        "aggregator: {model: 'openai:agg'}\n"
    )
    return path


@pytest.mark.slow
def test_review_pauses_then_edit_and_drop(fake: FakeOpenAI, reviewed: Path, tmp_path: Path) -> None:
    paused = ok_json(moa("ask", "Why?", "-t", str(reviewed), "--thread", "rv", "--json"))
    assert paused["paused"] == "review"
    assert [c["ref"] for c in paused["review"]["candidates"]] == ["L1/a", "L1/b", "L1/c"]
    assert paused["review"]["critique"] == "Answer 1 from critic."
    assert fake.requests_for("agg") == []  # the aggregator waits for the reviewer

    decision = tmp_path / "decision.yaml"
    decision.write_text("edit: {L1/b: 'B, as corrected by a human.'}\ndrop: [L1/c]\n")
    out = ok_json(moa("resume", "--thread", "rv", "--decision", str(decision), "--json"))
    system = fake.requests_for("agg")[0].last
    assert "1. Answer 1 from a.\n2. B, as corrected by a human." in system
    assert "Answer 1 from c." not in system
    assert out["layers"][0][2]["error"] == "dropped by the reviewer"
    assert counts(fake) == {"a": 1, "b": 1, "c": 1, "critic": 1, "agg": 1}


@pytest.mark.slow
def test_review_approve_and_bad_decisions(fake: FakeOpenAI, reviewed: Path, tmp_path: Path) -> None:
    moa("ask", "Why?", "-t", str(reviewed), "--thread", "rv2", "--quiet")
    bad = tmp_path / "bad.json"
    bad.write_text('{"drop": ["L1/zz"]}')
    one_line_error(moa("resume", "--thread", "rv2", "--decision", str(bad)), "no proposal 'L1/zz'")
    bad.write_text('{"delete": ["L1/a"]}')
    one_line_error(
        moa("resume", "--thread", "rv2", "--decision", str(bad)),
        f"invalid review decision in decision file {str(bad)!r}: delete: Extra inputs are not "
        "permitted",
    )
    one_line_error(moa("resume", "--thread", "rv2"), "is paused for review: give --decision")
    approve = tmp_path / "approve.json"
    approve.write_text("{}")
    out = ok_json(moa("resume", "--thread", "rv2", "--decision", str(approve), "--json"))
    assert out["answer"] == "Answer 1 from agg."
    assert fake.requests_for("agg")[0].last.count("\n3. ") == 1  # all three kept


async def test_review_from_python(fake: FakeOpenAI) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    topology = Topology.model_validate(
        {
            "layers": [{"proposers": [{"model": "openai:a"}, {"model": "openai:b"}]}],
            "review": "before_aggregate",
            "aggregator": {"model": "openai:agg"},
        }
    )
    graph = build_graph(topology, checkpointer=InMemorySaver())
    config: RunnableConfig = {"configurable": {"thread_id": "py"}}
    paused = await graph.ainvoke({"messages": [HumanMessage("q")]}, config)
    (pending,) = paused["__interrupt__"]
    assert [c["ref"] for c in pending.value["candidates"]] == ["L1/a", "L1/b"]
    state = await graph.ainvoke(Command(resume={"drop": ["L1/a"]}), config)
    assert state["review"] == {"edited": [], "dropped": ["L1/a"]}
    assert fake.requests_for("agg")[0].last.count("\n1. Answer 1 from b.") == 1


@pytest.mark.slow
def test_interactive_review_at_a_terminal(fake: FakeOpenAI, reviewed: Path) -> None:
    """With a terminal on stdin, `moa ask` asks the reviewer and goes on in the same process."""
    leader, follower = os.openpty()
    proc = subprocess.Popen(
        [*MOA, "ask", "Why?", "-t", str(reviewed), "--thread", "tty"],
        stdin=follower,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )
    os.close(follower)
    try:
        os.write(leader, b"edit L1/a\nA, rewritten\nat the terminal.\n.\ndrop L1/c\nok\n")
        out, errors = proc.communicate(timeout=120)
    finally:
        os.close(leader)
    assert proc.returncode == 0, errors
    assert out.decode().strip() == "Answer 1 from agg."
    assert "review>" in errors.decode()
    system = fake.requests_for("agg")[0].last
    assert "1. A, rewritten\nat the terminal.\n2. Answer 1 from b." in system
    assert "Answer 1 from c." not in system
