"""`moa relabel` at a real terminal (a pty, 80 columns): the live progress line fits the width
whole, with exact counts (no ``None``, nothing negative, never a row behind at the end); Ctrl-C
(SIGINT to the process group, as a terminal sends it) stops the run, keeps the rows done and
says in one line how to go on, and the same command then finishes the run. Costs, printed and
written, are rounded (to the micro-dollar; $ to 4 decimals in text)."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from langgraph_moa.extras import has_extra
from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import run_moa
from tests.integration.test_relabel import ledger_rows, reply, rows, topology, write_jsonl
from tests.integration.test_terminal import Terminal

# the live line: relabel, an optional bar, finished/total, then the counts by status
PROGRESS = re.compile(
    r"^relabel (?:━+ )?(\d+)/(\d+) \| (\d+) done, (\d+) failed, (\d+) invalid, (\d+) skipped"
)


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for t in opened:
        t.close()


def screen_lines(raw: str) -> list[str]:
    """What the terminal showed, line by line: the live display redraws its line after a
    carriage return or a cursor move (escape codes already removed)."""
    return [part.rstrip() for part in re.split(r"[\r\n]", raw) if part.strip()]


@pytest.mark.slow
def test_progress_line_fits_80_columns_with_exact_counts(
    fake: FakeOpenAI, tmp_path: Path, terminals: list[Terminal]
) -> None:
    for model in ("a", "b", "agg"):
        fake.behave(model, reply=reply, latency_s=0.1)
    data = write_jsonl(
        tmp_path / "logs.jsonl", [*rows(14), "not json", {"messages": []}, *rows(2, start=14)]
    )
    topo = topology(tmp_path)
    out = tmp_path / "runs"
    base = ["relabel", str(data), "-t", str(topo), "--out", str(out)]
    first = run_moa(*base, "--limit", "4", "--quiet")  # 4 rows done: skipped on the rerun
    assert first.returncode == 0, first.stderr

    term = Terminal(*base, "--concurrency", "2", columns=80)
    terminals.append(term)
    assert term.wait(timeout=120) == 0, term.text
    lines = screen_lines(term.text)
    live = [line for line in lines if line.startswith("relabel ")]
    assert live, term.text
    assert "None" not in term.text
    finished_seen = []
    for line in live:
        assert len(line) <= 80, line
        match = PROGRESS.match(line)
        assert match, line
        finished, total, done, failed, invalid, skipped = map(int, match.groups())
        assert total == 18  # lines in the input
        assert finished == done + failed + invalid + skipped <= total, line
        finished_seen.append(finished)
    assert finished_seen == sorted(finished_seen)  # never goes back
    # the last drawing, as the run ended, counts every row: none behind
    last = PROGRESS.match(live[-1])
    assert last and last.groups() == ("18", "18", "12", "0", "2", "4"), live[-1]
    assert "$" in live[-1]  # the cost fits at 80 columns; less important parts make way
    # the report after the run
    assert any(line.startswith("run ") and "16 done" in line for line in lines), lines


@pytest.mark.slow
def test_ctrl_c_keeps_the_rows_done_and_says_how_to_go_on(
    fake: FakeOpenAI, tmp_path: Path, terminals: list[Terminal]
) -> None:
    for model in ("a", "b", "agg"):
        fake.behave(model, reply=reply, latency_s=0.4)
    data = write_jsonl(tmp_path / "logs.jsonl", rows(40))
    topo = topology(tmp_path)
    out = tmp_path / "runs"
    args = ["relabel", str(data), "-t", str(topo), "--out", str(out), "--concurrency", "2"]
    term = Terminal(*args, columns=80)
    terminals.append(term)
    run_dir = out / "mix-logs"
    term.expect("2 done", timeout=120)  # the live line says rows are done
    term.ctrl_c()
    assert term.wait(timeout=60) == 130, term.text
    kept = len([status for _, status in ledger_rows(run_dir) if status == "done"])
    assert 2 <= kept < 40
    (message,) = [line for line in screen_lines(term.text) if line.startswith("moa: ")]
    said = re.fullmatch(
        r"moa: error: interrupted; (\d+) rows are done and kept in (.+), (\d+) of them in this "
        r"session; to go on, rerun (.+)",
        message,
    )
    assert said, message
    assert int(said[1]) == kept and said[2] == str(run_dir)
    assert 0 < int(said[3]) <= kept  # a row whose record was being written counts in the run
    assert said[4] == shlex.join(["moa", *args])
    assert "Traceback" not in term.text
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["sessions"][-1]["stopped"] == "interrupted"

    # the same command goes on: only the rows not done run
    for model in ("a", "b", "agg"):
        fake.behave(model, reply=reply)
    again = run_moa(*args, "--json")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["session"]["skipped"] == kept and summary["totals"]["done"] == 40


LONG_FLOAT = re.compile(r"\d\.\d{7,}")  # 0.07126249999999999: a float's noise, not a cost


@pytest.mark.slow
def test_costs_are_written_and_printed_rounded(fake: FakeOpenAI, tmp_path: Path) -> None:
    for model in ("a", "b", "agg"):
        fake.behave(model, reply=reply)
    data = write_jsonl(tmp_path / "logs.jsonl", rows(7))
    topo = tmp_path / "priced.yaml"
    topo.write_text(
        topology(tmp_path)
        .read_text()
        .replace("1000, output_per_mtok: 1000", "0.15, output_per_mtok: 0.6")
    )
    out = tmp_path / "runs"
    args = ["relabel", str(data), "-t", str(topo), "--out", str(out)]
    done = run_moa(*args, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    for figures in (summary["session"], summary["totals"]):
        cost = figures["cost_usd"]
        assert cost > 0 and cost == round(cost, 6), cost
    assert not LONG_FLOAT.search(done.stdout) and not LONG_FLOAT.search(done.stderr)
    assert re.search(r"\$\d+\.\d{4} in all", done.stderr), done.stderr  # $ to 4 decimals
    run_dir = out / summary["name"]
    assert not LONG_FLOAT.search((run_dir / "manifest.json").read_text())
    estimate = run_moa(*args, "--estimate", "--json", "--name", "fresh")
    assert estimate.returncode == 0, estimate.stderr
    assert not LONG_FLOAT.search(estimate.stdout), estimate.stdout
    if has_extra("parquet"):
        import pyarrow.parquet as pq

        traces = tmp_path / "traces.parquet"
        exported = run_moa("export", str(run_dir), "--format", "traces", "-o", str(traces))
        assert exported.returncode == 0, exported.stderr
        costs = pq.read_table(traces).column("cost_usd").to_pylist()
        assert costs and all(c == round(c, 6) for c in costs), costs
