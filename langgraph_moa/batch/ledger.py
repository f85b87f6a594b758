"""The run's ledger: one SQLite row per dataset row, written once the row is finished.

A row is written in one transaction (WAL journal, ``synchronous=FULL``), so a kill -9 at any
moment leaves each row either fully recorded or absent; the id is the primary key, so no row is
ever recorded twice. What the ledger holds is the truth about a run: resume skips its ``done``
(and, unless asked, ``failed``) rows, the summary counts it, the exports read it. Invalid input
rows are kept apart, keyed by where they were read.

What goes wrong is sorted by whom it is about. A record that cannot be stored (a lone surrogate
in an upstream's answer, a value too big for SQLite) is about its row: the row is recorded as
``failed`` with the reason, without its answer, and the others are written as usual. A disk or
database failure (no space left, a file-size limit, an I/O error) is about the run: it raises
:class:`~langgraph_moa.errors.MoAStorageError` naming the file and the condition, and nothing of
the transaction is recorded, so a rerun runs those rows again. A ledger that is not a SQLite
file, is damaged, or lacks one of its tables is refused on opening
(:class:`~langgraph_moa.errors.MoAInputError`, one line) rather than recreated empty: only a new
file gets the tables. Values JSON has no type for (a Parquet timestamp in ``metadata``) are
stored as their text.

Hand-written over the standard library's ``sqlite3``: LangGraph's checkpointers store graph
threads, not a table of results to count and stream.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NotRequired

from typing_extensions import TypedDict

from langgraph_moa.batch.row_check import InvalidRow
from langgraph_moa.errors import MoAInputError, MoAStorageError, storage_error

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (
    id TEXT PRIMARY KEY,
    row_where TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    cost_usd REAL,
    calls INTEGER NOT NULL,
    cached_calls INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    latency_s REAL NOT NULL,
    degraded INTEGER NOT NULL,
    finished_at REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS invalid (
    row_where TEXT PRIMARY KEY,
    id TEXT,
    reason TEXT NOT NULL
);
"""
COLUMNS = {
    "rows": (
        "id",
        "row_where",
        "status",
        "error",
        "cost_usd",
        "calls",
        "cached_calls",
        "tokens",
        "latency_s",
        "degraded",
        "finished_at",
        "record",
    ),
    "invalid": ("row_where", "id", "reason"),
}
# SQLite's primary result codes that say the file itself is not a sound database
_DAMAGED = {11, 24, 26}  # SQLITE_CORRUPT, SQLITE_FORMAT, SQLITE_NOTADB
_SHORT_READ = 522  # SQLITE_IOERR_SHORT_READ: the file ends before its pages do (truncated)
# ... and those that are about one value written, not the disk
_ONE_ROW = {18, 20, 25}  # SQLITE_TOOBIG, SQLITE_MISMATCH, SQLITE_RANGE


def _ledger_error(
    path: Path, err: Exception, doing: str = "write"
) -> MoAInputError | MoAStorageError:
    """The one-line error for a failure of the ledger at ``path``: a damaged file
    (MoAInputError), or a disk or database failure (MoAStorageError)."""
    code = getattr(err, "sqlite_errorcode", 0)
    if code & 0xFF in _DAMAGED or code == _SHORT_READ or isinstance(err, json.JSONDecodeError):
        text = " ".join(str(err).split())[:200]
        return MoAInputError(f"the ledger {str(path)!r} is damaged: {text}")
    return storage_error(path, err, doing)


def _one_row(err: Exception) -> bool:
    if isinstance(err, sqlite3.InterfaceError | sqlite3.DataError):
        return True
    return getattr(err, "sqlite_errorcode", 0) & 0xFF in _ONE_ROW


class TurnRecord(TypedDict):
    """One turn of a row relabeled with ``turns="all"``: where its answer is in the row's
    conversation, the original answer there, the MoA's, and its figures."""

    index: int  # the position of the answer in prompt + [completion]
    status: str
    error: str | None
    completion: dict[str, Any] | None  # the original answer of this turn
    answer_message: dict[str, Any] | None
    result: dict[str, Any] | None
    cost_usd: float | None
    calls: int
    cached_calls: int
    tokens: int
    latency_s: float
    degraded: bool
    degraded_reasons: NotRequired[list[str]]


class RowRecord(TypedDict):
    """One relabeled row: its input, the MoA record (as ``moa ask --json`` gives it) or why it
    failed, and its figures. A row relabeled with ``turns="all"`` also has ``turns`` (every
    turn, in order; the row's figures are their sums, its answer the last turn's) and
    ``turn_context`` ("relabeled" or "original": what the earlier turns were in a turn's
    prompt)."""

    id: str
    where: str
    status: str  # "done" or "failed"
    error: str | None
    prompt: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    completion: dict[str, Any] | None  # the original completion, if the row had one
    metadata: dict[str, Any] | None
    result: dict[str, Any] | None  # result_of(state): answer, layers, critique, usage...
    answer_message: NotRequired[dict[str, Any] | None]  # the answer as an OpenAI message
    cost_usd: float | None
    calls: int  # requests sent
    cached_calls: int  # calls served from the cache
    tokens: int
    latency_s: float
    degraded: bool
    # why a done row is degraded, each check appending its own: "truncated" (the final answer
    # was cut by max_tokens), "proposer_failed", "critic_failed", "judge_failed", "fallback",
    # "budget_trimmed", "invalid_json" (a JSON-mode answer does not parse) or "other"; empty
    # when it is not degraded (older ledgers lack it)
    degraded_reasons: NotRequired[list[str]]
    turns: NotRequired[list[TurnRecord]]
    turn_context: NotRequired[str]


class Totals(TypedDict):
    done: int
    failed: int
    invalid: int
    degraded: int
    calls: int
    cached_calls: int
    tokens: int
    cost_usd: float


def _text(value: str) -> str:
    """Text SQLite can store: a lone surrogate (never valid UTF-8) written as its escape."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _storable(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")
    except (ValueError, TypeError, RecursionError):  # UnicodeEncodeError among them
        return False
    return True


def _as_failed(record: RowRecord, error: str, *, keep_input: bool) -> RowRecord:
    """The record of a row that could not be stored: failed with ``error``, its figures kept
    (what was paid counts), its answer left out, and its input kept where it can be."""

    def kept(value: Any, empty: Any) -> Any:
        return value if keep_input and _storable(value) else empty

    return RowRecord(
        id=_text(record["id"]),
        where=_text(record["where"]),
        status="failed",
        error=_text(error),
        prompt=kept(record["prompt"], []),
        tools=kept(record["tools"], None),
        completion=kept(record["completion"], None),
        metadata=kept(record["metadata"], None),
        result=None,
        answer_message=None,
        cost_usd=record["cost_usd"],
        calls=record["calls"],
        cached_calls=record["cached_calls"],
        tokens=record["tokens"],
        latency_s=record["latency_s"],
        degraded=False,
    )


def _encoded(record: RowRecord) -> tuple[RowRecord, str]:
    """The record and its JSON text; a record that cannot be stored becomes its row's failure
    (see :func:`_as_failed`)."""
    try:
        blob = json.dumps(record, ensure_ascii=False, default=str)
        blob.encode("utf-8")  # a lone surrogate anywhere cannot be stored
        return record, blob
    except (ValueError, TypeError, RecursionError) as err:  # UnicodeEncodeError among them
        reason = f"cannot record the row: {type(err).__name__}: {' '.join(str(err).split())[:200]}"
    failed = _as_failed(record, reason, keep_input=True)
    return failed, json.dumps(failed, ensure_ascii=False, default=str)


def _values(record: RowRecord, blob: str, now: float) -> tuple[Any, ...]:
    r = record
    return (
        r["id"],
        r["where"],
        r["status"],
        r["error"],
        r["cost_usd"],
        r["calls"],
        r["cached_calls"],
        r["tokens"],
        r["latency_s"],
        int(r["degraded"]),
        now,
        blob,
    )


_UPSERT = (
    "INSERT INTO rows VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
    "row_where=excluded.row_where, status=excluded.status, error=excluded.error, "
    "cost_usd=excluded.cost_usd, calls=excluded.calls, "
    "cached_calls=excluded.cached_calls, tokens=excluded.tokens, "
    "latency_s=excluded.latency_s, degraded=excluded.degraded, "
    "finished_at=excluded.finished_at, record=excluded.record "
    "WHERE rows.status != 'done'"
)


class Ledger:
    """The ledger of one run directory; safe to use from several threads.

    ``create``: make the tables in a new (or empty) file; an existing ledger is checked
    either way, and one that is damaged or lacks a table raises MoAInputError."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        if not create and not path.is_file():
            raise MoAInputError(f"the ledger {str(path)!r} is missing")
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
        except sqlite3.Error as err:
            raise _ledger_error(path, err, "open") from None
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            tables = _check_tables(self._conn, path, create=create)
            if not tables:
                self._conn.executescript(_SCHEMA)
                self._conn.commit()
        except BaseException as err:
            self._conn.close()
            if isinstance(err, sqlite3.Error):
                raise _ledger_error(path, err, "open") from None
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def verify(self) -> None:
        """SQLite's quick check of the whole file (reads it all); MoAInputError if damaged."""
        with self._lock:
            try:
                (verdict,) = self._conn.execute("PRAGMA quick_check(1)").fetchone()
            except sqlite3.Error as err:
                raise _ledger_error(self.path, err, "read") from None
        if verdict != "ok":
            text = " ".join(str(verdict).split())[:200]
            raise MoAInputError(f"the ledger {str(self.path)!r} is damaged: {text}")

    def seen(self, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """For those of ``ids`` already recorded: id -> (status, where it was read)."""
        found: dict[str, tuple[str, str]] = {}
        with self._lock:
            try:
                for start in range(0, len(ids), 500):
                    part = ids[start : start + 500]
                    marks = ",".join("?" * len(part))
                    query = f"SELECT id, status, row_where FROM rows WHERE id IN ({marks})"
                    for row_id, status, where in self._conn.execute(query, part):
                        found[row_id] = (status, where)
            except sqlite3.Error as err:
                raise _ledger_error(self.path, err, "read") from None
        return found

    def write(self, records: Sequence[RowRecord]) -> list[RowRecord]:
        """Record finished rows, all in one transaction (a failed row may be replaced by a
        later attempt; a done row never is). Returns the records as written: one that could
        not be stored is its row's failure instead (see the module docstring). A disk or
        database failure raises MoAStorageError and records none of them."""
        now = time.time()
        encoded = [_encoded(r) for r in records]
        try:
            self._upsert([_values(r, blob, now) for r, blob in encoded])
        except sqlite3.Error as err:
            if not _one_row(err):
                raise _ledger_error(self.path, err) from None
            if len(encoded) > 1:  # find the row: each on its own
                return [kept for r, _ in encoded for kept in self.write([r])]
            record, _ = encoded[0]
            reason = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
            small = _as_failed(record, f"cannot record the row: {reason}", keep_input=False)
            try:
                self._upsert([_values(small, json.dumps(small, ensure_ascii=False), now)])
            except sqlite3.Error as again:
                raise _ledger_error(self.path, again) from None
            return [small]
        return [r for r, _ in encoded]

    def _upsert(self, values: list[tuple[Any, ...]]) -> None:
        with self._lock, self._conn:
            self._conn.executemany(_UPSERT, values)

    def write_invalid(self, rows: Sequence[InvalidRow]) -> int:
        """Record invalid input rows (once each); returns how many were new."""
        values = [
            (_text(r.where), None if r.id is None else _text(r.id), _text(r.reason)) for r in rows
        ]
        try:
            with self._lock, self._conn:
                before = self._conn.total_changes
                self._conn.executemany("INSERT OR IGNORE INTO invalid VALUES (?,?,?)", values)
                return self._conn.total_changes - before
        except sqlite3.Error as err:
            raise _ledger_error(self.path, err) from None

    def totals(self) -> Totals:
        with self._lock:
            try:
                row = self._conn.execute(
                    "SELECT COALESCE(SUM(status='done'),0), COALESCE(SUM(status='failed'),0), "
                    "COALESCE(SUM(degraded),0), COALESCE(SUM(calls),0), "
                    "COALESCE(SUM(cached_calls),0), COALESCE(SUM(tokens),0), "
                    "COALESCE(SUM(cost_usd),0) FROM rows"
                ).fetchone()
                invalid = self._conn.execute("SELECT COUNT(*) FROM invalid").fetchone()[0]
            except sqlite3.Error as err:
                raise _ledger_error(self.path, err, "read") from None
        done, failed, degraded, calls, cached, tokens, cost = row
        return Totals(
            done=done,
            failed=failed,
            invalid=invalid,
            degraded=degraded,
            calls=calls,
            cached_calls=cached,
            tokens=tokens,
            cost_usd=float(cost),
        )

    def records(self, status: str | None = None) -> Iterator[RowRecord]:
        """Recorded rows in the order they finished (streamed, not loaded at once)."""
        query = "SELECT record FROM rows"
        params: tuple[str, ...] = ()
        if status is not None:
            query += " WHERE status = ?"
            params = (status,)
        query += " ORDER BY finished_at, rowid"
        # a connection of its own: the caller may write while it reads
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            for (blob,) in conn.execute(query, params):
                yield json.loads(blob)
        except (sqlite3.Error, json.JSONDecodeError) as err:
            raise _ledger_error(self.path, err, "read") from None
        finally:
            conn.close()

    def invalid_rows(self) -> Iterator[InvalidRow]:
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            for where, row_id, reason in conn.execute("SELECT row_where, id, reason FROM invalid"):
                yield InvalidRow(where, reason, row_id)
        except sqlite3.Error as err:
            raise _ledger_error(self.path, err, "read") from None
        finally:
            conn.close()


def _check_tables(conn: sqlite3.Connection, path: Path, *, create: bool) -> set[str]:
    """The ledger's tables found in ``conn``; MoAInputError if one is missing (when any is, or
    unless ``create``) or has other columns."""
    tables = {
        name: tuple(column[1] for column in conn.execute(f"PRAGMA table_info({name})"))
        for name in COLUMNS
    }
    found = {name for name, columns in tables.items() if columns}
    if not found and create:
        return found
    for name, columns in tables.items():
        if not columns:
            raise MoAInputError(f"the ledger {str(path)!r} is damaged: its {name!r} table is gone")
        if columns != COLUMNS[name]:
            raise MoAInputError(
                f"the ledger {str(path)!r} is damaged: its {name!r} table has other columns"
            )
    return found
