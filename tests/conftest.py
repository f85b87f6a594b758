"""Shared fixtures: a fake OpenAI-compatible server on 127.0.0.1 that providers are pointed at.

Also how the suite is split across pytest-xdist workers (``make test`` runs ``-n 3 --dist
loadgroup``): a test runs wherever a worker is free, except that

* the tests of a module with a module- or class-scoped fixture (a ``moa serve`` or
  ``langgraph dev`` process, a Ray cluster, an event loop) stay together on one worker, in
  file order, so that fixture starts once, as in a serial run;
* the tests that run the embedded llama.cpp model are one group: each generation keeps both
  cores busy, so two at once would only slow each other (and their time bounds are measured on
  a machine doing one).

Every worker is its own process with its own fake server (session-scoped), temporary folders and
thread stores; the PostgreSQL tests name their threads uniquely, so workers do not share state.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from langgraph_moa import unregister
from langgraph_moa.testing.fake_anthropic import FakeAnthropic
from langgraph_moa.testing.fake_openai import FakeOpenAI

TEST_KEY = "sk-test-not-a-real-key-0123456789"
ANTHROPIC_KEY = "sk-ant-test-not-a-real-key-98765"
# Files (or file::Class) whose tests run the embedded model; see the module docstring.
EMBEDDED_MODEL = (
    "tests/integration/test_local.py::",
    "tests/integration/test_chat_model_contracts.py::TestChatLocalLlamaIntegration::",
)
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


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Group the tests that must share a worker (see the module docstring)."""
    for item in items:
        if item.nodeid.startswith(EMBEDDED_MODEL):
            item.add_marker(pytest.mark.xdist_group("embedded-model"))
        elif _has_wider_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


def _has_wider_fixture(item: pytest.Item) -> bool:
    """Whether the test uses one of this suite's fixtures set up once for its module, class or
    package (plugins' wider fixtures, such as pytest-recording's, hold nothing of ours)."""
    loop = item.get_closest_marker("asyncio")
    if loop is not None and loop.kwargs.get("loop_scope", "function") != "function":
        return True  # an event loop shared with the module's other tests
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(
        d.scope in ("module", "class", "package") and d.baseid.startswith("tests")
        for defs in info.name2fixturedefs.values()
        for d in defs
    )


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


@pytest.fixture(scope="module")
def _anthropic_server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
def claude(
    _anthropic_server: FakeAnthropic, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> FakeAnthropic:
    """The fake Anthropic API, emptied, with ``anthropic:`` pointed at it (and the OpenAI
    fake set up as usual)."""
    _anthropic_server.reset()
    _anthropic_server.behaviors.clear()
    monkeypatch.delenv("ANTHROPIC_API_URL", raising=False)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", _anthropic_server.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    return _anthropic_server


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
