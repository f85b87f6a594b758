"""The SQLite call cache: group-committed writes, reads beside them, LangGraph's file format."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from langgraph.cache.sqlite import SqliteCache

from langgraph_moa.llm.call_cache import SqliteCallCache

NS = ("langgraph-moa", "proposals", "v2")


def test_many_calls_finishing_at_once_are_all_on_disk_when_they_return(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite"
    cache = SqliteCallCache(str(path))

    async def store(k: int) -> None:
        await cache.aset({(NS, f"k{k}"): ({"texts": [f"answer {k}"]}, None)})
        # on disk once aset returns: another connection sees it
        with sqlite3.connect(path) as conn:
            found = conn.execute("SELECT COUNT(*) FROM cache WHERE key = ?", (f"k{k}",))
            assert found.fetchone()[0] == 1

    async def main() -> None:
        await asyncio.gather(*(store(k) for k in range(200)))

    asyncio.run(main())
    found = cache.get([(NS, f"k{k}") for k in range(200)] + [(NS, "missing")])
    assert len(found) == 200 and found[(NS, "k7")] == {"texts": ["answer 7"]}
    cache.close()


def test_the_file_is_langgraphs_sqlite_cache_format(tmp_path: Path) -> None:
    path = str(tmp_path / "calls.sqlite")
    theirs: SqliteCache[dict[str, list[str]]] = SqliteCache(path=path)
    theirs.set({(NS, "old"): ({"texts": ["from before"]}, None)})
    ours = SqliteCallCache(path)
    assert ours.get([(NS, "old")]) == {(NS, "old"): {"texts": ["from before"]}}
    ours.set({(NS, "new"): ({"texts": ["from now"]}, None)})
    assert theirs.get([(NS, "new")]) == {(NS, "new"): {"texts": ["from now"]}}
    ours.close()


def test_expired_entries_are_not_served_and_clear_empties(tmp_path: Path) -> None:
    cache = SqliteCallCache(str(tmp_path / "calls.sqlite"))
    cache.set({(NS, "gone"): ({"texts": ["x"]}, -1), (NS, "kept"): ({"texts": ["y"]}, None)})
    assert cache.get([(NS, "gone"), (NS, "kept")]) == {(NS, "kept"): {"texts": ["y"]}}
    asyncio.run(cache.aclear([NS]))
    assert cache.get([(NS, "kept")]) == {}
    cache.close()


def test_a_write_that_fails_fails_its_callers_and_the_next_ones_go_on(tmp_path: Path) -> None:
    cache = SqliteCallCache(str(tmp_path / "calls.sqlite"))

    async def main() -> None:
        with pytest.raises(TypeError):
            await cache.aset({(NS, "bad"): (threading.Lock(), None)})  # not serializable
        await cache.aset({(NS, "good"): ({"texts": ["z"]}, None)})

    asyncio.run(main())
    assert cache.get([(NS, "good"), (NS, "bad")]) == {(NS, "good"): {"texts": ["z"]}}
    cache.close()


def test_a_cancelled_caller_still_gets_its_entry_written(tmp_path: Path) -> None:
    cache = SqliteCallCache(str(tmp_path / "calls.sqlite"))

    async def main() -> None:
        task = asyncio.create_task(cache.aset({(NS, "late"): ({"texts": ["w"]}, None)}))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    cache.close()  # writes what is waiting first
    again = SqliteCallCache(str(tmp_path / "calls.sqlite"))
    assert again.get([(NS, "late")]) == {(NS, "late"): {"texts": ["w"]}}
    again.close()
