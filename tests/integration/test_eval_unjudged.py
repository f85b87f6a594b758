"""`moa eval` tells the truth about what it could not judge, writes strict JSON only, keeps one
eval per folder, and refuses bad judge options everywhere: through the CLI and the fake server.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import one_line_error
from tests.conftest import run_moa as run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# no digit and no [[...]] anywhere: no verdict whatever the parser accepts
NO_VERDICT = "Both answers have merits and I cannot decide between them."


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"not strict JSON: {name}")


def strict(text: str) -> Any:
    """JSON as jq or JavaScript read it: NaN, Infinity and -Infinity are errors."""
    return json.loads(text, parse_constant=_refuse_constant)


def assert_strict_files(folder: Path) -> int:
    """Every .json and .jsonl file under ``folder`` parses strictly; how many there were."""
    files = sorted([*folder.rglob("*.json"), *folder.rglob("*.jsonl")])
    for path in files:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            for line in text.splitlines():
                strict(line)
        else:
            strict(text)
    return len(files)


def _user_text(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content")) for m in body["messages"] if m["role"] == "user")


def _verdict_for_candidate(body: dict[str, Any], number: int, choice: int) -> str:
    """Prefers the candidate (an answer "from cand") in both orders."""
    first = re.search(r"<answer_of_assistant_A>\n(.*?)\n<", _user_text(body), re.S)
    assert first
    return "[[A>B]]" if "from cand" in first.group(1) else "[[B>A]]"


@pytest.mark.slow
def test_a_judge_without_verdicts_is_counted_and_ends_with_rc_1(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    """AlpacaEval judged by a judge whose replies carry no verdict: judged 0 / unjudged 3 in the
    printed lines, summary.json (strict JSON, the metric null with n 0), report.md ("no data"
    and the counts) and its plots; exit code 1 in one line."""
    fake.behave("cand")
    fake.behave("judge", reply=lambda body, n, c: NO_VERDICT)
    runs = tmp_path / "runs"
    args = ("alpaca-eval", "--model", "openai:cand", "--judge", "openai:judge", "--limit", "3")
    result = run("eval", *args, "--out", str(runs), "--resamples", "200")
    one_line_error(result, "no item of the candidate (single openai:cand) was judged", code=1)
    assert "3 unjudged, 0 failed" in result.stderr
    assert "the judge gave no verdict" in result.stderr
    assert "nan" not in result.stdout.lower()
    assert "candidate items: 0 judged, 3 unjudged, 0 failed" in result.stdout
    assert "lc_win_rate: no data (n=0)" in result.stdout
    assert len(fake.requests_for("judge")) == 6  # asked: both orders of 3 pairs

    folder = runs / "alpaca-eval-single-openai-cand"
    summary = strict((folder / "summary.json").read_text())
    counts = summary["topologies"][0]["counts"]
    assert (counts["items"], counts["judged"], counts["unjudged"], counts["failed"]) == (3, 0, 3, 0)
    why = counts["unjudged_example"]["why"]
    assert why.startswith("the judge gave no verdict: game 1"), why
    assert "the reply began:" in why  # the judge's own first words, to see what it said
    for name, metric in summary["scores"]["metrics"].items():
        assert metric["n"] == 0 and metric["value"] is None, name
        assert metric["low"] is None and metric["high"] is None, name
    assert assert_strict_files(folder) == 3  # manifest, items, summary

    # --json: strict JSON on stdout, the same exit code
    again = run("eval", *args, "--out", str(runs), "--resamples", "200", "--json")
    assert again.returncode == 1, again.stderr
    assert strict(again.stdout)["topologies"][0]["counts"]["unjudged"] == 3

    report = run("report", str(runs), "-o", str(tmp_path / "report.md"))
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "report.md").read_text()
    assert "nan" not in text.lower()
    row = next(line for line in text.splitlines() if line.startswith("| single openai:cand"))
    assert "| lc_win_rate | no data |" in row
    assert "| 0 (no data) | 3 | 0 |" in text  # judged, unjudged, failed
    strict((tmp_path / "report.json").read_text())
    rows = strict((tmp_path / "report.json").read_text())["rows"]
    assert rows[0]["score"] is None and rows[0]["counts"]["unjudged"] == 3
    pngs = sorted(tmp_path.glob("report-*.png"))
    assert [p.name for p in pngs] == [
        "report-alpaca-eval-cost.png",
        "report-alpaca-eval-latency.png",
    ]
    assert all(p.read_bytes().startswith(PNG_MAGIC) and p.stat().st_size > 3000 for p in pngs)


@pytest.mark.slow
def test_counts_per_side_with_a_failed_baseline_and_strict_files(
    fake: FakeOpenAI, tmp_path: Path, topology_file: Path
) -> None:
    """A topology against a single model on a pairwise file: the judge answers one question
    without a verdict; then every baseline answer fails. The counts are per side, every file
    is strict JSON, and a side with no judged item ends the command with exit code 1."""
    for model in ("a", "b", "c", "agg"):
        fake.behave(model, reply=lambda body, n, c: f"Answer {n} from cand.")
    fake.behave("single")

    def judge(body: dict[str, Any], number: int, choice: int) -> str:
        return NO_VERDICT if "mystery" in _user_text(body) else _verdict_for_candidate(body, 0, 0)

    fake.behave("judge", reply=judge)
    data = tmp_path / "mine.jsonl"
    rows = [{"id": f"q{k}", "prompt": f"question {k}"} for k in range(3)]
    rows.append({"id": "m", "prompt": "a mystery"})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [str(data), "--topology", str(topology_file), "--baseline-model", "openai:single"]
    args += ["--judge", "openai:judge", "--resamples", "200", "--json"]
    result = run("eval", *args, "--out", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr
    summary = strict(result.stdout)
    sides = {s["role"]: s["counts"] for s in summary["topologies"]}
    for role in ("candidate", "baseline"):
        c = sides[role]
        assert (c["judged"], c["unjudged"], c["failed"]) == (3, 1, 0), role
        assert c["unjudged_example"]["id"] == "m"
    assert summary["scores"]["metrics"]["win_rate"]["value"] == 100.0
    assert summary["scores"]["metrics"]["win_rate"]["n"] == 3
    folder = tmp_path / "runs" / "mine-mine-vs-single-openai-single"
    assert assert_strict_files(folder) == 4  # and the candidate stage's manifest

    fake.behave("single", always=400)  # every baseline answer fails
    result = run("eval", *args, "--out", str(tmp_path / "runs2"))
    one_line_error(result, "no item of the candidate (mine) was judged", code=1)
    assert "item 'q0': no baseline answer" in result.stderr
    summary = strict(result.stdout)
    sides = {s["role"]: s["counts"] for s in summary["topologies"]}
    assert (sides["candidate"]["judged"], sides["candidate"]["unjudged"]) == (0, 4)
    assert (sides["baseline"]["judged"], sides["baseline"]["failed"]) == (0, 4)
    assert assert_strict_files(tmp_path / "runs2") == 4


@pytest.mark.slow
def test_an_eval_folder_is_keyed_by_its_settings(fake: FakeOpenAI, tmp_path: Path) -> None:
    """A rerun with another judge, another topology or a smaller --limit is refused in one line
    naming the difference, the first run's summary intact; a larger --limit resumes it; the same
    judge reads its judgments back; --name gives the other judge a folder of its own."""
    fake.behave("cand")
    fake.behave("j1", reply=_verdict_for_candidate)
    fake.behave("j2", reply=_verdict_for_candidate)
    data = tmp_path / "mine.jsonl"
    rows = [{"id": f"w{k}", "prompt": f"win {k}", "baseline": "b"} for k in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = tmp_path / "runs"
    common = (str(data), "--model", "openai:cand", "--out", str(runs), "--resamples", "200")
    first = run("eval", *common, "--judge", "openai:j1", "--limit", "3", "--json")
    assert first.returncode == 0, first.stderr
    folder = runs / "mine-single-openai-cand"
    summary_text = (folder / "summary.json").read_text()
    assert strict(summary_text)["items"] == 3
    asked = len(fake.requests)

    one_line_error(
        run("eval", *common, "--judge", "openai:j2", "--limit", "3"),
        f"{str(folder)!r} holds an eval made with other settings "
        "(judge: openai:j1 in the folder, openai:j2 now)",
    )
    one_line_error(
        run("eval", *common, "--judge", "openai:j1", "--limit", "2"),
        "items: 3 in the folder, 2 now",
    )
    other = run(
        "eval", str(data), "--model", "openai:other", "--name", "mine-single-openai-cand",
        "--out", str(runs), "--judge", "openai:j1", "--limit", "3",
    )  # fmt: skip
    one_line_error(other, "candidate: openai:cand in the folder, openai:other now")
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"id": "g", "prompt": "1+1", "gold": "2"}) + "\n")
    one_line_error(
        run("eval", str(gold), "--model", "openai:cand", "--name", "mine-single-openai-cand",
            "--out", str(runs)),
        "benchmark: 'mine' in the folder, 'gold' now",
    )  # fmt: skip
    assert len(fake.requests) == asked  # refused before any call
    assert (folder / "summary.json").read_text() == summary_text  # the first run's, intact

    # the same judge and a larger --limit: resumed, only the new item is answered and judged
    grown = run("eval", *common, "--judge", "openai:j1", "--limit", "4", "--json")
    assert grown.returncode == 0, grown.stderr
    new = fake.requests[asked:]
    assert sorted(r.model for r in new) == ["cand", "j1", "j1"]
    assert strict(grown.stdout)["items"] == 4
    assert strict(grown.stdout)["judge_usage"]["cached"] == 6

    # another judge in a folder of its own; the first folder is left as it was
    theirs = run(
        "eval", *common, "--judge", "openai:j2", "--limit", "4", "--name", "by-j2", "--json"
    )
    assert theirs.returncode == 0, theirs.stderr
    assert strict(theirs.stdout)["judge"] == "openai:j2"
    assert len(fake.requests_for("j2")) == 8
    assert strict((folder / "summary.json").read_text())["judge"] == "openai:j1"
    assert strict((runs / "by-j2" / "manifest.json").read_text())["judge"] == {"model": "openai:j2"}


@pytest.mark.slow
def test_a_changed_topology_is_named_where_it_differs(
    fake: FakeOpenAI, tmp_path: Path, topology_file: Path
) -> None:
    fake.behave("agg", reply=lambda body, n, c: "#### 18")
    args = ("gsm8k", "--topology", str(topology_file), "--limit", "1", "--out", str(tmp_path))
    assert run("eval", *args).returncode == 0
    changed = topology_file.read_text().replace("{model: 'openai:c'}", "{model: 'openai:d'}")
    topology_file.write_text(changed)
    one_line_error(
        run("eval", *args),
        "candidate topology 'mine': layers[1].proposers[0].model: 'openai:c' in the "
        "folder, 'openai:d' now",
    )


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["gsm8k", "gold.jsonl"])
def test_bad_judge_options_on_a_gold_set_are_refused(
    fake: FakeOpenAI, tmp_path: Path, dataset: str
) -> None:
    """Two judges, a judge without a provider, a missing judge topology or preset: one line,
    exit 2, before any call, as on a judged set; a valid judge is refused too (unused)."""
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"prompt": "1+1", "gold": "2"}) + "\n")
    name = str(gold) if dataset.endswith(".jsonl") else dataset
    out = tmp_path / "runs"
    common = (name, "--model", "openai:x", "--out", str(out))
    one_line_error(
        run("eval", *common, "--judge", "openai:j", "--judge-preset", "moa"),
        "give one of --judge, --judge-preset or --judge-topology",
    )
    one_line_error(
        run("eval", *common, "--judge", "moa"),
        "--judge 'moa': model must look like \"provider:model\"",
    )
    one_line_error(
        run("eval", *common, "--judge-topology", str(tmp_path / "none.yaml")),
        "cannot read topology file",
    )
    one_line_error(run("eval", *common, "--judge-preset", "nope"), "unknown preset 'nope'")
    one_line_error(
        run("eval", *common, "--judge", "openai:j"),
        "is scored by exact match against its gold answers, not by a judge: drop --judge",
    )
    assert not fake.requests and not out.exists()
