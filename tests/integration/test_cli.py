"""The `moa` command, run as a real process: streaming, --json, graph, presets, bad input."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from langgraph_moa.spec.topology import list_presets
from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import MOA, TEST_KEY, one_line_error
from tests.conftest import run_moa as run


@pytest.mark.slow
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


@pytest.mark.slow
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
        "aggregator",
        "usage",
        "degraded",
        "latency_s",
        "ledger",
        "fallback",
        "thread_id",
        "aggregation",
        "early_stop",
        "joins",
    }
    assert out["ledger"] is None and out["fallback"] is None
    assert out["aggregation"]["mode"] == "synthesize" and out["aggregation"]["winner"] is None
    assert out["early_stop"] == [] and out["joins"] == []
    agg = out["aggregator"]
    assert agg["ok"] and agg["attempts"] == 1 and agg["finish_reason"] == "stop"
    assert agg["latency_s"] > 0 and agg["model"] == "openai:agg"
    assert out["answer"] == "Answer 1 from agg."
    assert out["degraded"] is True
    assert [p["ok"] for p in out["layers"][0]] == [True, False]
    assert "500" in out["layers"][0][1]["error"]
    assert out["usage"]["by_model"]["openai:agg"]["calls"] == 1
    assert out["latency_s"] > 0
    assert TEST_KEY not in result.stdout


@pytest.mark.slow
def test_threads_continue_a_conversation(
    fake: FakeOpenAI, topology_file: Path, tmp_path: Path
) -> None:
    env = dict(os.environ, MOA_DB=str(tmp_path / "threads.sqlite"))
    first = run("ask", "Write a haiku.", "-t", str(topology_file), "--thread", "t1", env=env)
    assert first.returncode == 0, first.stderr
    second = run("ask", "Sadder.", "-t", str(topology_file), "--thread", "t1", "--json", env=env)
    assert second.returncode == 0, second.stderr
    last_agg = fake.requests_for("agg")[-1]
    assert [m["content"] for m in last_agg.messages[:-1]] == [
        "Write a haiku.",
        "Answer 1 from agg.",
        "Sadder.",
    ]
    stored = (tmp_path / "threads.sqlite").read_bytes()
    assert b"Sadder." in stored  # the thread really is in the file...
    assert TEST_KEY.encode() not in stored  # ...and the key is not


@pytest.mark.slow
def test_failed_run_is_one_line_exit_1(fake: FakeOpenAI, topology_file: Path) -> None:
    fake.behave("a", always=401)
    fake.behave("b", always=401)
    result = run("ask", "Why?", "--topology", str(topology_file), "--quiet")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "layer 1 got 0 of 2 proposals, below its quorum of 1" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one_line_error(run("ask", "   "), "the prompt is empty")
    one_line_error(run("ask", "hi", "--preset", "gpt5"), "unknown preset 'gpt5'")
    bad = tmp_path / "bad.yaml"
    bad.write_text("layers:\n  - proposers: [{model: 'acme:x'}]\naggregator: {model: 'openai:a'}\n")
    one_line_error(run("ask", "hi", "-t", str(bad)), "unknown provider 'acme'")
    bad.write_text("layers: [}\n")
    one_line_error(run("ask", "hi", "-t", str(bad)), "is not valid YAML: line 1, column 10:")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"layers": [\n  1,,\n]}')
    one_line_error(run("ask", "hi", "-t", str(bad_json)), "is not valid JSON: line 2, column 5:")
    one_line_error(run("ask", "hi", "-t", str(tmp_path / "nope.yaml")), "cannot read topology")
    one_line_error(run("ask", "hi", "-p", "moa", "-t", str(bad)), "not both")
    one_line_error(run("graph", "--format", "png"), "'png' is not one of 'mermaid', 'ascii'")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    one_line_error(
        run("ask", "hi", "--preset", "moa-gpt4o", env=env),
        "TOGETHER_API_KEY and OPENAI_API_KEY are not set",
    )


@pytest.mark.slow
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
    assert names == sorted(list_presets())
    assert {"local", "moa", "moa-gpt4o", "moa-lite", "openpipe", "self-moa", "vote"} <= set(names)


@pytest.mark.slow
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
    contents = [m["content"] for m in fake.requests_for("agg")[-1].messages[:-1]]
    assert contents == [
        "Write a haiku.",
        "Answer 1 from agg.",
        "Make it sadder.",
        "Answer 2 from agg.",
        "One more?",
    ]


@pytest.mark.slow
def test_version_help_and_usage_errors() -> None:
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("moa (langgraph-moa) ")
    for args in (["-h"], ["--help"], ["ask", "-h"], []):
        shown = run(*args)
        assert shown.returncode == 0 and "Usage: moa" in shown.stdout, args
    assert "--install-completion" in run("-h").stdout
    completion = run("--show-completion", "bash")
    assert completion.returncode == 0 and "complete" in completion.stdout
    one_line_error(run("ask"), "moa ask: Missing argument")
    one_line_error(run("bogus"), "No such command 'bogus'")
    one_line_error(run("ask", "hi", "--bogus"), "No such option: --bogus")
    one_line_error(
        run("ask", "hi", "--durability", "never"),
        "'never' is not one of 'sync', 'async', 'exit'",
    )
    assert "<sync|async|exit>" in run("ask", "-h").stdout  # choices shown


@pytest.mark.slow
def test_prompt_from_stdin(fake: FakeOpenAI, topology_file: Path) -> None:
    def ask(data: bytes) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*MOA, "ask", "-", "-t", str(topology_file), "--quiet"],
            input=data,
            capture_output=True,
            timeout=120,
            env=dict(os.environ),
        )

    result = ask("A question\nover two lines, with é.".encode())
    assert result.returncode == 0, result.stderr
    assert fake.requests_for("agg")[0].messages[-2]["content"] == (
        "A question\nover two lines, with é."
    )
    bad = ask(b"caf\xe9")
    assert bad.returncode == 2
    assert bad.stderr.decode().strip() == "moa: error: the prompt on stdin is not UTF-8 (byte 3)"
    empty = ask(b"  \n")
    assert empty.returncode == 2 and b"the prompt is empty" in empty.stderr


@pytest.mark.slow
def test_truncated_answer_is_said(fake: FakeOpenAI, topology_file: Path) -> None:
    fake.behave("agg", finish_reason="length")
    result = run("ask", "Why?", "-t", str(topology_file))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Answer 1 from agg.\n"
    assert (
        "moa: note: the answer was cut at the aggregator's limit of 512 tokens "
        "(finish reason 'length')" in " ".join(result.stderr.split())
    )
    as_json = run("ask", "Why?", "-t", str(topology_file), "--json", "--quiet")
    out = json.loads(as_json.stdout)
    assert out["aggregator"]["finish_reason"] == "length"
    assert "cut at the aggregator's limit" in as_json.stderr
    fake.behave("agg", finish_reason="stop")
    whole = run("ask", "Why?", "-t", str(topology_file))
    assert "cut at" not in whole.stderr


@pytest.mark.slow
def test_a_thread_keeps_its_topology(fake: FakeOpenAI, topology_file: Path, tmp_path: Path) -> None:
    first = run("ask", "Q1", "-t", str(topology_file), "--thread", "keep", "--quiet")
    assert first.returncode == 0, first.stderr
    # No --preset/--topology: the thread's own topology, not the default (local) preset.
    second = run("ask", "Q2", "--thread", "keep", "--json", "--quiet")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["answer"] == "Answer 2 from agg."
    assert [m["content"] for m in fake.requests_for("agg")[-1].messages[:-1]] == [
        "Q1",
        "Answer 1 from agg.",
        "Q2",
    ]
    # The same topology named again is fine; another one is refused, the thread untouched.
    assert run("ask", "Q3", "-t", str(topology_file), "--thread", "keep", "-q").returncode == 0
    one_line_error(
        run("ask", "Q4", "--preset", "moa", "--thread", "keep"),
        "thread 'keep' runs topology 'mine', not 'moa': leave out --preset/--topology",
    )
    one_line_error(
        run("chat", "--preset", "moa", "--thread", "keep"),
        "thread 'keep' runs topology 'mine', not 'moa'",
    )
    assert len(fake.requests_for("agg")) == 3
    other = tmp_path / "other.yaml"
    other.write_text(
        "name: other\nlayers:\n  - proposers: [{model: 'openai:x'}]\n"
        "aggregator: {model: 'openai:agg2'}\n"
    )
    switched = run("ask", "Q5", "-t", str(other), "--thread", "keep", "--switch-topology", "-q")
    assert switched.returncode == 0, switched.stderr
    assert [m["content"] for m in fake.requests_for("agg2")[0].messages[:-1]][-1] == "Q5"


@pytest.mark.slow
def test_fork_at_a_stage_that_does_not_exist_is_refused(
    fake: FakeOpenAI, topology_file: Path
) -> None:
    assert run("ask", "Q", "-t", str(topology_file), "--thread", "f", "-q").returncode == 0
    for typo in ("L2/typo", "L1/joinn", "L3/join", "L9/a", "critic"):
        one_line_error(
            run("fork", "--thread", "f", "--at", typo),
            f"cannot fork at {typo!r}: no such stage in topology 'mine'",
        )
    forked = run("fork", "--thread", "f", "--at", "L2/c", "-q")
    assert forked.returncode == 0, forked.stderr
    assert len(fake.requests_for("c")) == 1 and len(fake.requests_for("agg")) == 2


@pytest.mark.slow
def test_history_labels_forks_and_marks_the_current_branch(
    fake: FakeOpenAI, topology_file: Path, tmp_path: Path
) -> None:
    assert run("ask", "Q", "-t", str(topology_file), "--thread", "hb", "-q").returncode == 0
    edit = tmp_path / "edit.txt"
    edit.write_text("An edited answer.")
    first = run("fork", "--thread", "hb", "--at", "L2/join", "--edit", f"L2/c={edit}", "-q")
    assert first.returncode == 0, first.stderr
    second = run("fork", "--thread", "hb", "--at", "L1/b", "--drop", "L1/b", "-q")
    assert second.returncode == 0, second.stderr

    entries = json.loads(run("history", "--thread", "hb", "--json").stdout)
    edits = [e for e in entries if e["edit"]]
    assert [(e["ran"], e["changes"], e["current"]) for e in edits] == [
        (["L1/join"], ["dropped L1/b"], True),  # newest first: the branch the thread is on
        (["L2/join"], ["edited L2/c"], False),
    ]
    assert all(e["source"] == "update" for e in edits)
    # the original answer and the first fork's answer are on branches left behind
    ends = [e for e in entries if e["ran"] == ["aggregator"]]
    assert [e["current"] for e in ends] == [True, False, False]
    forks_at = {e["checkpoint_id"]: e["branches"] for e in entries if e["branches"] > 1}
    assert len(forks_at) == 2  # after L1/join (the drop) and after L2/join (the edit)
    assert (
        sum(e["current"] for e in entries) == len(entries) - 5
    )  # the first turn after L1/join: 3; the first fork: 2

    lines = run("history", "--thread", "hb").stdout.splitlines()
    assert len(lines) == len(entries)
    drop = next(ln for ln in lines if "dropped" in ln)
    assert drop.startswith("* ") and "ran: L1/join (edit: dropped L1/b)  next: L2/c" in drop
    edited = next(ln for ln in lines if "edited" in ln)
    assert (
        edited.startswith("  ") and "ran: L2/join (edit: edited L2/c)  next: aggregator" in edited
    )
    assert sum("[forks here: 2 branches]" in ln for ln in lines) == 2
    assert lines[-1].startswith("* ") and "ran: (input)" in lines[-1]
