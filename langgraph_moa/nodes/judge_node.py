"""The skeleton every judging node shares: the aggregator's ``select``, ``rank`` and ``window``
steps and a layer's ``L<i>/select`` or ``L<i>/rank`` join.

Each such node has one model, asked one sample at a time, and one arranger of its references
(seeded by its node name); it reads the kept candidates of a layer and their names, asks the
model about them (:func:`~langgraph_moa.nodes.judging.judge` for a verdict, or a synthesis
step), and ends its update the same way: the usage of every request made, and ``degraded``
when a call gave no usable answer. What differs (the question asked, what the verdict means,
the record written) stays in the node's own module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langgraph_moa.llm.call import Outcome
from langgraph_moa.llm.model_pool import ModelPool
from langgraph_moa.nodes.hygiene import Arranger, refs_of
from langgraph_moa.nodes.judging import CHOICE, Judged, judge
from langgraph_moa.nodes.prompts import SELECT_REQUEST_PROMPT
from langgraph_moa.nodes.records import usage_update
from langgraph_moa.nodes.state import MoAState, Proposal, ReferencesRecord
from langgraph_moa.spec.agent import Agent
from langgraph_moa.spec.combining import References
from langgraph_moa.spec.models import PriceTable


@dataclass
class Candidates:
    """What a judging node reads: the candidates of ``layer`` it kept (in layer order), their
    names, and the record of how its references were arranged (None: all of them)."""

    layer: int
    kept: list[Proposal]
    refs: list[str]
    references: ReferencesRecord | None


class JudgeNode:
    """One judging node's model (one sample a request), its arranger and its price table."""

    def __init__(
        self, agent: Agent, references: References | None, *, node: str, prices: PriceTable
    ) -> None:
        self.agent = agent
        self.pool = ModelPool(agent.model_copy(update={"n": 1}))
        self.arranger = Arranger(references, node)
        self.prices = prices

    def candidates(self, state: MoAState, layer: int) -> Candidates:
        """The candidates of ``layer`` left after the references' filter and dropout."""
        kept, references = self.arranger.keep(state, layer)
        return Candidates(layer, kept, refs_of(state, layer, kept), references)

    async def select(
        self, state: MoAState, shown: Candidates, *, retry_no_verdict: bool
    ) -> tuple[Judged, list[str]]:
        """Ask the model which candidate is the most consistent (in the arranger's order);
        returns its verdict and the candidates' names in the order shown."""
        order = self.arranger.order(len(shown.kept))
        names = [shown.refs[k] for k in order]
        judged = await judge(
            self.pool,
            self.agent,
            state,
            [shown.kept[k] for k in order],
            names,
            SELECT_REQUEST_PROMPT,
            CHOICE,
            retry_no_verdict=retry_no_verdict,
        )
        return judged, names

    def finish(
        self,
        update: dict[str, Any],
        outcomes: Sequence[Outcome],
        requests: int,
        *,
        degraded: bool,
    ) -> dict[str, Any]:
        """``update`` with the usage of the requests made (if any) and ``degraded`` if so."""
        if requests:
            update["usage"] = usage_update(self.agent.model, list(outcomes), requests, self.prices)
        if degraded:
            update["degraded"] = True
        return update
