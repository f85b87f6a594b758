"""Unjudged is a number: per-side counts, null (never NaN) for a metric over no item, and a
report that says "no data" in its table and its plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from langgraph_moa.evaluation import strict_json
from langgraph_moa.evaluation.datasets import Item, Scoring
from langgraph_moa.evaluation.report import write_report
from langgraph_moa.evaluation.score import FAILED, count_sides
from langgraph_moa.evaluation.stats import mean_estimate
from langgraph_moa.evaluation.summary import Generation, ItemResult, summarise

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _refuse(name: str) -> Any:
    raise ValueError(name)


def test_strict_json_writes_null_for_numbers_that_are_not() -> None:
    value = {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": (2, "x"), "d": None}
    text = strict_json.dumps(value)
    assert json.loads(text, parse_constant=_refuse) == {
        "a": None,
        "b": [None, None, 1.5],
        "c": [2, "x"],
        "d": None,
    }


def test_a_metric_over_no_item_is_null_with_its_count() -> None:
    assert mean_estimate([]).to_dict()["value"] is None
    s = summarise("alpaca-eval", Scoring.pairwise, [ItemResult("a"), ItemResult("b")])
    assert (s["scored"], s["unscored"]) == (0, 2)
    for metric in s["metrics"].values():
        assert metric == {"value": None, "low": None, "high": None, "n": 0, "level": 0.9}
    json.loads(strict_json.dumps(s), parse_constant=_refuse)


def test_counts_per_side() -> None:
    items = [Item(k, ({"role": "user", "content": k},)) for k in ("ok", "no", "bad", "gone")]
    ok = Generation(["x"])
    candidate = {"ok": ok, "no": ok, "bad": Generation([None], error="boom")}
    baseline = {"ok": ok, "no": ok, "bad": ok, "gone": Generation([None], error="boom")}
    results = [
        ItemResult("ok", score=1.0),
        ItemResult("no", note="the judge gave no verdict"),
        ItemResult("bad", score=0.0, note=FAILED),
    ]
    cand, base = count_sides(Scoring.pairwise, items, results, [candidate, baseline])
    assert (cand["judged"], cand["unjudged"], cand["failed"]) == (1, 1, 2)  # "gone": no answer
    assert cand["unjudged_example"] == {"id": "no", "why": "the judge gave no verdict"}
    # the pair with the failed candidate was not judged: a loss by rule, unjudged for the other
    assert (base["judged"], base["unjudged"], base["failed"]) == (1, 2, 1)
    graded = [ItemResult("ok", score=7.0, baseline_score=None), ItemResult("no")]
    cand, base = count_sides(Scoring.rating, items[:2], graded, [candidate, baseline])
    assert (cand["judged"], cand["unjudged"]) == (1, 1)
    assert (base["judged"], base["unjudged"]) == (0, 2)
    assert base["unjudged_example"] == {"id": "ok", "why": "the judge gave no grade"}


def _summary(name: str, score: float | None, judged: int, usd: float) -> dict[str, Any]:
    n = judged
    metric = {"value": score, "low": None if score is None else score - 5, "n": n}
    metric["high"] = None if score is None else score + 5
    return {
        "benchmark": "alpaca-eval",
        "version": "AlpacaEval 2.0",
        "scoring": "pairwise",
        "items": 10,
        "judge": "openai:judge",
        "topologies": [
            {
                "name": name,
                "role": "candidate",
                "cost": {"usd_per_item": usd, "latency_p50_s": 1.0, "calls_per_item": 4.0},
                "counts": {
                    "items": 10,
                    "judged": judged,
                    "unjudged": 10 - judged,
                    "failed": 0,
                    "unjudged_example": None
                    if judged == 10
                    else {"id": "x|y", "why": "the judge gave no verdict"},
                },
            }
        ],
        "scores": {"metric": "lc_win_rate", "metrics": {"lc_win_rate": metric}},
    }


@pytest.mark.parametrize("legacy_nan", [False, True])
def test_report_shows_no_data_and_counts(tmp_path: Path, legacy_nan: bool) -> None:
    """One run judged, one not (its summary as written now, or with NaN as older runs wrote):
    "no data" in the table, the counts below it, a plot that names the side without data, and
    strict JSON."""
    runs = tmp_path / "runs"
    for name, summary in (
        ("judged", _summary("moa", 60.0, 10, 0.01)),
        ("unjudged", _summary("lite", None, 0, 0.002)),
    ):
        (runs / name).mkdir(parents=True)
        text = json.dumps(summary)
        if legacy_nan:
            text = text.replace('"value": null', '"value": NaN')
        (runs / name / "summary.json").write_text(text)
    written = write_report(runs, tmp_path / "report.md")
    text = (tmp_path / "report.md").read_text()
    assert "nan" not in text.lower()
    assert "| lite (candidate) | unjudged | lc_win_rate | no data |" in text
    assert "| moa (candidate) | judged | lc_win_rate | 60.0 [55.0, 65.0] |" in text
    assert "| lite (candidate) | unjudged | 0 (no data) | 10 | 0 | x\\|y: the judge gave" in text
    assert "| moa (candidate) | judged | 10 | 0 | 0 | - |" in text
    data = json.loads((tmp_path / "report.json").read_text(), parse_constant=_refuse)
    assert [r["score"] for r in data["rows"]] == [60.0, None]
    assert len(written["plots"]) == 2
    for plot in written["plots"]:
        assert Path(plot).read_bytes().startswith(PNG_MAGIC)
