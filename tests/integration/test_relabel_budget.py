"""`moa relabel --max-usd` against priced fake models: the budget is spent (between 0.75 and 1 of
it when rows remain) and never exceeded, with CJK rows, an upstream that ignores max_tokens and
rows that fail after paid calls; the stop says why; truncated answers make rows degraded."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from langgraph_moa.batch import RelabelRun, relabel
from langgraph_moa.batch.one_row import row_worst_case_usd
from langgraph_moa.batch.row_check import Row
from langgraph_moa.batch.rows import rows_of
from langgraph_moa.graphs.builder import build_graph
from langgraph_moa.llm.usage import meter_calls
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.topology import Topology, load_topology
from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import run_moa as moa

MAX_TOKENS = 40
PRICE = {"input_per_mtok": 1000, "output_per_mtok": 1000}  # $0.001 a token
TOPOLOGY = (
    "name: priced\nlayers:\n"
    f"  - proposers: [{{name: a, model: 'openai:a', max_tokens: {MAX_TOKENS}}},\n"
    f"                {{name: b, model: 'openai:b', max_tokens: {MAX_TOKENS}}}]\n"
    f"aggregator: {{model: 'openai:agg', max_tokens: {MAX_TOKENS}}}\n"
    "prices:\n"
    + "".join(
        f"  'openai:{m}': {{input_per_mtok: 1000, output_per_mtok: 1000}}\n"
        for m in ("a", "b", "agg")
    )
)
STOP = re.compile(
    r"stopped at the budget: spent \$(\d+\.\d{4}) of \$(\d+\.\d{4}); the next row "
    r"\((\S+)\) could cost up to \$(\d+\.\d{4})"
)


def long_reply(body: dict[str, Any], number: int, choice: int) -> str:
    """35 words: within max_tokens (the fake counts a word as a token), so a row costs a fair
    share of its worst case."""
    return " ".join(f"w{k}" for k in range(35))


@pytest.fixture
def upstream(fake: FakeOpenAI) -> FakeOpenAI:
    for model in ("a", "b", "agg"):
        fake.behave(model, reply=long_reply)
    return fake


def topology(tmp_path: Path) -> Path:
    path = tmp_path / "priced.yaml"
    path.write_text(TOPOLOGY)
    return path


def rows(n: int, text: str = "Question number {k}?") -> list[dict[str, Any]]:
    return [
        {
            "id": f"r{k}",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": text.format(k=k)},
            ],
        }
        for k in range(n)
    ]


def write_jsonl(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items))
    return path


def worst_of(topo: Path, item: dict[str, Any]) -> float:
    found = load_topology(topo)
    row = next(iter(rows_of([item])))
    assert isinstance(row, Row)
    return row_worst_case_usd(found, row, PriceTable(found.prices))


def check_stop(run: RelabelRun, budget: float) -> None:
    """Stopped at the budget with rows left, between 0.75 and 1 of it spent, and said why."""
    spent = run.totals["cost_usd"]
    assert run.stopped == "budget"
    assert 0.75 * budget <= spent <= budget, (spent, budget)
    records = list(run.records())
    assert spent == pytest.approx(sum(r["cost_usd"] or 0 for r in records))
    reason = run.session.stop_reason
    assert reason is not None
    found = STOP.fullmatch(reason)
    assert found, reason
    assert float(found[1]) == pytest.approx(spent, abs=6e-5)
    assert found[2] == f"{budget:.4f}"
    assert float(found[1]) + float(found[4]) > budget - 1e-4  # the next row did not fit


@pytest.mark.slow
def test_the_budget_is_spent_and_never_exceeded(upstream: FakeOpenAI, tmp_path: Path) -> None:
    topo = topology(tmp_path)
    items = rows(60)
    worst = worst_of(topo, items[0])
    for k, factor in enumerate((4.5, 7.0, 11.0)):
        budget = worst * factor
        run = relabel(
            items, topology=topo, out=tmp_path / f"runs{k}", max_usd=budget, concurrency=4
        )
        assert run.totals["done"] < len(items)  # rows remain
        check_stop(run, budget)
    # each row cost less than what was reserved for it
    for record in run.records():
        assert 0 < (record["cost_usd"] or 0) <= worst


@pytest.mark.slow
def test_the_cli_prints_why_it_stopped(upstream: FakeOpenAI, tmp_path: Path) -> None:
    topo = topology(tmp_path)
    items = rows(30)
    data = write_jsonl(tmp_path / "logs.jsonl", items)
    budget = worst_of(topo, items[0]) * 5
    out = tmp_path / "runs"
    result = moa(
        "relabel", str(data), "-t", str(topo), "--out", str(out), "--json",
        "--max-usd", f"{budget:.6f}", "--concurrency", "3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    session = summary["session"]
    assert session["stopped"] == "budget"
    assert STOP.fullmatch(session["stop_reason"]), session["stop_reason"]
    assert "logs.jsonl:" in session["stop_reason"]
    assert f"moa: note: {session['stop_reason']}; rerun with a larger --max-usd" in " ".join(
        result.stderr.split()
    )
    assert 0.75 * budget <= summary["totals"]["cost_usd"] <= budget


def cjk_usage(body: dict[str, Any], texts: list[str]) -> dict[str, int]:
    """An upstream that counts 2 tokens a CJK character (harsher than real tokenizers) and a
    token a word otherwise: what the old 4-characters-a-token estimate undercounted 8 times."""

    def count(text: str) -> int:
        cjk = sum(1 for c in text if "\u3000" <= c <= "\u9fff")
        return 2 * cjk + len(text.split())

    prompt = sum(count(str(m.get("content", ""))) + 4 for m in body["messages"])
    completion = sum(count(t) for t in texts)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": 0}


def test_cjk_rows_stay_within_the_budget(upstream: FakeOpenAI, tmp_path: Path) -> None:
    for model in ("a", "b", "agg"):
        upstream.behave(model, usage=cjk_usage)
    topo = topology(tmp_path)
    question = "请用三句话解释为什么天空是蓝色的并举一个日常生活中的例子说明光的散射。" * 6
    items = rows(40, text=question + "第{k}题")
    worst = worst_of(topo, items[0])
    budget = worst * 5
    run = relabel(items, topology=topo, out=tmp_path / "runs", max_usd=budget, concurrency=4)
    assert run.totals["done"] < len(items)
    check_stop(run, budget)
    for record in run.records():  # the reservation held for every row
        assert record["cost_usd"] is not None and record["cost_usd"] <= worst


@pytest.mark.parametrize("how", ["long replies", "usage above the limit"])
def test_an_upstream_that_ignores_max_tokens_never_takes_the_run_over(
    upstream: FakeOpenAI, tmp_path: Path, how: str
) -> None:
    endless = " ".join(["more"] * 3000)  # 3,000 words (tokens, for the fake) a reply
    if how == "long replies":  # read up to what max_tokens allows, then dropped
        upstream.behave("b", reply=lambda body, n, k: endless)
        upstream.behave("agg", reply=lambda body, n, k: endless)
    else:  # writes little but says it wrote 5,000 tokens
        upstream.behave("b", usage={"prompt_tokens": 30, "completion_tokens": 5000})
    topo = topology(tmp_path)
    items = rows(40)
    worst = worst_of(topo, items[0])
    budget = worst * 5
    run = relabel(items, topology=topo, out=tmp_path / "runs", max_usd=budget, concurrency=4)
    check_stop(run, budget)
    records = list(run.records())
    for record in records:
        assert record["calls"] == 3 and record["cost_usd"] is not None
        assert record["cost_usd"] <= worst  # what was reserved for it held
        if how == "long replies":  # the aggregator's answer was refused: the row failed
            assert record["status"] == "failed" and record["error"] == (
                "the aggregator (openai:agg) failed: the upstream ignored max_tokens: the reply "
                f"passed {MAX_TOKENS * 36 + 4096} bytes; reading stopped there"
            )
        else:  # b's answer was refused and counted at the limit: the row is degraded
            assert record["status"] == "done" and record["degraded_reasons"] == ["proposer_failed"]
            assert record["result"] is not None
            b = record["result"]["layers"][0][1]
            assert b["error"] == (
                "the upstream ignored max_tokens: it reported 5000 completion tokens for a limit "
                f"of {MAX_TOKENS}; counted at the limit"
            )
            assert b["usage"]["completion_tokens"] == MAX_TOKENS
    assert RelabelRun.open(run.path).totals["cost_usd"] == pytest.approx(run.totals["cost_usd"])


def test_a_streamed_reply_past_max_tokens_is_cut_off(upstream: FakeOpenAI, tmp_path: Path) -> None:
    upstream.behave("agg", reply=lambda body, n, k: " ".join(["more"] * 3000))
    topo = load_topology(topology(tmp_path))
    graph = build_graph(topo)

    async def streamed() -> Any:
        inputs: Any = {"messages": [HumanMessage("Why is the sky blue?")]}
        with (
            meter_calls(PriceTable(topo.prices)) as meter,
            pytest.raises(Exception, match="ignored max_tokens") as failed,
        ):
            async for _ in graph.astream(inputs, stream_mode="messages"):  # tokens stream
                pass
        return failed.value, meter

    error, meter = asyncio.run(streamed())
    assert "it was cut off there" in str(error)
    assert f"more than {MAX_TOKENS} tokens allow" in str(error)
    # counted at its prompt and max_tokens: the usage that comes at the end never arrived
    assert meter.calls == 3 and meter.completion_tokens == 35 + 35 + MAX_TOKENS
    assert upstream.requests_for("agg")[0].body.get("stream") is True


@pytest.mark.slow
def test_a_row_that_fails_after_paid_proposers_counts(upstream: FakeOpenAI, tmp_path: Path) -> None:
    upstream.behave("agg", always=400)
    topo = topology(tmp_path)
    items = rows(80)  # a failed row costs a tenth of its worst case here
    worst = worst_of(topo, items[0])
    budget = worst * 4.2
    run = relabel(items, topology=topo, out=tmp_path / "runs", max_usd=budget, concurrency=2)
    records = list(run.records())
    assert records and all(r["status"] == "failed" for r in records)
    record = records[0]
    assert record["error"] and "aggregator" in record["error"]
    # two proposers paid, one aggregator request refused: what the fake reported, priced
    proposals = [r for r in upstream.requests if r.model in ("a", "b") and r.status == 200]
    assert len(proposals) == 2 * len(records)
    assert record["calls"] == 3 and record["tokens"] > 0
    per_row = [sum(len(str(m["content"]).split()) for m in req.messages) + 35 for req in proposals]
    assert sum(r["cost_usd"] or 0 for r in records) == pytest.approx(sum(per_row) * 0.001)
    assert run.totals["cost_usd"] == pytest.approx(sum(per_row) * 0.001)
    # failed rows count against the budget: the run stopped there, with rows left
    check_stop(run, budget)


def test_the_meter_agrees_with_the_state(upstream: FakeOpenAI, tmp_path: Path) -> None:
    topo = load_topology(topology(tmp_path))
    graph = build_graph(topo)

    async def one() -> tuple[Any, Any]:
        with meter_calls(PriceTable(topo.prices)) as meter:
            state = await graph.ainvoke({"messages": [HumanMessage("Why is the sky blue?")]})
        return state, meter

    state, meter = asyncio.run(one())
    usage = state["usage"]
    assert meter.calls == sum(m["calls"] for m in usage["by_model"].values()) == 3
    assert meter.tokens == usage["total_tokens"] > 0
    assert meter.cost_usd == pytest.approx(usage["cost_usd"])
    # and a relabeled done row records the state's figures
    run = relabel(rows(2), topology=topo, out=tmp_path / "runs")
    for record in run.records():
        assert record["status"] == "done" and record["degraded_reasons"] == []
        assert record["result"] is not None
        figures = record["result"]["usage"]
        assert record["cost_usd"] == figures["cost_usd"]
        assert record["tokens"] == figures["total_tokens"]


def test_a_truncated_answer_makes_the_row_degraded(upstream: FakeOpenAI, tmp_path: Path) -> None:
    upstream.behave("agg", finish_reason="length")
    topo: Topology = load_topology(topology(tmp_path))
    run = relabel(rows(2), topology=topo, out=tmp_path / "runs")
    assert run.totals["done"] == 2 and run.totals["degraded"] == 2
    for record in run.records():
        assert record["status"] == "done" and record["degraded"] is True
        assert record["degraded_reasons"] == ["truncated"]
        assert record["result"] is not None
        aggregator = record["result"]["aggregator"]
        assert aggregator["finish_reason"] == "length"
        assert aggregator["truncated"] == {"limit": MAX_TOKENS}
        assert aggregator["node"] == "aggregator"
    # a failed proposer is named too
    upstream.behave("b", always=400)
    run = relabel(rows(3), topology=topo, out=tmp_path / "runs2")
    reasons = {tuple(r["degraded_reasons"]) for r in run.records()}
    assert reasons == {("truncated", "proposer_failed")}


def test_a_truncated_best_proposal_as_the_fallback_is_named(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    upstream.behave("agg", always=400)
    upstream.behave("a", finish_reason="length")
    path = topology(tmp_path)
    path.write_text(TOPOLOGY + "fallback: best_proposal\n")
    run = relabel(rows(2), topology=path, out=tmp_path / "runs")
    for record in run.records():
        assert record["status"] == "done" and record["degraded"] is True
        assert record["degraded_reasons"] == ["truncated", "fallback"]
        assert record["result"] is not None
        fallback = record["result"]["fallback"]
        assert fallback["source"] == "L1/a" and fallback["truncated"] == {"limit": MAX_TOKENS}


def test_a_truncated_candidate_answered_verbatim_is_named(fake: FakeOpenAI) -> None:
    for model, text in {"a": "Maybe 41.", "b": "The answer is 42", "c": "It is 42."}.items():
        fake.behave(model, reply=lambda body, n, k, text=text: text)
    fake.behave("b", finish_reason="length")  # the winner (first of the majority) was cut
    topo = Topology.model_validate(
        {
            "layers": [{"proposers": [{"model": f"openai:{m}", "max_tokens": 64} for m in "abc"]}],
            "aggregator": {"mode": "vote", "extract": "number"},
        }
    )
    state = asyncio.run(build_graph(topo).ainvoke({"messages": [HumanMessage("6 x 7?")]}))
    assert state["aggregation"]["winner"] == "L1/b"
    assert state["degraded"] is True
    assert state["aggregator"]["truncated"] == {"limit": 64}
    assert state["aggregator"]["finish_reason"] == "length"
