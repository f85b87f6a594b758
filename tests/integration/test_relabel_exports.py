"""Exports that train the right thing, end to end against the fake upstream: multi-turn rows
(with a system message, with tools) relabeled one turn or every turn, with relabeled or
original context, exported in every format and checked field by field (OpenAI's per-message
weights, TRL's prompt/completion and preference rows, OpenAI's preference rows), each file
loaded with ``datasets``; what an export leaves out, by reason, in ``--json`` and in its one
line; a rerun with other ``--turns`` refused."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from langgraph_moa.batch import RelabelRun, relabel
from langgraph_moa.nodes.prompts import SYNTHESIZE_PROMPT
from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import one_line_error
from tests.conftest import run_moa as moa

TOPOLOGY = (
    "name: mix\nretry: {attempts: 1}\nlayers:\n"
    "  - proposers: [{name: a, model: 'openai:a'}, {name: b, model: 'openai:b'}]\n"
    "aggregator: {model: 'openai:agg'}\n"
    "prices:\n"
    "  'openai:a': {input_per_mtok: 1000, output_per_mtok: 1000}\n"
    "  'openai:b': {input_per_mtok: 1000, output_per_mtok: 1000}\n"
    "  'openai:agg': {input_per_mtok: 1000, output_per_mtok: 1000}\n"
)

SYSTEM = {"role": "system", "content": "Be brief."}
TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a word up.",
        "parameters": {"type": "object", "properties": {"word": {"type": "string"}}},
    },
}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "lookup", "arguments": json.dumps({"word": "moa"})},
}


def reply(body: dict[str, Any], number: int, choice: int) -> str:
    """Depends only on the request; every model agrees on a request that says ECHO."""
    if any("ECHO" in str(m.get("content")) for m in body["messages"]):
        return "Same answer."
    digest = hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()
    return f"{body['model']} answer {digest[:8]}"


@pytest.fixture
def upstream(fake: FakeOpenAI) -> FakeOpenAI:
    for model in ("a", "b", "agg"):
        fake.behave(model, reply=reply)
    return fake


def dataset() -> list[dict[str, Any]]:
    return [
        {
            "id": "multi",
            "messages": [
                SYSTEM,
                {"role": "user", "content": "First question?"},
                {"role": "assistant", "content": "OLD ONE"},
                {"role": "user", "content": "Second question?"},
                {"role": "assistant", "content": "OLD TWO"},
            ],
        },
        {
            "id": "tools",
            "tools": [TOOL],
            "messages": [
                SYSTEM,
                {"role": "user", "content": "What is moa?"},
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": "a mix of agents"},
                {"role": "assistant", "content": "OLD TOOL ANSWER"},
                {"role": "user", "content": "And in short?"},
                {"role": "assistant", "content": "OLD SHORT"},
            ],
        },
        {
            "id": "nocomp",
            "messages": [
                {"role": "user", "content": "Hello?"},
                {"role": "assistant", "content": "OLD HELLO"},
                {"role": "user", "content": "Anyone there?"},
            ],
        },
        {
            "id": "same",
            "messages": [
                {"role": "user", "content": "ECHO this"},
                {"role": "assistant", "content": "Same answer."},
            ],
        },
    ]


def write_jsonl(path: Path, items: list[Any]) -> Path:
    path.write_text("".join((i if isinstance(i, str) else json.dumps(i)) + "\n" for i in items))
    return path


def ok(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def lines(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def loaded(path: str | Path, tmp_path: Path, count: int) -> None:
    """The file loads with Hugging Face ``datasets``, every line a row."""
    from datasets import load_dataset

    data = load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))
    assert data.num_rows == count


def answers(run: RelabelRun) -> dict[str, list[dict[str, Any]]]:
    """Each row's MoA answers, one per turn, as the record holds them."""
    found: dict[str, list[dict[str, Any]]] = {}
    for record in run.records():
        turns = record.get("turns")
        if turns:
            found[record["id"]] = [t["answer_message"] or {} for t in turns]
        else:
            found[record["id"]] = [record["answer_message"] or {}]
    return found


def assistant_texts(request: Any) -> list[str]:
    return [str(m.get("content")) for m in request.messages if m["role"] == "assistant"]


def asking(upstream: FakeOpenAI, question: str) -> list[Any]:
    """The requests whose last user message of the conversation is ``question`` (a synthesis
    request lists the answers to work from in a user message after it)."""
    synthesis = SYNTHESIZE_PROMPT.split("{", 1)[0]
    return [
        r
        for r in upstream.requests
        if [
            m
            for m in r.messages
            if m["role"] == "user" and not str(m["content"]).startswith(synthesis)
        ][-1]["content"]
        == question
    ]


@pytest.mark.slow
def test_turns_all_relabeled_context_in_every_format(
    upstream: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = write_jsonl(tmp_path / "chats.jsonl", [*dataset(), "{not json"])
    topo = tmp_path / "mix.yaml"
    topo.write_text(TOPOLOGY)
    out = tmp_path / "runs"
    args = ["relabel", str(data), "-t", str(topo), "--out", str(out), "--json"]
    worst = ok(moa(*args, "--turns", "all", "--estimate"))
    assert worst["rows"] == 4 and worst["calls"] == 3 * 7  # 7 turns: a, b, the aggregator
    assert upstream.requests == [] and not out.exists()
    summary = ok(moa(*args, "--turns", "all", "--concurrency", "1"))
    assert summary["totals"]["done"] == 4 and summary["totals"]["invalid"] == 1
    run = RelabelRun.open(out / "mix-chats")
    assert run.manifest.settings["turns"] == "all"
    assert run.manifest.settings["turn_context"] == "relabeled"
    moa_says = answers(run)
    one, two = (m["content"] for m in moa_says["multi"])
    assert one.startswith("agg answer") and two.startswith("agg answer") and one != two

    # the second turn's prompt holds the first turn's MoA answer, not the original
    second = asking(upstream, "Second question?")
    assert {r.model for r in second} == {"a", "b", "agg"}
    for request in second:
        assert one in assistant_texts(request) and "OLD ONE" not in assistant_texts(request)
    # an assistant message answered by tool results stays as it was; the answer after them is
    # a turn, relabeled in the next turn's prompt
    tool_one, tool_two = moa_says["tools"]
    short = asking(upstream, "And in short?")
    assert [r.body["tools"] for r in short if r.model == "agg"] == [[TOOL]]
    for request in short:
        assert tool_one["content"] in assistant_texts(request)
        assert "OLD TOOL ANSWER" not in assistant_texts(request)
    (agg,) = [r for r in short if r.model == "agg"]  # the aggregator sees the tool traffic
    assert [m["tool_calls"][0]["id"] for m in agg.messages if m.get("tool_calls")] == ["call_1"]

    # the record keeps every turn; the row's figures are their sums
    records: dict[str, Any] = {r["id"]: r for r in run.records()}
    multi = records["multi"]
    assert [t["index"] for t in multi["turns"]] == [2, 4]
    assert [t["completion"]["content"] for t in multi["turns"]] == ["OLD ONE", "OLD TWO"]
    assert multi["turn_context"] == "relabeled"
    assert multi["calls"] == sum(t["calls"] for t in multi["turns"]) == 6
    assert multi["cost_usd"] == pytest.approx(sum(t["cost_usd"] for t in multi["turns"]))
    assert multi["answer_message"] == multi["turns"][-1]["answer_message"]
    assert [t["index"] for t in records["tools"]["turns"]] == [4, 6]
    assert [t["index"] for t in records["nocomp"]["turns"]] == [1, 3]
    assert records["nocomp"]["turns"][-1]["completion"] is None

    # sft: one line per row, every assistant turn the MoA's, trained; the rest at weight 0
    sft = ok(moa("export", str(run.path), "--format", "sft", "--json"))
    assert sft["format"] == "sft" and sft["rows"] == 4
    assert sft["left_out"] == {
        "failed": 0,
        "degraded": 0,
        "truncated": 0,
        "invalid": 1,
        "rejected": 0,
        "no_pair": 0,
    }
    by_first_user = {row["messages"][1]["content"]: row for row in lines(sft["path"])}
    assert by_first_user["First question?"] == {
        "messages": [
            SYSTEM,
            {"role": "user", "content": "First question?"},
            {"role": "assistant", "content": one, "weight": 1},
            {"role": "user", "content": "Second question?"},
            {"role": "assistant", "content": two, "weight": 1},
        ]
    }
    tools_row = by_first_user["What is moa?"]
    assert tools_row["tools"] == [TOOL]
    assert tools_row["messages"] == [
        SYSTEM,
        {"role": "user", "content": "What is moa?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL], "weight": 0},
        {"role": "tool", "tool_call_id": "call_1", "content": "a mix of agents"},
        {"role": "assistant", "content": tool_one["content"], "weight": 1},
        {"role": "user", "content": "And in short?"},
        {"role": "assistant", "content": tool_two["content"], "weight": 1},
    ]
    loaded(sft["path"], tmp_path, 4)

    # prompt-completion: one line per turn, the prompt holding the relabeled earlier turns
    pc = ok(moa("export", str(run.path), "--format", "prompt-completion", "--json"))
    assert pc["rows"] == 7 and pc["path"].endswith("prompt-completion.jsonl")
    rows = {(x["id"], x["turn"]): x for x in lines(pc["path"])}
    assert rows["multi", 1] == {
        "id": "multi",
        "turn": 1,
        "prompt": [SYSTEM, {"role": "user", "content": "First question?"}],
        "completion": [{"role": "assistant", "content": one}],
    }
    assert rows["multi", 2]["prompt"] == [
        SYSTEM,
        {"role": "user", "content": "First question?"},
        {"role": "assistant", "content": one},
        {"role": "user", "content": "Second question?"},
    ]
    assert rows["multi", 2]["completion"] == [{"role": "assistant", "content": two}]
    assert rows["tools", 2]["tools"] == [TOOL] and "tools" not in rows["multi", 2]
    assert rows["tools", 1]["prompt"][-1]["role"] == "tool"
    loaded(pc["path"], tmp_path, 7)

    # dpo: one pair per turn, rejected = that turn's original; no pair where they agree
    target = tmp_path / "pairs.jsonl"
    dpo = ok(moa("export", str(run.path), "--format", "dpo", "-o", str(target), "--json"))
    assert dpo["rows"] == 6 and dpo["left_out"]["no_pair"] == 1
    pairs = {(x["id"], x["turn"]): x for x in lines(target)}
    assert set(pairs) == {(r, t) for r in ("multi", "tools", "nocomp") for t in (1, 2)}
    assert pairs["multi", 2]["prompt"] == rows["multi", 2]["prompt"]
    assert pairs["multi", 2]["chosen"] == [{"role": "assistant", "content": two}]
    assert pairs["multi", 2]["rejected"] == [{"role": "assistant", "content": "OLD TWO"}]
    assert pairs["multi", 1]["rejected"] == [{"role": "assistant", "content": "OLD ONE"}]
    assert pairs["multi", 1]["rejected_from"] == "original"
    assert pairs["nocomp", 1]["rejected"] == [{"role": "assistant", "content": "OLD HELLO"}]
    assert pairs["nocomp", 2]["rejected_from"].startswith("proposal:L1/")
    assert pairs["tools", 1]["tools"] == [TOOL]
    loaded(target, tmp_path, 6)

    # openai-dpo: the same pairs, in OpenAI's preference form and nothing else
    oai = ok(moa("export", str(run.path), "--format", "openai-dpo", "--json"))
    assert oai["rows"] == 6 and oai["left_out"]["no_pair"] == 1
    found = lines(oai["path"])
    for line in found:
        assert set(line) == {"input", "preferred_output", "non_preferred_output"}
        assert len(line["preferred_output"]) == len(line["non_preferred_output"]) == 1
        assert line["preferred_output"][0]["role"] == "assistant"
    second_turn = next(x for x in found if x["preferred_output"][0]["content"] == two)
    assert second_turn == {
        "input": {"messages": rows["multi", 2]["prompt"]},
        "preferred_output": [{"role": "assistant", "content": two}],
        "non_preferred_output": [{"role": "assistant", "content": "OLD TWO"}],
    }
    with_tools = next(
        x for x in found if x["preferred_output"][0]["content"] == tool_two["content"]
    )
    assert with_tools["input"]["tools"] == [TOOL]
    assert with_tools["non_preferred_output"] == [{"role": "assistant", "content": "OLD SHORT"}]
    loaded(oai["path"], tmp_path, 6)

    # traces: every turn's calls
    traces = ok(moa("export", str(run.path), "--format", "traces", "--json"))
    assert traces["rows"] == 3 * 7  # 7 turns, a, b and the aggregator each

    # a rerun of this run with other turn settings is refused, nothing called
    upstream.reset()
    one_line_error(moa(*args), "was relabeled with --turns all --turn-context relabeled")
    one_line_error(
        moa(*args, "--turns", "all", "--turn-context", "original"),
        "this one asks --turns all --turn-context original",
    )
    assert upstream.requests == []
    again = ok(moa(*args, "--turns", "all"))
    assert again["session"]["skipped"] == 4 and upstream.requests == []


def test_turns_all_original_context_and_the_default_last_turn(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    topo = tmp_path / "mix.yaml"
    topo.write_text(TOPOLOGY)
    out = tmp_path / "runs"
    items = dataset()[:1]
    run = relabel(items, topology=topo, out=out, name="orig", turns="all", turn_context="original")
    assert run.totals["done"] == 1
    one, two = (m["content"] for m in answers(run)["multi"])
    second = asking(upstream, "Second question?")
    assert {r.model for r in second} == {"a", "b", "agg"}
    for request in second:  # the original first turn, not the MoA's
        assert "OLD ONE" in assistant_texts(request) and one not in assistant_texts(request)

    # sft with original context: one line per turn, the earlier original at weight 0
    written = run.export("sft")
    assert written.rows == 2 and written.path == out / "orig" / "sft.jsonl"
    assert lines(written.path) == [
        {
            "messages": [
                SYSTEM,
                {"role": "user", "content": "First question?"},
                {"role": "assistant", "content": one, "weight": 1},
            ]
        },
        {
            "messages": [
                SYSTEM,
                {"role": "user", "content": "First question?"},
                {"role": "assistant", "content": "OLD ONE", "weight": 0},
                {"role": "user", "content": "Second question?"},
                {"role": "assistant", "content": two, "weight": 1},
            ]
        },
    ]
    pc = lines(run.export("prompt-completion").path)
    assert [x["prompt"][-2:] for x in pc][1] == [
        {"role": "assistant", "content": "OLD ONE"},
        {"role": "user", "content": "Second question?"},
    ]
    pairs = lines(run.export("dpo").path)
    assert [p["rejected"][0]["content"] for p in pairs] == ["OLD ONE", "OLD TWO"]
    assert pairs[1]["prompt"] == pc[1]["prompt"]

    # the default relabels the last turn; the earlier original is kept at weight 0
    last = relabel(items, topology=topo, out=out, name="last")
    assert last.manifest.settings["turns"] == "last"
    (row,) = lines(last.export("sft").path)
    assert row["messages"][2] == {"role": "assistant", "content": "OLD ONE", "weight": 0}
    assert row["messages"][-1]["weight"] == 1
    assert row["messages"][-1]["content"] == two  # the same prompt as turn two above
    (line,) = lines(last.export("prompt-completion").path)
    assert "turn" not in line and line["id"] == "multi"
    assert line["prompt"] == pc[1]["prompt"]
    assert line["completion"] == [{"role": "assistant", "content": two}]
    (oai,) = lines(last.export("openai-dpo").path)
    assert oai["non_preferred_output"] == [{"role": "assistant", "content": "OLD TWO"}]
    assert "tools" not in oai["input"]


def test_a_failed_turn_fails_the_row_and_keeps_what_was_paid(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    topo = tmp_path / "mix.yaml"
    topo.write_text(TOPOLOGY)
    upstream.behave("agg", faults=["ok", 400])  # the second turn's aggregator refuses
    run = relabel(dataset()[:1], topology=topo, out=tmp_path / "runs", name="f", turns="all")
    assert run.totals["failed"] == 1
    (found,) = run.records()
    record: dict[str, Any] = dict(found)
    assert record["status"] == "failed" and record["error"].startswith("turn 2 of 2: ")
    first, failed = record["turns"]
    assert first["status"] == "done" and first["cost_usd"] > 0 and failed["status"] == "failed"
    assert record["cost_usd"] is not None and record["cost_usd"] >= first["cost_usd"]
    assert record["calls"] == first["calls"] + failed["calls"]
    assert run.totals["cost_usd"] == pytest.approx(record["cost_usd"])
    written = run.export("prompt-completion")
    assert written.rows == 0 and written.left_out["failed"] == 1


@pytest.mark.slow
def test_left_out_rows_are_counted_by_reason(upstream: FakeOpenAI, tmp_path: Path) -> None:
    items: list[Any] = [
        {"id": f"r{k}", "messages": [{"role": "user", "content": f"Question {k}?"}]}
        for k in range(5)
    ]
    data = write_jsonl(tmp_path / "logs.jsonl", [*items, "{not json"])
    topo = tmp_path / "mix.yaml"
    topo.write_text(TOPOLOGY)
    out = tmp_path / "runs"
    args = ["relabel", str(data), "-t", str(topo), "--out", str(out), "--json"]
    ok(moa(*args, "--limit", "2"))  # r0, r1: fine
    upstream.behave("b", always=500)
    ok(moa(*args, "--limit", "3"))  # r2: a proposer failed (degraded)
    upstream.behave("b", always=None)
    upstream.behave("agg", finish_reason="length")
    ok(moa(*args, "--limit", "4"))  # r3: the answer was cut at max_tokens
    upstream.behave("agg", finish_reason="stop", always=400)
    final = ok(moa(*args))  # r4 fails; the bad line is invalid
    assert final["totals"]["done"] == 4 and final["totals"]["failed"] == 1
    assert final["totals"]["invalid"] == 1
    run_dir = out / "mix-logs"

    sft = ok(moa("export", str(run_dir), "--format", "sft", "--json"))
    assert sft["rows"] == 2
    assert sft["left_out"] == {
        "failed": 1,
        "degraded": 1,
        "truncated": 1,
        "invalid": 1,
        "rejected": 0,
        "no_pair": 0,
    }
    plain = moa("export", str(run_dir), "--format", "sft")
    assert plain.returncode == 0, plain.stderr
    assert plain.stderr.strip() == (
        f"wrote 2 rows to {run_dir / 'sft.jsonl'}; left out 4: 1 failed, 1 degraded, "
        "1 truncated, 1 invalid (--include-degraded keeps them)"
    )
    kept = ok(moa("export", str(run_dir), "--format", "dpo", "--include-degraded", "--json"))
    assert kept["rows"] == 4
    assert kept["left_out"] == {
        "failed": 1,
        "degraded": 0,
        "truncated": 0,
        "invalid": 1,
        "rejected": 0,
        "no_pair": 0,
    }
    plain = moa("export", str(run_dir), "--format", "dpo", "--include-degraded")
    assert plain.stderr.strip().endswith("; left out 2: 1 failed, 1 invalid")
    run = RelabelRun.open(run_dir)
    written = run.export("openai-dpo")
    assert written.rows == 2 and written.left_out["truncated"] == 1
    assert written.as_dict() == {
        "path": str(run_dir / "openai-dpo.jsonl"),
        "format": "openai-dpo",
        "rows": 2,
        "left_out": written.left_out,
    }
