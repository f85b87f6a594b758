"""The ``layers`` reducer: both shapes a state update can take (proposals, or the layers as the
state shows them), malformed updates refused with the key named, and the round trip through a
compiled graph's ``update_state`` (what the LangGraph server does for Studio)."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.errors import InvalidUpdateError

from langgraph_moa import Topology, build_graph
from langgraph_moa.cli.threads import history
from langgraph_moa.nodes.state import LayersUpdateError, Proposal, merge_layers


def proposal(layer: int, index: int, text: str = "", **changes: Any) -> Proposal:
    node = f"L{layer}/p{index}"
    record: dict[str, Any] = {
        "name": f"p{index}",
        "node": node,
        "model": f"openai:p{index}",
        "ok": True,
        "text": text or f"Answer from {node}.",
        "error": None,
        "latency_s": 0.1,
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        "attempts": 1,
        "cached": False,
        "trimmed": None,
        "finish_reason": "stop",
        "layer": layer,
        "index": index,
        "sample": 0,
    }
    return Proposal(**(record | changes))  # type: ignore[typeddict-item]


def test_flat_proposals_are_filed_by_layer_and_index() -> None:
    layers = merge_layers(None, [proposal(2, 1), proposal(1, 1), proposal(1, 0)])
    assert [[p["node"] for p in layer] for layer in layers] == [["L1/p0", "L1/p1"], ["L2/p1"]]
    edited = merge_layers(layers, [proposal(1, 1, "New text.")])
    assert [p["text"] for p in edited[0]] == ["Answer from L1/p0.", "New text."]
    assert layers[0][1]["text"] == "Answer from L1/p1."  # the current value is not mutated
    assert merge_layers(layers, None) == layers and merge_layers(layers, []) == layers


def test_the_shape_read_from_the_state_replaces_the_layers() -> None:
    layers = merge_layers(None, [proposal(1, 0), proposal(1, 1), proposal(2, 0), proposal(2, 1)])
    assert merge_layers(layers, layers) == layers  # written back as read: no change
    dropped = [layers[0], [layers[1][0]]]
    assert merge_layers(layers, dropped) == dropped  # a proposal left out is gone
    edited = [layers[0], [{**layers[1][0], "text": "Edited."}, layers[1][1]]]
    assert merge_layers(layers, edited)[1][0]["text"] == "Edited."


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ("nope", "layers: expected a list of proposals"),
        ({"layer": 1}, "got dict"),
        ([{"text": "only a text"}], "layers[0]: missing name, node, model, ok, error"),
        ([proposal(1, 0), [proposal(1, 1)]], "layers[1]: a layer among proposals"),
        ([[proposal(2, 0)]], "layers[0][0]: proposal 'L2/p0' says layer 2 but sits in layer 1"),
        ([[proposal(1, 0), proposal(1, 0)]], "layers[0]: two proposals share an index"),
        ([proposal(0, 0)], "layer starts at 1 and index at 0"),
        ([[{**proposal(1, 0), "ok": "perhaps"}]], "layers[0][0].ok: Input should be a valid bool"),
        ([1, 2], "layers[0]: Input should be a valid dictionary"),
    ],
)
def test_malformed_updates_name_the_key(update: Any, message: str) -> None:
    with pytest.raises(LayersUpdateError) as caught:
        merge_layers([[proposal(1, 0)]], update)
    assert message in str(caught.value)
    # the server answers these with a 400: it maps both to "bad request"
    assert isinstance(caught.value, InvalidUpdateError) and isinstance(caught.value, ValueError)


TOPOLOGY = Topology.model_validate(
    {
        "layers": [{"proposers": [{"name": f"p{k}", "model": f"openai:p{k}"} for k in (0, 1)]}],
        "aggregator": {"model": "openai:agg"},
    }
)


async def test_update_state_round_trip_in_a_compiled_graph() -> None:
    graph = build_graph(TOPOLOGY, checkpointer=InMemorySaver())
    config: RunnableConfig = {"configurable": {"thread_id": "edits"}}
    start = await graph.aupdate_state(
        config,
        {"messages": [HumanMessage("Why?")], "layers": [proposal(1, 0), proposal(1, 1)]},
        as_node="L1/join",
    )
    read = await graph.aget_state(start)
    assert read.next == ("aggregator",)
    layers = read.values["layers"]

    same = await graph.aget_state(
        await graph.aupdate_state(read.config, {"layers": layers}, as_node="L1/join")
    )
    assert same.values["layers"] == layers and same.next == ("aggregator",)

    kept = [[{**layers[0][0], "text": "Edited by hand."}]]  # edit one, leave the other out
    changed = await graph.aget_state(
        await graph.aupdate_state(read.config, {"layers": kept}, as_node="L1/join")
    )
    assert [p["text"] for p in changed.values["layers"][0]] == ["Edited by hand."]

    answer = AIMessage("The final answer.", id="answer-1")
    done = await graph.aupdate_state(changed.config, {"messages": [answer]}, as_node="aggregator")
    rewritten = AIMessage("A better final answer.", id="answer-1")
    final = await graph.aget_state(
        await graph.aupdate_state(done, {"messages": [rewritten]}, as_node="aggregator")
    )
    assert [m.content for m in final.values["messages"]] == ["Why?", "A better final answer."]
    assert final.next == ()

    with pytest.raises(InvalidUpdateError, match="layers"):
        await graph.aupdate_state(read.config, {"layers": "nope"}, as_node="L1/join")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"usage": "x"}, "usage: Input should be a valid dictionary"),
        ({"usage": {"prompt_tokens": 1}}, "usage: missing completion_tokens, total_tokens"),
        ({"messages": 5}, "messages: Unsupported message type"),
        ({"degraded": "yes"}, "degraded: expected true or false, got 'yes'"),
        ({"aggregator": 5}, "aggregator: Input should be a valid dictionary"),
        ({"aggregator": {"text": "hi"}}, "aggregator: missing name, node, model, ok, error"),
        ({"critique": {"ok": True}}, "critique: missing name, node, model, text, error"),
        ({"review": {"edited": "L1/p0"}}, "review.edited: Input should be a valid list"),
        ({"fallback": []}, "fallback: Input should be a valid dictionary"),
        ({"ledger": {"max_usd": "lots"}}, "ledger.max_usd: Input should be a valid number"),
    ],
)
async def test_malformed_records_are_refused_naming_the_key(
    values: dict[str, Any], message: str
) -> None:
    graph = build_graph(TOPOLOGY, checkpointer=InMemorySaver())
    config: RunnableConfig = {"configurable": {"thread_id": "records"}}
    # as after a turn's first step: every record exists (prepare writes them)
    turn = {"messages": [HumanMessage("Why?")], "degraded": False, "layers": []}
    records = dict.fromkeys(("critique", "aggregator", "fallback", "review", "ledger"))
    started = await graph.aupdate_state(config, turn | records, as_node="prepare")
    with pytest.raises(InvalidUpdateError) as caught:
        await graph.aupdate_state(started, values, as_node="L1/join")
    assert message in str(caught.value)
    assert (await graph.aget_state(config)).config == (await graph.aget_state(started)).config


async def test_history_names_what_each_edit_was_written_as() -> None:
    with_fallback = TOPOLOGY.model_copy(update={"fallback": "best_proposal"})
    graph = build_graph(with_fallback, checkpointer=InMemorySaver())
    config: RunnableConfig = {"configurable": {"thread_id": "labels"}}
    turn = {"messages": [HumanMessage("Why?")], "layers": [proposal(1, 0), proposal(1, 1)]}
    joined = await graph.aupdate_state(config, turn, as_node="L1/join")
    answered = await graph.aupdate_state(
        joined, {"messages": [AIMessage("An answer.", id="a1")]}, as_node="aggregator"
    )
    await graph.aupdate_state(
        answered, {"messages": [AIMessage("A better answer.", id="a1")]}, as_node="aggregator"
    )
    layers = (await graph.aget_state(joined)).values["layers"]
    kept = [[{**layers[0][0], "text": "Edited."}]]
    await graph.aupdate_state(joined, {"layers": kept}, as_node="L1/join")

    entries = await history(graph, "labels")
    assert [(e.ran, e.changes, e.current, e.branches) for e in entries] == [
        (["L1/join"], ["edited L1/p0", "dropped L1/p1"], True, 0),  # the fork: current branch
        (["aggregator"], ["messages"], False, 0),  # not "fallback", which also ends the run
        (["aggregator"], ["messages"], False, 1),
        # the thread's first checkpoint, and where it forks
        (["L1/join"], ["added L1/p0", "added L1/p1", "degraded", "messages", "usage"], True, 2),
    ]
    assert all(e.edit and e.source == "update" for e in entries)
