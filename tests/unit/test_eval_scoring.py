"""Exact match on real GSM8K answers, verdict and grade parsing, swaps, ties and weights."""

from __future__ import annotations

import pytest

from langgraph_moa.evaluation.datasets import load_benchmark
from langgraph_moa.evaluation.scoring import (
    STRONG_WEIGHT,
    Game,
    exact_match,
    extract_answer,
    gold_of,
    normalise_number,
    parse_rating,
    parse_verdict,
    read_rating,
    read_verdict,
    score_pair,
)


def test_every_gsm8k_gold_is_a_number_and_matches_its_own_solution() -> None:
    items = load_benchmark("gsm8k").items
    assert len(items) == 1319
    for item in items:
        assert item.gold is not None
        assert normalise_number(gold_of(item.gold)) is not None, item.gold
        # the reference solution itself, ending in "#### N", is an exact match
        assert exact_match(item.gold, item.gold), item.gold


def test_first_gsm8k_item_against_model_style_answers() -> None:
    item = load_benchmark("gsm8k", limit=1).items[0]
    assert "Janet" in item.question and gold_of(item.gold or "") == "18"
    assert exact_match(
        "She sells 16 - 3 - 4 = 9 eggs at $2 each, so she makes $18.", item.gold or ""
    )
    assert exact_match("9 * 2 = 18\nThe answer is 18.", item.gold or "")
    assert exact_match("**Answer: $18.00**", item.gold or "")
    assert not exact_match("The answer is 18.5", item.gold or "")
    assert not exact_match("I don't know.", item.gold or "")


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("#### 1,000", "1000"),
        ("The answer is $1,234.50.", "1234.5"),
        ("so \\boxed{42}", "42"),
        ("answer: -7", "-7"),
        ("50%", "50"),
        ("first 3 then 4 then 5.", "5"),
    ],
)
def test_extracted_numbers_are_normalised(text: str, number: str) -> None:
    found = extract_answer(text)
    assert found is not None
    assert normalise_number(found) == normalise_number(number)


@pytest.mark.parametrize(
    ("text", "number"),
    [
        # replies of the embedded model to "Calculate ...": an operator is not a sign
        ("4 + 3 = (10 - 2)", "2"),
        ("I can help with 8 - 3.", "3"),
        ("10-2", "2"),
        ("the change is -3 today", "-3"),
        ("It costs $ 18.", "18"),
        # "answer is" followed by a worked expression answers its result
        ("The final answer is -7 + 6 = 13.", "13"),
        ("The answer is: 7 + 4 = 11.", "11"),
        ("The answer is 5, since 2 + 3 = 5", "5"),
    ],
)
def test_operators_and_worked_answers(text: str, number: str) -> None:
    found = extract_answer(text)
    assert found is not None and normalise_number(found) == normalise_number(number)


def test_hashes_win_over_later_numbers() -> None:
    assert extract_answer("#### 12\n(checked in 3 steps)") == "12"


def test_non_numeric_gold_compares_text() -> None:
    assert exact_match("  Paris ", "paris")
    assert not exact_match("Lyon", "Paris")


def test_verdicts_parse_with_spaces_and_take_the_last() -> None:
    assert parse_verdict("A is fine. [[A>B]] on reflection [[ B >> A ]]") == "B>>A"
    assert parse_verdict("My final verdict is tie: [[A=B]].") == "A=B"
    assert parse_verdict("no verdict here, A>B") is None


def test_only_the_last_brackets_count_and_must_be_a_verdict() -> None:
    # a verdict earlier in the reply is not picked when the last [[...]] is something else
    verdict, why = read_verdict("[[A>B]] at first sight; then I reconsidered: [[A is better]]")
    assert verdict is None
    assert why == (
        "no verdict ([[A is better]] is not one of the five verdicts); the reply began: "
        '"[[A>B]] at first sight; then I reconsidered: [[A is better]]"'
    )
    # prose that names a side, or stray digits, is no verdict
    verdict, why = read_verdict("Assistant A is better: it has 2 fewer errors than B.\n" * 5)
    assert verdict is None and why is not None
    assert why.startswith('no verdict (no [[...]] in the reply); the reply began: "Assistant A')
    assert why.endswith('\u2026"') and len(why.split('began: "')[1]) == 81  # 80 chars, quoted
    assert read_verdict("Both have 2 errors.\n[[B>A]]") == ("B>A", None)


def test_grades_parse_in_range_only() -> None:
    assert parse_rating("Good answer.\nRating: [[8]]") == 8.0
    assert parse_rating("[[7.5]]") == 7.5
    assert parse_rating("[[11]]") is None
    assert parse_rating("[[0]]") is None
    assert parse_rating("no grade") is None


def test_a_grade_is_read_only_from_its_brackets() -> None:
    # "Rating: 6" and numbers in the prose are not a grade
    assert read_rating("Rating: 6")[0] is None
    value, why = read_rating("The reply makes 2 mistakes in 3 steps; I'd say 4 out of 10.")
    assert value is None
    assert why == (
        'no verdict (no [[...]] in the reply); the reply began: "The reply makes 2 mistakes in '
        "3 steps; I'd say 4 out of 10.\""
    )
    assert read_rating("Step 2 is wrong, step 3 fine.\n[[ 4 ]]") == (4.0, None)
    value, why = read_rating("[[7]] first, but in the end [[seven]]")
    assert value is None and why is not None and "[[seven]] is not a grade" in why


def test_a_swapped_pair_that_agrees_is_a_win() -> None:
    # the candidate wins when shown first (A>B) and when shown second (B>A)
    pair = score_pair([Game(True, "A>B"), Game(False, "B>A")])
    assert pair is not None
    assert pair.preference == 1.0 and pair.consistent and pair.weight == 2.0


def test_position_bias_becomes_a_tie() -> None:
    # the judge always prefers the first answer: one win, one loss
    pair = score_pair([Game(True, "A>B"), Game(False, "A>B")])
    assert pair is not None
    assert pair.preference == 0.5 and not pair.consistent


def test_ties_count_half() -> None:
    pair = score_pair([Game(True, "A=B"), Game(False, "A=B")])
    assert pair is not None and pair.preference == 0.5 and pair.consistent


def test_strong_verdicts_weigh_more() -> None:
    # a strong win and a plain loss: the plain mean is 0.5, the weighted score 3/4
    pair = score_pair([Game(True, "A>>B"), Game(False, "A>B")])
    assert pair is not None
    assert pair.preference == 0.5
    assert pair.weighted == STRONG_WEIGHT / (STRONG_WEIGHT + 1)
    assert pair.weight == STRONG_WEIGHT + 1


def test_a_game_without_verdict_is_left_out() -> None:
    pair = score_pair([Game(True, None), Game(False, "B>>A")])
    assert pair is not None and pair.games == 1 and pair.preference == 1.0
    assert pair.consistent is None  # one order only: whether the orders agree is unknown
    assert score_pair([Game(True, None), Game(False, None)]) is None
