"""The live progress line of ``moa relabel`` laid out for a terminal's width, and costs as relabel
shows and writes them (the pty test is tests/integration/test_relabel_terminal.py)."""

from __future__ import annotations

import time

import pytest

from langgraph_moa.batch import SessionProgress, WorstCaseEstimate
from langgraph_moa.batch.feeding import round_usd
from langgraph_moa.cli.relabel import _line, fit_line

COUNTS = "183 done, 2 failed, 5 invalid, 10 skipped"


def tally(total: int | None = 298) -> SessionProgress:
    return SessionProgress(
        total=total,
        seen=203,
        done=183,
        failed=2,
        invalid=5,
        skipped=10,
        calls=549,
        cached_calls=12,
        tokens=1_234_567,
        cost_usd=0.07126249999999999,
        running=3,
        started=time.perf_counter() - 100,  # 100 s in: figures of a fixed width
    )


@pytest.mark.parametrize("width", [60, 70, 80, 100, 120, 160, 240])
def test_the_line_fits_and_never_cuts_the_counts(width: int) -> None:
    line = fit_line(tally(), width).plain
    assert len(line) <= width, line
    assert f"200/298 | {COUNTS}" in line  # finished = done + failed + invalid + skipped
    assert "…" not in line and "None" not in line


def test_wider_terminals_show_more_most_important_first() -> None:
    at = {w: fit_line(tally(), w).plain for w in (60, 70, 80, 100, 160, 240)}
    assert "$" not in at[60]
    assert "$0.0713" in at[70] and "━" not in at[70]
    assert "$0.0713" in at[80] and "ETA" not in at[80]
    assert at[80].startswith("relabel ━━━━━━━━━━ 200/298")  # a bar, at its narrowest
    assert "ETA 00:00:5" in at[100] and "rows/s" not in at[100]
    assert "1.85 rows/s" in at[160] and "549 calls (12 cached), 1234567 tokens" in at[160]
    assert "3 running" in at[240] and at[240].endswith(" | 00:01:40")
    assert "━" * 40 in at[240]


def test_a_terminal_too_narrow_still_gets_the_whole_counts() -> None:
    assert COUNTS in fit_line(tally(), 30).plain  # wrapped by the terminal, not cut


def test_unknown_total_and_the_start() -> None:
    line = fit_line(tally(total=None), 120).plain
    assert line.startswith("relabel 200 rows | ") and "None" not in line
    assert "━" not in line  # no bar without a total
    start = fit_line(SessionProgress(total=40), 80).plain
    assert start.startswith("relabel 0/40 | 0 done, 0 failed, 0 invalid, 0 skipped")


def test_costs_are_rounded_where_they_are_shown_and_written() -> None:
    assert round_usd(0.07126249999999999) == 0.071262 and round_usd(None) is None
    assert tally().as_dict()["cost_usd"] == 0.071262
    assert "$0.0713 " in _line(tally()) + " "
    assert WorstCaseEstimate(cost_usd=0.30000000000000004).as_dict()["cost_usd"] == 0.3
