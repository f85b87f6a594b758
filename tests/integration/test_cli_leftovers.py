"""Leftovers of the last audit at the CLI: stores and files that cannot be used, messages that
name their real source, the eval's missing extra, vote's progress, and ``--help``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from langgraph_moa.testing.fake_openai import FakeOpenAI, scripted
from tests.conftest import one_line_error
from tests.conftest import run_moa as run

PG = "postgresql://127.0.0.1:5432/test"


def _postgres_up() -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", 5432)) == 0


@pytest.mark.slow
def test_an_unopenable_sqlite_store_is_one_line_naming_it(tmp_path: Path) -> None:
    one_line_error(
        run("threads", "--db", str(tmp_path)),
        f"cannot use the thread store {str(tmp_path)!r}: it is a folder, not a file",
    )
    a_file = tmp_path / "plain"
    a_file.write_text("x")
    for db in (a_file / "x.sqlite", a_file / "deeper" / "x.sqlite"):
        one_line_error(
            run("history", "--thread", "t", "--db", str(db)),
            f"cannot create the thread store {str(db)!r}: {str(a_file)!r} is not a folder",
        )


def test_a_store_in_a_read_only_folder_is_one_line_naming_it(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root writes through permissions; sysfs refuses even root
        if not Path("/sys/kernel").is_dir():
            pytest.skip("running as root without /sys")
        db = Path("/sys/x.sqlite")
    else:
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o555)
        db = folder / "x.sqlite"
    one_line_error(run("threads", "--db", str(db)), f"cannot open the thread store {str(db)!r}")
    assert not db.exists()


@pytest.mark.slow
@pytest.mark.skipif(not _postgres_up(), reason="no PostgreSQL on 127.0.0.1:5432")
def test_a_postgres_store_that_cannot_connect_is_one_line_without_its_password() -> None:
    wrong_port = "postgresql://moa:s3cret-pw@127.0.0.1:1/test"
    result = run("threads", "--db", wrong_port)
    one_line_error(
        result, "cannot use the PostgreSQL thread store 'postgresql://moa:***@127.0.0.1:1/test'"
    )
    assert "s3cret-pw" not in result.stderr
    one_line_error(
        run("history", "--thread", "t", "--db", PG + "-no-such-database"),
        f"cannot use the PostgreSQL thread store '{PG}-no-such-database': ",
    )


@pytest.mark.slow
def test_files_read_whole_are_bounded(tmp_path: Path) -> None:
    """/dev/zero where a small file is expected ends in one line naming it, never MemoryError."""
    big = "is larger than 1024 KiB"
    one_line_error(
        run("fork", "--thread", "t", "--at", "L1/a", "--edit", "L1/a=/dev/zero"),
        f"the edit of L1/a '/dev/zero' {big}",
    )
    one_line_error(run("serve", "--port", "0", "--keys-file", "/dev/zero"), big)
    one_line_error(
        run("serve", "--port", "0", "--capture", str(tmp_path), "--capture-config", "/dev/zero"),
        f"the capture config '/dev/zero' {big}",
    )
    one_line_error(
        run("resume", "--thread", "t", "--decision", "/dev/zero"),
        f"decision file '/dev/zero' {big}",
    )
    env = dict(os.environ, MOA_PRICES="/dev/zero")
    one_line_error(run("ask", "hi", "--estimate", env=env), f"MOA_PRICES file '/dev/zero' {big}")
    one_line_error(
        run("fork", "--thread", "t", "--at", "L1/a", "--edit", f"L1/a={tmp_path}"),
        f"cannot read the edit of L1/a {str(tmp_path)!r}: it is a folder",
    )


def test_a_chat_history_that_cannot_be_read_whole_is_refused(tmp_path: Path) -> None:
    from langgraph_moa.cli.line_input import MAX_HISTORY_BYTES, prepare_history
    from langgraph_moa.errors import MoAInputError

    with pytest.raises(MoAInputError, match="'/dev/zero' is not a regular file"):
        prepare_history(Path("/dev/zero"))
    prepare_history(Path(os.devnull))  # keeps no history: allowed
    huge = tmp_path / "history"
    with huge.open("wb") as f:
        f.truncate(MAX_HISTORY_BYTES + 1)  # sparse: no disk used
    with pytest.raises(MoAInputError, match="is larger than 64 MiB"):
        prepare_history(huge)
    fresh = tmp_path / "sub" / "new_history"
    prepare_history(fresh)
    assert fresh.is_file() and (fresh.stat().st_mode & 0o777) == 0o600


@pytest.mark.slow
def test_price_and_decision_errors_name_their_own_source(tmp_path: Path) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text("[1, 2]\n")
    env = dict(os.environ, MOA_PRICES=str(prices))
    result = run("ask", "hi", "--estimate", env=env)
    one_line_error(result, f"MOA_PRICES file {str(prices)!r}: Input should be a valid dictionary")
    assert "topology" not in result.stderr
    prices.write_text("'openai:x': {input_per_mtok: -1, output_per_mtok: 1}\n")
    one_line_error(
        run("ask", "hi", "--estimate", env=env),
        f"MOA_PRICES file {str(prices)!r}: openai:x.input_per_mtok: ",
    )
    decision = tmp_path / "decision.yaml"
    decision.write_text("- L1/a\n")
    result = run("resume", "--thread", "t", "--decision", str(decision))
    one_line_error(
        result,
        f"invalid review decision in decision file {str(decision)!r}: Input should be a valid "
        "dictionary",
    )
    assert "topology" not in result.stderr


RUN_WITHOUT = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
sys.argv = ["moa", *sys.argv[2:]]
from langgraph_moa.cli.app import main
main()
"""


def moa_without(missing: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`moa` in a fresh interpreter where the named modules cannot be imported."""
    return subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT, missing, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )


def test_eval_without_its_extra_is_the_missing_extra_line() -> None:
    one_line_error(
        moa_without("numpy", "eval", "gsm8k", "--preset", "moa", "--limit", "1"),
        "moa eval needs the [eval] extra: pip install 'langgraph-moa[eval]'",
    )


@pytest.mark.slow
def test_reasoning_gym_without_its_dependencies_names_the_real_install() -> None:
    one_line_error(
        moa_without("sympy", "eval", "reasoning-gym", "--model", "openai:x", "--limit", "1"),
        "reasoning-gym cannot be imported ('sympy' is missing): it needs its dependencies: "
        "pip install reasoning-gym==0.1.25",
    )
    one_line_error(
        moa_without("reasoning_gym", "eval", "reasoning-gym", "--model", "openai:x"),
        "the reasoning-gym benchmark needs its data package: pip install reasoning-gym==0.1.25",
    )


VOTE = """\
layers:
  - proposers: [{model: 'openai:a'}, {model: 'openai:b'}, {model: 'openai:c'}]
aggregator: {mode: vote, extract: number, on_tie: first, on_no_answer: first}
"""


@pytest.mark.slow
def test_vote_progress_says_what_the_vote_does(fake: FakeOpenAI, tmp_path: Path) -> None:
    for model, text in {"a": "It is 41.", "b": "The answer is 42.", "c": "42, clearly."}.items():
        fake.behave(model, reply=scripted(text))
    path = tmp_path / "vote.yaml"
    path.write_text(VOTE)
    result = run("ask", "-t", str(path), "What is 6 * 7?")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "The answer is 42.\n"
    assert "writing the final answer" not in result.stderr
    assert (
        "aggregator counting the votes: the majority candidate is the answer, as written "
        "(no model call)" in result.stderr
    )
    path.write_text(VOTE.replace(", on_tie: first, on_no_answer: first", ""))
    result = run("ask", "-t", str(path), "What is 6 * 7?")
    assert result.returncode == 0, result.stderr
    assert (
        "the majority candidate is the answer, as written (a tie or no readable answer is "
        "synthesized by a model)" in result.stderr
    )


def test_each_sample_of_a_proposer_finishes_once_with_its_index(fake: FakeOpenAI) -> None:
    from langchain_core.messages import HumanMessage

    from langgraph_moa import Topology, build_graph
    from langgraph_moa.run import Progress, stream_run

    fake.behave("a", reply=scripted("first", "second", "third"))
    topology = Topology.model_validate(
        {
            "layers": [{"proposers": [{"model": "openai:a", "n": 3}, {"model": "openai:b"}]}],
            "aggregator": {"model": "openai:agg"},
        }
    )

    async def progress() -> list[dict[str, Any]]:
        graph = build_graph(topology, cache=False)
        events = stream_run(graph, {"messages": [HumanMessage("q")]}, tokens=False)
        return [e.payload async for e in events if isinstance(e, Progress)]

    payloads = asyncio.run(progress())
    started = {p["node"]: p for p in payloads if p["event"] == "proposer_started"}
    assert {node: p["samples"] for node, p in started.items()} == {"L1/a": 3, "L1/b": 1}
    finished = [
        (p["node"], p["sample"], p["ok"]) for p in payloads if p["event"] == "proposer_finished"
    ]
    assert sorted(finished) == [
        ("L1/a", 0, True),
        ("L1/a", 1, True),
        ("L1/a", 2, True),
        ("L1/b", 0, True),
    ]


COMMANDS = [
    "ask", "chat", "serve", "resume", "history", "threads", "fork", "graph", "presets",
    "relabel", "export", "eval", "report",
]  # fmt: skip


@pytest.mark.slow
def test_help_reads_well_at_80_columns() -> None:
    env = dict(os.environ, COLUMNS="80", NO_COLOR="1", TERM="dumb")
    pages = {}
    for command in ["", *COMMANDS]:
        result = run(*([command] if command else []), "--help", env=env)
        assert result.returncode == 0, result.stderr
        pages[command or "moa"] = result.stdout
    for name, page in pages.items():
        assert "<bool>" not in page and "list[" not in page, name
        assert "{" not in page.partition("Usage:")[2].splitlines()[0], name  # not {prompt}
        assert "…" not in page, name  # nothing cut off
        assert all(len(line) <= 80 for line in page.splitlines()), name
    assert "Usage: moa ask [OPTIONS] PROMPT" in pages["ask"]
    assert "Usage: moa export [OPTIONS] RUN" in pages["export"]
    # docstrings flow as paragraphs, not broken where their source lines ended
    assert "/v1/chat/completions and /v1/models" in pages["moa"]
    assert "/v1/chat/completions and /v1/models" in pages["serve"]
    assert "/exit, Ctrl-D or Ctrl-C" in pages["chat"]
    assert (
        "--log-level                               <CHOICE>  uvicorn's log level:"
        in (pages["serve"])
    )
