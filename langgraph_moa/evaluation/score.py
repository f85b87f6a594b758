"""Score every item of an eval from its generations: exact match, or the judge (pairwise games in
both orders, or 1-10 grades per turn).

A failed generation is scored without asking the judge: wrong on a gold set, a loss in a pairwise
comparison (as AlpacaEval counts an empty output), and an ungraded turn on a graded set (the
item's grade is the mean of its graded turns; the report counts the failures beside the score).
Lengths for the length-controlled win rate are in characters, as upstream measures them.
A judge reply without a verdict scores nothing: the item's note says which game or turn had
none and why, with the reply's first words (and which were asked again).

:func:`count_sides` says, per side, how many items were judged (a verdict or grade from the
judge, or a check against the gold answer), unjudged (an answer the judge gave no verdict on,
or a pair without the other side's answer) and failed (no answer): an eval whose judge never
answered in the expected form shows ``judged 0``, not a score over nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from langgraph_moa.errors import MoAInputError
from langgraph_moa.evaluation.datasets import Item, Scoring
from langgraph_moa.evaluation.judge import Judge
from langgraph_moa.evaluation.scoring import Grade, exact_match, games_note, score_pair
from langgraph_moa.evaluation.summary import Generation, ItemResult

FAILED = "generation failed"


def _exact(item: Item, gen: Generation | None) -> float:
    answer = gen.answers[0] if gen is not None and gen.ok else None
    return 0.0 if answer is None else float(exact_match(answer, item.gold or ""))


async def _pairwise(judge: Judge, item: Item, gen: Generation, baseline: str | None) -> ItemResult:
    result = ItemResult(item.id, category=item.category)
    answer = gen.answers[0] if gen.ok else None
    if baseline is None:
        result.note = "no baseline answer"
        return result
    if answer is None:
        result.score, result.weighted, result.weight, result.consistent = 0.0, 0.0, 1.0, True
        result.length_diff, result.note = -len(baseline), FAILED
        return result
    games = await judge.compare(item.question, answer, baseline)
    pair = score_pair(games)
    result.length_diff = len(answer) - len(baseline)
    result.note = games_note(games)
    if pair is None:
        result.note = f"the judge gave no verdict: {result.note}"
        return result
    result.score, result.weighted, result.weight = pair.preference, pair.weighted, pair.weight
    result.consistent = pair.consistent
    return result


async def _grades(judge: Judge, item: Item, gen: Generation | None) -> list[Grade | None]:
    """Each turn's grade; None for a turn not asked about (its answer, or an earlier one, is
    missing)."""
    if gen is None:
        return []
    questions = item.turns
    grades: list[Grade | None] = []
    calls: list[Coroutine[Any, Any, Grade] | None] = []
    for t in range(len(questions)):
        answers = gen.answers[: t + 1]
        if len(answers) <= t or any(a is None for a in answers):
            calls.append(None)
            continue
        reference = item.references[t] if t < len(item.references) else None
        calls.append(judge.grade(questions[: t + 1], [a or "" for a in answers], reference))
    done = await asyncio.gather(*(c for c in calls if c is not None))
    it = iter(done)
    for c in calls:
        grades.append(None if c is None else next(it))
    return grades


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


async def _rating(
    judge: Judge, item: Item, gen: Generation, baseline: Generation | None
) -> ItemResult:
    mine, theirs = await asyncio.gather(_grades(judge, item, gen), _grades(judge, item, baseline))
    scores = [None if g is None else g.value for g in mine]
    result = ItemResult(item.id, category=item.category, turn_scores=scores)
    result.score = _mean(scores)
    if baseline is not None:
        result.baseline_score = _mean([None if g is None else g.value for g in theirs])
    notes = [FAILED] if not gen.ok else []
    notes += [n for t, g in enumerate(mine, 1) if g is not None and (n := g.note(t))]
    notes += [
        f"baseline {n}" for t, g in enumerate(theirs, 1) if g is not None and (n := g.note(t))
    ]
    result.note = "; ".join(notes) or None
    return result


async def score_items(
    scoring: Scoring,
    items: Sequence[Item],
    generations: Mapping[str, Generation],
    *,
    baseline: Mapping[str, Generation] | None = None,
    judge: Judge | None = None,
) -> list[ItemResult]:
    """One result per item that has a generation, in the items' order."""
    todo = [item for item in items if item.id in generations]
    if scoring is Scoring.exact:
        results = []
        for item in todo:
            gen = generations[item.id]
            result = ItemResult(item.id, score=_exact(item, gen), category=item.category)
            if baseline is not None and item.id in baseline:
                result.baseline_score = _exact(item, baseline[item.id])
            result.note = None if gen.ok else FAILED
            results.append(result)
        return results
    if judge is None:
        raise MoAInputError(
            f"a {scoring.value} benchmark needs a judge: give --judge provider:model, "
            "--judge-preset or --judge-topology"
        )
    if scoring is Scoring.pairwise:

        def baseline_text(item: Item) -> str | None:
            if baseline is None:
                return item.baseline
            other = baseline.get(item.id)
            return other.answers[0] if other is not None and other.ok else None

        return list(
            await asyncio.gather(
                *(_pairwise(judge, i, generations[i.id], baseline_text(i)) for i in todo)
            )
        )
    return list(
        await asyncio.gather(
            *(
                _rating(
                    judge, i, generations[i.id], None if baseline is None else baseline.get(i.id)
                )
                for i in todo
            )
        )
    )


def _no_score_reason(scoring: Scoring, result: ItemResult | None) -> str:
    if result is not None and result.note and result.note != FAILED:
        return result.note
    return "the judge gave no grade" if scoring is Scoring.rating else "the judge gave no verdict"


def count_sides(
    scoring: Scoring,
    items: Sequence[Item],
    results: Sequence[ItemResult],
    generated: Sequence[Mapping[str, Generation]],
) -> list[dict[str, Any]]:
    """Per side (``generated[0]`` the candidate's, ``generated[1]`` the baseline's), over every
    item of the eval: ``judged``, ``unjudged`` and ``failed`` (they add up to ``items``; see
    the module docstring), and the first unjudged item with why (``unjudged_example``)."""
    by_id = {r.id: r for r in results}
    counts: list[dict[str, Any]] = []
    for k, generations in enumerate(generated):
        judged = unjudged = failed = 0
        example: dict[str, str] | None = None
        for item in items:
            gen, result = generations.get(item.id), by_id.get(item.id)
            if gen is None or not gen.ok:
                failed += 1
                continue
            why: str | None = _no_score_reason(scoring, result if k == 0 else None)
            if result is None:
                score = None
            elif k == 0:
                score = result.score
            elif scoring is Scoring.pairwise:  # one judgment of the pair scores both sides
                score = None if result.note == FAILED else result.score
                why = "the other side's answer failed" if result.note == FAILED else result.note
            else:
                score = result.baseline_score
            if score is not None:
                judged += 1
                continue
            unjudged += 1
            if example is None:
                example = {"id": item.id, "why": why or _no_score_reason(scoring, None)}
        counts.append(
            {
                "items": len(items),
                "judged": judged,
                "unjudged": unjudged,
                "failed": failed,
                "unjudged_example": example,
            }
        )
    return counts
