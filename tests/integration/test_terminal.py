"""`moa` at a real terminal (a pty): the live progress display, Ctrl-C during `ask` and `chat`
sent as SIGINT to the process group, as a terminal does, and `chat`'s line editing and prompt
history (prompt_toolkit, or readline without it)."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import stat
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from langgraph_moa.extras import has_extra
from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import MOA
from tests.conftest import run_moa as run

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """A `moa` process whose stdin, stdout and stderr are one pseudo-terminal."""

    def __init__(self, *args: str, columns: int = 120) -> None:
        leader, follower = os.openpty()
        # the terminal's size, as a terminal sets it (and as COLUMNS says it)
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
        env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(columns))
        self.proc = subprocess.Popen(
            [*MOA, *args],
            stdin=follower,
            stdout=follower,
            stderr=follower,
            env=env,
            start_new_session=True,  # its own process group, like a shell job
        )
        os.close(follower)
        self.leader = leader
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.leader, 4096)
            except OSError:  # the process closed the terminal
                return
            if not data:
                return
            self.chunks.append(data)

    @property
    def text(self) -> str:
        return ANSI.sub("", b"".join(self.chunks).decode("utf-8", "replace"))

    def expect(self, pattern: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while pattern not in self.text:
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{self.text}"
            assert self.proc.poll() is None or pattern in self.text, self.text
            time.sleep(0.05)

    def type(self, text: str) -> None:
        os.write(self.leader, text.encode())

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)

    def wait(self, timeout: float = 60.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=5)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.leader)


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for t in opened:
        t.close()


def wait_for_request(fake: FakeOpenAI, model: str, count: int = 1, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(fake.requests_for(model)) < count:
        assert time.monotonic() < deadline, f"no request for {model}"
        time.sleep(0.02)


@pytest.mark.slow
def test_live_progress_on_a_terminal(
    fake: FakeOpenAI, topology_file: Path, terminals: list[Terminal]
) -> None:
    fake.behave("b", latency_s=1.5, always=500)
    fake.behave("a", latency_s=0.3)
    term = Terminal("ask", "Why?", "-t", str(topology_file), "--thread", "live")
    terminals.append(term)
    term.expect("running")  # a spinner row while the proposers work
    assert term.wait() == 0, term.text
    text = term.text
    rows = {line.split()[1]: line for line in text.splitlines() if re.match(r"^\S+ L\d/", line)}
    assert "done" in rows["L1/a"] and "tok" in rows["L1/a"]
    assert "failed" in rows["L1/b"] and "HTTP 500" in rows["L1/b"]
    assert "done" in rows["L2/c"]
    assert "aggregator" in text and "Answer 1 from agg." in text
    assert re.search(r"\d+\.\d\ds, \d+ tokens, thread live", text)  # the final summary


@pytest.mark.slow
def test_ctrl_c_during_ask_keeps_a_resumable_thread(
    fake: FakeOpenAI, topology_file: Path, terminals: list[Terminal]
) -> None:
    fake.behave("b", latency_s=30)
    term = Terminal("ask", "Why?", "-t", str(topology_file), "--thread", "stop")
    terminals.append(term)
    wait_for_request(fake, "b")
    wait_for_request(fake, "a")
    time.sleep(0.3)  # a has answered; b is still in flight
    started = time.monotonic()
    term.ctrl_c()
    assert term.wait(timeout=30) == 130, term.text
    assert time.monotonic() - started < 5  # it stopped at once, not after b's 30 s
    lines = [ln for ln in term.text.splitlines() if ln.startswith("moa: error:")]
    assert lines == [
        "moa: error: interrupted; what finished is saved in thread stop: finish it with: "
        "moa resume --thread stop"
    ]
    assert "Traceback" not in term.text
    fake.behave("b", latency_s=0)
    resumed = run("resume", "--thread", "stop", "--json", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert len(fake.requests_for("a")) == 1  # what finished before Ctrl-C is not asked again
    assert len(fake.requests_for("b")) == 2 and len(fake.requests_for("agg")) == 1


@pytest.mark.slow
def test_ctrl_c_in_chat_cancels_the_turn_not_the_chat(
    fake: FakeOpenAI, topology_file: Path, terminals: list[Terminal]
) -> None:
    term = Terminal("chat", "-t", str(topology_file), "--thread", "talk", "-q")
    terminals.append(term)
    term.expect("you>")
    term.type("First question\n")
    term.expect("Answer 1 from agg.")
    fake.behave("b", latency_s=30)
    term.type("A question to cancel\n")
    wait_for_request(fake, "b", count=2)
    term.ctrl_c()
    term.expect("cancelled this turn")
    fake.behave("b", latency_s=0)
    term.type("Second question\n")
    term.expect("Answer 2 from agg.")
    term.type("/exit\n")
    assert term.wait() == 0, term.text
    assert "continue later with: moa chat --thread talk" in term.text
    contents = [m["content"] for m in fake.requests_for("agg")[-1].messages[:-1]]
    assert contents == ["First question", "Answer 1 from agg.", "Second question"]
    # The thread in the store agrees: the next turn sees no trace of the cancelled one.
    later = run("ask", "Third", "--thread", "talk", "-q")
    assert later.returncode == 0, later.stderr
    contents = [m["content"] for m in fake.requests_for("agg")[-1].messages[:-1]]
    assert "A question to cancel" not in contents and contents[-1] == "Third"


@pytest.mark.slow
def test_ctrl_c_at_the_chat_prompt_leaves(
    fake: FakeOpenAI, topology_file: Path, terminals: list[Terminal]
) -> None:
    term = Terminal("chat", "-t", str(topology_file), "--thread", "bye", "-q")
    terminals.append(term)
    term.expect("you>")
    term.ctrl_c()
    assert term.wait(timeout=20) in (0, 130), term.text
    assert "continue later with: moa chat --thread bye" in term.text
    assert "Traceback" not in term.text


# --- moa chat: line editing and a history across sessions ---------------------------------

UP, LEFT, ENTER = "\x1b[A", "\x1b[D", "\r"


def last_question(fake: FakeOpenAI) -> str:
    return str(fake.requests_for("agg")[-1].messages[-2]["content"])


@pytest.mark.slow
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


@pytest.mark.slow
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
