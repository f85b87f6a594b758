"""Shared fixtures: a fake OpenAI-compatible server on 127.0.0.1 that providers are pointed at."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from langgraph_moa.testing.fake_openai import FakeOpenAI

TEST_KEY = "sk-test-not-a-real-key-0123456789"


@pytest.fixture(autouse=True)
def _thread_store(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep every test's CLI threads out of the user's home."""
    monkeypatch.setenv("MOA_DB", str(tmp_path_factory.mktemp("db") / "threads.sqlite"))


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
