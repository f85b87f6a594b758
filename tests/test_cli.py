"""The `moa` command, run as a real process: streaming, --json, graph, presets, bad input."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import MOA, TEST_KEY, one_line_error
from tests.conftest import run_moa as run


@pytest.fixture
def topology_file(tmp_path: Path) -> Path:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: mine\nlayers:\n"
        "  - proposers: [{model: 'openai:a'}, {model: 'openai:b'}]\n"
        "  - proposers: [{model: 'openai:c'}]\n"
        "aggregator: {model: 'openai:agg'}\n"
    )
    return path


def test_ask_streams_answer_and_reports_progress(fake: FakeOpenAI, topology_file: Path) -> None:
    fake.behave("agg", reply=lambda body, n, k: "The sky scatters blue light most.")
    result = run("ask", "Why is the sky blue?", "--topology", str(topology_file))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "The sky scatters blue light most.\n"
    for line in (
        "done   L1/a",
        "done   L1/b",
        "layer 1 complete",
        "done   L2/c",
        "aggregator writing the final answer",
    ):
        assert line in result.stderr
    assert fake.requests_for("agg")[0].body["stream"] is True


def test_ask_json(fake: FakeOpenAI, topology_file: Path) -> None:
    fake.behave("b", always=500)
    result = run("ask", "Why?", "--topology", str(topology_file), "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = json.loads(result.stdout)
    assert set(out) == {
        "answer",
        "layers",
        "critique",
        "usage",
        "degraded",
        "latency_s",
        "ledger",
        "fallback",
        "thread_id",
    }
    assert out["ledger"] is None and out["fallback"] is None
    assert out["answer"] == "Answer 1 from agg."
    assert out["degraded"] is True
    assert [p["ok"] for p in out["layers"][0]] == [True, False]
    assert "500" in out["layers"][0][1]["error"]
    assert out["usage"]["by_model"]["openai:agg"]["calls"] == 1
    assert out["latency_s"] > 0
    assert TEST_KEY not in result.stdout


def test_threads_continue_a_conversation(
    fake: FakeOpenAI, topology_file: Path, tmp_path: Path
) -> None:
    env = dict(os.environ, MOA_DB=str(tmp_path / "threads.sqlite"))
    first = run("ask", "Write a haiku.", "-t", str(topology_file), "--thread", "t1", env=env)
    assert first.returncode == 0, first.stderr
    second = run("ask", "Sadder.", "-t", str(topology_file), "--thread", "t1", "--json", env=env)
    assert second.returncode == 0, second.stderr
    last_agg = fake.requests_for("agg")[-1]
    assert [m["content"] for m in last_agg.messages[1:]] == [
        "Write a haiku.",
        "Answer 1 from agg.",
        "Sadder.",
    ]
    stored = (tmp_path / "threads.sqlite").read_bytes()
    assert b"Sadder." in stored  # the thread really is in the file...
    assert TEST_KEY.encode() not in stored  # ...and the key is not


def test_failed_run_is_one_line_exit_1(fake: FakeOpenAI, topology_file: Path) -> None:
    fake.behave("a", always=401)
    fake.behave("b", always=401)
    result = run("ask", "Why?", "--topology", str(topology_file), "--quiet")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "layer 1 got 0 of 2 proposals, below its quorum of 1" in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one_line_error(run("ask", "   "), "the prompt is empty")
    one_line_error(run("ask", "hi", "--preset", "gpt5"), "unknown preset 'gpt5'")
    bad = tmp_path / "bad.yaml"
    bad.write_text("layers:\n  - proposers: [{model: 'acme:x'}]\naggregator: {model: 'openai:a'}\n")
    one_line_error(run("ask", "hi", "-t", str(bad)), "unknown provider 'acme'")
    bad.write_text("layers: [}\n")
    one_line_error(run("ask", "hi", "-t", str(bad)), "is not valid YAML/JSON")
    one_line_error(run("ask", "hi", "-t", str(tmp_path / "nope.yaml")), "cannot read topology")
    one_line_error(run("ask", "hi", "-p", "moa", "-t", str(bad)), "not both")
    one_line_error(run("graph", "--format", "png"), "unknown --format 'png'")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    one_line_error(
        run("ask", "hi", "--preset", "moa-gpt4o", env=env),
        "TOGETHER_API_KEY and OPENAI_API_KEY are not set",
    )


def test_graph_and_presets() -> None:
    mermaid = run("graph", "--preset", "moa")
    assert mermaid.returncode == 0
    assert mermaid.stdout.startswith("---") and "L2/dbrx" in mermaid.stdout
    ascii_art = run("graph", "--preset", "openpipe", "--format", "ascii")
    assert ascii_art.returncode == 0
    for node in ("prepare", "L1/gpt-4o", "L1/join", "critic", "aggregator"):
        assert node in ascii_art.stdout
    listing = run("presets")
    names = [line.split()[0] for line in listing.stdout.splitlines()]
    assert names == ["local", "moa", "moa-gpt4o", "moa-lite", "openpipe", "self-moa"]


def test_chat_keeps_the_thread(fake: FakeOpenAI, topology_file: Path) -> None:
    def chat(lines: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*MOA, "chat", "-t", str(topology_file), "--thread", "c1", "--quiet", *args],
            input=lines,
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ),
        )

    first = chat("Write a haiku.\n\nMake it sadder.\n")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["Answer 1 from agg.", "Answer 2 from agg."]
    assert "continue later with: moa chat --thread c1" in first.stderr
    again = chat("One more?\n/exit\nignored\n")  # a new process, the same thread
    assert again.stdout.splitlines() == ["Answer 3 from agg."]
    contents = [m["content"] for m in fake.requests_for("agg")[-1].messages[1:]]
    assert contents == [
        "Write a haiku.",
        "Answer 1 from agg.",
        "Make it sadder.",
        "Answer 2 from agg.",
        "One more?",
    ]
