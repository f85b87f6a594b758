"""Read a short answer out of a candidate (a number, a choice letter, a regex match, the last
line) and count them: what ``vote`` and an agreement-based early stop decide with.

Hand-written on purpose: these are a few regular expressions over plain text, and the rules
(which number counts as "the answer") are this project's to document, not a library's.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

# A sign belongs to the number only when it does not follow a digit, letter or closing bracket:
# in "10-2" and "(10 - 2)" the minus is an operator, and the number read is 2, not -2.
_NUMBER = r"(?:(?<![\w)\]])[-+])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")
# "the answer is 42", "Answer: 42", "final answer = 42", "result is 42": the number must follow
# the cue directly; "the answer to 9 - 2 is 5" is no cue (its first number is an operand).
_ANSWER_RE = re.compile(
    rf"(?:answer|result)\s*(?:is|:|=)?\s*(?:\*\*)?\s*({_NUMBER})", re.IGNORECASE
)
# After a cued number, the rest of a worked expression: "answer is 7 + 4 = 11" answers 11.
_WORKED_RE = re.compile(rf"(?:\s*[-+*/x\u00d7]\s*\(?\s*{_NUMBER}\s*\)?)+\s*=\s*({_NUMBER})")
_LETTER_AFTER_ANSWER_RE = re.compile(
    r"(?:answer|option|choice)\s*(?:is|:|=)?\s*\(?([A-J])\b\)?", re.IGNORECASE
)
_LETTER_ALONE_RE = re.compile(r"(?:^|\s)\(?([A-J])[).:](?=\s|$)|\(([A-J])\)", re.MULTILINE)


def _canonical_number(raw: str) -> str | None:
    """``1,234.50`` -> ``1234.5``; ``3/4`` stays a fraction; "-0" -> "0"."""
    text = raw.replace(",", "").lstrip("+")
    if "/" in text:
        top, bottom = text.split("/", 1)
        return f"{int(top)}/{int(bottom)}" if int(bottom) else None
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _number(text: str) -> str | None:
    """The number inside the last ``\\boxed{}``, else the number right after the last "answer
    is" (the result if an expression follows: "answer is 7 + 4 = 11"), else the last number in
    the text."""
    boxed = _BOXED_RE.findall(text)
    if boxed and (found := _NUMBER_RE.findall(boxed[-1])):
        return _canonical_number(found[-1])
    cues = list(_ANSWER_RE.finditer(text))
    if cues:
        worked = _WORKED_RE.match(text, cues[-1].end())
        return _canonical_number(worked.group(1) if worked else cues[-1].group(1))
    numbers = _NUMBER_RE.findall(text)
    return _canonical_number(numbers[-1]) if numbers else None


def _choice(text: str) -> str | None:
    """A multiple-choice letter: after the last "answer is"/"option", else the last ``(B)``,
    ``B)`` or ``B.`` standing alone."""
    cued = _LETTER_AFTER_ANSWER_RE.findall(text)
    if cued:
        return cued[-1].upper()
    alone = _LETTER_ALONE_RE.findall(text)
    if alone:
        first, second = alone[-1]
        return (first or second).upper()
    stripped = text.strip().rstrip(".").strip("()")
    return stripped.upper() if re.fullmatch(r"[A-Ja-j]", stripped) else None


def _last_line(text: str) -> str | None:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    line = " ".join(lines[-1].lower().split()).rstrip(".!;:")
    return line or None


def extract(text: str, how: str, pattern: str | None = None) -> str | None:
    """The answer ``how`` reads from ``text`` (number, choice, regex, last_line), normalised so
    equal answers compare equal; None when there is none."""
    if how == "number":
        return _number(text)
    if how == "choice":
        return _choice(text)
    if how == "regex":
        matches = list(re.finditer(pattern or "", text))
        if not matches:
            return None
        last = matches[-1]
        found = last.group(1) if last.re.groups else last.group()
        return " ".join(found.split()) or None
    if how == "last_line":
        return _last_line(text)
    raise ValueError(f"unknown extractor {how!r}")


@dataclass
class Tally:
    """The count of extracted answers over some candidates."""

    extracted: list[str | None]  # per candidate, in candidate order
    votes: dict[str, int]  # answer -> count, most votes first (ties in first-seen order)

    @property
    def top(self) -> list[str]:
        """The answers with the most votes (more than one: a tie; none: nothing was read)."""
        if not self.votes:
            return []
        best = max(self.votes.values())
        return [answer for answer, count in self.votes.items() if count == best]

    @property
    def agreement(self) -> float:
        """The share of candidates that gave the most common answer (unread ones disagree)."""
        if not self.extracted or not self.votes:
            return 0.0
        return max(self.votes.values()) / len(self.extracted)

    def first_with(self, answers: Sequence[str]) -> int:
        """The first candidate whose answer is one of ``answers``."""
        return next(k for k, a in enumerate(self.extracted) if a in answers)


def tally(texts: Sequence[str], how: str, pattern: str | None = None) -> Tally:
    extracted = [extract(t, how, pattern) for t in texts]
    counts = Counter(a for a in extracted if a is not None)
    order = {a: k for k, a in reversed(list(enumerate(extracted)))}
    ranked = sorted(counts, key=lambda a: (-counts[a], order[a]))
    return Tally(extracted, {a: counts[a] for a in ranked})
