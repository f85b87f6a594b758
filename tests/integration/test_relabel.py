"""`moa relabel` and `moa export` end to end against the fake upstream: input formats and every
invalid-row case, the original completion split off, resume after a real kill -9 (each finished
call once, each row once), the aggregator-only change reusing every proposer call, rate limits,
budget stop and resume, --estimate, --retry-failed, exports checked against their formats, the
Python API fed from an iterable, and bad input."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from langgraph_moa.batch import RelabelRun, parse_limits, relabel
from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import MOA, one_line_error
from tests.conftest import run_moa as moa

TOPOLOGY = (
    "name: {name}\nlayers:\n"
    "  - proposers: [{{name: a, model: 'openai:a'}}, {{name: b, model: 'openai:b'}}]\n"
    "aggregator: {{model: 'openai:{agg}'}}\n"
    "prices:\n"
    "  'openai:a': {{input_per_mtok: 1000, output_per_mtok: 1000}}\n"
    "  'openai:b': {{input_per_mtok: 1000, output_per_mtok: 1000}}\n"
    "  'openai:{agg}': {{input_per_mtok: 1000, output_per_mtok: 1000}}\n"
)


def reply(body: dict[str, Any], number: int, choice: int) -> str:
    """A reply that depends only on the request (so two engines give the same answers)."""
    digest = hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()
    return f"{body['model']} answer {digest[:8]}.{choice}"


@pytest.fixture
def upstream(fake: FakeOpenAI) -> FakeOpenAI:
    for model in ("a", "b", "agg", "agg2"):
        fake.behave(model, reply=reply)
    return fake


def topology(tmp_path: Path, name: str = "mix", agg: str = "agg") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(TOPOLOGY.format(name=name, agg=agg))
    return path


def rows(n: int, *, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "id": f"r{k}",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Question number {k}?"},
                {"role": "assistant", "content": f"Original answer {k}."},
            ],
            "metadata": {"k": k},
        }
        for k in range(start, start + n)
    ]


def write_jsonl(path: Path, items: list[Any]) -> Path:
    path.write_text("".join((i if isinstance(i, str) else json.dumps(i)) + "\n" for i in items))
    return path


def ledger_rows(run: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(run / "ledger.sqlite") as conn:
        return list(conn.execute("SELECT id, status FROM rows"))


def rows_so_far(run: Path) -> int:
    """Rows recorded by a run still going (0 before its ledger has its tables: the file
    appears a moment before them)."""
    if not (run / "ledger.sqlite").exists():
        return 0
    try:
        return len(ledger_rows(run))
    except sqlite3.OperationalError:
        return 0


def ok(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
def test_relabel_runs_resumes_and_splits_the_original_completion(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "logs.jsonl", rows(6))
    topo = topology(tmp_path)
    out = tmp_path / "runs"
    summary = ok(moa("relabel", str(data), "-t", str(topo), "--out", str(out), "--json"))
    assert summary["name"] == "mix-logs"
    assert summary["session"]["done"] == 6 and summary["totals"]["done"] == 6
    assert summary["session"]["calls"] == 18  # 2 proposers + aggregator per row
    assert len(upstream.requests) == 18
    # the prompt sent is what precedes the original completion
    for request in upstream.requests:
        assert not any("Original answer" in str(m.get("content")) for m in request.messages)
    run = RelabelRun.open(out / "mix-logs")
    records: dict[str, Any] = {r["id"]: r for r in run.records()}
    assert set(records) == {f"r{k}" for k in range(6)}
    assert records["r3"]["completion"] == {"role": "assistant", "content": "Original answer 3."}
    assert records["r3"]["metadata"] == {"k": 3}
    assert records["r3"]["result"]["answer"].startswith("agg answer")
    assert [p["node"] for p in records["r3"]["result"]["layers"][0]] == ["L1/a", "L1/b"]
    manifest = json.loads((out / "mix-logs" / "manifest.json").read_text())
    assert manifest["counts"]["done"] == 6 and manifest["input"]["sha256"]
    assert manifest["topology"]["name"] == "mix" and manifest["versions"]["python"]

    again = ok(moa("relabel", str(data), "-t", str(topo), "--out", str(out), "--json"))
    assert again["session"]["done"] == 0 and again["session"]["skipped"] == 6
    assert len(upstream.requests) == 18  # nothing called again
    assert len(json.loads((out / "mix-logs" / "manifest.json").read_text())["sessions"]) == 2


@pytest.mark.slow
def test_invalid_rows_are_recorded_with_line_and_reason(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    good = rows(2)
    lines: list[Any] = [
        good[0],
        "{not json",
        "[1, 2]",
        {"id": "x1"},
        {"messages": [{"role": "wizard", "content": "hi"}]},
        {"messages": [{"role": "assistant", "content": "only me"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}]},
        {"messages": [{"role": "user", "content": "   "}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}]},
        {"id": True, "messages": [{"role": "user", "content": "q"}]},
        good[0],  # the same id again
        good[1],
    ]
    data = write_jsonl(tmp_path / "mixed.jsonl", lines)
    with data.open("ab") as f:
        f.write(b'{"messages": [{"role": "user", "content": "\xff"}]}\n')
    summary = ok(
        moa(
            "relabel",
            str(data),
            "-t",
            str(topology(tmp_path)),
            "--out",
            str(tmp_path / "runs"),
            "--json",
        )
    )
    assert summary["session"]["done"] == 2 and summary["totals"]["invalid"] == 11
    run = RelabelRun.open(tmp_path / "runs" / "mix-mixed")
    reasons = {r.where: r.reason for r in run.invalid_rows()}
    assert reasons["mixed.jsonl:2"].startswith("not JSON")
    assert "JSON object" in reasons["mixed.jsonl:3"]
    assert "messages" in reasons["mixed.jsonl:4"]
    assert "role" in reasons["mixed.jsonl:5"]
    assert "nothing precedes" in reasons["mixed.jsonl:6"]
    assert "must end with a user message" in reasons["mixed.jsonl:7"]
    assert "empty" in reasons["mixed.jsonl:8"]
    assert "tool_call_id" in reasons["mixed.jsonl:9"]
    assert "id" in reasons["mixed.jsonl:10"]
    assert "duplicate id 'r0'" in reasons["mixed.jsonl:11"]
    assert "UTF-8" in reasons["mixed.jsonl:13"]
    # a rerun counts them once
    again = ok(
        moa(
            "relabel",
            str(data),
            "-t",
            str(topology(tmp_path)),
            "--out",
            str(tmp_path / "runs"),
            "--json",
        )
    )
    assert again["totals"]["invalid"] == 11 and again["totals"]["done"] == 2


@pytest.mark.slow
def test_parquet_input_gives_the_same_records(upstream: FakeOpenAI, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    items: list[dict[str, Any]] = rows(3)
    items[0] |= {"completion": None, "tools": None}  # pyarrow takes the columns from row 0
    items[1] = {"id": "r1", "messages": items[1]["messages"][:2], "completion": "Given."}
    function = {"name": "f", "parameters": {"type": "object"}}
    items[2]["tools"] = json.dumps([{"type": "function", "function": function}])  # as text
    pq.write_table(pa.Table.from_pylist(items), tmp_path / "logs.parquet")
    topo = topology(tmp_path)
    run = relabel(tmp_path / "logs.parquet", topology=topo, out=tmp_path / "runs")
    assert run.totals["done"] == 3 and run.totals["invalid"] == 0
    records = {r["id"]: r for r in run.records()}
    assert records["r1"]["completion"] == {"role": "assistant", "content": "Given."}
    assert records["r2"]["tools"] and records["r0"]["tools"] is None
    aggregator_bodies = [r.body for r in upstream.requests_for("agg")]
    assert sum(1 for b in aggregator_bodies if b.get("tools")) == 1


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_pays_each_finished_call_once(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    for model in ("a", "b", "agg"):
        upstream.behave(model, latency_s=0.25)
    data = write_jsonl(tmp_path / "logs.jsonl", rows(40))
    topo = topology(tmp_path)
    out = tmp_path / "runs"
    args = [
        *MOA,
        "relabel",
        str(data),
        "-t",
        str(topo),
        "--out",
        str(out),
        "--concurrency",
        "4",
        "--quiet",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run_dir = out / "mix-logs"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if rows_so_far(run_dir) >= 8:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = time.perf_counter()
    first = list(upstream.requests)
    assert 8 <= len(ledger_rows(run_dir)) < 40, "the kill must land mid-run"

    summary = ok(moa("relabel", str(data), "-t", str(topo), "--out", str(out), "--json"))
    assert summary["totals"]["done"] == 40
    ids = [row_id for row_id, _ in ledger_rows(run_dir)]
    assert sorted(ids) == sorted(f"r{k}" for k in range(40))  # each row exactly once

    check_each_finished_call_paid_once(upstream, first, killed_at)


def check_each_finished_call_paid_once(
    upstream: FakeOpenAI, first: list[Any], killed_at: float
) -> None:
    """After a kill -9 (at ``killed_at``, when the upstream had seen ``first``) and a rerun: every
    call that finished well before the kill was not paid for again, and the whole run made each
    distinct call once, but for the few in flight at the kill (4 rows x 3 calls at most)."""

    def key(r: Any) -> str:
        return json.dumps([r.model, r.messages], sort_keys=True)

    finished = [r for r in upstream.requests if r.status == 200 and not r.disconnected]
    times: dict[str, int] = {}
    for r in finished:
        times[key(r)] = times.get(key(r), 0) + 1
    settled = [r for r in first if r.status == 200 and r.finished < killed_at - 0.5]
    assert settled
    assert all(times[key(r)] == 1 for r in settled), [
        key(r)[:80] for r in settled if times[key(r)] > 1
    ]
    repeated = sum(n - 1 for n in times.values())
    assert repeated <= 4 * 3, repeated


@pytest.mark.slow
def test_changing_only_the_aggregator_reuses_every_proposer_call(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "logs.jsonl", rows(5))
    out = tmp_path / "runs"
    ok(moa("relabel", str(data), "-t", str(topology(tmp_path)), "--out", str(out), "--json"))
    assert len(upstream.requests_for("a")) == 5 and len(upstream.requests_for("b")) == 5
    other = topology(tmp_path, name="mix2", agg="agg2")
    summary = ok(moa("relabel", str(data), "-t", str(other), "--out", str(out), "--json"))
    assert summary["name"] == "mix2-logs" and summary["session"]["done"] == 5
    assert len(upstream.requests_for("a")) == 5 and len(upstream.requests_for("b")) == 5
    assert len(upstream.requests_for("agg2")) == 5
    assert summary["session"]["cached_calls"] == 10 and summary["session"]["calls"] == 5


@pytest.mark.slow
def test_rate_limit_is_never_exceeded(upstream: FakeOpenAI, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "logs.jsonl", rows(10))
    run = relabel(
        data,
        topology=topology(tmp_path),
        out=tmp_path / "runs",
        concurrency=16,
        rate_limits=parse_limits(["600"]),
    )
    assert run.totals["done"] == 10
    starts = sorted(r.started for r in upstream.requests)
    assert len(starts) == 30
    # 600/min: a bucket of 5 (half a second) filling at 590/min admits at most 5 + 590/60 in a
    # window of 1 s, and 5 more may arrive in it after being held up on their way
    for k, t in enumerate(starts):
        inside = sum(1 for s in starts[k:] if s - t < 1.0)
        assert inside <= 19, (k, inside)
    assert starts[-1] - starts[0] >= 2.0  # 25 requests after the first 5, at ~9.8/s


@pytest.mark.slow
def test_budget_stops_cleanly_and_resumes(upstream: FakeOpenAI, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "logs.jsonl", rows(8))
    topo = topology(tmp_path)
    out = tmp_path / "runs"
    estimate = ok(
        moa("relabel", str(data), "-t", str(topo), "--out", str(out), "--estimate", "--json")
    )
    assert estimate["rows"] == 8 and estimate["calls"] == 24 and estimate["cost_usd"] > 0
    assert upstream.requests == [] and not out.exists()  # no call, nothing written
    upstream.reset()
    worst = estimate["cost_usd"] / 8
    trial = ok(
        moa(
            "relabel",
            str(data),
            "-t",
            str(topo),
            "--out",
            str(tmp_path / "trial"),
            "--json",
            "--limit",
            "1",
        )
    )
    spent = trial["totals"]["cost_usd"]
    assert 0 < spent < worst
    # a row starts while spent + its worst case fits: after 3 rows (3 x spent) none does
    budget = worst + 2.5 * spent
    first = ok(
        moa(
            "relabel",
            str(data),
            "-t",
            str(topo),
            "--out",
            str(out),
            "--json",
            "--max-usd",
            f"{budget:.6f}",
            "--concurrency",
            "1",
        )
    )
    assert first["session"]["stopped"] == "budget"
    assert first["totals"]["done"] == 3
    assert first["totals"]["cost_usd"] <= budget
    second = ok(
        moa("relabel", str(data), "-t", str(topo), "--out", str(out), "--json", "--max-usd", "1000")
    )
    assert second["totals"]["done"] == 8 and second["session"]["stopped"] is None
    assert second["session"]["done"] == 8 - first["totals"]["done"]


@pytest.mark.slow
def test_limit_then_retry_failed(upstream: FakeOpenAI, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "logs.jsonl", rows(6))
    topo = topology(tmp_path)
    out = tmp_path / "runs"
    trial = ok(
        moa("relabel", str(data), "-t", str(topo), "--out", str(out), "--json", "--limit", "2")
    )
    assert trial["totals"]["done"] == 2
    upstream.behave("agg", always=400)  # the aggregator refuses: rows fail
    failing = ok(moa("relabel", str(data), "-t", str(topo), "--out", str(out), "--json"))
    assert failing["totals"]["failed"] == 4 and failing["totals"]["done"] == 2
    run = RelabelRun.open(out / "mix-logs")
    assert all("HTTP 400" in str(r["error"]) for r in run.records("failed"))
    upstream.behave("agg", always=None)
    before = len(upstream.requests_for("a"))
    retried = ok(
        moa("relabel", str(data), "-t", str(topo), "--out", str(out), "--json", "--retry-failed")
    )
    assert retried["session"]["done"] == 4 and retried["totals"]["done"] == 6
    assert retried["totals"]["failed"] == 0
    assert len(upstream.requests_for("a")) == before  # proposer calls came from the cache


@pytest.mark.slow
def test_exports_follow_their_formats(upstream: FakeOpenAI, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    items = rows(3)
    items.append({"id": "nocomp", "messages": [{"role": "user", "content": "No original?"}]})
    data = write_jsonl(tmp_path / "logs.jsonl", items)
    out = tmp_path / "runs"
    ok(moa("relabel", str(data), "-t", str(topology(tmp_path)), "--out", str(out), "--json"))
    run_dir = out / "mix-logs"

    sft = ok(moa("export", str(run_dir), "--format", "sft", "--json"))
    assert sft["rows"] == 4
    for line in Path(sft["path"]).read_text().splitlines():
        row = json.loads(line)
        roles = [m["role"] for m in row["messages"]]
        assert roles[-1] == "assistant" and roles[-2] == "user"
        assert set(roles) <= {"system", "user", "assistant", "tool"}
        assert row["messages"][-1]["content"].startswith("agg answer")

    target = tmp_path / "pairs.jsonl"
    dpo = ok(moa("export", str(run_dir), "--format", "dpo", "-o", str(target), "--json"))
    pairs = [json.loads(x) for x in target.read_text().splitlines()]
    assert dpo["rows"] == len(pairs) == 4
    for pair in pairs:
        assert {"prompt", "chosen", "rejected"} <= set(pair)
        assert pair["chosen"] != pair["rejected"]
        assert pair["chosen"][0]["role"] == pair["rejected"][0]["role"] == "assistant"
    by_id = {p["id"]: p for p in pairs}
    assert by_id["r1"]["rejected"][0]["content"] == "Original answer 1."
    assert by_id["r1"]["rejected_from"] == "original"
    assert by_id["nocomp"]["rejected_from"].startswith("proposal:L1/")

    traces = ok(moa("export", str(run_dir), "--format", "traces", "--json"))
    table = pq.read_table(traces["path"]).to_pylist()
    assert len(table) == traces["rows"] == 12
    assert {t["node"] for t in table} == {"L1/a", "L1/b", "aggregator"}
    assert all(t["ok"] and t["cost_usd"] > 0 and t["total_tokens"] > 0 for t in table)


def test_degraded_rows_are_left_out_of_exports_unless_asked(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    upstream.behave("b", always=500)
    topo = tmp_path / "t.yaml"
    topo.write_text(
        "name: t\nretry: {attempts: 1}\nlayers:\n"
        "  - proposers: [{name: a, model: 'openai:a'}, {name: b, model: 'openai:b'}]\n"
        "aggregator: {model: 'openai:agg'}\n"
    )
    run = relabel(rows(2), topology=topo, out=tmp_path / "runs", name="deg")
    assert run.totals["degraded"] == 2
    assert run.export("sft").rows == 0
    assert run.export("sft", include_degraded=True).rows == 2


def test_python_api_rows_from_an_iterable(upstream: FakeOpenAI, tmp_path: Path) -> None:
    seen: list[str] = []
    items = [
        {"id": f"q{k}", "messages": [{"role": "user", "content": f"Item {k}"}]} for k in range(4)
    ]
    run = relabel(
        iter(items),
        topology=topology(tmp_path),
        out=tmp_path / "runs",
        name="bench-items",
        on_record=lambda r: seen.append(r["id"]),
    )
    assert sorted(seen) == ["q0", "q1", "q2", "q3"]
    assert run.path == tmp_path / "runs" / "bench-items" and run.totals["done"] == 4
    assert run.session.calls == 12 and run.cost_usd > 0
    assert {r["id"] for r in run.records()} == set(seen)


@pytest.mark.slow
def test_bad_input_is_one_line_and_nothing_is_written(upstream: FakeOpenAI, tmp_path: Path) -> None:
    topo = topology(tmp_path)
    out = tmp_path / "runs"
    one_line_error(
        moa("relabel", str(tmp_path / "missing.jsonl"), "-t", str(topo), "--out", str(out)),
        "no such file",
    )
    (tmp_path / "empty.jsonl").write_text("")
    one_line_error(
        moa("relabel", str(tmp_path / "empty.jsonl"), "-t", str(topo), "--out", str(out)),
        "is empty",
    )
    (tmp_path / "data.csv").write_text("a,b\n")
    one_line_error(
        moa("relabel", str(tmp_path / "data.csv"), "-t", str(topo), "--out", str(out)),
        "unknown input format",
    )
    assert not out.exists()
    one_line_error(moa("export", str(tmp_path), "--format", "sft"), "not a relabel run")
    data = write_jsonl(tmp_path / "logs.jsonl", rows(1))
    ok(moa("relabel", str(data), "-t", str(topo), "--out", str(out), "--json"))
    manifest = (out / "mix-logs" / "manifest.json").read_text()
    changed = tmp_path / "changed" / "mix.yaml"
    changed.parent.mkdir()
    changed.write_text(TOPOLOGY.format(name="mix", agg="agg2"))
    one_line_error(
        moa("relabel", str(data), "-t", str(changed), "--out", str(out)), "give another --name"
    )
    assert (out / "mix-logs" / "manifest.json").read_text() == manifest
    one_line_error(
        moa("relabel", str(data), "-t", str(topo), "--out", str(out), "--rpm", "x=0"), "--rpm takes"
    )
    one_line_error(
        moa("relabel", str(data), "-t", str(topo), "--out", str(out), "--limit", "0"),
        "--limit must be",
    )
    env = dict(os.environ)
    env.pop("OPENAI_API_KEY")
    one_line_error(
        moa("relabel", str(data), "-t", str(topo), "--out", str(out), env=env), "OPENAI_API_KEY"
    )
