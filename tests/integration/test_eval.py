"""`moa eval` and `moa report` end to end: answers and judge through the fake server, the judge's
verdicts scripted by what its prompt shows."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import MOA, one_line_error
from tests.conftest import run_moa as run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _user_text(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content")) for m in body["messages"] if m["role"] == "user")


def _solver(body: dict[str, Any], number: int, choice: int) -> str:
    """Right on GSM8K's first item (Janet's ducks, 18), wrong elsewhere."""
    return "She makes 9 * 2 = 18 dollars.\n#### 18" if "Janet" in _user_text(body) else "#### 0"


def _pairwise_judge(body: dict[str, Any], number: int, choice: int) -> str:
    """Strongly prefers the candidate ("Answer ... from openai:cand") on "win" questions, ties on
    "tie", and always prefers whichever answer comes first on "biased" ones."""
    prompt = _user_text(body)
    question = re.search(r"<request>\n(.*?)\n</request>", prompt, re.S)
    first = re.search(r"<answer_of_assistant_A>\n(.*?)\n</answer_of_assistant_A>", prompt, re.S)
    assert question and first
    if "tie" in question.group(1):
        return "Both are fine. [[A=B]]"
    if "biased" in question.group(1):
        return "The first one. [[A>B]]"
    candidate_first = "from cand" in first.group(1)
    return "Verdict: " + ("[[A>>B]]" if candidate_first else "[[B>>A]]")


def _eval(*args: str) -> dict[str, Any]:
    result = run("eval", *args, "--json", "--resamples", "200")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
def test_gsm8k_exact_match_and_resume_without_calls(fake: FakeOpenAI, tmp_path: Path) -> None:
    fake.behave("solver", reply=_solver)
    args = ("gsm8k", "--model", "openai:solver", "--limit", "3", "--out", str(tmp_path))
    summary = _eval(*args)
    accuracy = summary["scores"]["metrics"]["accuracy"]
    assert accuracy["value"] == pytest.approx(100 / 3) and accuracy["n"] == 3
    assert summary["topologies"][0]["cost"]["calls_per_item"] == 1.0
    assert len(fake.requests_for("solver")) == 3
    items = [
        json.loads(x) for x in (tmp_path / "gsm8k-single-openai-solver" / "items.jsonl").open()
    ]
    assert [i["score"] for i in items] == [1.0, 0.0, 0.0]
    # again: everything is read back, nothing is asked twice, the score is the same
    again = _eval(*args)
    assert len(fake.requests_for("solver")) == 3
    assert again["scores"] == summary["scores"]
    # what the answers cost is reported as they were made, not as free cache hits
    assert again["topologies"] == summary["topologies"]


@pytest.mark.slow
def test_pairwise_with_swaps_ties_and_position_bias(fake: FakeOpenAI, tmp_path: Path) -> None:
    fake.behave("cand")
    fake.behave("judge", reply=_pairwise_judge)
    data = tmp_path / "mine.jsonl"
    rows = [
        {"id": "w1", "prompt": "win one", "baseline": "a short baseline"},
        {"id": "w2", "prompt": "win two", "baseline": "another baseline"},
        {"id": "t", "prompt": "a tie", "baseline": "equal"},
        {"id": "b", "prompt": "biased", "baseline": "first or second"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = (
        str(data),
        "--model",
        "openai:cand",
        "--judge",
        "openai:judge",
        "--out",
        str(tmp_path / "runs"),
    )
    summary = _eval(*args)
    assert len(fake.requests_for("judge")) == 8  # two games per pair, positions swapped
    firsts = [
        "from cand"
        in re.search(r"<answer_of_assistant_A>\n(.*?)\n<", _user_text(r.body), re.S).group(1)  # type: ignore[union-attr]
        for r in fake.requests_for("judge")
    ]
    assert sorted(firsts) == [False] * 4 + [True] * 4
    items = {
        i["id"]: i
        for i in map(
            json.loads, (tmp_path / "runs" / "mine-single-openai-cand" / "items.jsonl").open()
        )
    }
    assert items["w1"]["score"] == 1.0 and items["w1"]["consistent"] is True
    assert items["w1"]["weight"] == 6.0  # two strong verdicts
    assert items["t"]["score"] == 0.5 and items["t"]["consistent"] is True
    assert items["b"]["score"] == 0.5 and items["b"]["consistent"] is False
    metrics = summary["scores"]["metrics"]
    assert metrics["win_rate"]["value"] == pytest.approx(75.0)
    # weighted: (6*1 + 6*1 + 2*0.5 + 2*0.5) / 16
    assert metrics["weighted_score"]["value"] == pytest.approx(100 * 14 / 16)
    assert summary["scores"]["order_agreement"] == 0.75
    judging = summary["judge_usage"]
    assert (judging["judgments"], judging["cached"], judging["requests"]) == (8, 0, 8)
    assert judging["calls"] == 8 and judging["prompt_tokens"] > 0
    # rescoring reads every judgment back, and reports what they cost when made
    again = _eval(*args)
    assert len(fake.requests_for("judge")) == 8 and len(fake.requests_for("cand")) == 4
    rejudged = again["judge_usage"]
    assert (rejudged["judgments"], rejudged["cached"], rejudged["requests"]) == (8, 8, 0)
    assert {k: rejudged[k] for k in ("calls", "prompt_tokens", "completion_tokens")} == {
        k: judging[k] for k in ("calls", "prompt_tokens", "completion_tokens")
    }
    assert again["scores"] == summary["scores"]


def _grader(body: dict[str, Any], number: int, choice: int) -> str:
    prompt = _user_text(body)
    return "Solid. [[5]]" if "turn=2" in prompt else "Good start. [[8]]"


@pytest.mark.slow
def test_mt_bench_two_turns_in_one_conversation(fake: FakeOpenAI, tmp_path: Path) -> None:
    fake.behave("chat")
    fake.behave("judge", reply=_grader)
    summary = _eval(
        "mt-bench",
        "--model",
        "openai:chat",
        "--judge",
        "openai:judge",
        "--limit",
        "2",
        "--out",
        str(tmp_path),
    )
    chats = fake.requests_for("chat")
    assert len(chats) == 4  # 2 items x 2 turns
    second = [r for r in chats if len(r.messages) == 3]
    assert len(second) == 2
    for request in second:
        roles = [m["role"] for m in request.messages]
        assert roles == ["user", "assistant", "user"]
        assert request.messages[1]["content"].startswith("Answer ")  # its own first answer
    assert len(fake.requests_for("judge")) == 4
    metrics = summary["scores"]["metrics"]
    assert metrics["turn_1"]["value"] == 8.0 and metrics["turn_2"]["value"] == 5.0
    assert metrics["mean_grade"]["value"] == 6.5


@pytest.mark.slow
def test_report_from_eval_runs(
    fake: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "openai:solver: {input_per_mtok: 1.0, output_per_mtok: 2.0}\n"
        "openai:other: {input_per_mtok: 0.1, output_per_mtok: 0.2}\n"
    )
    monkeypatch.setenv("MOA_PRICES", str(prices))
    fake.behave("solver", reply=_solver)
    fake.behave("other")
    runs = tmp_path / "runs"
    for model in ("solver", "other"):
        _eval("gsm8k", "--model", f"openai:{model}", "--limit", "2", "--out", str(runs))
    result = run("report", str(runs), "-o", str(tmp_path / "report.md"))
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "report.md").read_text()
    assert "single openai:solver (candidate)" in text and "50.0 [" in text
    pngs = sorted(tmp_path.glob("report-*.png"))
    assert [p.name for p in pngs] == ["report-gsm8k-cost.png", "report-gsm8k-latency.png"]
    assert all(p.read_bytes().startswith(PNG_MAGIC) and p.stat().st_size > 5000 for p in pngs)


@pytest.mark.slow
def test_bad_input_is_one_line(
    fake: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = ("--out", str(tmp_path))
    one_line_error(run("eval", "gsm9k", "--model", "openai:x", *out), "unknown benchmark 'gsm9k'")
    one_line_error(
        run("eval", "gsm8k", "--model", "openai:x", "--limit", "0", *out),
        "--limit must be at least 1",
    )
    one_line_error(run("eval", "alpaca-eval", "--model", "openai:x", *out), "give --judge")
    gold = tmp_path / "gold.jsonl"
    gold.write_text('{"prompt": "1+1", "gold": "2"}\n{"prompt": "2+2"}\n')
    one_line_error(
        run("eval", str(gold), "--model", "openai:x", *out), "gold.jsonl line 2: no 'gold'"
    )
    one_line_error(run("eval", "gsm8k", *out), "give --preset, --topology or --model")
    monkeypatch.delenv("TOGETHER_API_KEY")
    one_line_error(
        run("eval", "mt-bench", "--model", "openai:x", "--judge", "together:big", *out),
        "TOGETHER_API_KEY is not set",
    )
    one_line_error(run("report", str(tmp_path / "none")), "is not a folder of eval runs")
    one_line_error(
        run("report", str(tmp_path), "--objective", "speed"), "unknown objective 'speed'"
    )
    assert not fake.requests


@pytest.mark.slow
def test_topology_eval_runs_on_the_relabel_runner_and_resumes(
    fake: FakeOpenAI, tmp_path: Path, topology_file: Path
) -> None:
    """A topology's answers come from the batch runner (one relabel run per side and turn);
    A vs B on the same items, scored by gold and paired; a rerun makes no call."""
    fake.behave("agg", reply=_solver)  # the MoA answers right on Janet's ducks
    fake.behave("single", reply=lambda body, n, c: "#### 0")
    args = (
        "gsm8k",
        "--topology",
        str(topology_file),
        "--baseline-model",
        "openai:single",
        "--limit",
        "2",
        "--out",
        str(tmp_path),
    )
    summary = _eval(*args)
    calls = len(fake.requests)
    assert len(fake.requests_for("agg")) == 2 and len(fake.requests_for("single")) == 2
    assert calls == 2 * 4 + 2  # 3 proposers + aggregator per item, one call per item
    folder = tmp_path / "gsm8k-mine-vs-single-openai-single"
    assert (folder / "candidate-turn1" / "ledger.sqlite").is_file()
    sides = {s["role"]: s for s in summary["topologies"]}
    assert (
        sides["candidate"]["name"] == "mine" and sides["candidate"]["cost"]["calls_per_item"] == 4
    )
    assert summary["scores"]["metrics"]["accuracy"]["value"] == 50.0
    assert summary["scores"]["paired"]["baseline"]["value"] == 0.0
    assert summary["scores"]["paired"]["difference"]["value"] == 50.0
    again = _eval(*args)
    assert len(fake.requests) == calls
    assert again["scores"] == summary["scores"]


@pytest.mark.slow
def test_an_interrupted_eval_resumes_without_repeating_a_finished_call(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    """kill -9 mid-judging, run again: every generation and judgment that had finished is read
    back; only what had not finished is asked (again)."""
    fake.behave("cand", latency_s=0.2)
    fake.behave("judge", reply=_pairwise_judge, latency_s=0.5)
    data = tmp_path / "mine.jsonl"
    rows = [{"id": f"w{k}", "prompt": f"win {k}", "baseline": "b"} for k in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [
        "eval",
        str(data),
        "--model",
        "openai:cand",
        "--judge",
        "openai:judge",
        "--concurrency",
        "2",
        "--out",
        str(tmp_path / "runs"),
        "--json",
    ]
    process = subprocess.Popen([*MOA, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while sum(r.status == 200 for r in fake.requests_for("judge")) < 5:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    killed = time.perf_counter()
    process.kill()
    process.communicate()
    # answered by the server well before the kill (one answered just then may not have reached
    # the client: that one may be asked again)
    finished_before = {
        json.dumps(r.body["messages"])
        for r in fake.requests
        if r.status == 200 and r.finished < killed - 0.3
    }
    assert 0 < len(finished_before) < 8 + 16
    cut = len(fake.requests)
    result = run(*args)
    assert result.returncode == 0, result.stderr
    asked_again = [json.dumps(r.body["messages"]) for r in fake.requests[cut:]]
    assert not finished_before & set(asked_again)
    assert len(set(asked_again)) == len(asked_again)
    answered = {json.dumps(r.body["messages"]) for r in fake.requests if r.status == 200}
    assert len(answered) == 8 + 16  # every answer and both games of every pair
    assert json.loads(result.stdout)["scores"]["metrics"]["win_rate"]["value"] == 100.0


def _panel_aggregator(body: dict[str, Any], number: int, choice: int) -> str:
    """The panel's aggregator: it sees the judge's instructions, then the panel's judgments
    in the last message, and repeats the verdict the panel gave (none if it was shown none)."""
    system = "\n".join(str(m["content"]) for m in body["messages"] if m["role"] == "system")
    assert "[[A>>B]]  Assistant A is much better" in system  # the judge's own instructions
    last = str(body["messages"][-1]["content"])
    given = re.findall(r"\d+\. .*?(\[\[[AB=<> ]+\]\])", last)
    if not given or len(set(given)) != 1:
        return "The panel disagrees; no verdict."
    return f"The panel agrees. {given[0]}"


@pytest.mark.slow
def test_a_topology_judge_writes_the_verdicts_and_is_read_back(
    fake: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--judge-topology: a panel of two judges (one sampled) whose aggregator writes each
    verdict; the same swaps, ties and position bias as one judge; the judgments' usage and cost
    in the summary and the report; a rerun makes no judge call and reports the same cost."""
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "openai:j1: {input_per_mtok: 1.0, output_per_mtok: 2.0}\n"
        "openai:j2: {input_per_mtok: 1.0, output_per_mtok: 2.0}\n"
        "openai:jagg: {input_per_mtok: 3.0, output_per_mtok: 6.0}\n"
    )
    monkeypatch.setenv("MOA_PRICES", str(prices))
    fake.behave("cand")
    fake.behave("j1", reply=_pairwise_judge)
    fake.behave("j2", reply=_pairwise_judge)
    fake.behave("jagg", reply=_panel_aggregator)
    panel = tmp_path / "panel.yaml"
    panel.write_text(
        "name: panel\nlayers:\n"
        "  - proposers: [{model: 'openai:j1', temperature: 0.7}, {model: 'openai:j2'}]\n"
        "aggregator: {model: 'openai:jagg', temperature: 0}\n"
    )
    data = tmp_path / "mine.jsonl"
    rows = [
        {"id": "w1", "prompt": "win one", "baseline": "a short baseline"},
        {"id": "t", "prompt": "a tie", "baseline": "equal"},
        {"id": "b", "prompt": "biased", "baseline": "first or second"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = tmp_path / "runs"
    args = (str(data), "--model", "openai:cand", "--judge-topology", str(panel), "--out", str(runs))
    summary = _eval(*args)
    judge_models = ("j1", "j2", "jagg")
    assert [len(fake.requests_for(m)) for m in judge_models] == [6, 6, 6]  # 2 games x 3 pairs
    firsts = [
        "from cand"
        in re.search(r"<answer_of_assistant_A>\n(.*?)\n<", _user_text(r.body), re.S).group(1)  # type: ignore[union-attr]
        for r in fake.requests_for("jagg")
    ]
    assert sorted(firsts) == [False] * 3 + [True] * 3  # both orders, positions swapped
    items = {
        i["id"]: i
        for i in map(json.loads, (runs / "mine-single-openai-cand" / "items.jsonl").open())
    }
    assert items["w1"]["score"] == 1.0 and items["w1"]["weight"] == 6.0  # two strong verdicts
    assert items["w1"]["consistent"] is True
    assert items["t"]["score"] == 0.5 and items["t"]["consistent"] is True
    assert items["b"]["score"] == 0.5 and items["b"]["consistent"] is False
    assert summary["scores"]["metrics"]["win_rate"]["value"] == pytest.approx(100 * 2 / 3)
    assert summary["judge"] == "panel (topology)"
    manifest = json.loads((runs / "mine-single-openai-cand" / "manifest.json").read_text())
    assert manifest["judge"]["topology"]["aggregator"]["model"] == "openai:jagg"
    judging = summary["judge_usage"]
    assert (judging["judgments"], judging["cached"], judging["failed"]) == (6, 0, 0)
    assert judging["calls"] == judging["requests"] == 18  # 3 calls per judgment
    assert judging["cost_usd"] > 0 and judging["latency_p50_s"] > 0
    before = len(fake.requests)
    again = _eval(*args)
    assert len(fake.requests) == before  # no judge call, no generation
    rejudged = again["judge_usage"]
    assert (rejudged["cached"], rejudged["requests"]) == (6, 0)
    for key in ("calls", "prompt_tokens", "completion_tokens", "cost_usd", "latency_p50_s"):
        assert rejudged[key] == judging[key], key
    assert again["scores"] == summary["scores"]
    result = run("report", str(runs), "-o", str(tmp_path / "report.md"))
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| mine-single"))
    assert "| panel (topology) | 6 | 6 | 0 | 6.0 |" in row  # 18 calls over 3 items
    judged = json.loads((tmp_path / "report.json").read_text())["rows"][0]["judge_usage"]
    assert judged["cost_usd"] == judging["cost_usd"]


@pytest.mark.slow
def test_bad_judge_is_one_line(
    fake: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = ("mt-bench", "--model", "openai:x", "--out", str(tmp_path))
    one_line_error(
        run("eval", *out, "--judge-topology", str(tmp_path / "none.yaml")),
        "cannot read topology file",
    )
    one_line_error(run("eval", *out, "--judge-preset", "nope"), "unknown preset 'nope'")
    one_line_error(
        run("eval", *out, "--judge", "moa"),
        "--judge 'moa': model must look like \"provider:model\"",
    )
    one_line_error(
        run("eval", *out, "--judge", "openai:j", "--judge-preset", "moa"),
        "give one of --judge, --judge-preset or --judge-topology",
    )
    monkeypatch.delenv("TOGETHER_API_KEY")
    one_line_error(run("eval", *out, "--judge-preset", "moa"), "TOGETHER_API_KEY is not set")
    assert not fake.requests and not list(tmp_path.iterdir())


def _grade_aggregator(body: dict[str, Any], number: int, choice: int) -> str:
    """Settles on the lowest grade the panel gave (none if it was shown none)."""
    last = str(body["messages"][-1]["content"])  # the panel's grades come last
    grades = [int(g) for g in re.findall(r"\d+\. .*?\[\[(\d+)\]\]", last)]
    return f"The panel's lowest grade. [[{min(grades)}]]" if grades else "No grade."


@pytest.mark.slow
def test_a_topology_judge_grades_both_turns(fake: FakeOpenAI, tmp_path: Path) -> None:
    """MT-Bench graded by a panel: the aggregator's grade counts, per turn."""
    fake.behave("chat")
    fake.behave("j1", reply=_grader)  # 8, then 5
    fake.behave("j2", reply=lambda body, n, c: "Fine. [[7]]")
    fake.behave("jagg", reply=_grade_aggregator)
    panel = tmp_path / "panel.yaml"
    panel.write_text(
        "name: graders\nlayers:\n  - proposers: [{model: 'openai:j1'}, {model: 'openai:j2'}]\n"
        "aggregator: {model: 'openai:jagg'}\n"
    )
    args = ("mt-bench", "--model", "openai:chat", "--judge-topology", str(panel))
    summary = _eval(*args, "--limit", "1", "--out", str(tmp_path))
    assert len(fake.requests_for("jagg")) == 2  # one grade per turn
    metrics = summary["scores"]["metrics"]
    assert metrics["turn_1"]["value"] == 7.0 and metrics["turn_2"]["value"] == 5.0
    assert summary["judge_usage"]["calls"] == 6


@pytest.mark.slow
def test_an_interrupted_topology_judgment_resumes_from_its_finished_calls(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    """kill -9 while the panel's aggregator is still writing: rerun, and no panel call that had
    finished (sampled ones included) is asked again; every judgment is then made."""
    fake.behave("cand")
    fake.behave("j1", reply=_pairwise_judge)
    fake.behave("j2", reply=_pairwise_judge)
    fake.behave("jagg", reply=_panel_aggregator, latency_s=30.0)
    panel = tmp_path / "panel.yaml"
    panel.write_text(
        "name: panel\nlayers:\n"
        "  - proposers: [{model: 'openai:j1', temperature: 0.9}, {model: 'openai:j2'}]\n"
        "aggregator: {model: 'openai:jagg', temperature: 0}\n"
    )
    data = tmp_path / "mine.jsonl"
    rows = [{"id": f"w{k}", "prompt": f"win {k}", "baseline": "b"} for k in range(2)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["eval", str(data), "--model", "openai:cand", "--judge-topology", str(panel)]
    args += ["--out", str(tmp_path / "runs"), "--json"]
    process = subprocess.Popen([*MOA, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(fake.requests_for("jagg")) < 4:  # every panel has judged; the aggregators wait
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)
    process.kill()
    process.communicate()
    panel_calls = [r for r in fake.requests if r.body["model"] in ("j1", "j2")]
    assert len(panel_calls) == 8 and all(r.status == 200 for r in panel_calls)
    assert all(r.status != 200 for r in fake.requests_for("jagg"))  # none had answered
    fake.behave("jagg", reply=_panel_aggregator, latency_s=0.0)
    cut = len(fake.requests)
    result = run(*args)
    assert result.returncode == 0, result.stderr
    again = [r.body["model"] for r in fake.requests[cut:]]
    assert sorted(again) == ["jagg"] * 4  # only the aggregators' calls, once each
    summary = json.loads(result.stdout)
    assert summary["scores"]["metrics"]["win_rate"]["value"] == 100.0
    assert summary["judge_usage"]["requests"] == 4


@pytest.mark.slow
def test_rate_limit_holds_answers_and_judgments(fake: FakeOpenAI, tmp_path: Path) -> None:
    """--rpm 600 gates every request of the eval, the judge's too, with one bucket."""
    fake.behave("cand")
    fake.behave("judge", reply=_pairwise_judge)
    data = tmp_path / "mine.jsonl"
    rows = [{"id": f"w{k}", "prompt": f"win {k}", "baseline": "b"} for k in range(10)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = (str(data), "--model", "openai:cand", "--judge", "openai:judge", "--rpm", "600")
    summary = _eval(*args, "--concurrency", "16", "--out", str(tmp_path / "runs"))
    assert summary["scores"]["metrics"]["win_rate"]["value"] == 100.0
    starts = sorted(r.started for r in fake.requests)
    assert len(starts) == 30  # 10 answers, 20 judgments
    # as in the relabel runner's test: a bucket of 5 filling at 590/min admits at most 5 +
    # 590/60 in any second, and 5 more may arrive in it after being held up on their way
    for k, t in enumerate(starts):
        inside = sum(1 for s in starts[k:] if s - t < 1.0)
        assert inside <= 19, (k, inside)
    assert starts[-1] - starts[0] >= 2.0  # 25 requests after the first 5, at ~9.8/s
    one_line_error(run("eval", *args, "--rpm", "x=0", "--out", str(tmp_path)), "--rpm")


@pytest.mark.slow
def test_a_jury_votes_on_the_verdict_without_an_aggregator_call(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    """A topology judge whose aggregator votes (mode: vote on the verdict): the majority's
    verdict counts, and a judgment costs only the jury's calls."""
    fake.behave("cand")
    fake.behave("j1", reply=_pairwise_judge)
    fake.behave("j2", reply=_pairwise_judge)
    # the first juror always prefers the first answer shown: outvoted, not taken as the first
    fake.behave("j3", reply=lambda body, n, c: "Whichever is first. [[A>B]]")
    jury = tmp_path / "jury.yaml"
    jury.write_text(
        "name: jury\nlayers:\n"
        "  - proposers: [{model: 'openai:j3'}, {model: 'openai:j1'}, {model: 'openai:j2'}]\n"
        "aggregator: {mode: vote, extract: regex, pattern: '\\[\\[([AB=<>]+)\\]\\]'}\n"
    )
    data = tmp_path / "mine.jsonl"
    data.write_text(json.dumps({"id": "w1", "prompt": "win one", "baseline": "b"}) + "\n")
    runs = tmp_path / "runs"
    summary = _eval(
        str(data), "--model", "openai:cand", "--judge-topology", str(jury), "--out", str(runs)
    )
    assert [len(fake.requests_for(m)) for m in ("j1", "j2", "j3")] == [2, 2, 2]
    item = json.loads((runs / "mine-single-openai-cand" / "items.jsonl").read_text())
    assert item["score"] == 1.0 and item["consistent"] is True and item["weight"] == 6.0
    assert summary["judge_usage"]["calls"] == 6


@pytest.mark.slow
def test_evals_sharing_a_calls_cache_pay_for_shared_proposals_once(
    fake: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two topologies with the same proposers, evaluated with one --calls-cache: the second
    eval sends only its own aggregator's calls, but its cost is its own (the same as when run
    alone), its spend lower; reasoning-gym items at a --task-config level. The report names
    the front and the recommended side, and draws readable plots."""
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "".join(
            f"openai:{m}: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}\n"
            for m in ("p1", "p2", "agg1", "agg2")
        )
    )
    monkeypatch.setenv("MOA_PRICES", str(prices))
    fake.behave("p1")
    fake.behave("p2")
    fake.behave("agg1")
    fake.behave("agg2")
    proposers = "layers:\n  - proposers: [{model: 'openai:p1'}, {model: 'openai:p2'}]\n"
    for name, aggregator in (("one", "agg1"), ("two", "agg2")):
        (tmp_path / f"{name}.yaml").write_text(
            f"name: {name}\n{proposers}aggregator: {{model: 'openai:{aggregator}'}}\n"
        )
    config = '{"max_terms": 2, "max_digits": 1, "allow_parentheses": false, "seed": 3}'
    base: tuple[str, ...] = ("--limit", "3", "--task-config", config)
    alone = _eval(
        "reasoning-gym",
        "--topology",
        str(tmp_path / "two.yaml"),
        *base,
        "--out",
        str(tmp_path / "alone"),
    )["topologies"][0]["cost"]
    assert alone["calls_per_item"] == 3.0 and alone["usd_per_item"] > 0
    assert alone["spent_usd_per_item"] == pytest.approx(alone["usd_per_item"])
    fake.requests.clear()
    common = (*base, "--out", str(tmp_path / "runs"))
    common += ("--calls-cache", str(tmp_path / "shared.sqlite"))
    first = _eval("reasoning-gym", "--topology", str(tmp_path / "one.yaml"), *common)
    assert len(fake.requests) == 3 * 3
    assert "seed 3" in first["version"] and '"max_digits": 1' in first["version"]
    questions = [_user_text(r.body) for r in fake.requests_for("agg1")]
    assert all(re.match(r"Calculate \d+ [-+*/] \d+\.", q) for q in questions), questions
    second = _eval("reasoning-gym", "--topology", str(tmp_path / "two.yaml"), *common)
    assert len(fake.requests) == 3 * 3 + 3  # only agg2's calls are new
    assert len(fake.requests_for("agg2")) == 3
    cost = second["topologies"][0]["cost"]
    # its own cost: the cached proposer calls counted and priced as made, as when run alone
    assert cost["calls_per_item"] == 3.0 and cost["cached_calls_per_item"] == 2.0
    assert cost["usd_per_item"] == pytest.approx(alone["usd_per_item"])
    assert cost["tokens_per_item"] == alone["tokens_per_item"]
    assert cost["unknown_cost_items"] == 0
    # what this run paid: only the aggregator
    assert 0 < cost["spent_usd_per_item"] < cost["usd_per_item"]
    items = next((tmp_path / "runs").glob("*two*/items.jsonl"))
    item = json.loads(items.open().readline())
    assert item["generation"]["spent_usd"] < item["generation"]["cost_usd"]
    assert (tmp_path / "shared.sqlite").is_file()
    assert not (tmp_path / "runs" / "two" / "calls.sqlite").exists()

    report = tmp_path / "report.md"
    result = run("report", str(tmp_path / "runs"), "-o", str(report))
    assert result.returncode == 0, result.stderr
    text = report.read_text()
    assert "**Pareto front**" in text and "**Recommended**: " in text
    decision = json.loads(report.with_suffix(".json").read_text())["decisions"][0]
    assert decision["objective"] == "quality" and decision["front"]
    recommended = decision["recommended"]
    assert recommended["topology"] in ("one", "two")
    assert f"**Recommended**: {recommended['topology']}, " in text
    for png in sorted(tmp_path.glob("report-*.png")):
        assert_readable_plot(png)


@pytest.mark.slow
def test_a_cached_call_of_unknown_usage_makes_the_own_cost_unknown(
    fake: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call cache written before entries kept their usage: a call it serves is not $0, the
    side's own cost is unknown (and says so), what the run spent is still known."""
    import sqlite3

    from langgraph_moa.llm.call_cache import SqliteCallCache

    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "".join(
            f"openai:{m}: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}\n"
            for m in ("p1", "agg1", "agg2")
        )
    )
    monkeypatch.setenv("MOA_PRICES", str(prices))
    for model in ("p1", "agg1", "agg2"):
        fake.behave(model)
    for name, aggregator in (("one", "agg1"), ("two", "agg2")):
        (tmp_path / f"{name}.yaml").write_text(
            f"name: {name}\nlayers:\n  - proposers: [{{model: 'openai:p1'}}]\n"
            f"aggregator: {{model: 'openai:{aggregator}'}}\n"
        )
    shared = tmp_path / "shared.sqlite"
    common = (
        "gsm8k",
        "--limit",
        "2",
        "--out",
        str(tmp_path / "runs"),
        "--calls-cache",
        str(shared),
    )
    _eval(*common, "--topology", str(tmp_path / "one.yaml"))
    # make every entry look like an older cache's: no usage kept
    keys = sqlite3.connect(shared).execute("SELECT ns, key FROM cache").fetchall()
    cache = SqliteCallCache(str(shared))
    full = [(tuple(ns.split(",")), key) for ns, key in keys]
    found = cache.get(full)
    assert found and all(v.get("usages") for v in found.values())
    cache.set({k: ({**v, "usages": None}, None) for k, v in found.items()})
    cache.close()
    second = _eval(*common, "--topology", str(tmp_path / "two.yaml"))
    assert len(fake.requests_for("p1")) == 2  # served from the cache the second time
    cost = second["topologies"][0]["cost"]
    assert cost["usd_per_item"] is None and cost["unknown_cost_items"] == 2
    assert cost["spent_usd_per_item"] > 0  # the aggregator's calls
    report = tmp_path / "report.md"
    result = run("report", str(tmp_path / "runs"), "-o", str(report))
    assert result.returncode == 0, result.stderr
    assert "| unknown (2 items) |" in report.read_text()


def assert_readable_plot(path: Path) -> None:
    """A PNG of a sensible size whose axes hold something: many pixels of more than the
    background's colour, some of them the front's red or the dominated sides' gray."""
    import matplotlib.image

    assert path.read_bytes().startswith(PNG_MAGIC)
    image = matplotlib.image.imread(str(path))
    height, width = image.shape[:2]
    assert 300 <= height <= 1200 and 500 <= width <= 1600, (width, height)
    rgb = image[:, :, :3]
    ink = (rgb < 0.9).any(axis=2)  # not white
    assert ink.mean() > 0.01, "the plot is blank"
    red = (rgb[:, :, 0] > 0.7) & (rgb[:, :, 1] < 0.3) & (rgb[:, :, 2] < 0.3)
    assert red.sum() > 20, "no point on the Pareto front is drawn"


@pytest.mark.slow
def test_bad_task_config_is_one_line(fake: FakeOpenAI, tmp_path: Path) -> None:
    out = ("--model", "openai:x", "--out", str(tmp_path))
    one_line_error(
        run("eval", "reasoning-gym", "--task-config", "{max_digits: 1}", *out),
        "--task-config is not valid JSON",
    )
    one_line_error(
        run("eval", "reasoning-gym", "--task-config", "[1]", *out),
        "--task-config must be a JSON object",
    )
    one_line_error(
        run("eval", "gsm8k", "--task-config", '{"seed": 1}', *out),
        "--task-config applies to reasoning-gym tasks only",
    )
    assert not fake.requests
