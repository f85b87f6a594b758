"""Where the CLI keeps conversation threads: an embedded SQLite file by default.

The location is ``$MOA_DB`` if set, else ``$XDG_DATA_HOME/langgraph-moa/threads.sqlite``
(``~/.local/share/langgraph-moa/threads.sqlite``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from langgraph_moa.errors import MoAInputError

__all__ = ["default_db_path", "open_checkpointer"]


def default_db_path() -> Path:
    if env := os.environ.get("MOA_DB"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "langgraph-moa" / "threads.sqlite"


@asynccontextmanager
async def open_checkpointer(path: Path | None = None) -> AsyncIterator[AsyncSqliteSaver]:
    """An AsyncSqliteSaver on ``path`` (default: :func:`default_db_path`), created if needed."""
    db = path or default_db_path()
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MoAInputError(
            f"cannot create the thread store at {str(db)!r}: {err.strerror}"
        ) from None
    async with AsyncSqliteSaver.from_conn_string(str(db)) as saver:
        yield saver
