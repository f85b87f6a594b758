"""`engine="ray"` end to end against the fake upstream: Ray Data reads the input, actors run the
rows, the driver writes the ledger. The same records as the in-process engine, the same invalid
rows (file, line, reason), resume by row id (after a limit, and after a real kill -9 of `moa
relabel`), the budget and --retry-failed, `--ray-address` joining a running cluster, and a
local Ray started by `moa relabel` itself, with none of the notices Ray would print on every run.

The cluster is a real Ray head started here (`ray start --head --block` on free ports, with a
token made for it) and stopped after the module by its process id; its workers get the fake
upstream's address from the environment the head was started with, as a real cluster's workers
get provider keys from theirs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from langgraph_moa.batch import RelabelRun, estimate_relabel, relabel
from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import MOA, TEST_KEY, one_line_error
from tests.conftest import run_moa as moa
from tests.integration.test_relabel import (
    check_each_finished_call_paid_once,
    ledger_rows,
    ok,
    rows,
    rows_so_far,
    topology,
    upstream,
    write_jsonl,
)

__all__ = ["upstream"]  # the fixture, shared with test_relabel

RAY = str(Path(sys.executable).with_name("ray"))


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="module")
def cluster(_server: FakeOpenAI) -> Iterator[dict[str, str]]:
    """A Ray head on this machine (2 CPUs); yields its address and the environment variables
    that join it. Stopped by its own process id (`ray start --block` ends what it started)."""
    port, client_port, agent_port = _free_ports(3)
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay short
    env = {
        "OPENAI_BASE_URL": _server.base_url,
        "OPENAI_API_KEY": TEST_KEY,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }
    head = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            f"--ray-client-server-port={client_port}",
            f"--dashboard-agent-listen-port={agent_port}",
            "--object-store-memory=100000000",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ) | env,
    )
    try:
        assert head.stdout is not None
        seen = []
        for line in head.stdout:  # blocks until the head says it runs (or exits)
            seen.append(line)
            if "Ray runtime started" in line:
                break
        else:
            pytest.fail("ray start --head failed:\n" + "".join(seen[-20:]))
        yield {"address": f"127.0.0.1:{port}", **env}
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def local_ray(_server: FakeOpenAI) -> Iterator[None]:
    """A local Ray (2 CPUs) in this process, as `relabel(engine="ray")` from Python would use;
    started once the fake upstream's address is in the environment (its workers inherit it)."""
    env = {
        "OPENAI_BASE_URL": _server.base_url,
        "OPENAI_API_KEY": TEST_KEY,
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        object_store_memory=100 * 1024 * 1024,
    )
    try:
        yield
    finally:
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def reasons_of(run: RelabelRun) -> dict[str, str]:
    return {r.where: r.reason for r in run.invalid_rows()}


def _answers(run: RelabelRun) -> dict[str, tuple[str, str]]:
    return {r["id"]: (r["status"], (r["result"] or {}).get("answer", "")) for r in run.records()}


@pytest.mark.slow
def test_ray_engine_gives_the_same_records_and_resumes(
    upstream: FakeOpenAI, local_ray: None, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "logs.jsonl", rows(12))
    topo = topology(tmp_path)
    local = relabel(data, topology=topo, out=tmp_path / "local", concurrency=8)
    assert local.totals["done"] == 12
    calls_local = len(upstream.requests)
    upstream.reset()

    trial = relabel(data, topology=topo, out=tmp_path / "ray", engine="ray", limit=5, concurrency=8)
    assert trial.totals["done"] == 5 and trial.manifest.sessions[-1].engine == "ray"
    assert {r["id"] for r in trial.records()} == {f"r{k}" for k in range(5)}  # the first 5
    run = relabel(data, topology=topo, out=tmp_path / "ray", engine="ray", concurrency=8)
    assert run.session.skipped == 5 and run.session.done == 7
    assert len(upstream.requests) == calls_local  # each call once, across both sessions
    assert _answers(run) == _answers(local)
    mine = {r["id"]: r for r in run.records()}
    theirs = {r["id"]: r for r in local.records()}
    for key in ("prompt", "completion", "metadata", "answer_message", "calls", "tokens"):
        assert {i: r[key] for i, r in mine.items()} == {i: r[key] for i, r in theirs.items()}

    again = relabel(data, topology=topo, out=tmp_path / "ray", engine="ray", concurrency=8)
    assert again.session.done == 0 and again.session.skipped == 12
    assert len(upstream.requests) == calls_local


@pytest.mark.slow
def test_rows_fed_from_python_run_on_ray(
    upstream: FakeOpenAI, local_ray: None, tmp_path: Path
) -> None:
    items: list[dict[str, Any]] = [*rows(5), {"id": "bad", "messages": []}, rows(1)[0]]
    topo = topology(tmp_path)
    local = relabel(iter(items), topology=topo, out=tmp_path / "local", name="it")
    run = relabel(
        iter(items), topology=topo, out=tmp_path / "ray", name="it", engine="ray", limit=6
    )
    assert run.totals["done"] == 5 and run.totals["invalid"] == 1  # the limit: 6 rows read
    assert reasons_of(run) == {"#6": reasons_of(local)["#6"]}
    assert _answers(run) == _answers(local)
    again = relabel(iter(items), topology=topo, out=tmp_path / "ray", name="it", engine="ray")
    assert again.session.skipped == 5 and again.session.done == 0
    assert reasons_of(again)["#7"] == "duplicate id 'r0' (#1)"  # as the ledger has it
    assert not list((tmp_path / "ray" / "it").glob("ray-input*"))  # the spool is gone


@pytest.mark.slow
def test_invalid_rows_are_recorded_as_the_default_engine_records_them(
    upstream: FakeOpenAI, local_ray: None, tmp_path: Path
) -> None:
    good = rows(3)
    lines: list[Any] = [
        good[0],
        "{not json",
        "[1, 2]",
        {"id": "x1"},
        {"messages": [{"role": "wizard", "content": "hi"}]},
        {"messages": [{"role": "assistant", "content": "only me"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}]},
        {"id": True, "messages": [{"role": "user", "content": "q"}]},
        good[0],  # the same id again
        good[1],
        {"messages": [{"role": "user", "content": "no id: a hash of the row"}]},
    ]
    data = write_jsonl(tmp_path / "mixed.jsonl", lines)
    with data.open("ab") as f:
        f.write(b'{"messages": [{"role": "user", "content": "\xff"}]}\n')
    write_jsonl(tmp_path / "more.jsonl", [good[2], good[1]])  # a second file; r1 seen before
    topo = topology(tmp_path)
    local = relabel(tmp_path / "mixed.jsonl", topology=topo, out=tmp_path / "local")
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("mixed.jsonl", "more.jsonl"):
        (folder / name).write_bytes((tmp_path / name).read_bytes())
    local_folder = relabel(folder, topology=topo, out=tmp_path / "local-folder")
    upstream.reset()

    run = relabel(tmp_path / "mixed.jsonl", topology=topo, out=tmp_path / "ray", engine="ray")
    assert run.session.done == 3 and run.session.invalid == 9 and run.totals["invalid"] == 9
    reasons = reasons_of(run)
    assert reasons == reasons_of(local)
    assert reasons["mixed.jsonl:2"].startswith("not JSON")
    assert "duplicate id 'r0'" in reasons["mixed.jsonl:9"]
    assert "UTF-8" in reasons["mixed.jsonl:12"]
    assert {r["id"]: r["where"] for r in run.records()} == {
        r["id"]: r["where"] for r in local.records()
    }
    calls = len(upstream.requests)
    assert calls == 3 * 3

    again = relabel(tmp_path / "mixed.jsonl", topology=topo, out=tmp_path / "ray", engine="ray")
    assert again.totals["invalid"] == 9 and again.session.done == 0 and again.session.skipped == 3
    assert len(upstream.requests) == calls

    in_folder = relabel(folder, topology=topo, out=tmp_path / "ray-folder", engine="ray")
    assert in_folder.totals["done"] == 4
    assert reasons_of(in_folder) == reasons_of(local_folder)
    assert (
        "duplicate id 'r1'" in {r.where: r.reason for r in in_folder.invalid_rows()}["more.jsonl:2"]
    )


@pytest.mark.slow
def test_budget_stops_cleanly_and_resumes_on_ray(
    upstream: FakeOpenAI, local_ray: None, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "logs.jsonl", rows(8))
    topo = topology(tmp_path)
    out = tmp_path / "runs"
    worst = estimate_relabel(data, topology=topo, out=out).cost_usd
    assert worst
    worst /= 8
    spent = relabel(data, topology=topo, out=tmp_path / "trial", limit=1).cost_usd
    assert 0 < spent < worst
    # a row starts while spent + its worst case fits: after 3 rows (3 x spent) none does
    budget = worst + 2.5 * spent
    first = relabel(data, topology=topo, out=out, engine="ray", max_usd=budget, concurrency=1)
    assert first.stopped == "budget"
    assert first.totals["done"] == 3 and first.cost_usd <= budget
    second = relabel(data, topology=topo, out=out, engine="ray", max_usd=1000)
    assert second.totals["done"] == 8 and second.stopped is None
    assert second.session.done == 5


@pytest.mark.slow
def test_the_budget_on_ray_waits_for_rows_in_flight_before_stopping(
    upstream: FakeOpenAI, local_ray: None, tmp_path: Path
) -> None:
    from tests.integration import test_relabel_budget as priced

    for model in ("a", "b", "agg"):
        upstream.behave(model, reply=priced.long_reply)
    topo = priced.topology(tmp_path)
    items = priced.rows(40)
    budget = priced.worst_of(topo, items[0]) * 5
    run = relabel(items, topology=topo, out=tmp_path / "runs", engine="ray", max_usd=budget)
    assert run.totals["done"] < len(items)  # rows remain
    priced.check_stop(run, budget)  # between 0.75 and 1 of it spent, and the reason given


@pytest.mark.slow
def test_retry_failed_on_ray_runs_only_the_failed_rows(
    upstream: FakeOpenAI, local_ray: None, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "logs.jsonl", rows(4))
    topo = topology(tmp_path)
    out = tmp_path / "runs"
    relabel(data, topology=topo, out=out, limit=2)  # two rows done in-process
    for model in ("a", "b"):
        upstream.behave(model, always=400)  # every proposer down: the row fails
    failing = relabel(data, topology=topo, out=out, engine="ray")
    assert failing.session.failed == 2 and failing.session.skipped == 2
    assert all(r["error"] for r in failing.records("failed"))
    for model in ("a", "b"):
        upstream.behave(model, always=None)
    upstream.reset()
    retried = relabel(data, topology=topo, out=out, engine="ray", retry_failed=True)
    assert retried.session.done == 2 and retried.session.skipped == 2
    assert retried.totals["done"] == 4 and retried.totals["failed"] == 0
    assert {r.body["messages"][-1]["content"] for r in upstream.requests_for("a")} == {
        "Question number 2?",
        "Question number 3?",
    }


@pytest.mark.slow
def test_ray_address_joins_a_cluster_and_resumes_after_kill_9(
    upstream: FakeOpenAI, cluster: dict[str, str], tmp_path: Path
) -> None:
    for model in ("a", "b", "agg"):
        upstream.behave(model, latency_s=0.25)
    data = write_jsonl(tmp_path / "logs.jsonl", rows(40))
    topo = topology(tmp_path)
    out = tmp_path / "runs"
    env = dict(os.environ) | {k: v for k, v in cluster.items() if k != "address"}
    args = [
        "relabel",
        str(data),
        "-t",
        str(topo),
        "--out",
        str(out),
        "--engine",
        "ray",
        "--ray-address",
        cluster["address"],
    ]
    proc = subprocess.Popen(
        [*MOA, *args, "--concurrency", "4", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    run_dir = out / "mix-logs"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        if rows_so_far(run_dir) >= 8:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = time.perf_counter()
    first = list(upstream.requests)
    assert 8 <= len(ledger_rows(run_dir)) < 40, "the kill must land mid-run"
    time.sleep(2)  # the cluster ends the dead driver's actors

    summary = ok(moa(*args, "--json", env=env))
    assert summary["totals"]["done"] == 40 and summary["session"]["skipped"] >= 8
    ids = [row_id for row_id, _ in ledger_rows(run_dir)]
    assert sorted(ids) == sorted(f"r{k}" for k in range(40))  # each row exactly once
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [s["engine"] for s in manifest["sessions"]] == ["ray", "ray"]
    answers = [(r["result"] or {}).get("answer", "") for r in RelabelRun.open(run_dir).records()]
    assert len(answers) == 40 and all(a.startswith("agg answer") for a in answers)

    check_each_finished_call_paid_once(upstream, first, killed_at)


@pytest.mark.slow
def test_moa_relabel_engine_ray_starts_a_local_ray(upstream: FakeOpenAI, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "logs.jsonl", rows(4))
    env = dict(os.environ) | {"RAY_USAGE_STATS_ENABLED": "0"}
    done = moa(
        "relabel",
        str(data),
        "-t",
        str(topology(tmp_path)),
        "--out",
        str(tmp_path / "runs"),
        "--engine",
        "ray",
        "--ray-workers",
        "2",
        "--json",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["session"]["done"] == 4 and summary["session"]["calls"] == 12
    assert len(upstream.requests) == 12
    assert "Traceback" not in done.stderr and "Running Dataset" not in done.stderr
    # Ray's notices on every run: token authentication on (its default for a local Ray), and
    # the driver's line about restarting actors with arguments in the object store
    assert "Token authentication" not in done.stderr, done.stderr
    assert "core_worker.cc" not in done.stderr and "max_restarts" not in done.stderr, done.stderr
    assert "deprecated" not in done.stderr, done.stderr


@pytest.mark.slow
def test_engine_ray_without_the_extra_is_one_line(upstream: FakeOpenAI, tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "ray"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(shadow.parent), env.get("PYTHONPATH", "")])
    data = write_jsonl(tmp_path / "logs.jsonl", rows(1))
    out = tmp_path / "runs"
    args = ["relabel", str(data), "-t", str(topology(tmp_path)), "--out", str(out)]
    one_line_error(moa(*args, "--engine", "ray", env=env), "pip install 'langgraph-moa[ray]'")
    assert not out.exists() and upstream.requests == []


@pytest.mark.slow
def test_turns_all_on_ray_gives_the_same_turns(
    upstream: FakeOpenAI, local_ray: None, tmp_path: Path
) -> None:
    from tests.integration.test_relabel_exports import dataset

    topo = topology(tmp_path)
    options: dict[str, Any] = {"topology": topo, "name": "turns", "turns": "all"}
    local = relabel(dataset(), out=tmp_path / "local", **options)
    run = relabel(dataset(), out=tmp_path / "ray", engine="ray", **options)
    assert run.totals["done"] == local.totals["done"] == 4

    def turns(of: RelabelRun) -> dict[str, list[Any]]:
        return {
            r["id"]: [(t["index"], t["answer_message"]) for t in r.get("turns") or []]
            for r in of.records()
        }

    assert turns(run) == turns(local)
    assert len(turns(run)["multi"]) == 2
    one_line_error(
        moa(
            "relabel",
            str(write_jsonl(tmp_path / "x.jsonl", dataset())),
            "-t",
            str(topo),
            "--out",
            str(tmp_path / "ray"),
            "--name",
            "turns",
            "--engine",
            "ray",
        ),
        "was relabeled with --turns all",
    )
