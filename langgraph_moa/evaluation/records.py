"""Finished requests of an eval kept as records (reply, calls, tokens, $, latency), keyed by who
answered and the exact request, in one of the eval's LangGraph cache files.

The call cache (:mod:`langgraph_moa.llm.call_cache`) already makes a rerun send no request again,
but a hit there is reported as free and instant, as it should be for a run; an eval's report must
say what the answers and the judgments cost when they were made, however many times the eval is
rescored. So the eval's own generations by a single model and its judgments are stored whole,
once finished. This is a thin layer over LangGraph's ``BaseCache`` (a namespace and a hashed key),
hand-written because no library keeps this kind of record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage
from langgraph.cache.base import BaseCache


class RecordStore:
    """Records of one answerer (``identity``: JSON-able, e.g. its model parameters) under
    ``kind`` in ``cache``."""

    def __init__(self, cache: BaseCache[Any], kind: str, identity: Any) -> None:
        self.cache = cache
        self.namespace = ("langgraph-moa", kind, "v1")
        self.identity = json.dumps(identity, sort_keys=True, ensure_ascii=False, default=str)

    def key(self, messages: Sequence[BaseMessage]) -> str:
        """The request's key: a hash of the answerer and every message's type and content."""
        request = [[m.type, m.content] for m in messages]
        blob = json.dumps([self.identity, request], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    async def get(self, key: str) -> dict[str, Any] | None:
        full_key = (self.namespace, key)
        found = (await self.cache.aget([full_key])).get(full_key)
        return dict(found) if found else None

    async def put(self, key: str, record: dict[str, Any]) -> None:
        await self.cache.aset({(self.namespace, key): (record, None)})
