"""`moa relabel --engine batch` end to end through the fake Batch APIs with the real openai and
anthropic clients: one batch per model per wave, the same records as the online engine at
half the price, durable across kill -9 and --detach (nothing submitted twice), per-request
failures and expired batches retried in later waves, stragglers finished online, early stop
keeping rows out of later waves, limits sharding a wave, the estimate and the budget at batch
prices."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from langgraph_moa.batch import RelabelRun, relabel
from langgraph_moa.testing.fake_anthropic import FakeAnthropic
from langgraph_moa.testing.fake_batches import BatchBehavior
from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import MOA
from tests.conftest import run_moa as moa

PRICES = (
    "prices:\n"
    "  'openai:a': {input_per_mtok: 1000, output_per_mtok: 2000}\n"
    "  'openai:b': {input_per_mtok: 1000, output_per_mtok: 2000}\n"
    "  'openai:c': {input_per_mtok: 1000, output_per_mtok: 2000}\n"
    "  'openai:agg': {input_per_mtok: 1000, output_per_mtok: 2000}\n"
)
ONE_LAYER = (
    "name: one\nlayers:\n  - proposers: [{name: a, model: 'openai:a'}]\n"
    "aggregator: {model: 'openai:agg'}\n" + PRICES
)
TWO_LAYERS = (
    "name: waves\nlayers:\n"
    "  - proposers: [{name: a, model: 'openai:a'}, {name: b, model: 'openai:b'}]\n"
    "  - proposers: [{name: c, model: 'openai:c'}]\n"
    "aggregator: {model: 'openai:agg'}\n" + PRICES
)


def reply(body: dict[str, Any], number: int, choice: int) -> str:
    """An answer that depends only on the request, so two engines give the same answers; a
    row whose question holds "agree" gets 42 from every proposer."""
    said = json.dumps(body["messages"], sort_keys=True)
    if "agree" in said:
        return "The answer is 42."
    digest = hashlib.sha256(f"{body['model']} {said}".encode()).hexdigest()
    return f"{body['model']} says {int(digest[:6], 16)}"


@pytest.fixture
def upstream(fake: FakeOpenAI) -> FakeOpenAI:
    for model in ("a", "b", "c", "agg"):
        fake.behave(model, reply=reply)
    fake.batches.behavior = BatchBehavior(turnaround_s=0.05)
    return fake


def topology(tmp_path: Path, text: str = TWO_LAYERS, name: str = "waves") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def rows(n: int, *, agree: frozenset[int] = frozenset()) -> list[dict[str, Any]]:
    return [
        {
            "id": f"r{k}",
            "messages": [
                {"role": "user", "content": f"Question {k}{' agree' if k in agree else ''}?"},
                {"role": "assistant", "content": f"Original answer {k}."},
            ],
        }
        for k in range(n)
    ]


def write_jsonl(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def batch_models(fake: FakeOpenAI) -> list[tuple[tuple[str, ...], int]]:
    return [(b.models, b.requests) for b in fake.batches.created()]


def answers(run: RelabelRun) -> dict[str, Any]:
    return {r["id"]: (r["result"] or {}).get("answer") for r in run.records()}


def test_two_layers_run_in_waves_one_batch_per_model_at_half_price(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", rows(6))
    run = relabel(
        data, topology=topology(tmp_path), out=tmp_path / "b", engine="batch", poll_s=0.05
    )
    assert run.totals["done"] == 6 and run.totals["failed"] == 0
    made = batch_models(upstream)
    # wave 1: a and b, one batch each; wave 2: c; wave 3: the aggregator; 6 requests each
    assert sorted(made) == sorted([(("a",), 6), (("b",), 6), (("c",), 6), (("agg",), 6)])
    assert all(r.batch for r in upstream.requests)  # not one request was sent online
    online = relabel(data, topology=topology(tmp_path), out=tmp_path / "o")
    assert answers(run) == answers(online)
    by_id = {r["id"]: r for r in online.records()}
    for record in run.records():
        twin = by_id[record["id"]]
        assert record["status"] == twin["status"] == "done"
        assert (record["calls"], record["tokens"]) == (twin["calls"], twin["tokens"])
        assert record["cost_usd"] == pytest.approx((twin["cost_usd"] or 0.0) / 2)
        assert record["cost_usd"]
        result, other = record["result"], twin["result"]
        assert result is not None and other is not None
        assert [[p["model"] for p in layer] for layer in result["layers"]] == [
            [p["model"] for p in layer] for layer in other["layers"]
        ]
        assert all(p.get("batch") for layer in result["layers"] for p in layer)
        usage = result["usage"]["by_model"]
        assert {m: u.get("batch_calls") for m, u in usage.items()} == {
            m: 1 for m in ("openai:a", "openai:b", "openai:c", "openai:agg")
        }
    # the exports are the same rows with the same answers (in the order rows finished)
    mine = run.export("sft").path.read_text().splitlines()
    theirs = online.export("sft").path.read_text().splitlines()
    assert sorted(mine) == sorted(theirs) and len(mine) == 6
    assert run.manifest.batch is not None and run.manifest.batch["waves"] == 3
    # what the batch price saved, as the session counts it: the online run's cost less ours
    assert run.session.batch_saved_usd == pytest.approx(online.cost_usd - run.cost_usd)
    assert run.session.batch_saved_usd > 0


def test_detach_submits_a_wave_and_exits_and_a_rerun_goes_on_without_resubmitting(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", rows(3))
    topo = topology(tmp_path)
    upstream.batches.behavior = BatchBehavior(turnaround_s=0.05, hold=True)
    base = ["relabel", str(data), "-t", str(topo), "--out", str(tmp_path / "runs")]
    first = moa(*base, "--engine", "batch", "--detach", "--poll", "0.05")
    assert first.returncode == 0, first.stderr
    assert "rerun the same command" in first.stderr
    assert sorted(m for m, _ in batch_models(upstream)) == [("a",), ("b",)]
    # the batches still run: a detached rerun polls once, submits nothing, exits
    again = moa(*base, "--engine", "batch", "--detach", "--poll", "0.05")
    assert again.returncode == 0, again.stderr
    assert len(upstream.batches.created()) == 2 and upstream.batches.creates == 2
    upstream.batches.behavior = BatchBehavior(turnaround_s=0.05)
    upstream.batches.release()
    done = moa(*base, "--engine", "batch", "--poll", "0.05", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["totals"]["done"] == 3
    assert sorted(batch_models(upstream)) == sorted(
        [(("a",), 3), (("b",), 3), (("c",), 3), (("agg",), 3)]
    )
    assert upstream.batches.creates == 4


def _wait(predicate: Any, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def test_kill_9_while_waiting_and_after_a_submit_not_yet_recorded_submits_nothing_twice(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", rows(3))
    topo = topology(tmp_path)
    out = tmp_path / "runs"
    upstream.batches.behavior = BatchBehavior(turnaround_s=0.05, hold=True)
    args = ["relabel", str(data), "-t", str(topo), "--out", str(out), "--engine", "batch"]
    proc = subprocess.Popen(
        [*MOA, *args, "--poll", "0.05", "-q"],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait(lambda: len(upstream.batches.created()) == 2)
        time.sleep(0.3)  # polling the held batches
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    store = out / "waves-in" / "batches.sqlite"
    # the window between a create and its id being recorded: as a kill there leaves it
    with sqlite3.connect(store) as conn:
        conn.execute(
            "UPDATE batches SET state = 'writing', provider_id = NULL WHERE model = 'openai:a'"
        )
        conn.execute("UPDATE requests SET state = 'queued' WHERE model = 'openai:a'")
    upstream.batches.behavior = BatchBehavior(turnaround_s=0.05)
    upstream.batches.release()
    done = moa(*args, "--poll", "0.05", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["totals"]["done"] == 3
    assert upstream.batches.creates == 4  # a, b (once each), then c and agg
    assert len(upstream.requests_for("a")) == 3  # each row's request to a, once


def test_a_failed_request_and_an_expired_batch_are_retried_in_the_next_wave(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    upstream.behave("a", reply=reply, faults=[500])  # the first request to a fails
    upstream.batches.behavior = BatchBehavior(turnaround_s=0.05, expire_last=2)

    def first_wave_only(progress: Any) -> None:  # later batches do not expire
        if (progress.batch or {}).get("submitted"):
            upstream.batches.behavior = BatchBehavior(turnaround_s=0.05)

    data = write_jsonl(tmp_path / "in.jsonl", rows(4))
    run = relabel(
        data, topology=topology(tmp_path, ONE_LAYER, "one"), out=tmp_path / "b", engine="batch",
        poll_s=0.05, on_progress=first_wave_only,
    )  # fmt: skip
    assert run.totals["done"] == 4
    made = batch_models(upstream)
    # a: 4 requests, the first failed (500) and the last 2 expired: the next wave sends
    # those 3 again
    assert [n for m, n in made if m == ("a",)] == [4, 3]
    assert upstream.batches.created()[0].outcome == "expired"
    assert sum(1 for r in upstream.requests_for("a") if r.batch) >= 5
    for record in run.records():
        (proposal,) = (record["result"] or {})["layers"][0]
        assert proposal["ok"] and proposal["batch"]


def test_retry_online_sends_a_failed_request_online_instead_of_in_a_wave(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    upstream.behave("a", reply=reply, faults=[503])
    data = write_jsonl(tmp_path / "in.jsonl", rows(3))
    run = relabel(
        data, topology=topology(tmp_path, ONE_LAYER, "one"), out=tmp_path / "b", engine="batch",
        poll_s=0.05, retry_online=True,
    )  # fmt: skip
    assert run.totals["done"] == 3
    assert [n for m, n in batch_models(upstream) if m == ("a",)] == [3]  # no second wave of a
    online = [r for r in upstream.requests_for("a") if not r.batch]
    assert len(online) == 1
    kinds = sorted(bool((r["result"] or {})["layers"][0][0].get("batch")) for r in run.records())
    assert kinds == [False, True, True]


def test_stragglers_are_finished_online(upstream: FakeOpenAI, tmp_path: Path) -> None:
    upstream.batches.behavior = BatchBehavior(turnaround_s=0.05, hold=True, hold_done=1)
    data = write_jsonl(tmp_path / "in.jsonl", rows(3))
    run = relabel(
        data, topology=topology(tmp_path, ONE_LAYER, "one"), out=tmp_path / "b", engine="batch",
        poll_s=0.05, finish_online_after=0.3,
    )  # fmt: skip
    assert run.totals["done"] == 3
    proposals = [(r["result"] or {})["layers"][0][0] for r in run.records()]
    assert sum(1 for p in proposals if not p.get("batch")) >= 2  # sent online
    online = [r for r in upstream.requests_for("a") if not r.batch]
    assert len(online) >= 2
    assert run.session.batch is not None and run.session.batch["online"] >= 2


def test_early_stop_keeps_agreeing_rows_out_of_later_waves(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    text = TWO_LAYERS.replace(
        "  - proposers: [{name: c",
        "    early_stop: {agreement: 1.0, extract: number}\n  - proposers: [{name: c",
    )
    data = write_jsonl(tmp_path / "in.jsonl", rows(6, agree=frozenset({0, 1, 2, 3})))
    run = relabel(
        data, topology=topology(tmp_path, text), out=tmp_path / "b", engine="batch", poll_s=0.05
    )
    assert run.totals["done"] == 6
    made = dict(batch_models(upstream))
    assert made[("a",)] == 6 and made[("c",)] == 2  # only the 2 rows that disagree went on


def test_limits_shard_a_wave_into_several_batches(upstream: FakeOpenAI, tmp_path: Path) -> None:
    from langgraph_moa.llm import batch_api

    data = write_jsonl(tmp_path / "in.jsonl", rows(5))
    limited = batch_api.BatchLimits(
        max_requests=2, max_bytes=10_000_000, one_model_per_batch=True, custom_id_max=64
    )
    old = batch_api.OPENAI_LIMITS
    batch_api.OPENAI_LIMITS = limited
    try:
        run = relabel(
            data, topology=topology(tmp_path, ONE_LAYER, "one"), out=tmp_path / "b", engine="batch",
            poll_s=0.05,
        )  # fmt: skip
    finally:
        batch_api.OPENAI_LIMITS = old
    assert run.totals["done"] == 5
    assert sorted(n for m, n in batch_models(upstream) if m == ("a",)) == [1, 2, 2]


def test_estimate_and_budget_use_batch_prices(upstream: FakeOpenAI, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", rows(4))
    topo = topology(tmp_path)
    found = moa(
        "relabel", str(data), "-t", str(topo), "--out", str(tmp_path / "r"), "--estimate",
        "--engine", "batch", "--json",
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    worst = json.loads(found.stdout)
    assert worst["waves"] == 3
    assert worst["batch_cost_usd"] == pytest.approx(worst["cost_usd"] / 2, rel=1e-6)
    text = moa(
        "relabel", str(data), "-t", str(topo), "--out", str(tmp_path / "r"), "--estimate",
        "--engine", "batch",
    )  # fmt: skip
    assert re.search(r"with --engine batch: \$[\d.]+ at batch prices", text.stdout)
    # a budget the online worst case of all rows exceeds, but their batch worst case fits
    budget = worst["batch_cost_usd"] * 1.01
    run = relabel(
        data, topology=topo, out=tmp_path / "b", engine="batch", poll_s=0.05, max_usd=budget
    )
    assert run.totals["done"] == 4 and run.stopped is None
    assert run.cost_usd <= budget


def test_anthropic_message_batches_carry_a_wave(claude: FakeAnthropic, tmp_path: Path) -> None:
    claude.behave("claude-haiku-4-5", reply=reply)
    claude.batches.behavior = BatchBehavior.for_shape("anthropic")
    claude.batches.behavior.turnaround_s = 0.05
    text = (
        "name: claude\nlayers:\n"
        "  - proposers: [{name: x, model: 'anthropic:claude-haiku-4-5', temperature: 0.5},"
        " {name: y, model: 'anthropic:claude-haiku-4-5', temperature: 0.9}]\n"
        "aggregator: {model: 'anthropic:claude-haiku-4-5'}\n"
    )
    data = write_jsonl(tmp_path / "in.jsonl", rows(3))
    run = relabel(
        data, topology=topology(tmp_path, text, "claude"), out=tmp_path / "b", engine="batch",
        poll_s=0.05,
    )  # fmt: skip
    assert run.totals["done"] == 3
    made = [(b.models, b.requests) for b in claude.batches.created()]
    assert made == [(("claude-haiku-4-5",), 6), (("claude-haiku-4-5",), 3)]  # 2 waves
    for record in run.records():
        assert all(p["batch"] and p["ok"] for p in (record["result"] or {})["layers"][0])
        assert record["tokens"] > 0


def test_bad_batch_options_are_one_line(tmp_path: Path, upstream: FakeOpenAI) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", rows(1))
    topo = topology(tmp_path)
    base = ["relabel", str(data), "-t", str(topo), "--out", str(tmp_path / "r")]
    for extra, words in (
        (["--detach"], "go with --engine batch"),
        (["--engine", "batch", "--finish-online-after", "soon"], "not a duration"),
        (["--engine", "batch", "--poll", "0"], "--poll must be more than 0"),
    ):
        found = moa(*base, *extra)
        assert found.returncode == 2, (extra, found.stderr)
        assert words in found.stderr and "Traceback" not in found.stderr


def test_a_batch_that_never_finishes_a_request_ends_it_as_a_failure_not_a_loop(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    upstream.batches.behavior = BatchBehavior(turnaround_s=0.05, expire_last=10)
    data = write_jsonl(tmp_path / "in.jsonl", rows(2))
    one = "name: one\nretry: {attempts: 2, initial_s: 0.1, max_s: 0.1}\nlayers:\n"
    one += "  - proposers: [{name: a, model: 'openai:a'}]\naggregator: {model: 'openai:agg'}\n"
    run = relabel(
        data, topology=topology(tmp_path, one + PRICES, "one"), out=tmp_path / "b",
        engine="batch", poll_s=0.05,
    )  # fmt: skip
    assert run.totals["failed"] == 2
    assert [n for m, n in batch_models(upstream)] == [2, 2]  # two tries, then given up
    for record in run.records():
        (proposal,) = (record["result"] or {}).get("layers", [[{}]])[0] or [{}]
        assert "expired" in str(record["error"]) + str(proposal.get("error"))


def test_eval_generates_and_judges_in_waves(upstream: FakeOpenAI, tmp_path: Path) -> None:
    def judge(body: dict[str, Any], number: int, choice: int) -> str:
        text = body["messages"][-1]["content"]
        first = re.search(r"<answer_of_assistant_A>\n(.*?)\n<", text, re.S)
        assert first is not None
        return "[[A>B]]" if "the baseline" not in first.group(1) else "[[B>A]]"

    upstream.behave("judge", reply=judge)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"openai:judge": {"input_per_mtok": 100, "output_per_mtok": 400}}))
    data = tmp_path / "mine.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": f"x{k}", "prompt": f"question {k}", "baseline": "the baseline"})
            + "\n"
            for k in range(3)
        )
    )
    result = moa(
        "eval", str(data), "-t", str(topology(tmp_path)), "--judge", "openai:judge",
        "--out", str(tmp_path / "evals"), "--engine", "batch", "--poll", "0.05", "--json",
        "--resamples", "100", env=dict(os.environ) | {"MOA_PRICES": str(prices)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    (side,) = summary["topologies"]
    assert side["counts"]["judged"] == 3
    made = sorted(batch_models(upstream))
    # the topology's three waves (a and b, c, the aggregator), then the judge's: 2 games an item
    assert made == sorted([(("a",), 3), (("b",), 3), (("c",), 3), (("agg",), 3), (("judge",), 6)])
    assert all(r.batch for r in upstream.requests)
    usage = summary["judge_usage"]
    assert usage["judgments"] == 6 and usage["failed"] == 0
    online = (usage["prompt_tokens"] * 100 + usage["completion_tokens"] * 400) / 1e6
    assert usage["cost_usd"] == pytest.approx(online / 2, rel=1e-6)


def test_kill_9_at_any_moment_then_a_rerun_submits_each_request_once(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    """A run killed again and again at spread-out moments (writing files, submitting, polling,
    reading results, resuming rows), then left to finish: every request went out in exactly
    one batch, and every row is done."""
    upstream.batches.behavior = BatchBehavior(turnaround_s=0.3)
    data = write_jsonl(tmp_path / "in.jsonl", rows(8))
    topo = topology(tmp_path)
    out = tmp_path / "runs"
    args = ["relabel", str(data), "-t", str(topo), "--out", str(out), "--engine", "batch"]
    for delay in (1.6, 2.1, 2.6, 3.1, 3.6):  # the process takes ~1.5 s to start
        proc = subprocess.Popen(
            [*MOA, *args, "--poll", "0.05", "-q"],
            env=os.environ.copy(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = len(upstream.batches.created())
    assert before >= 2  # the kills came in the middle of the waves
    done = moa(*args, "--poll", "0.05", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["totals"]["done"] == 8
    for model in ("a", "b", "c", "agg"):
        sent = [r for r in upstream.requests_for(model) if r.batch]
        assert len(sent) == 8, (model, len(sent))  # each row's request, in one batch, once
    assert not [r for r in upstream.requests if not r.batch]


def test_a_tight_budget_holds_rows_back_until_rows_in_waves_settle(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", rows(5))
    topo = topology(tmp_path)
    worst = json.loads(
        moa(
            "relabel",
            str(data),
            "-t",
            str(topo),
            "--out",
            str(tmp_path / "r"),
            "--estimate",
            "--engine",
            "batch",
            "--json",
        ).stdout
    )
    per_row = worst["batch_cost_usd"] / 5
    budget = per_row * 2.5  # two rows' worst case at a time, no more
    run = relabel(
        data, topology=topo, out=tmp_path / "b", engine="batch", poll_s=0.05, max_usd=budget
    )
    assert run.totals["done"] == 5 and run.stopped is None  # every row, in later passes
    assert run.cost_usd <= budget
    first_wave = [n for m, n in batch_models(upstream) if m == ("a",)]
    assert first_wave[0] == 2 and sum(first_wave) == 5  # the others waited for room
