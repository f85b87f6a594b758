"""One judge call over some candidates (select and rank modes, a layer's select or rank join):
build the messages, call the judge's model, read its verdict by contract
(:mod:`langgraph_moa.llm.verdicts`: only the last ``[[...]]`` of the reply, checked against
what was asked), and record the call.

A reply without a verdict makes the call's record say so, with the reply's first words, and the
caller degrades the run. A judge whose settings say ``retry_no_verdict`` is asked once more,
with its reply and a reminder of the form added to the conversation; the record keeps both
replies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from langgraph_moa.llm.call import Outcome, call_agent
from langgraph_moa.llm.model_pool import ModelPool
from langgraph_moa.llm.verdicts import Reading, read_verdict
from langgraph_moa.nodes.messages import fitted_judge_messages
from langgraph_moa.nodes.prompts import NO_VERDICT_PROMPT, PICK_FORM, RANKING_FORM
from langgraph_moa.nodes.state import JudgeAttempt, JudgeCall, MoAState, Proposal
from langgraph_moa.spec.agent import Agent


@dataclass(frozen=True)
class Contract:
    """The verdict form a judge is asked for: ``ranking`` False is one candidate's number,
    True every candidate's number in order."""

    ranking: bool

    def read(self, reply: str | None, count: int) -> Reading:
        """The verdict of ``reply`` about ``count`` candidates (see
        :mod:`langgraph_moa.llm.verdicts`)."""
        return read_verdict(reply, count, ranking=self.ranking)

    def reminder(self, count: int) -> str:
        """What the judge is told when asked again after a reply without a verdict."""
        form = (RANKING_FORM if self.ranking else PICK_FORM).format(count=count)
        return NO_VERDICT_PROMPT.format(form=form)


CHOICE = Contract(ranking=False)
RANKING = Contract(ranking=True)


@dataclass
class Judged:
    """A judge call's outcome: the positions (in the shown order) it named, and its record
    (every request of it in ``outcomes``/``requests``, a retry's too)."""

    picks: list[int]  # positions into ``shown``, as the verdict named them; [] no verdict
    call: JudgeCall
    outcomes: list[Outcome]
    requests: int

    @property
    def asked_again(self) -> bool:
        """Whether the judge was asked a second time (its first reply had no verdict)."""
        return "retried" in self.call

    def failure(self, who: str) -> str:
        """Why no verdict came, in words: ``who`` failed (the error), or its reply had none."""
        if self.call["error"]:
            return f"{who} failed ({self.call['error']})"
        which = "second reply" if self.asked_again else "reply"
        return f"{who}'s {which} gave {self.call.get('no_verdict')}"


def _read(outcome: Outcome, contract: Contract, count: int) -> Reading:
    return contract.read(outcome.text, count) if outcome.ok else Reading([])


async def judge(
    pool: ModelPool,
    agent: Agent,
    state: MoAState,
    shown: Sequence[Proposal],
    names: Sequence[str],
    request: str,
    contract: Contract,
    *,
    retry_no_verdict: bool = False,
) -> Judged:
    """Ask the model about ``shown`` (named ``names``) with ``request``, and read its verdict
    by ``contract``; with ``retry_no_verdict``, a reply without one is asked about once more."""
    messages: list[BaseMessage]
    messages, _ = fitted_judge_messages(
        agent, state["messages"], [p["text"] or "" for p in shown], request
    )
    outcomes, requests = await call_agent(pool, messages)
    outcome = outcomes[0]
    reading = _read(outcome, contract, len(shown))
    retried: JudgeAttempt | None = None
    if retry_no_verdict and outcome.ok and not reading.picks:
        retried = JudgeAttempt(reply=outcome.text, error=None, no_verdict=reading.problem)
        again = [
            *messages,
            AIMessage(outcome.text or ""),
            HumanMessage(contract.reminder(len(shown))),
        ]
        more, sent = await call_agent(pool, again)
        outcomes, requests = outcomes + more, requests + sent
        outcome = more[0]
        reading = _read(outcome, contract, len(shown))
    call = JudgeCall(
        shown=list(names),
        reply=outcome.text,
        error=outcome.error,
        pick=names[reading.picks[0]] if reading.picks else None,
        verdict=reading.verdict,
        no_verdict=reading.problem,
    )
    if retried is not None:
        call["retried"] = retried
    return Judged(reading.picks, call, outcomes, requests)
