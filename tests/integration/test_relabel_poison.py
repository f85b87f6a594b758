"""Poison input for `moa relabel`, `moa export` and `moa eval`, through the real CLI and the fake
upstream: each bad row is recorded against its file and line with a reason while the run
finishes (and a rerun calls nothing again); an answer that cannot be stored fails its row alone;
inputs that can never be read (a link to /dev/zero, a FIFO, a truncated Parquet file) and run
names that leave --out are one line; a real file-size cap (RLIMIT_FSIZE) hit mid-run stops the
run in one line, records no row as failed for it, and a plain rerun finishes every row; a budget
stop keeps the invalid rows it read; a damaged ledger is one line for export and relabel."""

from __future__ import annotations

import json
import os
import resource
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from langgraph_moa.batch import RelabelRun
from langgraph_moa.errors import MoAInputError
from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import MOA, one_line_error
from tests.conftest import run_moa as moa
from tests.integration.test_relabel import (
    ledger_rows,
    ok,
    reply,
    rows,
    topology,
    upstream,
    write_jsonl,
)

__all__ = ["upstream"]  # the fixture, shared with test_relabel


def relabel(data: Path, topo: Path, out: Path, *extra: str) -> dict[str, Any]:
    return ok(moa("relabel", str(data), "-t", str(topo), "--out", str(out), "--json", *extra))


def invalid_reasons(run: Path) -> dict[str, str]:
    with closing(sqlite3.connect(run / "ledger.sqlite")) as conn:
        return dict(conn.execute("SELECT row_where, reason FROM invalid"))


@pytest.mark.slow
def test_poison_rows_are_recorded_and_the_run_goes_on(upstream: FakeOpenAI, tmp_path: Path) -> None:
    good = rows(4)
    data = tmp_path / "poison.jsonl"
    with data.open("wb") as f:
        f.write(b"\xef\xbb\xbf" + json.dumps(good[0]).encode() + b"\n")  # a BOM: row 1 counts
        f.write(b'{"id": "big", "messages": [{"role": "user", "content": "q"}], "n": 1')
        f.write(b"0" * 5000 + b"}\n")
        f.write(json.dumps(good[1]).encode() + b"\n")
        f.write(rb'{"id": "sur", "messages": [{"role": "user", "content": "a \ud800 b"}]}' + b"\n")
        f.write(rb'{"id": "key", "messages": [{"role": "user", "content": "q"}], "\udc00": 1}')
        f.write(b"\n")
        f.write(b'{"id": "inf", "messages": [{"role": "user", "content": "q"}], "x": 1e999}\n')
        f.write(b'{"id": "nan", "messages": [{"role": "user", "content": "q"}], "x": NaN}\n')
        f.write(b'{"id": "long", "messages": "' + b"x" * (64 * 1024 * 1024 + 1) + b'"}\n')
        f.write(json.dumps(good[2]).encode() + b"\n")
        f.write(b'{"messages": [{"role": "user", "content": "q"}], "deep": ')
        f.write(b"[" * 100_000 + b"]" * 100_000 + b"}\n")
        f.write(json.dumps(good[3]).encode())  # a last line without its newline
    topo = topology(tmp_path)
    out = tmp_path / "runs"
    summary = relabel(data, topo, out)
    assert summary["totals"]["done"] == 4 and summary["totals"]["failed"] == 0
    assert summary["totals"]["invalid"] == 7 and summary["session"]["invalid"] == 7
    assert sorted(r for r, _ in ledger_rows(out / "mix-poison")) == ["r0", "r1", "r2", "r3"]
    assert len(upstream.requests) == 12
    reasons = invalid_reasons(out / "mix-poison")
    assert reasons == {
        "poison.jsonl:2": "not JSON: an integer of more than 4300 digits",
        "poison.jsonl:4": "a string holds a lone surrogate (\\ud800): not Unicode text",
        "poison.jsonl:5": "a string holds a lone surrogate (\\udc00): not Unicode text",
        "poison.jsonl:6": "not JSON: the number 1e999 is out of range",
        "poison.jsonl:7": "not JSON: NaN is not a JSON number",
        "poison.jsonl:8": "the line is longer than 64 MiB",
        "poison.jsonl:10": "not JSON: nested too deeply",
    }
    again = relabel(data, topo, out)
    assert len(upstream.requests) == 12  # nothing called again
    assert again["session"]["skipped"] == 4 and again["session"]["done"] == 0
    assert again["totals"]["invalid"] == 7 and again["totals"]["done"] == 4


@pytest.mark.slow
def test_an_answer_that_cannot_be_stored_fails_its_row_alone(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    def broken(body: dict[str, Any], number: int, choice: int) -> str:
        text = reply(body, number, choice)
        # the upstream sends "\ud800" (valid JSON, not Unicode) for one row
        return text + " \ud800" if "number 2?" in json.dumps(body["messages"]) else text

    upstream.behave("agg", reply=broken)
    data = write_jsonl(tmp_path / "logs.jsonl", rows(4))
    topo = topology(tmp_path)
    out = tmp_path / "runs"
    summary = relabel(data, topo, out)
    assert summary["totals"]["done"] == 3 and summary["totals"]["failed"] == 1
    run = RelabelRun.open(out / "mix-logs")
    (failed,) = list(run.records("failed"))
    assert failed["id"] == "r2" and failed["where"] == "logs.jsonl:3"
    error = str(failed["error"])
    assert error.startswith("cannot record the row: UnicodeEncodeError")
    assert "surrogates not allowed" in error
    assert failed["result"] is None and failed["answer_message"] is None
    assert failed["calls"] == 3 and failed["cost_usd"] and failed["cost_usd"] > 0  # paid: counted
    assert failed["prompt"][-1]["content"] == "Question number 2?"
    assert summary["session"]["failed"] == 1  # the session counted it as the ledger holds it
    sft = ok(moa("export", str(out / "mix-logs"), "--format", "sft", "--json"))
    assert sft["rows"] == 3
    calls = len(upstream.requests)
    again = relabel(data, topo, out)
    assert len(upstream.requests) == calls and again["session"]["skipped"] == 4
    # the broken answer was not cached (it would come back as "?"): a retry asks again
    retried = relabel(data, topo, out, "--retry-failed")
    assert retried["session"]["failed"] == 1 and retried["totals"]["done"] == 3
    assert [r.model for r in upstream.requests[calls:]] == ["agg"]  # proposers: cached
    (still,) = list(RelabelRun.open(out / "mix-logs").records("failed"))
    assert str(still["error"]).startswith("cannot record the row: UnicodeEncodeError")


@pytest.mark.slow
def test_inputs_that_can_never_be_read_are_one_line(upstream: FakeOpenAI, tmp_path: Path) -> None:
    topo = topology(tmp_path)
    out = tmp_path / "runs"
    zero = tmp_path / "zero.jsonl"
    zero.symlink_to("/dev/zero")
    one_line_error(
        moa("relabel", str(zero), "-t", str(topo), "--out", str(out)),
        f"{str(zero)!r} (a link to '/dev/zero') is a character device, not a regular file",
    )
    one_line_error(
        moa("relabel", str(zero), "-t", str(topo), "--out", str(out), "--estimate"),
        "character device",
    )
    folder = tmp_path / "in"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", rows(1))
    os.mkfifo(folder / "b.JSONL")
    one_line_error(
        moa("relabel", str(folder), "-t", str(topo), "--out", str(out)),
        "b.JSONL' is a FIFO, not a regular file",
    )
    assert not out.exists() and upstream.requests == []


@pytest.mark.slow
def test_folder_suffixes_in_any_case(upstream: FakeOpenAI, tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", rows(1))
    write_jsonl(folder / "C.JSONL", rows(1, start=1))
    write_jsonl(folder / "d.NDJSON", rows(1, start=2))
    summary = relabel(folder, topology(tmp_path), tmp_path / "runs")
    assert summary["totals"]["done"] == 3
    where = {r["id"]: r["where"] for r in RelabelRun.open(tmp_path / "runs" / "mix-logs").records()}
    assert where == {"r0": "a.jsonl:1", "r1": "C.JSONL:1", "r2": "d.NDJSON:1"}


@pytest.mark.slow
def test_parquet_truncated_or_damaged_inside(upstream: FakeOpenAI, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    items = [
        {"id": f"p{k}", "messages": json.dumps([{"role": "user", "content": f"q{k} " + "x" * 200}])}
        for k in range(600)
    ]
    whole = tmp_path / "whole.parquet"
    pq.write_table(pa.Table.from_pylist(items), whole, row_group_size=300, compression="snappy")
    data = whole.read_bytes()
    topo = topology(tmp_path)
    out = tmp_path / "runs"

    cut = tmp_path / "cut.parquet"
    cut.write_bytes(data[: len(data) // 2])
    one_line_error(
        moa("relabel", str(cut), "-t", str(topo), "--out", str(out)),
        f"cannot read {str(cut)!r} as Parquet:",
    )
    assert not out.exists()

    # damaged inside: the footer reads, a page does not; the rows before it run, the rest is
    # one invalid row saying which rows were lost
    folder = tmp_path / "in"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", rows(2))
    column = pq.ParquetFile(whole).metadata.row_group(0).column(1)
    start = column.data_page_offset  # the first page's header
    damaged = bytearray(data)
    damaged[start : start + 200] = b"\xab" * 200
    (folder / "b.parquet").write_bytes(bytes(damaged))
    summary = relabel(folder, topo, out)
    assert summary["totals"]["done"] == 2 and summary["totals"]["invalid"] == 1
    (reason,) = invalid_reasons(out / "mix-in").items()
    assert reason[0] == "b.parquet:1"
    assert reason[1].startswith("Parquet rows 1-600 cannot be read: ")
    calls = len(upstream.requests)
    again = relabel(folder, topo, out)
    assert len(upstream.requests) == calls and again["totals"]["invalid"] == 1


@pytest.mark.slow
def test_the_name_is_one_folder_under_out(upstream: FakeOpenAI, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "logs.jsonl", rows(1))
    topo = topology(tmp_path)
    out = tmp_path / "deep" / "runs"
    for name in ("../x", "a/b", ".", "..", str(tmp_path / "abs"), ""):
        for extra in ((), ("--estimate",)):
            one_line_error(
                moa(
                    "relabel", str(data), "-t", str(topo), "--out", str(out), "--name", name, *extra
                ),
                f"--name {name!r} must be one plain folder name",
            )
    assert not (tmp_path / "deep").exists() and not (tmp_path / "abs").exists()
    assert upstream.requests == []
    summary = relabel(data, topo, out, "--name", "..x")  # dots inside a name are fine
    assert summary["run"] == str(out / "..x")


@pytest.mark.slow
def test_a_budget_stop_records_the_invalid_rows_it_read(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    good = rows(4)
    lines: list[Any] = ["{bad", good[0], "[1]", good[1], {"id": "x"}, good[2], "{}", good[3]]
    data = write_jsonl(tmp_path / "logs.jsonl", lines)
    topo = topology(tmp_path)
    out = tmp_path / "runs"
    estimate = relabel(data, topo, out, "--estimate")
    assert estimate["invalid"] == 4 and estimate["rows"] == 4
    budget = estimate["cost_usd"] / 4 / 2  # no row's worst case fits: the run stops at once
    first = relabel(data, topo, out, "--max-usd", f"{budget:.8f}", "--concurrency", "1")
    assert first["session"]["stopped"] == "budget" and first["totals"]["done"] == 0
    assert first["totals"]["invalid"] == 4 and first["session"]["invalid"] == 4
    assert sorted(invalid_reasons(out / "mix-logs")) == [
        "logs.jsonl:1",
        "logs.jsonl:3",
        "logs.jsonl:5",
        "logs.jsonl:7",
    ]
    assert upstream.requests == []
    second = relabel(data, topo, out)
    assert second["totals"]["done"] == 4 and second["totals"]["invalid"] == 4


@pytest.mark.slow
def test_a_damaged_ledger_is_one_line(upstream: FakeOpenAI, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "logs.jsonl", rows(40))
    topo = topology(tmp_path)
    out = tmp_path / "runs"
    relabel(data, topo, out)
    run = out / "mix-logs"
    ledger = run / "ledger.sqlite"
    with closing(sqlite3.connect(ledger)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pristine = ledger.read_bytes()

    def replace(content: bytes) -> None:
        for stale in (run / "ledger.sqlite-wal", run / "ledger.sqlite-shm"):
            stale.unlink(missing_ok=True)
        ledger.write_bytes(content)

    def damaged(expected: str) -> None:
        for fmt in ("sft", "dpo", "traces"):
            result = moa("export", str(run), "--format", fmt)
            one_line_error(result, f"the ledger {str(ledger)!r} is damaged: {expected}")
        assert not list(run.glob("*.jsonl")) and not list(run.glob("*.parquet"))
        try:
            RelabelRun.open(run)
        except MoAInputError as err:
            assert expected in str(err)
        else:
            raise AssertionError("RelabelRun.open took a damaged ledger")

    replace(b"these are not the rows you are looking for\n" * 200)
    damaged("file is not a database")
    replace(pristine[: len(pristine) // 2])
    damaged("database disk image is malformed")
    for table in ("rows", "invalid"):
        replace(pristine)
        with closing(sqlite3.connect(ledger)) as conn:
            conn.execute(f"DROP TABLE {table}")
        damaged(f"its {table!r} table is gone")
        # a relabel does not silently recreate it either (the run would start again)
        one_line_error(
            moa("relabel", str(data), "-t", str(topo), "--out", str(out)),
            f"its {table!r} table is gone",
        )
    replace(pristine)
    assert ok(moa("export", str(run), "--format", "sft", "--json"))["rows"] == 40


def _capped(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["cold", "warm"])
def test_a_file_size_cap_mid_run_stops_in_one_line_and_a_rerun_finishes(
    upstream: FakeOpenAI, tmp_path: Path, cache: str
) -> None:
    """A real file-size cap on the process (Python ignores SIGXFSZ: writes fail with EFBIG).
    Cold, the call cache's log (inside a row) or the ledger's (between rows) reaches it first,
    whichever grows faster on the day; warm (every call already in a shared cache from another
    run), the ledger's log does."""
    data = write_jsonl(tmp_path / "logs.jsonl", rows(40))
    topo = topology(tmp_path)
    out = tmp_path / "runs"
    shared = tmp_path / "shared.sqlite"
    args = [*MOA, "relabel", str(data), "-t", str(topo), "--out", str(out), "--quiet"]
    args += ["--concurrency", "4", "--cache", str(shared)]
    if cache == "warm":
        warmed = relabel(data, topo, tmp_path / "warming", "--cache", str(shared))
        assert warmed["totals"]["done"] == 40
    warm_calls = len(upstream.requests)
    limit = 96 * 1024  # a write-ahead log reaches it after a few rows (a whole run: ~1 MB)
    capped = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
        preexec_fn=lambda: _capped(limit),
    )
    assert capped.returncode == 1, capped.stderr
    (line,) = capped.stderr.strip().splitlines()
    ledger = out / "mix-logs" / "ledger.sqlite"
    failing = [shared, ledger] if cache == "cold" else [ledger]
    assert any(
        line.startswith(f"moa: error: cannot write {str(f)!r}: disk I/O error") for f in failing
    ), line
    assert "(SQLITE_IOERR_WRITE); EFBIG: " in line
    assert f"-wal reached the file-size limit ({limit} B)" in line
    assert line.endswith("; the rows finished before it are recorded: rerun to go on"), line
    assert "ExceptionGroup" not in capped.stderr and "Traceback" not in capped.stderr
    run = out / "mix-logs"
    recorded = ledger_rows(run)
    assert 0 < len(recorded) < 40, "the cap must be hit mid-run"
    assert {status for _, status in recorded} == {"done"}  # nobody failed for the disk
    session = json.loads((run / "manifest.json").read_text())["sessions"][-1]
    assert session["stopped"] == "storage" and session["ended"]
    capped_calls = len(upstream.requests)
    if cache == "warm":
        assert capped_calls == warm_calls  # every call came from the cache

    summary = relabel(data, topo, out, "--cache", str(shared))
    assert summary["totals"]["done"] == 40 and summary["totals"]["failed"] == 0
    assert summary["session"]["done"] == 40 - len(recorded)
    assert sorted(i for i, _ in ledger_rows(run)) == sorted(f"r{k}" for k in range(40))
    if cache == "warm":
        assert len(upstream.requests) == warm_calls
        assert summary["session"]["cached_calls"] == 3 * (40 - len(recorded))
    # each distinct call was paid once, but for those of rows in flight when the disk failed
    # (4 rows x 3 calls at most), whose calls may not have reached the cache
    times: dict[str, int] = {}
    for r in upstream.requests:
        key = json.dumps([r.model, r.messages], sort_keys=True)
        times[key] = times.get(key, 0) + 1
    assert len(times) == 40 * 3
    assert sum(n - 1 for n in times.values()) <= 4 * 3
    # and no row recorded in the capped session was run again
    done_first = {row_id for row_id, _ in recorded}
    for r in upstream.requests[capped_calls:]:
        asked = json.dumps(r.messages)
        assert not any(f"Question number {i[1:]}?" in asked for i in done_first), asked[:80]


@pytest.mark.slow
def test_eval_reads_its_jsonl_as_relabel_does(fake: FakeOpenAI, tmp_path: Path) -> None:
    """`moa eval` refuses a user's file on its first bad line, as it always did, now for every
    kind of poison line and in one line naming it; a byte order mark costs no item."""
    fake.behave("solver", reply=lambda body, number, choice: "So it is 4.\n#### 4")
    good = [{"id": "a", "prompt": "2+2", "gold": "4"}, {"id": "b", "prompt": "1+3", "gold": "4"}]
    data = tmp_path / "mine.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + b"".join(json.dumps(g).encode() + b"\n" for g in good))
    out = ("--out", str(tmp_path / "runs"))
    summary = ok(moa("eval", str(data), "--model", "openai:solver", *out, "--json"))
    accuracy = summary["scores"]["metrics"]["accuracy"]
    assert accuracy["n"] == 2 and accuracy["value"] == 100.0
    asked = len(fake.requests)

    first = json.dumps(good[0]).encode() + b"\n"
    cases = {
        b'{"prompt": "q", "gold": 1' + b"0" * 5000 + b"}": (
            "line 2 is not JSON: an integer of more than 4300 digits"
        ),
        rb'{"prompt": "q \ud800", "gold": "4"}': (
            "line 2: a string holds a lone surrogate (\\ud800): not Unicode text"
        ),
        b'{"prompt": "q", "gold": NaN}': "line 2 is not JSON: NaN is not a JSON number",
        b'{"prompt": "q", "gold": 1e400}': "line 2 is not JSON: the number 1e400 is out of range",
        b'{"prompt": "q", "gold": "\xff"}': "line 2 is not UTF-8 text (byte 25)",
        b'{"prompt": "' + b"[" * 100_000: "line 2 is not JSON",
        b"{" + b"[" * 100_000 + b"]" * 100_000 + b"}": "line 2 is not JSON",
        b'{"prompt": "' + b"x" * (64 * 1024 * 1024 + 1) + b'"}': "line 2 is longer than 64 MiB",
    }
    bad = tmp_path / "bad.jsonl"
    for line, expected in cases.items():
        bad.write_bytes(first + line + b"\n")
        one_line_error(moa("eval", str(bad), "--model", "openai:solver", *out), expected)
    zero = tmp_path / "zero.jsonl"
    zero.symlink_to("/dev/zero")
    one_line_error(
        moa("eval", str(zero), "--model", "openai:solver", *out), "is not a regular file"
    )
    assert len(fake.requests) == asked
