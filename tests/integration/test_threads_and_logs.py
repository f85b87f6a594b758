"""`moa threads` on a store with several threads, and what `moa -v`/`MOA_LOG_LEVEL` print, run
as real processes against the fake OpenAI server, with a canary key that must never show."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import one_line_error
from tests.conftest import run_moa as run
from tests.integration.test_durable import POSTGRES, postgres_available

USAGE = {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}
CANARY = "sk-canary-9f8e7d6c5b4a39281706"
SECRET_PROMPT = "zebra-quartz-prompt-words"


@pytest.fixture
def priced(tmp_path: Path) -> Path:
    """Two layers (a, b; then c) and an aggregator at $1000 per million tokens each way."""
    path = tmp_path / "priced.yaml"
    models = ("a", "b", "c", "agg")
    prices = "".join(
        f"  'openai:{m}': {{input_per_mtok: 1000, output_per_mtok: 1000}}\n" for m in models
    )
    path.write_text(
        "name: priced\nlayers:\n"
        "  - proposers: [{model: 'openai:a', temperature: 0},\n"
        "                {model: 'openai:b', temperature: 0}]\n"
        "  - proposers: [{model: 'openai:c', temperature: 0}]\n"
        "aggregator: {model: 'openai:agg'}\n"
        f"prices:\n{prices}"
    )
    return path


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.slow
def test_threads_lists_every_thread_newest_first(
    fake: FakeOpenAI, priced: Path, topology_file: Path, tmp_path: Path
) -> None:
    for model in ("a", "b", "c", "agg"):
        fake.behave(model, usage=USAGE)
    empty = ok(run("threads"))
    assert empty.stdout == "" and "no threads" in empty.stderr

    ok(run("ask", "Q1", "-t", str(priced), "--thread", "t-one", "-q"))
    ok(run("ask", "Q1", "-t", str(priced), "--thread", "t-two", "-q"))
    ok(run("ask", "Q2", "--thread", "t-two", "-q"))
    edit = tmp_path / "edit.txt"
    edit.write_text("An edited answer.")
    ok(run("fork", "--thread", "t-one", "--at", "L2/join", "--edit", f"L2/c={edit}", "-q"))
    ok(run("ask", "Q1", "-t", str(topology_file), "--thread", "t-three", "-q"))

    rows = json.loads(ok(run("threads", "--json")).stdout)
    assert [r["thread_id"] for r in rows] == ["t-three", "t-one", "t-two"]
    three, one, two = rows
    # a turn is 4 calls of 150 tokens at $1000/Mtok: 600 tokens, $0.60
    assert two["turns"] == 2 and two["total_tokens"] == 1200
    assert two["cost_usd"] == pytest.approx(1.2) and two["topology"] == "priced"
    # the fork's branch is the conversation now: one turn (its edit re-ran the aggregator only)
    assert one["turns"] == 1 and one["edits"] == 1 and one["cost_usd"] == pytest.approx(0.6)
    assert three["topology"] == "mine" and three["cost_usd"] is None  # no price known
    assert all(r["state"] == "done" for r in rows)
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", r["last_activity"]) for r in rows)
    assert rows[0]["last_activity"] >= rows[1]["last_activity"] >= rows[2]["last_activity"]

    table = ok(run("threads")).stdout.splitlines()
    assert table[0].split() == [
        "THREAD", "TOPOLOGY", "TURNS", "STATE", "LAST", "ACTIVITY", "(UTC)", "TOKENS", "COST",
    ]  # fmt: skip
    assert table[1].split()[:4] == ["t-three", "mine", "1", "done"] and table[1].endswith("-")
    assert table[2].split()[:5] == ["t-one", "priced", "1", "done,", "1"]
    assert table[2].endswith("$0.6000") and table[3].endswith("$1.2000")

    limited = json.loads(ok(run("threads", "--limit", "1", "--json")).stdout)
    assert [r["thread_id"] for r in limited] == ["t-three"]
    one_line_error(run("threads", "--limit", "0"), "--limit")


@pytest.mark.slow
def test_threads_in_postgres(fake: FakeOpenAI, priced: Path) -> None:
    if not postgres_available():
        pytest.fail("PostgreSQL on 127.0.0.1:5432 (database test) is needed for this test")
    for model in ("a", "b", "c", "agg"):
        fake.behave(model, usage=USAGE)
    env = dict(os.environ, MOA_DB=POSTGRES)
    older, newer = (f"pg-list-{uuid.uuid4().hex[:8]}" for _ in range(2))
    ok(run("ask", "Q1", "-t", str(priced), "--thread", older, "-q", env=env))
    ok(run("ask", "Q1", "-t", str(priced), "--thread", newer, "-q", env=env))
    ok(run("ask", "Q2", "--thread", newer, "-q", env=env))
    # the database is shared with other tests: look at these two among the newest
    rows = json.loads(ok(run("threads", "--limit", "50", "--json", env=env)).stdout)
    mine = [r for r in rows if r["thread_id"] in (older, newer)]
    assert [r["thread_id"] for r in mine] == [newer, older]
    assert [r["turns"] for r in mine] == [2, 1] and [r["topology"] for r in mine] == ["priced"] * 2
    assert [r["cost_usd"] for r in mine] == [pytest.approx(1.2), pytest.approx(0.6)]


def _log_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("moa: ")]


@pytest.mark.slow
def test_logging_levels_never_show_keys_or_prompts(fake: FakeOpenAI, priced: Path) -> None:
    env = dict(os.environ, OPENAI_API_KEY=CANARY)
    env.pop("MOA_LOG_LEVEL", None)
    fake.behave("b", always=401, error_message="Incorrect API key provided: {key}")

    def ask(*options: str, extra: dict[str, str] | None = None) -> str:
        args = [*options, "ask", SECRET_PROMPT, "-t", str(priced), "-q"]
        result = run(*args, env={**env, **(extra or {})})
        assert result.returncode == 0, result.stderr
        assert CANARY not in result.stderr + result.stdout
        return result.stderr

    quiet = ask()
    assert _log_lines(quiet) == []

    fake.behave("a", faults=[500])  # its next request fails once, then is retried
    info = _log_lines(ask("-v"))
    assert info and all(line.startswith("moa: INFO langgraph_moa.") for line in info), info
    text = "\n".join(info)
    assert "request to openai:a (1 sample(s), 1 message(s))" in text
    assert re.search(r"openai:agg answered in \d+\.\d\ds \(1 attempt\(s\)\)", text)
    assert "retrying a request (" in text  # a's 500
    assert "openai:b failed after" in text and "HTTP 401" in text and "***" in text
    assert SECRET_PROMPT not in text

    debug = _log_lines(ask("-vv"))
    assert any(
        re.match(r"moa: DEBUG langgraph_moa\.llm\.openai_client: HTTP POST ", ln) for ln in debug
    )
    assert SECRET_PROMPT not in "\n".join(debug)

    from_env = _log_lines(ask(extra={"MOA_LOG_LEVEL": "info"}))
    assert from_env and not any(" DEBUG " in line for line in from_env)
    assert not any(
        " DEBUG " in line for line in _log_lines(ask("-v", extra={"MOA_LOG_LEVEL": "x"}))
    )

    libraries = ask("-vvv")  # the libraries underneath too; keys still masked
    assert re.search(r"moa: DEBUG (openai|httpx|httpcore)", libraries)

    one_line_error(
        run("ask", "hi", "-t", str(priced), env={**env, "MOA_LOG_LEVEL": "loud"}),
        "MOA_LOG_LEVEL='loud' is not a log level",
    )


@pytest.mark.slow
def test_cache_hits_and_budget_decisions_are_logged(
    fake: FakeOpenAI, priced: Path, tmp_path: Path
) -> None:
    budgeted = tmp_path / "budgeted.yaml"
    budgeted.write_text(priced.read_text() + "budget: {max_usd: 100}\n")
    cache = tmp_path / "cache.sqlite"
    args = ["-v", "ask", "Why?", "-t", str(budgeted), "-q", "--cache", str(cache)]
    first = ok(run(*args)).stderr
    assert "budget plan from layer 1: nothing to cut" in first
    assert "cache hit" not in first
    second = ok(run(*args)).stderr
    assert "cache hit for openai:a: 1 sample(s), no request sent" in second
    assert len(fake.requests_for("a")) == 1
