"""`moa chat` at a real terminal (a pty): line editing, and a prompt history that a later
session recalls with the Up arrow, kept in the file `--history` or `MOA_CHAT_HISTORY` names."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from langgraph_moa.extras import has_extra
from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.integration.test_terminal import Terminal

UP, LEFT, ENTER = "\x1b[A", "\x1b[D", "\r"


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for t in opened:
        t.close()


def last_question(fake: FakeOpenAI) -> str:
    return str(fake.requests_for("agg")[-1].messages[-1]["content"])


@pytest.mark.parametrize("editor", ["prompt_toolkit", "readline"])
def test_chat_edits_lines_and_recalls_earlier_sessions(
    fake: FakeOpenAI,
    topology_file: Path,
    terminals: list[Terminal],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    editor: str,
) -> None:
    if editor == "prompt_toolkit" and not has_extra("chat"):
        pytest.skip("prompt_toolkit (the [chat] extra) is not installed")
    if editor == "readline":  # hide prompt_toolkit: the standard library's readline takes over
        hidden = tmp_path / "hide"
        hidden.mkdir()
        (hidden / "sitecustomize.py").write_text(
            "import sys\nsys.modules['prompt_toolkit'] = None\n"
        )
        monkeypatch.setenv("PYTHONPATH", f"{hidden}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    history = tmp_path / "hist" / "chat_history"
    monkeypatch.setenv("MOA_CHAT_HISTORY", str(history))

    first = Terminal("chat", "-t", str(topology_file), "--thread", "ed", "-q")
    terminals.append(first)
    first.expect("you>")
    first.type("Why is the sky blu" + LEFT * 3 + "X" + ENTER)  # edited in the middle
    first.expect("Answer 1 from agg.")
    assert last_question(fake) == "Why is the sky Xblu"
    first.type("/exit" + ENTER)
    assert first.wait() == 0, first.text
    assert history.exists() and stat.S_IMODE(history.stat().st_mode) == 0o600
    assert "Why is the sky Xblu" in history.read_text()

    second = Terminal("chat", "--thread", "ed", "-q")  # a new session recalls the old prompt
    terminals.append(second)
    second.expect("you>")
    second.type(UP + UP + "e" + ENTER)  # past /exit, kept as a shell keeps `exit`
    second.expect("Answer 2 from agg.")
    assert last_question(fake) == "Why is the sky Xblue"
    second.type("/exit" + ENTER)
    assert second.wait() == 0, second.text
    assert "Traceback" not in first.text + second.text and "CPR" not in first.text


def test_history_flag_names_the_file(
    fake: FakeOpenAI, topology_file: Path, terminals: list[Terminal], tmp_path: Path
) -> None:
    chosen = tmp_path / "mine.txt"
    term = Terminal("chat", "-t", str(topology_file), "-q", "--history", str(chosen))
    terminals.append(term)
    term.expect("you>")
    term.type("Kept here" + ENTER)
    term.expect("Answer 1 from agg.")
    term.type("/exit" + ENTER)
    assert term.wait() == 0, term.text
    assert "Kept here" in chosen.read_text()
