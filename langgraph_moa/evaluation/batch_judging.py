"""An eval's judgments through the judge's Batch API, wave by wave (``moa eval --engine batch``).

The judge is asked outside any graph, so a deferred judge call cannot pause: under a
:class:`~langgraph_moa.batch.wave_store.RowDeferral` it fails at once, in words that say it
waits for a wave, and a failed judgment is never kept (:class:`~langgraph_moa.evaluation.
judge.Judge` stores only judgments with a reply). So a pass over the items scores what it can
and queues every judge request it could not answer; the wave goes to the Batch API, and the next
pass reads the replies back. A judge asked again for a missing verdict makes one more wave.
The last pass, with nothing deferred, is the eval's result; the judge's usage is that pass's
(every judgment in it read back or made, at the batch price).

The eval folder keeps the waves (``batches.sqlite``, ``batches/``): stop the eval and run it
again, and it polls the batches already submitted instead of sending them twice. A topology as
the judge, or a judge model without a Batch API, is asked online.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from langgraph_moa.batch.batch_engine import STORE
from langgraph_moa.batch.wave_store import RowDeferral, WaveStore
from langgraph_moa.batch.waves import WaveCycle
from langgraph_moa.evaluation.judge import Judge, JudgeUsage
from langgraph_moa.llm.batch_api import BatchClients
from langgraph_moa.llm.deferred import defer_calls
from langgraph_moa.spec.agent import Agent

T = TypeVar("T")


async def judge_in_waves(
    score: Callable[[], Awaitable[T]], judge: Judge, folder: Path, *, poll_s: float
) -> T:
    """``score()`` (which asks ``judge``) run in passes until no judge call waits for a
    wave; the last pass's result."""
    if not isinstance(judge.judge, Agent):
        return await score()
    model = judge.judge.model
    store = WaveStore(folder / STORE)
    try:
        async with BatchClients() as clients:
            if clients.get(model) is None:
                return await score()
            cycle = WaveCycle(store, clients, folder, poll_s=poll_s)
            while True:
                await cycle.collect()
                deferral = RowDeferral(store, "judge", {model})
                judge.usage = JudgeUsage()  # the last pass's usage is the eval's
                with defer_calls(deferral):
                    result = await score()
                if not deferral.requests:
                    return result
                store.queue("judge", deferral.requests)
                await cycle.submit_queued()
    finally:
        store.close()
