"""Judges by contract, end to end through the fake server: the graph's judges (select, rank
listwise and pairwise, a layer's join) and the eval's (pairwise verdicts, 1-10 grades) read only
a final ``[[...]]`` verdict. Replies with no verdict, with stray digits only, with the contract
form (alone or after stray digits) and with swapped orders; the record's "no verdict" with the
reply's first words, the run degraded or the item unscored, and ``retry_no_verdict`` making
exactly one more call."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from langgraph_moa import Topology, build_graph
from langgraph_moa.evaluation.datasets import Item, Scoring
from langgraph_moa.evaluation.judge import Judge, judge_agent
from langgraph_moa.evaluation.score import score_items
from langgraph_moa.evaluation.summary import Generation
from langgraph_moa.llm.call_cache import open_cache
from langgraph_moa.testing.fake_openai import FakeOpenAI, scripted
from tests.conftest import run_moa

QUESTION = "What is 6 * 7?"
STRAY = "Response 1 has 2 errors; with 2 references, answer 3 is the most careful."


def topology(answers: dict[str, str], aggregator: dict[str, Any], **layer: Any) -> Topology:
    layers = [{"proposers": [{"model": f"openai:{m}"} for m in answers], **layer}]
    return Topology.model_validate({"layers": layers, "aggregator": aggregator})


async def ask(fake: FakeOpenAI, answers: dict[str, str], aggregator: dict[str, Any]) -> Any:
    for model, text in answers.items():
        fake.behave(model, reply=scripted(text))
    graph = build_graph(topology(answers, aggregator), cache=False)
    return await graph.ainvoke({"messages": [HumanMessage(QUESTION)]})


THREE = {"a": "Forty-one.", "b": "It is 42.", "c": "42, since 6*7=42."}
SELECT = {"mode": "select", "model": "openai:judge", "on_no_answer": "first"}


# --- select ----------------------------------------------------------------------------------


async def test_select_reads_no_number_from_prose(fake: FakeOpenAI) -> None:
    """Stray digits only ("Response 1 has 2 errors", "with 2 references"): no verdict, the run
    degraded, the record says why with the reply's first words; no candidate is picked."""
    fake.behave("judge", reply=scripted(STRAY))
    state = await ask(fake, THREE, SELECT)
    assert state["degraded"] is True
    record = state["aggregation"]
    assert record["winner"] == "L1/a"  # rule 'first', not candidate 2 or 3 read from prose
    (call,) = record["calls"]
    assert call["pick"] is None and call["verdict"] is None and "retried" not in call
    assert call["no_verdict"] == (
        'no verdict (no [[...]] in the reply); the reply began: "Response 1 has 2 errors; with 2 '
        'references, answer 3 is the most careful."'
    )
    assert record["reason"] == f"the selector's reply gave {call['no_verdict']}; rule 'first': L1/a"
    assert len(fake.requests_for("judge")) == 1  # no retry unless the topology asks for one


async def test_select_reads_the_final_verdict_after_stray_digits(fake: FakeOpenAI) -> None:
    fake.behave("judge", reply=scripted(f"{STRAY}\nAll things weighed:\n[[2]]"))
    state = await ask(fake, THREE, SELECT)
    assert state["degraded"] is False
    record = state["aggregation"]
    assert record["winner"] == "L1/b" and state["messages"][-1].content == "It is 42."
    (call,) = record["calls"]
    assert (call["verdict"], call["no_verdict"], call["pick"]) == ("[[2]]", None, "L1/b")
    assert "named candidate 2 of 3 as shown ([[2]]), which is L1/b" in record["reason"]
    request = fake.requests_for("judge")[0].messages[-1]["content"]
    assert "[[2]]" in request  # the prompt asks for the form


async def test_select_takes_only_the_last_brackets_and_checks_them(fake: FakeOpenAI) -> None:
    fake.behave("judge", reply=scripted("At first [[1]], but on reflection [[3]]"))
    state = await ask(fake, THREE, SELECT)
    assert state["aggregation"]["winner"] == "L1/c" and state["degraded"] is False

    fake.reset()  # the last brackets name no candidate: an earlier valid one is not taken
    fake.behave("judge", reply=scripted("Candidate [[2]] is close, but [[4]] is best."))
    state = await ask(fake, THREE, SELECT)
    assert state["degraded"] is True and state["aggregation"]["winner"] == "L1/a"
    assert state["aggregation"]["calls"][0]["no_verdict"].startswith(
        "no verdict ([[4]] names no candidate from 1 to 3); the reply began: "
    )


async def test_a_long_reply_without_verdict_is_recorded_by_its_first_words(
    fake: FakeOpenAI,
) -> None:
    rambling = "I considered   every\n\ncandidate at length. " * 20
    fake.behave("judge", reply=scripted(rambling))
    state = await ask(fake, THREE, SELECT)
    why = state["aggregation"]["calls"][0]["no_verdict"]
    began = why.split('the reply began: "', 1)[1]
    assert (
        began
        == 'I considered every candidate at length. I considered every candidate at length.\u2026"'
    )
    assert "\n" not in why and len(began) == 81  # 80 characters and the closing quote


async def test_retry_no_verdict_asks_exactly_once_more(fake: FakeOpenAI) -> None:
    """The first reply has no verdict, the second has: two requests, the second shows the
    judge its reply and the form; the record keeps both replies."""
    fake.behave("judge", reply=scripted(STRAY, "[[3]]"))
    state = await ask(fake, THREE, SELECT | {"retry_no_verdict": True})
    first, second = fake.requests_for("judge")
    assert second.messages[:-2] == first.messages
    assert second.messages[-2] == {"role": "assistant", "content": STRAY}
    assert (
        "[[1]]" in second.messages[-1]["content"]
        and "from 1 to 3" in second.messages[-1]["content"]
    )
    assert state["degraded"] is False and state["aggregation"]["winner"] == "L1/c"
    (call,) = state["aggregation"]["calls"]
    assert call["reply"] == "[[3]]" and call["verdict"] == "[[3]]"
    assert call["retried"]["reply"] == STRAY
    assert call["retried"]["no_verdict"].startswith("no verdict (no [[...]] in the reply)")
    assert "([[3]], when asked again)" in state["aggregation"]["reason"]
    assert state["usage"]["by_model"]["openai:judge"]["calls"] == 2

    fake.reset()  # asked again and still no verdict: one more call only, then the rule
    fake.behave("judge", reply=scripted("Hard to say."))
    state = await ask(fake, THREE, SELECT | {"retry_no_verdict": True})
    assert len(fake.requests_for("judge")) == 2
    assert state["degraded"] is True and state["aggregation"]["winner"] == "L1/a"
    (call,) = state["aggregation"]["calls"]
    assert call["retried"]["reply"] == "Hard to say." and call["reply"] == "Hard to say."
    assert state["aggregation"]["reason"].startswith(
        "the selector's second reply gave no verdict (no [[...]] in the reply)"
    )

    fake.reset()  # a first reply with a verdict is not asked about again
    fake.behave("judge", reply=scripted("[[2]]"))
    state = await ask(fake, THREE, SELECT | {"retry_no_verdict": True})
    assert (
        len(fake.requests_for("judge")) == 1 and "retried" not in state["aggregation"]["calls"][0]
    )


# --- rank ------------------------------------------------------------------------------------

CONTENT_RANKS = {"Forty-one.": 1, "It is 42.": 2, "42, since 6*7=42.": 3}


def reads_pairs(body: dict[str, Any], number: int, choice: int) -> str:
    """A pairwise judge that names the better candidate wherever it is shown, after prose whose
    digits name the other one."""
    text = body["messages"][-1]["content"]
    listed = re.findall(r"^(\d+)\. (.*)$", text, re.MULTILINE)
    best = max(listed, key=lambda item: CONTENT_RANKS[item[1]])[0]
    other = "2" if best == "1" else "1"
    return f"Candidate {other} has 2 errors, {other} more than the other.\n[[{best}]]"


PAIRWISE = {"mode": "rank", "model": "openai:judge", "judge": "pairwise"}


async def test_pairwise_rank_reads_verdicts_in_both_orders(fake: FakeOpenAI) -> None:
    fake.behave("judge", reply=reads_pairs)
    state = await ask(fake, THREE, PAIRWISE)
    record = state["aggregation"]
    assert record["ranking"] == ["L1/c", "L1/b", "L1/a"] and state["degraded"] is False
    assert record["scores"] == {"L1/a": 0.0, "L1/b": 1.0, "L1/c": 2.0}
    assert all(c["verdict"] in ("[[1]]", "[[2]]") for c in record["calls"])
    shown = [tuple(c["shown"]) for c in record["calls"]]
    assert len(shown) == 6 and len(set(shown)) == 6  # every pair, both orders


async def test_pairwise_rank_without_verdicts_is_no_confident_order(fake: FakeOpenAI) -> None:
    """Stray digits only: no pair is read (not as a tie, not as a win), the run is degraded and
    the reason says layer order stands because no verdict came."""
    fake.behave("judge", reply=scripted(STRAY))
    state = await ask(fake, THREE, PAIRWISE)
    assert state["degraded"] is True
    record = state["aggregation"]
    assert record["ranking"] == ["L1/a", "L1/b", "L1/c"]
    assert all(c["pick"] is None and c["no_verdict"] for c in record["calls"])
    assert record["reason"].startswith(
        "pairwise judging by openai:judge gave no verdict (the judge's reply gave no verdict "
        '(no [[...]] in the reply); the reply began: "Response 1 has 2 errors'
    )
    assert "so layer order stands" in record["reason"]

    fake.reset()  # verdicts in some games only: degraded, and the reason counts the others
    fake.behave(
        "judge",
        reply=lambda body, n, c: (
            reads_pairs(body, n, c) if "Forty-one." not in body["messages"][-1]["content"] else "?"
        ),
    )
    state = await ask(fake, THREE, PAIRWISE)
    assert state["degraded"] is True
    record = state["aggregation"]
    assert (
        "(4 of 6 calls gave no verdict, first: the judge's reply gave no verdict"
        in (record["reason"])
    )
    # b vs c was judged both ways: c wins it; the pairs with a split on a missing verdict
    assert record["scores"] == {"L1/a": 1.0, "L1/b": 0.5, "L1/c": 1.5}


async def test_pairwise_position_bias_still_splits(fake: FakeOpenAI) -> None:
    fake.behave("judge", reply=scripted("Whatever comes first, with 2 notes.\n[[1]]"))
    state = await ask(fake, THREE, PAIRWISE)
    record = state["aggregation"]
    assert record["scores"] == {"L1/a": 1.0, "L1/b": 1.0, "L1/c": 1.0}
    assert state["degraded"] is False  # every game had a verdict; the swaps cancelled them


async def test_listwise_rank_needs_every_candidate_once(fake: FakeOpenAI) -> None:
    listwise = {"mode": "rank", "model": "openai:judge"}
    fake.behave("judge", reply=scripted("Candidate 3 has 1 flaw.\n[[3, 2, 1]]"))
    state = await ask(fake, THREE, listwise)
    assert state["aggregation"]["ranking"] == ["L1/c", "L1/b", "L1/a"]
    assert state["degraded"] is False
    assert state["aggregation"]["calls"][0]["verdict"] == "[[3, 2, 1]]"

    for reply, why in (
        ("3 > 1 > 2", "no [[...]] in the reply"),  # the old free form is not read
        ("[[3, 1]]", "[[3, 1]] is not an order of all 3 candidates"),
        ("[[3, 3, 1]]", "[[3, 3, 1]] is not an order of all 3 candidates"),
        ("[[3, 1, 2, 4]]", "[[3, 1, 2, 4]] is not an order of all 3 candidates"),
    ):
        fake.reset()
        fake.behave("judge", reply=scripted(reply))
        state = await ask(fake, THREE, listwise)
        assert state["degraded"] is True, reply
        assert state["aggregation"]["ranking"] == ["L1/a", "L1/b", "L1/c"], reply
        assert state["aggregation"]["calls"][0]["no_verdict"].startswith(f"no verdict ({why})")
        assert "so layer order stands" in state["aggregation"]["reason"]

    fake.reset()  # with retry_no_verdict: one more call, and its ranking counts
    fake.behave("judge", reply=scripted("[[3, 1]]", "[[2 > 3 > 1]]"))
    state = await ask(fake, THREE, listwise | {"retry_no_verdict": True})
    assert len(fake.requests_for("judge")) == 2
    assert "all 3 candidate numbers" in fake.requests_for("judge")[1].messages[-1]["content"]
    assert state["aggregation"]["ranking"] == ["L1/b", "L1/c", "L1/a"]
    assert state["degraded"] is False
    assert state["aggregation"]["calls"][0]["retried"]["reply"] == "[[3, 1]]"


# --- a layer's join ----------------------------------------------------------------------------


async def test_a_layer_select_join_retries_and_records_both_replies(fake: FakeOpenAI) -> None:
    for model, text in THREE.items():
        fake.behave(model, reply=scripted(text))
    fake.behave("d", reply=scripted("Layer two."))
    fake.behave("agg", reply=scripted("Final."))
    join = {"mode": "select", "model": "openai:judge", "retry_no_verdict": True}
    fake.behave("judge", reply=scripted(STRAY, "The answer I pick:\n[[2]]"))
    spec = {
        "layers": [
            {"proposers": [{"model": f"openai:{m}"} for m in THREE], "join": join},
            {"proposers": [{"model": "openai:d"}]},
        ],
        "aggregator": {"model": "openai:agg"},
    }
    graph = build_graph(Topology.model_validate(spec), cache=False)
    state = await graph.ainvoke({"messages": [HumanMessage(QUESTION)]})
    assert len(fake.requests_for("judge")) == 2
    (record,) = state["joins"]
    assert record["passed"] == ["L1/b"] and state["degraded"] is False
    (call,) = record["calls"]
    assert call["retried"]["reply"] == STRAY and call["verdict"] == "[[2]]"
    (d,) = fake.requests_for("d")
    assert "It is 42." in (d.last or "") and "Forty-one." not in (d.last or "")


@pytest.mark.slow
def test_retry_no_verdict_is_a_judges_setting(tmp_path: Path) -> None:
    """The setting belongs to joins that ask a model; left off, a topology dumps as before."""
    off = topology(THREE, SELECT)
    assert "retry_no_verdict" not in off.model_dump()["aggregator"]
    on = topology(THREE, SELECT | {"retry_no_verdict": True})
    assert on.model_dump()["aggregator"]["retry_no_verdict"] is True
    assert Topology.model_validate(on.model_dump()) == on
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "layers:\n  - proposers: [{model: 'openai:a'}, {model: 'openai:b'}]\n"
        "    join: {mode: vote, extract: number, retry_no_verdict: true}\n"
        "aggregator: {model: 'openai:agg'}\n"
    )
    result = run_moa("graph", "-t", str(bad))
    assert result.returncode == 2
    assert "retry_no_verdict applies only to join modes select and rank, not 'vote'" in (
        result.stderr
    )


# --- the eval's judges -------------------------------------------------------------------------


def _items(*ids: str) -> list[Item]:
    return [
        Item(i, ({"role": "user", "content": f"question {i}"},), baseline=f"baseline of {i}")
        for i in ids
    ]


def _answers(items: list[Item]) -> dict[str, Generation]:
    return {i.id: Generation([f"candidate's answer to {i.id}"]) for i in items}


def _eval_judge(reply: Any) -> Any:
    """A pairwise eval judge: ``reply(question, candidate_first)`` -> text."""

    def answer(body: dict[str, Any], number: int, choice: int) -> str:
        text = body["messages"][-1]["content"]
        if body["messages"][-1]["role"] == "user" and "<request>" not in text:
            return answer.again  # type: ignore[attr-defined]
        question = re.search(r"<request>\n(.*?)\n</request>", text, re.S)
        first = re.search(r"<answer_of_assistant_A>\n(.*?)\n<", text, re.S)
        assert question and first
        return str(reply(question.group(1), "candidate's" in first.group(1)))

    answer.again = "[[A=B]]"  # type: ignore[attr-defined]
    return answer


async def test_eval_pairwise_judge_by_contract(fake: FakeOpenAI, tmp_path: Path) -> None:
    """Stray digits only: the item is unscored and its note gives each game's first words; the
    contract after stray digits counts; swapped orders still cancel position bias."""

    def judge_reply(question: str, candidate_first: bool) -> str:
        if question.endswith("stray"):
            return "Assistant A has 2 errors, B has 1; A>B overall."
        if question.endswith("biased"):
            return "Answer 1 of 2 is shown first.\n[[A>B]]"
        verdict = "[[A>B]]" if candidate_first else "[[B>A]]"
        return f"Assistant B makes 3 mistakes, A makes 0.\n{verdict}"

    fake.behave("judge", reply=_eval_judge(judge_reply))
    items = _items("stray", "win", "biased")
    judge = Judge(judge_agent("openai:judge"), open_cache(str(tmp_path / "j.sqlite")))
    results = {
        r.id: r for r in await score_items(Scoring.pairwise, items, _answers(items), judge=judge)
    }
    assert len(fake.requests_for("judge")) == 6  # two games per item, no retry
    stray = results["stray"]
    assert stray.score is None and stray.weight is None
    assert stray.note == (
        "the judge gave no verdict: game 1 (candidate first): no verdict (no [[...]] in the "
        'reply); the reply began: "Assistant A has 2 errors, B has 1; A>B overall."; game 2 '
        "(baseline first): no verdict (no [[...]] in the reply); the reply began: "
        '"Assistant A has 2 errors, B has 1; A>B overall."'
    )
    win = results["win"]
    assert (win.score, win.consistent, win.note) == (1.0, True, None)
    biased = results["biased"]
    assert (biased.score, biased.consistent) == (0.5, False)  # the swap split it


async def test_eval_judge_retry_and_one_sided_items(fake: FakeOpenAI, tmp_path: Path) -> None:
    """With retry_no_verdict each game without a verdict is asked exactly once more (its reply
    and the form shown); a game still without one leaves the item on one order, said so."""

    def judge_reply(question: str, candidate_first: bool) -> str:
        return "[[A>>B]]" if candidate_first else "B is better, by 2 points."

    reply = _eval_judge(judge_reply)
    reply.again = "Still B, by 2."
    fake.behave("judge", reply=reply)
    items = _items("one")
    judge = Judge(
        judge_agent("openai:judge"), open_cache(str(tmp_path / "j.sqlite")), retry_no_verdict=True
    )
    (result,) = await score_items(Scoring.pairwise, items, _answers(items), judge=judge)
    requests = fake.requests_for("judge")
    assert len(requests) == 3  # two games, one asked again
    (again,) = [r for r in requests if len(r.messages) == 4]
    assert again.messages[2] == {"role": "assistant", "content": "B is better, by 2 points."}
    assert "[[A>>B]], [[A>B]], [[A=B]], [[B>A]] or [[B>>A]]" in again.messages[3]["content"]
    assert result.score == 1.0 and result.consistent is None  # one order only
    assert result.note == (
        "game 2 (baseline first) asked again after no verdict (no [[...]] in the reply); the "
        'reply began: "B is better, by 2 points."; game 2 (baseline first): no verdict (no '
        '[[...]] in the reply); the reply began: "Still B, by 2."'
    )
    assert judge.usage.judgments == 3

    fake.reset()  # the second answer has the verdict: the item is scored on both orders
    reply.again = "Fine: [[A>B]]"
    judge = Judge(
        judge_agent("openai:judge"), open_cache(str(tmp_path / "k.sqlite")), retry_no_verdict=True
    )
    (result,) = await score_items(Scoring.pairwise, items, _answers(items), judge=judge)
    assert len(fake.requests_for("judge")) == 3
    assert result.score == 0.5 and result.consistent is False
    assert result.note is not None and result.note.startswith("game 2 (baseline first) asked again")


async def test_eval_grades_read_only_brackets(fake: FakeOpenAI, tmp_path: Path) -> None:
    def grader(body: dict[str, Any], number: int, choice: int) -> str:
        text = body["messages"][-1]["content"]
        if "question two" in text:
            return "Step 2 is wrong and step 3 too; I would say 4 out of 10. Rating: 4"
        return "It makes 2 small slips in 3 steps.\n[[7]]"

    fake.behave("judge", reply=grader)
    items = [Item(q, ({"role": "user", "content": f"question {q}"},)) for q in ("one", "two")]
    judge = Judge(judge_agent("openai:judge"), open_cache(str(tmp_path / "j.sqlite")))
    one, two = await score_items(Scoring.rating, items, _answers(items), judge=judge)
    assert (one.score, one.turn_scores, one.note) == (7.0, [7.0], None)
    assert two.score is None and two.turn_scores == [None]
    assert two.note == (
        'turn 1 ungraded: no verdict (no [[...]] in the reply); the reply began: "Step 2 is wrong '
        'and step 3 too; I would say 4 out of 10. Rating: 4"'
    )


@pytest.mark.slow
def test_eval_topology_judge_retries_by_its_aggregator_setting(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    """--judge-topology whose aggregator says retry_no_verdict: a judgment without a verdict is
    made once more (one more run of the panel), and the item's note says so."""
    fake.behave("cand")
    fake.behave("j1", reply=lambda body, n, c: "Looks like [[A=B]] to me.")

    def aggregator(body: dict[str, Any], number: int, choice: int) -> str:
        asked_again = any(m["role"] == "assistant" for m in body["messages"])
        return "[[A=B]]" if asked_again else "The panel says 1 thing."

    fake.behave("jagg", reply=aggregator)
    panel = tmp_path / "panel.yaml"
    panel.write_text(
        "name: panel\nlayers:\n  - proposers: [{model: 'openai:j1'}]\n"
        "aggregator: {model: 'openai:jagg', temperature: 0, retry_no_verdict: true}\n"
    )
    data = tmp_path / "mine.jsonl"
    data.write_text(json.dumps({"id": "x", "prompt": "a question", "baseline": "b"}) + "\n")
    runs = tmp_path / "runs"
    result = run_moa(
        "eval",
        str(data),
        "--model",
        "openai:cand",
        "--judge-topology",
        str(panel),
        "--out",
        str(runs),
        "--json",
        "--resamples",
        "100",
    )
    assert result.returncode == 0, result.stderr
    assert len(fake.requests_for("jagg")) == 4  # two games, each asked once more
    assert len(fake.requests_for("j1")) == 4
    (folder,) = [p for p in runs.iterdir() if p.is_dir()]
    item = json.loads((folder / "items.jsonl").read_text())
    assert item["score"] == 0.5 and item["consistent"] is True
    assert "game 1 (candidate first) asked again after no verdict" in item["note"]
    assert 'the reply began: "The panel says 1 thing."' in item["note"]


def test_the_budget_estimate_counts_a_retrying_judge_twice() -> None:
    """The worst case of a judge that may be asked again: every question twice, the second
    with its first reply and the reminder in the prompt."""
    from langgraph_moa.nodes.budget import estimate
    from langgraph_moa.spec.models import PriceTable

    def worst(aggregator: dict[str, Any], **layer: Any) -> Any:
        spec = topology(THREE, aggregator, **layer)
        return estimate(spec, [HumanMessage("hi")], prices=PriceTable({}))

    pairwise, listwise = PAIRWISE, {"mode": "rank", "model": "openai:judge"}
    assert worst(pairwise | {"retry_no_verdict": True}).calls == 3 + 2 * 6
    assert worst(pairwise).calls == 3 + 6
    assert worst(listwise | {"retry_no_verdict": True}).calls == 3 + 2
    off, on = worst(SELECT), worst(SELECT | {"retry_no_verdict": True})
    assert on.calls == off.calls + 1
    # the second asking's prompt holds the whole first request, its reply (max_tokens 512)
    # and the reminder
    assert on.prompt_tokens - off.prompt_tokens > 512 + 50
    join = {"mode": "select", "model": "openai:judge", "retry_no_verdict": True}
    synth = {"model": "openai:agg"}
    assert (
        worst(synth, join=join).calls
        == worst(synth, join=join | {"retry_no_verdict": False}).calls + 1
    )
