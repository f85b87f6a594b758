"""Summaries from item results, and the report: table, JSON and plots written from run folders."""

from __future__ import annotations

import json
from pathlib import Path

from langgraph_moa.evaluation.datasets import Scoring
from langgraph_moa.evaluation.report import write_report
from langgraph_moa.evaluation.report_data import pareto_front
from langgraph_moa.evaluation.summary import Generation, ItemResult, cost_summary, summarise

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = [(0.0, 10.0), (1.0, 30.0), (2.0, 20.0), (3.0, 40.0), (1.0, 5.0)]
    assert pareto_front(points) == [0, 1, 3]


def test_cost_summary_per_item_and_percentiles() -> None:
    gens = [
        Generation(["x"], calls=4, tokens=100, cost_usd=0.01, latency_s=float(k))
        for k in range(1, 21)
    ]
    gens.append(
        Generation([None], calls=4, error="boom", cost_usd=0.0, latency_s=30.0, degraded=True)
    )
    c = cost_summary(gens)
    assert c["items"] == 21 and c["calls_per_item"] == 4
    assert c["latency_p50_s"] == 11.0 and c["latency_p95_s"] == 20.0
    assert abs(c["failed_rate"] - 1 / 21) < 1e-9 and abs(c["degraded_rate"] - 1 / 21) < 1e-9
    unpriced = cost_summary([Generation(["x"], cost_usd=None)])
    assert unpriced["usd_per_item"] is None


def test_exact_summary_pairs_with_a_baseline_topology() -> None:
    results = [ItemResult(str(k), score=float(k % 2), baseline_score=0.0) for k in range(100)]
    s = summarise("gsm8k", Scoring.exact, results, resamples=200)
    assert s["metric"] == "accuracy" and s["metrics"]["accuracy"]["value"] == 50.0
    assert s["paired"]["difference"]["value"] == 50.0 and s["paired"]["p_not_better"] == 0.0


def test_pairwise_summary_leads_with_the_benchmark_metric() -> None:
    results = [
        ItemResult(
            str(k),
            score=1.0 if k % 4 else 0.0,
            weighted=1.0 if k % 4 else 0.0,
            weight=2.0,
            consistent=True,
            length_diff=k - 50,
        )
        for k in range(100)
    ]
    alpaca = summarise("alpaca-eval", Scoring.pairwise, results, resamples=50)
    assert alpaca["metric"] == "lc_win_rate" and alpaca["metrics"]["win_rate"]["value"] == 75.0
    assert (
        summarise("arena-hard", Scoring.pairwise, results, resamples=50)["metric"]
        == "weighted_score"
    )
    assert alpaca["order_agreement"] == 1.0


def test_rating_summary_per_turn() -> None:
    results = [
        ItemResult(str(k), score=7.0, turn_scores=[8.0, 6.0], category="math") for k in range(10)
    ]
    s = summarise("mt-bench", Scoring.rating, results, resamples=50)
    assert s["metrics"]["turn_1"]["value"] == 8.0 and s["metrics"]["turn_2"]["value"] == 6.0
    assert s["metrics"]["mean_grade"]["value"] == 7.0 and s["by_category"] == {"math": 7.0}


def _run(folder: Path, name: str, score: float, usd: float, latency: float) -> None:
    run = folder / name
    run.mkdir(parents=True)
    summary = {
        "benchmark": "gsm8k",
        "version": "GSM8K test",
        "items": 50,
        "judge": None,
        "topologies": [
            {
                "name": name,
                "role": "candidate",
                "cost": {"usd_per_item": usd, "latency_p50_s": latency, "calls_per_item": 4.0},
            },
        ],
        "scores": {
            "metric": "accuracy",
            "metrics": {"accuracy": {"value": score, "low": score - 5, "high": score + 5, "n": 50}},
        },
    }
    (run / "summary.json").write_text(json.dumps(summary))


def test_report_writes_table_json_and_plots(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _run(runs, "cheap", 30.0, 0.001, 1.0)
    _run(runs, "moa", 60.0, 0.01, 5.0)
    _run(runs, "wasteful", 40.0, 0.02, 9.0)
    written = write_report(runs, tmp_path / "out" / "report.md")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| moa (candidate) | moa | accuracy | 60.0 [55.0, 65.0] | 50 |" in text
    assert (
        json.loads((tmp_path / "out" / "report.json").read_text())["rows"][0]["benchmark"]
        == "gsm8k"
    )
    assert len(written["plots"]) == 2
    for plot in written["plots"]:
        data = Path(plot).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
        assert Path(plot).name in text


def test_report_names_the_front_and_the_recommended_side(tmp_path: Path) -> None:
    """Two sides on the same point, a dominated one, a dearer better one: the front and the
    recommendation under each objective, and plots whose axes hold the points."""
    runs = tmp_path / "runs"
    _run(runs, "cheap", 30.0, 0.001, 1.0)
    _run(runs, "twin", 30.0, 0.001, 1.0)  # the same point as cheap
    _run(runs, "moa", 60.0, 0.01, 5.0)
    _run(runs, "close", 57.0, 0.004, 3.0)  # inside moa's interval, cheaper
    _run(runs, "wasteful", 40.0, 0.02, 9.0)
    written = write_report(runs, tmp_path / "report.md")
    text = (tmp_path / "report.md").read_text()
    decision = written["decisions"][0]
    assert decision["front"] == ["cheap", "twin", "close", "moa"]
    assert decision["recommended"]["topology"] == "moa"
    assert decision["recommended"]["low"] == 55.0 and decision["recommended"]["high"] == 65.0
    assert decision["within_interval"] == ["close"]
    assert "**Recommended**: moa, accuracy 60.0 [55.0, 65.0] (90% interval), $0.010/item" in (text)
    assert "cheap ($0.00100/item), twin ($0.00100/item), close" in text
    assert "wasteful" not in text.split("**Pareto front**")[1].split("\n")[0]
    by_cost = write_report(runs, tmp_path / "cost.md", "cost")["decisions"][0]
    assert by_cost["recommended"]["topology"] == "close"
    for plot in written["plots"]:
        assert_readable_plot(Path(plot))


def test_own_cost_and_spend_are_summarised_apart() -> None:
    """A side whose calls the cache served: its own $ is what they cost when made, its spend
    lower; a cached call of unknown usage makes the own $ unknown, never $0."""
    made = Generation(["x"], calls=3, cost_usd=0.003, spent_usd=0.001, cached_calls=2)
    c = cost_summary([made, made])
    assert c["usd_per_item"] == 0.003 and c["spent_usd_per_item"] == 0.001
    assert c["calls_per_item"] == 3 and c["cached_calls_per_item"] == 2
    old = Generation(["x"], calls=3, cost_usd=None, spent_usd=0.001, cached_calls=2, cost_unknown=2)
    c = cost_summary([made, old])
    assert c["usd_per_item"] is None and c["unknown_cost_items"] == 1
    assert c["spent_usd_per_item"] == 0.001


def assert_readable_plot(path: Path) -> None:
    """A PNG of a sensible size whose axes hold something: not blank, and the front's red
    points drawn."""
    import matplotlib.image

    assert path.read_bytes().startswith(PNG_MAGIC)
    image = matplotlib.image.imread(str(path))
    height, width = image.shape[:2]
    assert 300 <= height <= 1200 and 500 <= width <= 1600, (width, height)
    rgb = image[:, :, :3]
    assert (rgb < 0.9).any(axis=2).mean() > 0.01, "the plot is blank"
    red = (rgb[:, :, 0] > 0.7) & (rgb[:, :, 1] < 0.3) & (rgb[:, :, 2] < 0.3)
    assert red.sum() > 20, "no point on the Pareto front is drawn"
