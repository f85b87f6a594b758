"""A judge's reply read by contract: the judge ends its reply with its verdict in double square
brackets, and only the last ``[[...]]`` of the reply is read, then checked against what was
asked:

- a choice (select, and one pairwise game of rank): one candidate's number, ``[[2]]`` (from 1
  to the number of candidates shown);
- a ranking (listwise rank): every candidate's number exactly once, best first,
  ``[[3, 1, 2]]`` (commas or ``>`` between them).

Anything else (no brackets, a number that names no candidate, a ranking that leaves one out or
names one twice) is *no verdict*, in words that quote the reply's first words. Numbers in the
prose ("candidate 1 has 2 errors") are never read. The graph's judges
(:mod:`langgraph_moa.nodes.judging`) and the evaluation's grader
(:mod:`langgraph_moa.evaluation.scoring`) read replies the same way.

The reading is hand-written (a regular expression and a check) because a judge may be any
provider's model: structured output is not available from all of them, and a bracketed final
line is what judges are commonly trained and prompted to give.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# the content of one [[...]] on a single line; long contents are not a verdict of any kind
_BRACKETS = re.compile(r"\[\[([^\[\]\n]{0,200})\]\]")
_NUMBER = re.compile(r"\s*(\d{1,4})\s*")
_SEPARATOR = re.compile(r"\s*[,>]\s*")
_FIRST_WORDS = 80


def _first_words(text: str | None, limit: int = _FIRST_WORDS) -> str:
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
    return f'no verdict ({why}); the reply began: "{_first_words(reply)}"'


@dataclass(frozen=True)
class Reading:
    """A judge reply as read: the 0-based positions it names (one for a choice, all of them
    best first for a ranking) and the bracketed verdict, or, with no verdict, why not."""

    picks: list[int]
    verdict: str | None = None  # e.g. "[[2]]"
    problem: str | None = None  # no verdict: why, with the reply's first words


def read_verdict(reply: str | None, count: int, *, ranking: bool) -> Reading:
    """The verdict of ``reply`` about ``count`` candidates: a ranking of all of them, or one
    choice (see the module docstring)."""
    inner = last_brackets(reply)
    if inner is None:
        return Reading([], problem=no_verdict(reply, "no [[...]] in the reply"))
    shown = f"[[{inner.strip()}]]"
    parts = _SEPARATOR.split(inner.strip()) if ranking else [inner]
    numbers = [int(m.group(1)) for p in parts if (m := _NUMBER.fullmatch(p))]
    if ranking:
        if len(numbers) != len(parts) or sorted(numbers) != list(range(1, count + 1)):
            why = f"{shown} is not an order of all {count} candidates"
            return Reading([], problem=no_verdict(reply, why))
    elif len(numbers) != 1 or not 1 <= numbers[0] <= count:
        why = f"{shown} names no candidate from 1 to {count}"
        return Reading([], problem=no_verdict(reply, why))
    verdict = "[[" + ", ".join(str(k) for k in numbers) + "]]"
    return Reading([k - 1 for k in numbers], verdict=verdict)
