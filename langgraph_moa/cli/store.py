"""Where threads are kept: an embedded SQLite file by default, or PostgreSQL; and the lock that
lets one run at a time write a thread.

The store is ``--db`` if given, else ``$MOA_DB``, else ``$XDG_DATA_HOME/langgraph-moa/
threads.sqlite`` (``~/.local/share/langgraph-moa/threads.sqlite``). A ``postgresql://`` URL uses
langgraph-checkpoint-postgres (tables are created on first use); anything else is a SQLite path.
A store that cannot be opened (a folder, a path under a file, a read-only place, a PostgreSQL
server that refuses) is one ``MoAInputError`` line naming it, a URL without its password.

Two runs on one thread at once would each start from the same checkpoint and the later write
would hide the earlier turn. :func:`thread_lock` serializes them across processes: an advisory
lock on PostgreSQL, an ``flock`` on a file beside the SQLite store. Both are released by the
operating system or the database when the holder dies (kill -9 included), so a crash never leaves
a thread locked. LangGraph's checkpointers have no such lock (the LangGraph server serializes
runs itself), hence this code.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from langgraph.checkpoint.base import BaseCheckpointSaver

from langgraph_moa.errors import MoAInputError
from langgraph_moa.extras import require_extra

_LOCK_POLL_S = 0.1


def data_dir() -> Path:
    """The user's data folder for moa: ``$XDG_DATA_HOME/langgraph-moa`` (created on use)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "langgraph-moa"


def default_db() -> str:
    """The store used when none is named: ``$MOA_DB`` or the per-user SQLite file."""
    if env := os.environ.get("MOA_DB"):
        return env
    return str(data_dir() / "threads.sqlite")


def _is_postgres(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


@asynccontextmanager
async def open_checkpointer(
    db: str | Path | None = None,
) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """An async LangGraph checkpointer on ``db`` (default: :func:`default_db`)."""
    target = str(db) if db is not None else default_db()
    if _is_postgres(target):
        require_extra("postgres", "a PostgreSQL thread store")
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

        try:
            async with AsyncPostgresSaver.from_conn_string(target) as saver:
                await saver.setup()
                yield saver
        except Exception as err:
            if type(err).__module__.startswith("psycopg"):
                detail = " ".join(str(err).split())[:200]
                raise MoAInputError(
                    f"cannot use the PostgreSQL thread store {_safe_url(target)!r}: {detail}"
                ) from None
            raise
        return
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    path = Path(target).expanduser()
    _check_sqlite_store(path)
    async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:
        try:
            await saver.setup()  # an unwritable or corrupt file fails here, with its name
        except sqlite3.Error as err:
            raise MoAInputError(f"cannot use the thread store {str(path)!r}: {err}") from None
        yield saver


def _safe_url(url: str) -> str:
    """A PostgreSQL URL fit for an error message: without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _check_sqlite_store(path: Path) -> None:
    """Create the store's folder and open the file once, synchronously, so that a path that
    cannot be a SQLite file fails here with one line naming it. aiosqlite, handed such a path,
    raises from a worker thread that then outlives the event loop and prints two tracebacks."""
    where = str(path)
    if path.is_dir():
        raise MoAInputError(f"cannot use the thread store {where!r}: it is a folder, not a file")
    for parent in path.parents:  # the nearest existing ancestor must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise MoAInputError(
                    f"cannot create the thread store {where!r}: {str(parent)!r} is not a folder"
                )
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MoAInputError(
            f"cannot create the thread store {where!r}: {err.strerror or err}"
        ) from None
    try:
        sqlite3.connect(where).close()
    except sqlite3.Error as err:
        raise MoAInputError(f"cannot open the thread store {where!r}: {err}") from None


@asynccontextmanager
async def thread_lock(
    db: str | Path | None, thread_id: str, *, on_wait: Callable[[], None] | None = None
) -> AsyncIterator[None]:
    """Hold ``thread_id``'s lock in the store ``db`` for the duration of the block; if another
    run holds it, call ``on_wait`` once and wait (cancellable) until it is released."""
    target = str(db) if db is not None else default_db()
    digest = hashlib.sha256(thread_id.encode("utf-8", "surrogatepass")).digest()
    if _is_postgres(target):
        require_extra("postgres", "a PostgreSQL thread store")
        async with _advisory_lock(target, int.from_bytes(digest[:8], "big", signed=True), on_wait):
            yield
        return
    lock_dir = Path(target).expanduser().with_name(Path(target).name + ".locks")
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
        handle = open(lock_dir / f"{digest.hex()[:32]}.lock", "a+b")  # noqa: SIM115
    except OSError as err:
        raise MoAInputError(
            f"cannot lock thread {thread_id!r} in {str(lock_dir)!r}: {err.strerror}"
        ) from None
    with handle:

        async def take() -> bool:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        await _until_taken(take, on_wait)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


async def _until_taken(
    take: Callable[[], Awaitable[bool]], on_wait: Callable[[], None] | None
) -> None:
    """Try ``take`` until it succeeds, a poll every 0.1 s (cancellable); ``on_wait`` once."""
    if await take():
        return
    if on_wait is not None:
        on_wait()
    while not await take():
        await asyncio.sleep(_LOCK_POLL_S)


@asynccontextmanager
async def _advisory_lock(
    url: str, key: int, on_wait: Callable[[], None] | None
) -> AsyncIterator[None]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:

        async def take() -> bool:
            row = await (await conn.execute("SELECT pg_try_advisory_lock(%s)", (key,))).fetchone()
            return bool(row and row[0])

        await _until_taken(take, on_wait)
        try:
            yield
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
