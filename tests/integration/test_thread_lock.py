"""Concurrent runs on one thread, from separate `moa` processes, are serialized: every turn is
kept, in SQLite and in PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import MOA
from tests.integration.test_durable import POSTGRES, postgres_available


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_six_concurrent_asks_on_one_thread_keep_six_turns(
    fake: FakeOpenAI, tmp_path: Path, store: str
) -> None:
    if store == "postgres" and not postgres_available():
        pytest.fail("PostgreSQL on 127.0.0.1:5432 (database test) is needed for this test")
    topology = tmp_path / "t.yaml"
    topology.write_text(
        "layers:\n  - proposers: [{model: 'openai:a'}]\naggregator: {model: 'openai:agg'}\n"
    )
    fake.behave("agg", latency_s=0.3)
    db = str(tmp_path / "threads.sqlite") if store == "sqlite" else POSTGRES
    thread = f"same-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, MOA_DB=db)
    procs = [
        subprocess.Popen(
            [*MOA, "ask", f"question {k}", "-t", str(topology), "--thread", thread],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for k in range(6)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [e for _, e in outputs]
    assert any("another run is writing thread" in e for _, e in outputs)  # some had to wait
    last = subprocess.run(
        [*MOA, "ask", "last", "--thread", thread, "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert last.returncode == 0, last.stderr
    seen = [m["content"] for m in fake.requests_for("agg")[-1].messages[:-1]]
    questions = sorted(c for c in seen if c.startswith("question "))
    assert questions == [f"question {k}" for k in range(6)]  # none lost
    assert len(seen) == 13  # 6 questions, 6 answers, the last question
    assert seen[-1] == "last"
