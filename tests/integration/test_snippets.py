"""Every code block of README.md and docs/**/*.md runs as pasted, against the fake
OpenAI-compatible server (every provider's base URL points at it) and a fake Anthropic API.

A page is run in order, in a folder of its own: ``bash`` blocks by bash, ``python`` blocks by
this interpreter, with ``moa`` and ``python`` on the PATH meaning this checkout's. HTML comments
on the lines just before a fence steer it:

- ``<!-- file: NAME -->``: the block is not run but written to NAME in the page's folder, so the
  page's later blocks can use it (a topology, a dataset).
- ``<!-- not-run: REASON -->``: the block is not run, and says why (a real key, a long-running
  server, an interactive terminal). Such blocks are counted below, never skipped silently.
- ``<!-- expect: TEXT -->``: the block's output must contain TEXT.
- ``<!-- with: moa serve -->``: a ``moa serve`` process runs meanwhile; the block's port 8080
  is replaced by a free one (the only change to what was pasted).

Every fence names its language, and only the languages below are allowed, so no runnable block
can hide under a fence this collector does not read.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from langgraph_moa.testing.fake_anthropic import FakeAnthropic
from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import TEST_KEY
from tests.integration.test_serve import fake_env, free_port, start, stop

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUNNABLE = {"bash", "python"}
LANGUAGES = RUNNABLE | {"yaml", "json", "jsonl", "text", "mermaid"}
FENCE = re.compile(r"^([ \t]*)```(\S*)[^\n]*\n(.*?)^\1```[ \t]*$", re.M | re.S)
MARK = re.compile(r"<!--\s*(file|not-run|expect|with):\s*(.*?)\s*-->")

# What the pages hold; a change here is a change a reviewer sees.
RUN_AS_PASTED = 24
NOT_RUN = 16


@dataclass
class Block:
    page: Path
    line: int
    language: str
    code: str
    marks: dict[str, list[str]] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def runnable(self) -> bool:
        return self.language in RUNNABLE and "not-run" not in self.marks


def blocks_of(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").splitlines()
        marks: dict[str, list[str]] = {}
        while before and MARK.fullmatch(before[-1].strip()):
            kind, value = MARK.fullmatch(before.pop().strip()).groups()  # type: ignore[union-attr]
            marks.setdefault(kind, []).append(value)
        line = text.count("\n", 0, match.start()) + 1
        code = textwrap.dedent(match.group(3))
        found.append(Block(page, line, match.group(2), code, marks))
    return found


BLOCKS = {page: blocks_of(page) for page in PAGES}
ALL = [block for blocks in BLOCKS.values() for block in blocks]


def test_every_block_is_run_or_says_why() -> None:
    for block in ALL:
        assert block.language in LANGUAGES, f"{block.where}: fence language {block.language!r}"
        for reason in block.marks.get("not-run", []):
            assert len(reason) > 10, f"{block.where}: a not-run block says why"
        if "file" in block.marks:
            assert block.language not in RUNNABLE, f"{block.where}: a file is not run"
    runnable = [b for b in ALL if b.language in RUNNABLE]
    not_run = [b.where for b in runnable if not b.runnable]
    assert len(runnable) - len(not_run) == RUN_AS_PASTED, [b.where for b in runnable]
    assert len(not_run) == NOT_RUN, not_run


@pytest.fixture(scope="module")
def anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


def page_env(fake: FakeOpenAI, claude: FakeAnthropic, folder: Path) -> dict[str, str]:
    """The providers on the fakes, the thread store in the page's folder, and `moa` and
    `python` on the PATH meaning this checkout's."""
    bin_dir = folder / ".bin"
    bin_dir.mkdir()
    moa = bin_dir / "moa"
    moa.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m langgraph_moa.cli "$@"\n')
    moa.chmod(moa.stat().st_mode | stat.S_IXUSR)
    (bin_dir / "python").symlink_to(sys.executable)
    env = fake_env(fake) | {
        "ANTHROPIC_BASE_URL": claude.base_url,
        "ANTHROPIC_API_KEY": TEST_KEY,
        "MOA_DB": str(folder / ".threads.sqlite"),
        "MOA_CHAT_HISTORY": str(folder / ".chat_history"),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "COLUMNS": "100",
    }
    return env


def run(
    block: Block, code: str, env: dict[str, str], folder: Path
) -> subprocess.CompletedProcess[str]:
    shell = ["bash", "-euo", "pipefail", "-c"]
    return subprocess.run(
        [*(shell if block.language == "bash" else [sys.executable, "-c"]), code],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=folder,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if any(b.runnable for b in BLOCKS[p])],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_the_page_runs_as_pasted(
    page: Path, fake: FakeOpenAI, anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    env = page_env(fake, anthropic, tmp_path)
    for block in BLOCKS[page]:
        for name in block.marks.get("file", []):
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(block.code, encoding="utf-8")
        if not block.runnable:
            continue
        server, code = None, block.code
        if "with" in block.marks:
            assert block.marks["with"] == ["moa serve"], block.where
            port = free_port()
            server = start([], env, port, tmp_path / "serve.log", None)
            code = code.replace("8080", str(port))
        try:
            done = run(block, code, env, tmp_path)
        finally:
            if server is not None:
                stop(server)
        shown = f"{block.where} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        assert done.returncode == 0, shown
        assert "Traceback" not in done.stderr, shown
        assert TEST_KEY not in done.stdout + done.stderr, shown
        for text in block.marks.get("expect", []):
            assert text in done.stdout + done.stderr, f"{block.where}: no {text!r}\n{shown}"
