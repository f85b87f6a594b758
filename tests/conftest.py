"""Shared fixtures: a fake OpenAI-compatible server on 127.0.0.1 that providers are pointed at."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from langgraph_moa import unregister
from langgraph_moa.testing.fake_openai import FakeOpenAI

TEST_KEY = "sk-test-not-a-real-key-0123456789"
MOA = [sys.executable, "-m", "langgraph_moa.cli"]


def run_moa(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The `moa` command as a real process, with this test's environment by default."""
    return subprocess.run(
        [*MOA, *args], capture_output=True, text=True, timeout=120, env=env or dict(os.environ)
    )


def one_line_error(result: subprocess.CompletedProcess[str], expected: str, code: int = 2) -> None:
    """The command failed with `code` and said why in one `moa: error:` line, no traceback."""
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("moa: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr


@pytest.fixture(autouse=True)
def _thread_store(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep every test's CLI threads (and chat history) out of the user's home."""
    monkeypatch.setenv("MOA_DB", str(tmp_path_factory.mktemp("db") / "threads.sqlite"))
    monkeypatch.setenv("MOA_CHAT_HISTORY", str(tmp_path_factory.mktemp("chat") / "history"))


@pytest.fixture(scope="session")
def _server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def fake(_server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    """The fake server, emptied, with `openai`, `together` and `groq` pointed at it."""
    _server.reset()
    _server.behaviors.clear()
    for provider in ("OPENAI", "TOGETHER", "GROQ"):
        monkeypatch.setenv(f"{provider}_BASE_URL", _server.base_url)
        monkeypatch.setenv(f"{provider}_API_KEY", TEST_KEY)
    monkeypatch.delenv("MOA_PRICES", raising=False)
    yield _server


@pytest.fixture
def topology_file(tmp_path: Path) -> Path:
    """Two layers (a, b; then c) and an aggregator, all on the fake server."""
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: mine\nlayers:\n"
        "  - proposers: [{model: 'openai:a'}, {model: 'openai:b'}]\n"
        "  - proposers: [{model: 'openai:c'}]\n"
        "aggregator: {model: 'openai:agg'}\n"
    )
    return path


@pytest.fixture
def registry() -> Iterator[list[str]]:
    """Names the test registers (providers, models): forgotten after it."""
    names: list[str] = []
    yield names
    for name in names:
        unregister(name)
