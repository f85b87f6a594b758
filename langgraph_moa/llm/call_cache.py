"""Serve identical proposer calls from a cache, so re-runs, forks and sweeps don't pay twice.

Storage is a LangGraph cache backend: by default :class:`BoundedMemoryCache`, in memory and
bounded (least recently used entries go first beyond 64 MiB, and entries expire after an hour;
LangGraph's own ``InMemoryCache`` never forgets anything, so a long-lived process grew without
limit); :class:`SqliteCallCache` for a file (``--cache PATH``, a relabel run's ``calls.sqlite``);
any ``langgraph.cache.base.BaseCache``.
The key covers the model, every sampling parameter, the seed and the exact messages. Calls
sampled at temperature > 0 without a seed are not cached unless the topology sets
``cache_sampled: true`` (each such call is meant to differ).
Only complete successes are stored (and only Unicode text: a reply holding a lone surrogate
would come back altered); hits are marked ``cached`` and cost nothing. Each entry keeps the
usage its request reported (sample by sample), so a hit can say what the call cost when it was
made (what a topology costs on new data, :func:`~langgraph_moa.nodes.records.usage_update`); an
entry written before that is read back with its usage unknown (None), never as zero.

Inside :func:`row_scope` (the batch runner wraps each dataset row in one) every call is cached,
the critic's and the aggregator's too, so a row killed mid-way never pays for a finished call
again. There, calls sampled at temperature > 0 are keyed by the row id and the node as well, and
each request of an agent whose samples are split into several requests under its own index, so
samples stay distinct while a rerun of the same row finds each of them. Deterministic calls keep
the plain key, so identical calls are shared across rows and across runs (a second run that
changes only the aggregator reuses every proposer call).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, message_to_dict, messages_from_dict
from langgraph.cache.base import BaseCache, FullKey, Namespace

from langgraph_moa.errors import storage_error
from langgraph_moa.llm.text import text_of

_NAMESPACE = ("langgraph-moa", "proposals", "v2")

_row: ContextVar[str | None] = ContextVar("moa_cache_row", default=None)


@contextmanager
def row_scope(row_id: str) -> Iterator[None]:
    """Calls made inside this block (and the tasks it starts) belong to dataset row ``row_id``:
    all of them are cached, sampled ones under the row's id (see the module docstring)."""
    token = _row.set(row_id)
    try:
        yield
    finally:
        _row.reset(token)


class BoundedMemoryCache(BaseCache[Any]):
    """An in-process LangGraph cache with a size bound (least recently used first out) and a
    default time to live."""

    def __init__(self, *, max_bytes: int = 64 * 1024 * 1024, ttl_s: float | None = 3600.0):
        super().__init__()
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.size = 0  # bytes held
        self._entries: OrderedDict[FullKey, tuple[str, bytes, float | None]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, keys: Sequence[FullKey]) -> dict[FullKey, Any]:
        now = time.monotonic()
        found: dict[FullKey, Any] = {}
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is None:
                    continue
                if entry[2] is not None and now >= entry[2]:
                    self._drop(key)
                    continue
                self._entries.move_to_end(key)
                found[key] = self.serde.loads_typed((entry[0], entry[1]))
        return found

    async def aget(self, keys: Sequence[FullKey]) -> dict[FullKey, Any]:
        return self.get(keys)

    def set(self, pairs: Mapping[FullKey, tuple[Any, int | None]]) -> None:
        now = time.monotonic()
        with self._lock:
            for key, (value, ttl) in pairs.items():
                kind, blob = self.serde.dumps_typed(value)
                if key in self._entries:
                    self._drop(key)
                if len(blob) > self.max_bytes:
                    continue  # larger than the whole cache: not kept
                life = ttl if ttl is not None else self.ttl_s
                self._entries[key] = (kind, blob, None if life is None else now + life)
                self.size += len(blob)
                while self.size > self.max_bytes:
                    self._drop(next(iter(self._entries)))

    async def aset(self, pairs: Mapping[FullKey, tuple[Any, int | None]]) -> None:
        self.set(pairs)

    def clear(self, namespaces: Sequence[Namespace] | None = None) -> None:
        with self._lock:
            for key in list(self._entries):
                if namespaces is None or key[0] in namespaces:
                    self._drop(key)

    async def aclear(self, namespaces: Sequence[Namespace] | None = None) -> None:
        self.clear(namespaces)

    def _drop(self, key: FullKey) -> None:
        self.size -= len(self._entries.pop(key)[1])


# Shared by every graph of the process unless a graph is given its own cache (or None).
DEFAULT_CACHE: BaseCache[Any] = BoundedMemoryCache()


_SCHEMA = """CREATE TABLE IF NOT EXISTS cache (
    ns TEXT,
    key TEXT,
    expiry REAL,
    encoding TEXT NOT NULL,
    val BLOB NOT NULL,
    PRIMARY KEY (ns, key)
)"""

_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"] | concurrent.futures.Future[None]


@dataclass
class _Write:
    """What one get, set or clear gives the writer: entries to store (``pairs``: table rows,
    serialized by the caller, so a value that cannot be serialized fails its caller alone, never
    the writer's whole batch), namespaces
    to empty (``clear``: None for all, False for none), expired entries to drop (``expired``:
    ns, key); ``waiter`` learns when it is on disk."""

    pairs: list[tuple[str, str, float | None, str, bytes]] = field(default_factory=list)
    clear: Sequence[Namespace] | bool | None = False
    expired: list[tuple[str, str]] = field(default_factory=list)
    waiter: _Waiter | None = None


class SqliteCallCache(BaseCache[Any]):
    """A LangGraph cache in a SQLite file, for many calls finishing at once.

    Same file format as LangGraph's ``SqliteCache`` (a file written by either is read by the
    other), different concurrency. ``SqliteCache`` sends every get and every set to the event
    loop's default thread pool, where each set commits on its own behind one lock: with
    synchronous commits costing an fsync each (5 ms here), a relabel run finishing 150 calls a
    second kept that pool busy, and everything else queued in it (langchain-openai parses each
    reply there) waited behind the commits, which stretched every call.

    Here a set is written by one writer thread that commits whatever is waiting in one
    transaction (group commit: one fsync for all the calls that finished meanwhile); ``aset``
    returns once its entries are on disk, so a finished call is as durable as before. A get
    reads on a connection of its own in the caller's thread (in WAL mode a reader never waits
    for the writer, and a lookup by primary key takes tens of microseconds, less than a hop to
    a thread and back).

    A failure of the file itself (no space left, a file-size limit, an I/O error) reaches every
    caller as :class:`~langgraph_moa.errors.MoAStorageError` naming the file: it is about the
    run, not about one call, and a batch run stops on it instead of recording rows as failed.
    """

    IDLE_S = 2.0  # the writer thread ends after this long with nothing to write

    def __init__(self, path: str, *, serde: Any = None) -> None:
        super().__init__(serde=serde)
        self.path = path
        self._writer = sqlite3.connect(path, check_same_thread=False, timeout=30)
        self._writer.execute("PRAGMA journal_mode=WAL")
        self._writer.execute("PRAGMA synchronous=FULL")
        self._writer.execute(_SCHEMA)
        self._writer.commit()
        self._reader = sqlite3.connect(path, check_same_thread=False, timeout=30)
        self._read_lock = threading.Lock()
        self._pending: list[_Write] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    # reads

    def get(self, keys: Sequence[FullKey]) -> dict[FullKey, Any]:
        if not keys:
            return {}
        marks = ",".join("(?, ?)" for _ in keys)
        params = [part for ns, key in keys for part in (",".join(ns), key)]
        query = f"SELECT ns, key, expiry, encoding, val FROM cache WHERE (ns, key) IN ({marks})"
        with self._read_lock:
            try:
                rows = self._reader.execute(query, params).fetchall()
            except sqlite3.Error as err:
                raise storage_error(self.path, err, "read") from None
        now = time.time()
        found: dict[FullKey, Any] = {}
        expired: list[tuple[str, str]] = []
        for ns, key, expiry, encoding, raw in rows:
            if expiry is not None and now > expiry:
                expired.append((ns, key))
                continue
            found[(tuple(ns.split(",")), key)] = self.serde.loads_typed((encoding, raw))
        if expired:  # dropped by the writer; nobody waits for it
            self._submit(_Write(expired=expired))
        return found

    async def aget(self, keys: Sequence[FullKey]) -> dict[FullKey, Any]:
        return self.get(keys)

    # writes

    def set(self, pairs: Mapping[FullKey, tuple[Any, int | None]]) -> None:
        rows = self._rows(pairs)
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._submit(_Write(pairs=rows, waiter=done))
        done.result()

    async def aset(self, pairs: Mapping[FullKey, tuple[Any, int | None]]) -> None:
        rows = self._rows(pairs)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._submit(_Write(pairs=rows, waiter=(loop, done)))
        # a caller cancelled meanwhile (a deadline) still gets its entries written
        await done

    def _rows(
        self, pairs: Mapping[FullKey, tuple[Any, int | None]]
    ) -> list[tuple[str, str, float | None, str, bytes]]:
        now = time.time()
        return [
            (",".join(ns), key, None if ttl is None else now + ttl, *self.serde.dumps_typed(value))
            for (ns, key), (value, ttl) in pairs.items()
        ]

    def clear(self, namespaces: Sequence[Namespace] | None = None) -> None:
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._submit(_Write(clear=None if namespaces is None else list(namespaces), waiter=done))
        done.result()

    async def aclear(self, namespaces: Sequence[Namespace] | None = None) -> None:
        await asyncio.to_thread(self.clear, namespaces)

    def close(self) -> None:
        """Write what is waiting, then close the file."""
        with self._wake:
            thread = self._thread
        if thread is not None:
            self.set({})  # queued behind everything else, so all of it is written
        with self._read_lock:
            self._reader.close()
        self._writer.close()

    def _submit(self, write: _Write) -> None:
        with self._wake:
            self._pending.append(write)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._drain, name="moa-call-cache", daemon=True
                )
                self._thread.start()
            else:
                self._wake.notify()

    def _drain(self) -> None:
        while True:
            with self._wake:
                if not self._pending:
                    self._wake.wait(self.IDLE_S)
                if not self._pending:
                    self._thread = None
                    return
                batch, self._pending = self._pending, []
            error: BaseException | None = None
            try:
                self._commit(batch)
            except sqlite3.Error as err:  # the file failed: every waiter of the batch hears it
                error = storage_error(self.path, err)
            except BaseException as err:  # handed to every waiter of the batch
                error = err
            self._settle(batch, error)

    def _commit(self, batch: list[_Write]) -> None:
        now = time.time()
        with self._writer:  # one transaction: one fsync for the whole batch
            for write in batch:
                if write.clear is None:
                    self._writer.execute("DELETE FROM cache")
                elif write.clear is not False:
                    assert not isinstance(write.clear, bool)
                    self._writer.executemany(
                        "DELETE FROM cache WHERE ns = ?", [(",".join(ns),) for ns in write.clear]
                    )
                self._writer.executemany(
                    "DELETE FROM cache WHERE ns = ? AND key = ? AND expiry < ?",
                    [(ns, key, now) for ns, key in write.expired],
                )
                self._writer.executemany(
                    "INSERT OR REPLACE INTO cache (ns, key, expiry, encoding, val) "
                    "VALUES (?, ?, ?, ?, ?)",
                    write.pairs,
                )

    @staticmethod
    def _settle(batch: list[_Write], error: BaseException | None) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for write in batch:
            waiter = write.waiter
            if isinstance(waiter, concurrent.futures.Future):
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)
            elif waiter is not None:
                by_loop.setdefault(waiter[0], []).append(waiter[1])
        for loop, futures in by_loop.items():  # one wake-up per loop for the whole batch
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_wake_all, futures, error)


def _wake_all(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def open_cache(path: str) -> BaseCache[Any]:
    """A SQLite-file cache (created if missing): see :class:`SqliteCallCache`."""
    return SqliteCallCache(path)


def _unicode(text: str) -> bool:
    """Whether ``text`` is Unicode text: a reply holding a lone surrogate (an upstream may send
    ``"\\ud800"``) is not cached, since storing it would silently turn it into ``?``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_CachedCall = tuple[list[str], list[AIMessage | None], list[dict[str, Any] | None]]
"""What one cached request gave: its samples' texts, messages (None where not kept) and the
usage each sample was counted at when the request was made (None where the entry predates it)."""


class ProposalCache:
    """Look up and store one agent's samples for one exact request.

    ``final_answers`` marks the cache of the critic and the aggregator: it applies only inside
    a :func:`row_scope` (an interactive re-ask expects a fresh final answer).
    """

    def __init__(
        self, backend: BaseCache[Any], *, cache_sampled: bool = False, final_answers: bool = False
    ) -> None:
        self.backend = backend
        self.cache_sampled = cache_sampled
        self.final_answers = final_answers

    def for_final_answers(self) -> ProposalCache:
        """The same store, for the critic's and the aggregator's calls."""
        return ProposalCache(self.backend, cache_sampled=self.cache_sampled, final_answers=True)

    def applies(self, params: dict[str, Any]) -> bool:
        row = _row.get()
        if self.final_answers and row is None:
            return False
        deterministic = params.get("temperature") == 0 or params.get("seed") is not None
        return deterministic or self.cache_sampled or row is not None

    @staticmethod
    def key(
        params: dict[str, Any],
        messages: Sequence[BaseMessage],
        *,
        node: str = "",
        part: int = 0,
        extras: Any = None,
    ) -> str:
        payload: dict[str, Any] = {
            "params": params,
            "messages": [
                [
                    m.type,
                    text_of(m),
                    *([calls] if (calls := getattr(m, "tool_calls", None)) else []),
                ]
                for m in messages
            ],
        }
        if extras:
            payload["extras"] = extras
        if part:
            payload["part"] = part
        deterministic = params.get("temperature") == 0 or params.get("seed") is not None
        row = _row.get()
        if row is not None and not deterministic:
            payload["row"], payload["node"] = row, node
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    async def get(
        self,
        params: dict[str, Any],
        messages: Sequence[BaseMessage],
        *,
        node: str = "",
        part: int = 0,
        extras: Any = None,
    ) -> _CachedCall | None:
        if not self.applies(params):
            return None
        full_key = (_NAMESPACE, self.key(params, messages, node=node, part=part, extras=extras))
        found = await self.backend.aget([full_key])
        value = found.get(full_key)
        if not value:
            return None
        kept = value.get("messages") or [None] * len(value["texts"])
        restored = [None if m is None else messages_from_dict([m])[0] for m in kept]
        usages = value.get("usages") or [None] * len(value["texts"])
        return (
            list(value["texts"]),
            [m if isinstance(m, AIMessage) else None for m in restored],
            [None if u is None else dict(u) for u in usages],
        )

    async def put(
        self,
        params: dict[str, Any],
        messages: Sequence[BaseMessage],
        texts: list[str],
        *,
        node: str = "",
        part: int = 0,
        extras: Any = None,
        replies: Sequence[AIMessage | None] = (),
        usages: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        if self.applies(params) and all(_unicode(t) for t in texts):
            full_key = (_NAMESPACE, self.key(params, messages, node=node, part=part, extras=extras))
            kept = [None if m is None else message_to_dict(m) for m in replies]
            value = {
                "texts": texts,
                "messages": kept or None,
                "usages": [dict(u) for u in usages] or None,
            }
            await self.backend.aset({full_key: (value, None)})
