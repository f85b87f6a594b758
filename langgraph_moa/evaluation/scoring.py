"""Turning answers and judge replies into numbers: exact match, pairwise verdicts, 1-10 ratings.

Exact match follows GSM8K's convention: the gold answer ends in ``#### N``. From a model's answer
the final number is taken in this order: a ``#### N`` line, then "answer is N" / "answer: N"
(the result when a worked expression follows: "answer is 7 + 4 = 11" reads 11), then a
``\\boxed{N}``, then the last number in the text. A minus or plus between two numbers is an
operator, not a sign ("10 - 2" ends in 2). Numbers are compared after normalisation
(thousands separators, currency and percent signs, a trailing full stop, ``+`` sign and trailing
zeros dropped), as exact decimals, so ``1,000.00`` equals ``1000``.

Judge replies are read by contract, as the graph's judges are (:mod:`langgraph_moa.nodes.judging`):
only the last ``[[...]]`` of a reply counts, and it must be a verdict of the kind asked for;
anything else is no verdict (with the reply's first words as the reason), never a number read
from the prose. Pairwise verdicts use a five-step scale in the style of Arena-Hard:
``[[A>>B]]``, ``[[A>B]]``, ``[[A=B]]``, ``[[B>A]]``, ``[[B>>A]]``; a grade is ``[[N]]``, N from 1
to 10 (a decimal allowed, as MT-Bench's judges sometimes give).

Each pair is judged twice with the answers' positions swapped. A game's outcome for the
candidate is 1 (win), 0.5 (tie) or 0 (loss); a strong verdict (``>>``) weighs
:data:`STRONG_WEIGHT` times a plain one in the weighted score, as Arena-Hard counts it several
times. An item's preference is the mean outcome of its games with a verdict: when the two orders
disagree (position bias) the item becomes a tie; when only one order has a verdict, the item
stands on that game and whether the orders agree is unknown. A game without a verdict is a
failed game; an item with no game with a verdict is left out of the scores and counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from langgraph_moa.llm.verdicts import last_brackets, no_verdict

STRONG_WEIGHT = 3.0

# A sign is part of a number only when attached to it and not after a digit, letter or closing
# bracket: in "10 - 2" and "10-2" the minus is an operator (the number read is 2, not -2).
_SIGN = r"(?:(?<![\w)\]])[-+])?"
_NUMBER = rf"{_SIGN}(?:\$\s?)?\d[\d,]*(?:\.\d+)?%?|{_SIGN}\$?\.\d+%?"
_HASHES = re.compile(rf"####\s*({_NUMBER})")
_ANSWER_IS = re.compile(rf"answer(?:\s+is)?\s*[:=]?\s*(?:\*\*)?\s*({_NUMBER})", re.IGNORECASE)
# After "answer is N", the rest of a worked expression: "the answer is 7 + 4 = 11" answers 11.
_WORKED = re.compile(rf"(?:\s*[-+*/x\u00d7]\s*\(?\s*(?:{_NUMBER})\s*\)?)+\s*=\s*({_NUMBER})")
_BOXED = re.compile(rf"\\boxed\{{\s*({_NUMBER})\s*\}}")
_ANY_NUMBER = re.compile(_NUMBER)


def normalise_number(text: str) -> Decimal | None:
    """``"$1,234.50"`` -> ``Decimal("1234.5")``; None if ``text`` is not a number."""
    cleaned = text.strip().replace(",", "").replace("$", "").replace(" ", "")
    cleaned = cleaned.rstrip(".").removesuffix("%").removeprefix("+")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    return value.normalize() if value.is_finite() else None


def gold_of(answer: str) -> str:
    """The gold answer of a GSM8K record: what follows ``####`` (the whole text if absent)."""
    _, sep, tail = answer.rpartition("####")
    return tail.strip() if sep else answer.strip()


def extract_answer(text: str) -> str | None:
    """The final numeric answer a model gave (see the module docstring), or None."""
    for pattern in (_HASHES, _ANSWER_IS, _BOXED):
        found = list(pattern.finditer(text))
        if found:
            last = found[-1]
            worked = _WORKED.match(text, last.end()) if pattern is _ANSWER_IS else None
            return (worked or last).group(1).strip()
    numbers = _ANY_NUMBER.findall(text)
    return numbers[-1].strip() if numbers else None


def exact_match(prediction: str, gold: str) -> bool:
    """Whether the model's final answer equals the gold one (numerically when both are
    numbers, else as case- and space-insensitive text)."""
    gold = gold_of(gold)
    want = normalise_number(gold)
    if want is None:
        return " ".join(prediction.split()).lower() == " ".join(gold.split()).lower()
    got = extract_answer(prediction)
    return got is not None and normalise_number(got) == want


_VERDICT = re.compile(r"\s*(A\s*>>\s*B|A\s*>\s*B|A\s*=\s*B|B\s*>\s*A|B\s*>>\s*A)\s*")
# verdict -> (outcome for the answer shown as A, weight)
_VERDICTS: dict[str, tuple[float, float]] = {
    "A>>B": (1.0, STRONG_WEIGHT),
    "A>B": (1.0, 1.0),
    "A=B": (0.5, 1.0),
    "B>A": (0.0, 1.0),
    "B>>A": (0.0, STRONG_WEIGHT),
}
_RATING = re.compile(r"\s*(\d{1,2}(?:\.\d+)?)\s*")


def read_verdict(reply: str) -> tuple[str | None, str | None]:
    """The verdict in the last ``[[...]]`` of a judge's reply, spaces removed (``"A>>B"``),
    and None; or None and why there is no verdict (with the reply's first words)."""
    inner = last_brackets(reply)
    if inner is None:
        return None, no_verdict(reply, "no [[...]] in the reply")
    found = _VERDICT.fullmatch(inner)
    if found is None:
        return None, no_verdict(reply, f"[[{inner.strip()}]] is not one of the five verdicts")
    return re.sub(r"\s+", "", found.group(1)), None


def parse_verdict(reply: str) -> str | None:
    """The verdict of :func:`read_verdict`, or None."""
    return read_verdict(reply)[0]


def read_rating(reply: str) -> tuple[float | None, str | None]:
    """The 1-10 grade in the last ``[[...]]`` of a judge's reply, and None; or None and why
    there is no grade (with the reply's first words)."""
    inner = last_brackets(reply)
    if inner is None:
        return None, no_verdict(reply, "no [[...]] in the reply")
    found = _RATING.fullmatch(inner)
    value = float(found.group(1)) if found else None
    if value is None or not 1.0 <= value <= 10.0:
        return None, no_verdict(reply, f"[[{inner.strip()}]] is not a grade from 1 to 10")
    return value, None


def parse_rating(reply: str) -> float | None:
    """The grade of :func:`read_rating`, or None."""
    return read_rating(reply)[0]


@dataclass(frozen=True)
class Game:
    """One judgment of a pair: which side the candidate was shown on and the verdict."""

    candidate_first: bool
    verdict: str | None
    no_verdict: str | None = None  # no verdict: why (the judge failed, or the reply's words)
    first_try: str | None = None  # asked again: why its first reply had no verdict

    def outcome(self) -> tuple[float, float] | None:
        """(candidate's outcome, weight), or None when the judge gave no verdict."""
        if self.verdict is None:
            return None
        outcome, weight = _VERDICTS[self.verdict]
        return (outcome if self.candidate_first else 1.0 - outcome), weight


@dataclass(frozen=True)
class Grade:
    """One graded turn: the 1-10 grade, or None and why not (the judge failed, or the reply's
    first words), and, when the judge was asked again, why its first reply had no grade."""

    value: float | None
    no_verdict: str | None = None
    first_try: str | None = None

    def note(self, turn: int) -> str | None:
        """What the item's record says about this turn's judging, if anything."""
        parts = [f"turn {turn} asked again after {self.first_try}"] if self.first_try else []
        if self.no_verdict:
            parts.append(f"turn {turn} ungraded: {self.no_verdict}")
        return "; ".join(parts) or None


def games_note(games: list[Game]) -> str | None:
    """What an item's record says about its games' judging: each game without a verdict, and
    each asked again, with the reasons and the replies' first words."""
    parts = []
    for number, game in enumerate(games, 1):
        which = f"game {number} ({'candidate' if game.candidate_first else 'baseline'} first)"
        if game.first_try:
            parts.append(f"{which} asked again after {game.first_try}")
        if game.no_verdict:
            parts.append(f"{which}: {game.no_verdict}")
    return "; ".join(parts) or None


@dataclass(frozen=True)
class PairScore:
    """An item's pairwise result: ``preference`` (mean outcome, 0-1), ``weighted`` (outcomes
    weighted by verdict strength) with its total ``weight``, and whether the orders agreed."""

    preference: float
    weighted: float
    weight: float
    games: int
    consistent: bool | None  # None: one order only had a verdict


def score_pair(games: list[Game]) -> PairScore | None:
    """Combine an item's games (normally two, positions swapped); None if none parsed."""
    scored = [o for g in games if (o := g.outcome()) is not None]
    if not scored:
        return None
    weight = sum(w for _, w in scored)
    outcomes = [o for o, _ in scored]
    return PairScore(
        preference=sum(outcomes) / len(outcomes),
        weighted=sum(o * w for o, w in scored) / weight,
        weight=weight,
        games=len(scored),
        consistent=len(set(outcomes)) == 1 if len(outcomes) > 1 else None,
    )
