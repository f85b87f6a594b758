"""Serve identical proposer calls from a cache, so re-runs, forks and sweeps don't pay twice.

Storage is a LangGraph cache backend: by default :class:`BoundedMemoryCache`, in memory and
bounded (least recently used entries go first beyond 64 MiB, and entries expire after an hour;
LangGraph's own ``InMemoryCache`` never forgets anything, so a long-lived process grew without
limit); ``SqliteCache`` for a file (``--cache PATH``); any ``langgraph.cache.base.BaseCache``.
The key covers the model, every sampling parameter, the seed and the exact messages. Calls
sampled at temperature > 0 without a seed are not cached unless the topology sets
``cache_sampled: true`` (each such call is meant to differ).
Only complete successes are stored; hits are marked ``cached`` and cost nothing.

Inside :func:`row_scope` (the batch runner wraps each dataset row in one) every call is cached,
the critic's and the aggregator's too, so a row killed mid-way never pays for a finished call
again. There, calls sampled at temperature > 0 are keyed by the row id and the node as well, and
each request of an agent whose samples are split into several requests under its own index, so
samples stay distinct while a rerun of the same row finds each of them. Deterministic calls keep
the plain key, so identical calls are shared across rows and across runs (a second run that
changes only the aggregator reuses every proposer call).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, message_to_dict, messages_from_dict
from langgraph.cache.base import BaseCache, FullKey, Namespace

from langgraph_moa.llm.text import text_of

__all__ = [
    "DEFAULT_CACHE",
    "BoundedMemoryCache",
    "CachedCall",
    "ProposalCache",
    "open_cache",
    "row_scope",
]

NAMESPACE = ("langgraph-moa", "proposals", "v2")

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


def open_cache(path: str) -> BaseCache[Any]:
    """A SQLite-file cache (created if missing)."""
    from langgraph.cache.sqlite import SqliteCache

    return SqliteCache(path=path)


CachedCall = tuple[list[str], list[AIMessage | None]]
"""What one cached request gave: its samples' texts and messages (None where not kept)."""


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
    ) -> CachedCall | None:
        if not self.applies(params):
            return None
        full_key = (NAMESPACE, self.key(params, messages, node=node, part=part, extras=extras))
        found = await self.backend.aget([full_key])
        value = found.get(full_key)
        if not value:
            return None
        kept = value.get("messages") or [None] * len(value["texts"])
        restored = [None if m is None else messages_from_dict([m])[0] for m in kept]
        return list(value["texts"]), [m if isinstance(m, AIMessage) else None for m in restored]

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
    ) -> None:
        if self.applies(params):
            full_key = (NAMESPACE, self.key(params, messages, node=node, part=part, extras=extras))
            kept = [None if m is None else message_to_dict(m) for m in replies]
            value = {"texts": texts, "messages": kept or None}
            await self.backend.aset({full_key: (value, None)})
