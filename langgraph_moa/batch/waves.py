"""The wave cycle of the batch engine: write the queued requests into batch files, submit them,
poll until they end, read the results back into the store (:mod:`langgraph_moa.batch.wave_store`).

A wave is what the rows asked for in one pass over them (:mod:`langgraph_moa.batch.runner`):
a layer's proposers for rows at that layer, an aggregator for rows further on. Its requests are
grouped per Batch API (and per model where the provider wants one model per batch), and sharded
by the provider's limits (requests and bytes a batch, :class:`~langgraph_moa.llm.batch_api.
BatchLimits`); each shard's file is streamed to disk a request at a time, never held whole.

Polling starts :data:`FIRST_POLL_S` after a round and waits half as long again each round, up
to ``poll_s`` (a batch takes minutes to hours; its first results may come early). With
``finish_online_after``, a batch still running that long after its submission is cancelled and
its unfinished requests are marked to be sent online on the next pass (the rows run on); their
batch results, if any arrive, are ignored. With ``retry_online``, a request that failed in a
batch with a retryable error makes its other tries online on the next pass, not in a wave.

Hand-written: the provider SDKs offer the single calls (upload, create, retrieve, results), not
a durable multi-batch cycle; LangGraph has no notion of a provider batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langgraph_moa.batch.wave_store import BatchRow, WaveStore
from langgraph_moa.llm.batch_api import BatchAPI, BatchClients

log = logging.getLogger(__name__)

DEFAULT_POLL_S = 60.0
FIRST_POLL_S = 2.0


@dataclass
class WaveProgress:
    """What the batch side of a session did, for the progress line and the summary."""

    waves: int = 0
    submitted: int = 0  # batches this session
    ended: int = 0
    in_progress: int = 0
    requests: int = 0  # requests submitted this session
    answered: int = 0
    online: int = 0  # stragglers sent online
    recovered: int = 0  # batches found at the provider after a kill
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class WaveCycle:
    """Submit and collect the waves of one run folder."""

    def __init__(
        self,
        store: WaveStore,
        clients: BatchClients,
        folder: Path,
        *,
        poll_s: float = DEFAULT_POLL_S,
        finish_online_after: float | None = None,
        retry_online: bool = False,
        on_progress: Callable[[WaveProgress], None] | None = None,
    ) -> None:
        self.store = store
        self.clients = clients
        self.folder = folder
        self.poll_s = poll_s
        self.finish_online_after = finish_online_after
        self.retry_online = retry_online
        self.on_progress = on_progress
        self.progress = WaveProgress()

    def _api(self, model: str) -> BatchAPI:
        api = self.clients.get(model)
        if api is None:  # the store only holds requests of models with a Batch API
            raise RuntimeError(f"{model} has no Batch API")
        return api

    def _tell(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress)

    # -- submit ---------------------------------------------------------------------------

    async def submit_queued(self) -> int:
        """Write and submit every queued request as the next wave; returns batches submitted."""
        await self._recover()
        models = self.store.queued_models()
        if not models:
            return 0
        wave = self.store.last_wave() + 1
        groups: dict[tuple[int, str], list[str]] = {}
        for model in models:
            api = self._api(model)
            group = model if api.limits.one_model_per_batch else ""
            groups.setdefault((id(api), group), []).append(model)
        count = 0
        for group_models in groups.values():
            api = self._api(group_models[0])
            for batch in await asyncio.to_thread(self._write_files, api, wave, group_models):
                await self._submit(api, batch)
                count += 1
        self.progress.waves += 1
        self._tell()
        return count

    def _write_files(self, api: BatchAPI, wave: int, models: list[str]) -> list[BatchRow]:
        """Stream the queued requests of ``models`` into files of at most the API's limits."""
        folder = self.folder / "batches"
        folder.mkdir(exist_ok=True)
        limits = api.limits
        made: list[BatchRow] = []
        out: Any = None
        keys: list[str] = []
        size = 0
        path = folder

        def close() -> None:
            nonlocal out, keys, size
            if out is None:
                return
            out.flush()
            os.fsync(out.fileno())
            out.close()
            out = None
            made.append(self.store.add_batch(wave, api.name, models[0], path, keys, size))
            keys, size = [], 0

        for key, _model, tried, body, _ in self.store.queued(models):
            line = api.line(f"{key}-{tried}", json.loads(body))
            full = keys and (
                len(keys) >= limits.max_requests or size + len(line) > limits.max_bytes
            )
            if full:
                close()
            if out is None:
                path = folder / f"wave{wave}-{api.name}-{len(made) + 1}-{int(time.time())}.jsonl"
                out = path.open("wb")
            out.write(line)
            keys.append(key)
            size += len(line)
        close()
        return made

    async def _submit(self, api: BatchAPI, batch: BatchRow) -> None:
        provider_id = await api.submit(Path(batch.file), model=batch.model, tag=batch.tag)
        self.store.submitted(batch.id, provider_id)
        self.progress.submitted += 1
        self.progress.requests += batch.requests
        log.info("submitted batch %s (%d requests) as %s", batch.tag, batch.requests, provider_id)

    async def _recover(self) -> None:
        """Batches left in ``writing`` by a kill: found at the provider by their tag, or their
        file (complete: it was closed before the batch was recorded) is submitted now."""
        for batch in self.store.batches("writing"):
            api = self._api(batch.model)
            found = await api.find(batch.tag, since=batch.created_at - 60, requests=batch.requests)
            if found is not None:
                self.store.submitted(batch.id, found)
                self.progress.recovered += 1
                self.progress.notes.append(f"found batch {found} submitted before a stop")
            elif Path(batch.file).is_file():
                await self._submit(api, batch)
            else:
                self.store.unassign(batch.id)

    # -- collect --------------------------------------------------------------------------

    async def collect(self, *, wait: bool = True) -> bool:
        """Poll the submitted batches and read the results of those that ended; with
        ``wait``, until none is left running. Returns whether none is."""
        await self._recover()
        delay = min(FIRST_POLL_S, self.poll_s)
        while True:
            running = self.store.batches("submitted")
            self.progress.in_progress = len(running)
            self._tell()
            if not running:
                return True
            for batch in running:
                await self._check(batch)
            if not self.store.batches("submitted"):
                self.progress.in_progress = 0
                self._tell()
                return True
            if not wait:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, self.poll_s)

    async def _record(
        self, batch: BatchRow, results: list[tuple[str, str | None, str | None, bool]]
    ) -> None:
        await asyncio.to_thread(
            functools.partial(
                self.store.record_results, batch, results, retry_online=self.retry_online
            )
        )

    async def _check(self, batch: BatchRow) -> None:
        api = self._api(batch.model)
        assert batch.provider_id is not None
        status = await api.status(batch.provider_id)
        if status.state != "ended":
            late = self.finish_online_after
            since = batch.submitted_at or batch.created_at
            if late is not None and time.time() - since > late:
                with contextlib.suppress(Exception):  # best effort: it is abandoned either way
                    await api.cancel(batch.provider_id)
                left = self.store.end_batch(batch.id, "finished online", online=True)
                self.progress.online += left
                self.progress.notes.append(
                    f"batch {batch.provider_id}: {left} request(s) still running after "
                    f"{late:g}s, sent online"
                )
            return
        results = []
        answered = 0
        async for result in api.results(batch.provider_id):
            reply = None if result.body is None else json.dumps(result.body, ensure_ascii=False)
            if result.unfinished:
                continue
            results.append((result.custom_id, reply, result.error, result.retryable))
            answered += reply is not None
            if len(results) >= 500:
                await self._record(batch, results)
                results = []
        await self._record(batch, results)
        left = self.store.end_batch(batch.id, status.outcome or "completed")
        self.progress.ended += 1
        self.progress.answered += answered
        if left:
            self.progress.notes.append(
                f"batch {batch.provider_id} ended {status.outcome}: {left} request(s) queued again"
            )
        self._tell()
