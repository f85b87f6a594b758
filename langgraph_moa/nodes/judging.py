"""One judge call over some candidates (select and rank modes, a layer's select or rank join):
build the messages, call the judge's model, read its verdict by contract, and record the call.

The contract: the judge ends its reply with its verdict in double square brackets, and only the
last ``[[...]]`` of the reply is read, then checked against what was asked:

- select, and one pairwise game of rank: one candidate's number, ``[[2]]`` (from 1 to the
  number of candidates shown);
- listwise rank: every candidate's number exactly once, best first, ``[[3, 1, 2]]`` (commas or
  ``>`` between them).

Anything else (no brackets, a number that names no candidate, a ranking that leaves one out or
names one twice) is *no verdict*: the call's record says so, with the reply's first words, and
the caller degrades the run. Numbers in the prose ("candidate 1 has 2 errors") are never read.
A judge whose settings say ``retry_no_verdict`` is asked once more, with its reply and a
reminder of the form added to the conversation; the record keeps both replies.

The reading is hand-written (a regular expression and a check) because a judge may be any
provider's model: structured output is not available from all of them, and a bracketed final
line is what judges are commonly trained and prompted to give.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from langgraph_moa.nodes.calls import ModelPool, Outcome, call_agent
from langgraph_moa.nodes.messages import fitted_judge_messages
from langgraph_moa.nodes.prompts import NO_VERDICT_PROMPT, PICK_FORM, RANKING_FORM
from langgraph_moa.nodes.state import JudgeAttempt, JudgeCall, MoAState, Proposal
from langgraph_moa.spec.topology import Agent

__all__ = [
    "CHOICE",
    "RANKING",
    "Contract",
    "Judged",
    "Reading",
    "first_words",
    "judge",
    "last_brackets",
    "no_verdict",
]

# the content of one [[...]] on a single line; long contents are not a verdict of any kind
_BRACKETS = re.compile(r"\[\[([^\[\]\n]{0,200})\]\]")
_NUMBER = re.compile(r"\s*(\d{1,4})\s*")
_SEPARATOR = re.compile(r"\s*[,>]\s*")
FIRST_WORDS = 80


def first_words(text: str | None, limit: int = FIRST_WORDS) -> str:
    """The start of ``text`` on one line (whitespace runs made one space), at most ``limit``
    characters, an ellipsis marking a cut."""
    line = " ".join((text or "").split())
    return line if len(line) <= limit else line[: limit - 1] + "\u2026"


def last_brackets(reply: str | None) -> str | None:
    """The content of the last ``[[...]]`` in ``reply`` (spaces kept), or None."""
    found = _BRACKETS.findall(reply or "")
    return found[-1] if found else None


def no_verdict(reply: str | None, why: str) -> str:
    """The record's words for a reply without a verdict: why, and how the reply began."""
    return f'no verdict ({why}); the reply began: "{first_words(reply)}"'


@dataclass(frozen=True)
class Reading:
    """A judge reply as read: the 0-based positions it names (one for a choice, all of them
    best first for a ranking) and the bracketed verdict, or, with no verdict, why not."""

    picks: list[int]
    verdict: str | None = None  # e.g. "[[2]]"
    problem: str | None = None  # no verdict: why, with the reply's first words


@dataclass(frozen=True)
class Contract:
    """The verdict form a judge is asked for: ``ranking`` False is one candidate's number,
    True every candidate's number in order."""

    ranking: bool

    def read(self, reply: str | None, count: int) -> Reading:
        """The verdict of ``reply`` about ``count`` candidates (see the module docstring)."""
        inner = last_brackets(reply)
        if inner is None:
            return Reading([], problem=no_verdict(reply, "no [[...]] in the reply"))
        shown = f"[[{inner.strip()}]]"
        parts = _SEPARATOR.split(inner.strip()) if self.ranking else [inner]
        numbers = [int(m.group(1)) for p in parts if (m := _NUMBER.fullmatch(p))]
        if self.ranking:
            if len(numbers) != len(parts) or sorted(numbers) != list(range(1, count + 1)):
                why = f"{shown} is not an order of all {count} candidates"
                return Reading([], problem=no_verdict(reply, why))
        elif len(numbers) != 1 or not 1 <= numbers[0] <= count:
            why = f"{shown} names no candidate from 1 to {count}"
            return Reading([], problem=no_verdict(reply, why))
        verdict = "[[" + ", ".join(str(k) for k in numbers) + "]]"
        return Reading([k - 1 for k in numbers], verdict=verdict)

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
