"""The run's ledger: one SQLite row per dataset row, written once the row is finished.

A row is written in one transaction (WAL journal, ``synchronous=FULL``), so a kill -9 at any
moment leaves each row either fully recorded or absent; the id is the primary key, so no row is
ever recorded twice. What the ledger holds is the truth about a run: resume skips its ``done``
(and, unless asked, ``failed``) rows, the summary counts it, the exports read it. Invalid input
rows are kept apart, keyed by where they were read.

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

from langgraph_moa.batch.rows import InvalidRow

__all__ = ["Ledger", "RowRecord", "Totals", "TurnRecord"]

SCHEMA = """
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


class Ledger:
    """The ledger of one run directory; safe to use from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
        self._lock = threading.Lock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(SCHEMA)
        self._conn.commit()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def seen(self, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """For those of ``ids`` already recorded: id -> (status, where it was read)."""
        found: dict[str, tuple[str, str]] = {}
        with self._lock:
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                marks = ",".join("?" * len(part))
                query = f"SELECT id, status, row_where FROM rows WHERE id IN ({marks})"
                for row_id, status, where in self._conn.execute(query, part):
                    found[row_id] = (status, where)
        return found

    def write(self, records: Sequence[RowRecord]) -> None:
        """Record finished rows, all in one transaction (a failed row may be replaced by a
        later attempt; a done row never is)."""
        now = time.time()
        values = [
            (
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
                json.dumps(r, ensure_ascii=False),
            )
            for r in records
        ]
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT INTO rows VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
                "row_where=excluded.row_where, status=excluded.status, error=excluded.error, "
                "cost_usd=excluded.cost_usd, calls=excluded.calls, "
                "cached_calls=excluded.cached_calls, tokens=excluded.tokens, "
                "latency_s=excluded.latency_s, degraded=excluded.degraded, "
                "finished_at=excluded.finished_at, record=excluded.record "
                "WHERE rows.status != 'done'",
                values,
            )

    def write_invalid(self, rows: Sequence[InvalidRow]) -> int:
        """Record invalid input rows (once each); returns how many were new."""
        with self._lock, self._conn:
            before = self._conn.total_changes
            self._conn.executemany(
                "INSERT OR IGNORE INTO invalid VALUES (?,?,?)",
                [(r.where, r.id, r.reason) for r in rows],
            )
            return self._conn.total_changes - before

    def totals(self) -> Totals:
        with self._lock:
            row = self._conn.execute(
                "SELECT COALESCE(SUM(status='done'),0), COALESCE(SUM(status='failed'),0), "
                "COALESCE(SUM(degraded),0), COALESCE(SUM(calls),0), "
                "COALESCE(SUM(cached_calls),0), COALESCE(SUM(tokens),0), "
                "COALESCE(SUM(cost_usd),0) FROM rows"
            ).fetchone()
            invalid = self._conn.execute("SELECT COUNT(*) FROM invalid").fetchone()[0]
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
        finally:
            conn.close()

    def invalid_rows(self) -> Iterator[InvalidRow]:
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            for where, row_id, reason in conn.execute("SELECT row_where, id, reason FROM invalid"):
                yield InvalidRow(where, reason, row_id)
        finally:
            conn.close()
