"""Serve identical proposer calls from a cache, so re-runs, forks and sweeps don't pay twice.

Storage is LangGraph's own cache backends (``InMemoryCache`` by default, ``SqliteCache`` for a
file; any ``langgraph.cache.base.BaseCache`` works). The key covers the model, every sampling
parameter, the seed and the exact messages. Calls sampled at temperature > 0 without a seed are
not cached unless the topology sets ``cache_sampled: true`` (each such call is meant to differ).
Only complete successes are stored; hits are marked ``cached`` and cost nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage
from langgraph.cache.base import BaseCache
from langgraph.cache.memory import InMemoryCache

__all__ = ["DEFAULT_CACHE", "ProposalCache", "open_cache"]

NAMESPACE = ("langgraph-moa", "proposals", "v1")

# Shared by every graph of the process unless a graph is given its own cache (or None).
DEFAULT_CACHE: BaseCache[Any] = InMemoryCache()


def open_cache(path: str) -> BaseCache[Any]:
    """A SQLite-file cache (created if missing)."""
    from langgraph.cache.sqlite import SqliteCache

    return SqliteCache(path=path)


class ProposalCache:
    """Look up and store one agent's samples for one exact request."""

    def __init__(self, backend: BaseCache[Any], *, cache_sampled: bool = False) -> None:
        self.backend = backend
        self.cache_sampled = cache_sampled

    def applies(self, params: dict[str, Any]) -> bool:
        deterministic = params.get("temperature") == 0 or params.get("seed") is not None
        return deterministic or self.cache_sampled

    @staticmethod
    def key(params: dict[str, Any], messages: Sequence[BaseMessage]) -> str:
        payload = {
            "params": params,
            "messages": [
                [m.type, m.text if isinstance(m.text, str) else str(m.content)] for m in messages
            ],
        }
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()

    async def get(
        self, params: dict[str, Any], messages: Sequence[BaseMessage]
    ) -> list[str] | None:
        if not self.applies(params):
            return None
        full_key = (NAMESPACE, self.key(params, messages))
        found = await self.backend.aget([full_key])
        value = found.get(full_key)
        return list(value["texts"]) if value else None

    async def put(
        self, params: dict[str, Any], messages: Sequence[BaseMessage], texts: list[str]
    ) -> None:
        if self.applies(params):
            full_key = (NAMESPACE, self.key(params, messages))
            await self.backend.aset({full_key: ({"texts": texts}, None)})
