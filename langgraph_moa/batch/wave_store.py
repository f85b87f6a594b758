"""The batch engine's record of every deferred request and every submitted batch, in the run
folder (``batches.sqlite``), so a run over Batch APIs survives kill -9 and goes on days later.

A request (keyed as :meth:`RowDeferral.key` makes it: row thread, node, part, body digest) is
``queued`` when a row asks for it, ``submitted`` once its batch has an id at the provider,
``answered`` when its result came back (a reply body, or the error that ended it once its tries
are spent), or ``online`` when it is to be sent online (a straggler). A retryable failure is
queued again with its try counted; a request its batch did not finish (expired, cancelled) is
queued again as it was.

A batch is ``writing`` from the moment its file is complete and its requests are assigned to it
(one transaction) until the provider's id is recorded (``submitted``); a batch found in
``writing`` after a kill is looked for at the provider by its tag before its file is sent
again, so no request is submitted twice. ``ended`` batches have had their results read.

:class:`RowDeferral` is one row's view of the store (the :class:`~langgraph_moa.llm.deferred.
Deferral` the model call asks); it queues what the row asks for in memory, and the row's
runner writes them in one transaction when the row's pass ends.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langgraph_moa.errors import MoAStorageError
from langgraph_moa.llm.deferred import Answer, DeferredRequest, digest

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY,
    row_id TEXT NOT NULL,
    model TEXT NOT NULL,
    body TEXT NOT NULL,
    tries INTEGER NOT NULL,          -- tries allowed in all
    try INTEGER NOT NULL DEFAULT 1,  -- the try queued or submitted now
    state TEXT NOT NULL,             -- queued | submitted | answered | online
    batch INTEGER,
    reply TEXT,
    error TEXT,
    latency_s REAL NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_state ON requests (state, model);
CREATE INDEX IF NOT EXISTS requests_batch ON requests (batch);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    wave INTEGER NOT NULL,
    api TEXT NOT NULL,
    model TEXT NOT NULL,             -- the batch's model, or the first of several
    file TEXT NOT NULL,
    tag TEXT NOT NULL,
    provider_id TEXT,
    state TEXT NOT NULL,             -- writing | submitted | ended | abandoned
    requests INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    created_at REAL NOT NULL,
    submitted_at REAL,
    ended_at REAL,
    outcome TEXT
);
"""


@dataclass(frozen=True)
class BatchRow:
    id: int
    wave: int
    api: str
    model: str
    file: str
    tag: str
    provider_id: str | None
    state: str
    requests: int
    created_at: float
    submitted_at: float | None


class WaveStore:
    """``batches.sqlite`` of a run folder; safe to use from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
            self._conn.commit()
        except sqlite3.Error as err:
            raise MoAStorageError(f"cannot open {str(path)!r}: {err}") from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _run(self, query: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                with self._conn:
                    return list(self._conn.execute(query, args))
            except sqlite3.Error as err:
                raise MoAStorageError(f"{str(self.path)!r}: {err}") from None

    # -- requests -------------------------------------------------------------------------

    def answer(self, key: str) -> Answer | None:
        found = self._run(
            "SELECT state, reply, error, latency_s, try FROM requests WHERE key = ?", (key,)
        )
        if not found:
            return None
        state, reply, error, latency, tried = found[0]
        if state == "online":
            return Answer(online=True)
        if state != "answered":
            return None
        body = json.loads(reply) if reply is not None else None
        return Answer(body=body, error=error, latency_s=latency, attempts=tried)

    def queue(self, row_id: str, requests: Sequence[DeferredRequest]) -> int:
        """Queue a row's requests (one transaction); those already known are left as they are.
        Returns how many were new."""
        values = []
        for r in requests:
            body = json.dumps(r.body, ensure_ascii=False, separators=(",", ":"))
            values.append((r.key, row_id, r.model, body, r.attempts, len(body.encode())))
        with self._lock:
            try:
                with self._conn:
                    before = self._conn.total_changes
                    self._conn.executemany(
                        "INSERT OR IGNORE INTO requests (key, row_id, model, body, tries, state,"
                        " bytes) VALUES (?, ?, ?, ?, ?, 'queued', ?)",
                        values,
                    )
                    return self._conn.total_changes - before
            except sqlite3.Error as err:
                raise MoAStorageError(f"{str(self.path)!r}: {err}") from None

    def queued_models(self) -> list[str]:
        return [
            m
            for (m,) in self._run(
                "SELECT DISTINCT model FROM requests WHERE state = 'queued' AND batch IS NULL"
            )
        ]

    def queued(self, models: Sequence[str]) -> Iterator[tuple[str, str, int, str, int]]:
        """The queued requests of ``models`` not yet in a batch: (key, model, try, body,
        bytes), in key order, read a page at a time (never all at once)."""
        marks = ",".join("?" * len(models))
        last = ""
        while True:
            page = self._run(
                f"SELECT key, model, try, body, bytes FROM requests WHERE state = 'queued' AND "
                f"batch IS NULL AND model IN ({marks}) AND key > ? ORDER BY key LIMIT 500",
                (*models, last),
            )
            if not page:
                return
            yield from page
            last = page[-1][0]

    def counts(self) -> dict[str, int]:
        return dict(self._run("SELECT state, COUNT(*) FROM requests GROUP BY state"))

    def waiting(self) -> int:
        """Requests queued or in a batch (not answered, not sent online)."""
        ((n,),) = self._run("SELECT COUNT(*) FROM requests WHERE state IN ('queued', 'submitted')")
        return int(n)

    def forget_row(self, row_id: str) -> None:
        """A row recorded for good: its requests' bodies and replies are no longer needed."""
        self._run("UPDATE requests SET body = '', reply = NULL WHERE row_id = ?", (row_id,))

    # -- batches --------------------------------------------------------------------------

    def add_batch(
        self, wave: int, api: str, model: str, file: Path, keys: Sequence[str], size: int
    ) -> BatchRow:
        """Record a batch whose file is complete, and assign its requests to it (one
        transaction)."""
        now = time.time()
        with self._lock:
            try:
                with self._conn:
                    cur = self._conn.execute(
                        "INSERT INTO batches (wave, api, model, file, tag, state, requests,"
                        " bytes, created_at) VALUES (?, ?, ?, ?, '', 'writing', ?, ?, ?)",
                        (wave, api, model, str(file), len(keys), size, now),
                    )
                    batch = int(cur.lastrowid or 0)
                    tag = f"moa-{digest([str(self.path), batch, now])[:16]}-{batch}"
                    self._conn.execute("UPDATE batches SET tag = ? WHERE id = ?", (tag, batch))
                    self._conn.executemany(
                        "UPDATE requests SET batch = ? WHERE key = ?", [(batch, k) for k in keys]
                    )
            except sqlite3.Error as err:
                raise MoAStorageError(f"{str(self.path)!r}: {err}") from None
        return BatchRow(
            batch, wave, api, model, str(file), tag, None, "writing", len(keys), now, None
        )

    def submitted(self, batch: int, provider_id: str) -> None:
        with self._lock:
            try:
                with self._conn:
                    self._conn.execute(
                        "UPDATE batches SET provider_id = ?, state = 'submitted', submitted_at = ?"
                        " WHERE id = ?",
                        (provider_id, time.time(), batch),
                    )
                    self._conn.execute(
                        "UPDATE requests SET state = 'submitted' WHERE batch = ? AND state ="
                        " 'queued'",
                        (batch,),
                    )
            except sqlite3.Error as err:
                raise MoAStorageError(f"{str(self.path)!r}: {err}") from None

    def batches(self, state: str) -> list[BatchRow]:
        return [
            BatchRow(*r)
            for r in self._run(
                "SELECT id, wave, api, model, file, tag, provider_id, state, requests,"
                " created_at, submitted_at FROM batches WHERE state = ? ORDER BY id",
                (state,),
            )
        ]

    def batch_counts(self) -> dict[str, int]:
        return dict(self._run("SELECT state, COUNT(*) FROM batches GROUP BY state"))

    def last_wave(self) -> int:
        ((wave,),) = self._run("SELECT COALESCE(MAX(wave), 0) FROM batches")
        return int(wave)

    def record_results(
        self,
        batch: BatchRow,
        results: Sequence[tuple[str, str | None, str | None, bool]],
        *,
        retry_online: bool = False,
    ) -> None:
        """Store results of ``batch``: (custom_id, reply JSON or None, error, retryable).
        An error with tries left is queued again for the next wave (``retry_online``: marked
        to be sent online on the next pass, the rest of its tries made there)."""
        latency = time.time() - (batch.submitted_at or batch.created_at)
        with self._lock:
            try:
                with self._conn:
                    for custom_id, reply, error, retryable in results:
                        key, _, tried = custom_id.rpartition("-")
                        row = self._conn.execute(
                            "SELECT try, tries, state FROM requests WHERE key = ? AND batch = ?",
                            (key, batch.id),
                        ).fetchone()
                        if row is None or row[2] != "submitted" or str(row[0]) != tried:
                            continue  # not this batch's request as it stands now
                        now_try, tries, _ = row
                        if reply is not None:
                            self._conn.execute(
                                "UPDATE requests SET state = 'answered', reply = ?, error = NULL,"
                                " latency_s = ? WHERE key = ?",
                                (reply, latency, key),
                            )
                        elif retryable and now_try < tries:
                            self._conn.execute(
                                "UPDATE requests SET state = ?, batch = NULL, try = try + 1,"
                                " error = ? WHERE key = ?",
                                ("online" if retry_online else "queued", error, key),
                            )
                        elif error is not None:
                            self._conn.execute(
                                "UPDATE requests SET state = 'answered', error = ?, latency_s = ?"
                                " WHERE key = ?",
                                (error, latency, key),
                            )
                        # else: not finished (expired, cancelled): queued again below
            except sqlite3.Error as err:
                raise MoAStorageError(f"{str(self.path)!r}: {err}") from None

    def end_batch(self, batch: int, outcome: str, *, online: bool = False) -> int:
        """Close a batch: its requests without a result are queued again as another try (or,
        ``online``, marked to be sent online); one whose tries are spent ends with the error
        that the batch ended (``outcome``) without answering it. Returns how many were left."""
        with self._lock:
            try:
                with self._conn:
                    if online:
                        cur = self._conn.execute(
                            "UPDATE requests SET state = 'online', batch = NULL WHERE batch = ?"
                            " AND state = 'submitted'",
                            (batch,),
                        )
                        left = cur.rowcount
                    else:
                        left = self._conn.execute(
                            "UPDATE requests SET state = 'queued', batch = NULL, try = try + 1"
                            " WHERE batch = ? AND state = 'submitted' AND try < tries",
                            (batch,),
                        ).rowcount
                        left += self._conn.execute(
                            "UPDATE requests SET state = 'answered', error = ? WHERE batch = ?"
                            " AND state = 'submitted'",
                            (
                                f"the batch ended ({outcome}) before answering it, on every try",
                                batch,
                            ),
                        ).rowcount
                    self._conn.execute(
                        "UPDATE batches SET state = ?, ended_at = ?, outcome = ? WHERE id = ?",
                        ("abandoned" if online else "ended", time.time(), outcome, batch),
                    )
                    return int(left)
            except sqlite3.Error as err:
                raise MoAStorageError(f"{str(self.path)!r}: {err}") from None

    def unassign(self, batch: int) -> None:
        """A batch whose file is to be written again: its requests go back to the queue."""
        self._run("UPDATE requests SET batch = NULL WHERE batch = ?", (batch,))
        self._run("DELETE FROM batches WHERE id = ?", (batch,))

    def figures(self) -> dict[str, Any]:
        """Counts for the manifest and the progress line."""
        return {
            "requests": self.counts(),
            "batches": self.batch_counts(),
            "waves": self.last_wave(),
        }


class RowDeferral:
    """One row thread's view of the store (see :class:`~langgraph_moa.llm.deferred.Deferral`):
    answers read from the store, new requests kept until the row's pass ends."""

    def __init__(self, store: WaveStore, thread: str, takes: set[str]) -> None:
        self._store = store
        self._thread = thread
        self._takes = takes
        self.requests: list[DeferredRequest] = []

    def takes(self, model: str) -> bool:
        return model in self._takes

    def key(self, node: str, part: int, body: dict[str, Any]) -> str:
        return digest([self._thread, node, part, digest(body)])

    def answer(self, key: str) -> Answer | None:
        return self._store.answer(key)

    def defer(self, request: DeferredRequest) -> None:
        if all(r.key != request.key for r in self.requests):
            self.requests.append(request)
