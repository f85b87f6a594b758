"""Where threads are kept: an embedded SQLite file by default, or PostgreSQL.

The store is ``--db`` if given, else ``$MOA_DB``, else ``$XDG_DATA_HOME/langgraph-moa/
threads.sqlite`` (``~/.local/share/langgraph-moa/threads.sqlite``). A ``postgresql://`` URL uses
langgraph-checkpoint-postgres (tables are created on first use); anything else is a SQLite path.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver

from langgraph_moa.errors import MoAInputError
from langgraph_moa.extras import require_extra

__all__ = ["default_db", "open_checkpointer"]


def default_db() -> str:
    """The store used when none is named: ``$MOA_DB`` or the per-user SQLite file."""
    if env := os.environ.get("MOA_DB"):
        return env
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return str(Path(base) / "langgraph-moa" / "threads.sqlite")


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
                raise MoAInputError(f"cannot use the PostgreSQL thread store: {detail}") from None
            raise
        return
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    path = Path(target).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = err.strerror
        raise MoAInputError(f"cannot create the thread store at {str(path)!r}: {reason}") from None
    async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:
        yield saver
