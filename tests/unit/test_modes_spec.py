"""Aggregator modes, early stop and references in the topology spec: parsing, defaults, and
every bad input as one line naming the field; and the extractors and similarity they use."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from langchain_core.messages import HumanMessage

from langgraph_moa import MoAInputError, build_graph
from langgraph_moa.cli.drawing import to_svg
from langgraph_moa.graphs.studio import configurable
from langgraph_moa.nodes.budget import estimate
from langgraph_moa.nodes.extract import extract, tally
from langgraph_moa.nodes.hygiene import mean_similarity, outliers, similarity
from langgraph_moa.nodes.window import windows
from langgraph_moa.spec.agent import Agent
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.topology import Layer, Topology, parse_topology

NS = "{http://www.w3.org/2000/svg}"
FIRST = {"on_no_answer": "first"}


def spec(aggregator: dict, *, early_stop: dict | None = None, size: int = 3) -> dict:
    first: dict = {"proposers": [{"model": "openai:a", "n": size}]}
    if early_stop is not None:
        first["early_stop"] = early_stop
    return {
        "layers": [first, {"proposers": [{"model": "openai:b", "n": size}]}],
        "aggregator": aggregator,
    }


def error_of(data: dict) -> str:
    with pytest.raises(MoAInputError) as info:
        parse_topology(data)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (spec({"mode": "vote"}), "aggregator: Value error, mode 'vote' needs extract"),
        (spec({"mode": "vote", "extract": "regex"}), "extract 'regex' needs a pattern"),
        (
            spec({"mode": "vote", "extract": "regex", "pattern": "(a)(b)"}),
            "pattern may have at most one capturing group",
        ),
        (
            spec({"mode": "vote", "extract": "regex", "pattern": "("}),
            "pattern is not a valid regular expression",
        ),
        (spec({"mode": "vote", "extract": "digits"}), "aggregator.extract: Input should be"),
        (
            spec({"model": "openai:j", "mode": "rank", "fuse": 4}),
            "aggregator.fuse: 4 is more than the last layer's 3 candidates",
        ),
        (
            spec({"model": "openai:j", "mode": "select", "fuse": 2}),
            "fuse applies only to mode 'rank'",
        ),
        (spec({"model": "openai:j", "mode": "poll"}), "aggregator.mode: Input should be"),
        (spec({"mode": "select"}), "mode 'select' needs a model"),
        (
            spec({"model": "openai:j"}, early_stop={"agreement": 1.5, "extract": "number"}),
            "layers.0.early_stop.agreement: Input should be less than or equal to 1",
        ),
        (
            spec({"model": "openai:j"}, early_stop={"similarity": -0.1}),
            "layers.0.early_stop.similarity: Input should be greater than or equal to 0",
        ),
        (
            spec({"model": "openai:j"}, early_stop={"agreement": 0.6}),
            "agreement needs extract",
        ),
        (
            spec({"model": "openai:j"}, early_stop={"agreement": 0.6, "similarity": 0.5}),
            "set exactly one of agreement",
        ),
        (
            {
                "layers": [{"proposers": [{"model": "openai:a"}], "join": {"mode": "vote"}}],
                "aggregator": {"model": "openai:j"},
            },
            "layers.0.join: Value error, join mode 'vote' needs extract",
        ),
        (
            spec({"model": "openai:j", "references": {"dropout": 1.0}}),
            "aggregator.references.dropout: Input should be less than 1",
        ),
        (
            spec({"model": "openai:j", "references": {"order": "random"}}),
            "aggregator.references.order: Input should be 'fixed' or 'shuffle'",
        ),
        (
            {
                "layers": [
                    {
                        "proposers": [{"model": "openai:a"}],
                        "early_stop": {"similarity": 0.5},
                    }
                ],
                "aggregator": {"model": "openai:j"},
            },
            "layers.0.early_stop: the last layer has no later layer to skip",
        ),
    ],
)
def test_bad_modes_are_one_line_naming_the_field(data: dict, expected: str) -> None:
    assert expected.replace("Value error, ", "").removeprefix("aggregator: ") in error_of(data)


def test_vote_needs_no_model_and_makes_no_call() -> None:
    topology = parse_topology(spec({"mode": "vote", "extract": "number"}))
    # a tie's synthesis falls back on the last layer's first model
    assert topology.aggregator.model == "openai:b"
    assert topology.calls_per_query() == 2  # a, b: n in one request each; the vote is free


def test_calls_per_query_by_mode() -> None:
    def calls(aggregator: dict) -> int:
        return parse_topology(spec({"model": "openai:j", **aggregator}, size=6)).calls_per_query()

    assert calls({}) == 3
    assert calls({"mode": "select"}) == 3
    assert calls({"mode": "rank"}) == 3
    assert calls({"mode": "rank", "fuse": 3}) == 4
    assert calls({"mode": "rank", "judge": "pairwise"}) == 2 + 30
    assert calls({"mode": "self-moa-seq", "window": 4}) == 2 + 2


@pytest.mark.parametrize(
    ("text", "how", "expected"),
    [
        ("3 + 4 = 7. So the answer is 7.", "number", "7"),
        ("The answer is 1,234.50, not 3.", "number", "1234.5"),
        ("Step 1: 2*3=6. Step 2: add 4 to get 10", "number", "10"),
        ("so \\boxed{-12} is it (checked in 2 steps)", "number", "-12"),
        ("Answer: 3/4", "number", "3/4"),
        ("no digits here", "number", None),
        # replies of the embedded model to "Calculate ...": echoed operands are not answers
        ("The final answer to the calculation of 9 minus 2 is 5.", "number", "5"),
        ("The answer to the user's last message is: 7 + 4 = 11.", "number", "11"),
        ("The final answer is -7 + 6 = 13.", "number", "13"),
        ("4 + 3 = (10 - 2)", "number", "2"),
        ("10-2", "number", "2"),
        ("I pick (C) because B is wrong.", "choice", "C"),
        ("The answer is (c).", "choice", "C"),
        ("Between A and B... Answer: D", "choice", "D"),
        ("b", "choice", "B"),
        ("nothing", "choice", None),
        ("Final: yes\n\n  Paris.  ", "last_line", "paris"),
        ("", "last_line", None),
    ],
)
def test_extractors(text: str, how: str, expected: str | None) -> None:
    assert extract(text, how) == expected


def test_regex_extractor_takes_the_group_of_the_last_match() -> None:
    text = "CODE-11 first, then CODE-42 final"
    assert extract(text, "regex", r"CODE-(\d+)") == "42"
    assert extract(text, "regex", r"CODE-\d+") == "CODE-42"
    assert extract("none", "regex", r"CODE-(\d+)") is None


def test_tally_majority_tie_and_nothing() -> None:
    majority = tally(["it is 4", "4", "five: 5", "no idea"], "number")
    assert majority.votes == {"4": 2, "5": 1}
    assert majority.top == ["4"] and majority.agreement == 0.5
    tie = tally(["5", "4", "4", "5"], "number")
    assert tie.top == ["5", "4"]  # first seen first
    assert tie.first_with(tie.top) == 0
    assert tally(["x", "y"], "number").top == []


def test_similarity_and_outliers() -> None:
    assert similarity("The sky is blue", "the SKY is blue!") == 1.0
    assert similarity("a b", "c d") == 0.0
    texts = [
        "The sky looks blue because air scatters short blue wavelengths of sunlight more.",
        "Air molecules scatter blue sunlight more than red, so the sky looks blue.",
        "Sunlight is scattered by air; blue wavelengths scatter most, so the sky is blue.",
        "Buy cheap watches at example dot com today only.",
    ]
    assert outliers(texts, 0.5) == [3]
    assert outliers(texts[:2], 0.5) == []  # two cannot tell which is odd
    assert 0 < mean_similarity(texts) < mean_similarity(texts[:3]) <= 1


def test_sliding_windows() -> None:
    assert windows(3, 4) == [[0, 1, 2]]
    assert windows(6, 4) == [[0, 1, 2, 3], [4, 5]]
    assert windows(7, 3) == [[0, 1, 2], [3, 4], [5, 6]]


def drawn(aggregator: dict, **layer: object) -> tuple[set[str], dict[str, str], list[tuple]]:
    """Nodes, each node's SVG text, and the edges (source, target, conditional) of a drawing."""
    topology = parse_topology(
        {
            "layers": [
                {"proposers": [{"model": "openai:a"}, {"model": "openai:b"}], **layer},
                {"proposers": [{"model": "openai:c"}]},
            ],
            "aggregator": aggregator,
        }
    )
    graph = build_graph(topology).get_graph()
    root = ET.fromstring(to_svg(graph, topology))
    texts = {
        g.attrib["data-node"]: " ".join(t.text or "" for t in g.iter(f"{NS}text"))
        for g in root.iter(f"{NS}g")
        if g.attrib.get("class") == "node"
    }
    edges = [(e.source, e.target, e.conditional) for e in graph.edges]
    return set(graph.nodes), texts, edges


def test_drawings_show_the_modes() -> None:
    nodes, texts, _ = drawn({"mode": "vote", "extract": "number", "on_tie": "first"} | FIRST)
    assert "vote by number (no model call)" in texts["aggregator"]
    assert not nodes & {"select", "rank", "window"}  # a vote is the aggregator itself
    nodes, texts, edges = drawn({"mode": "select", "model": "openai:j"})
    assert "select (USC) · openai:j" in texts["select"]
    assert ("select", "aggregator", False) in edges
    assert "the selected candidate" in texts["aggregator"]
    _, texts, _ = drawn({"mode": "rank", "model": "openai:j", "judge": "pairwise", "fuse": 1})
    assert "rank pairwise · openai:j" in texts["rank"]
    assert "fuse top 1 · openai:j" in texts["aggregator"]
    _, texts, _ = drawn({"mode": "self-moa-seq", "model": "openai:j", "window": 3})
    assert "windows of 3" in texts["window"]


def test_early_stop_is_drawn_as_a_conditional_edge() -> None:
    _, texts, edges = drawn({"model": "openai:j"}, early_stop={"similarity": 0.8})
    assert ("L1/join", "aggregator", True) in edges
    assert ("L1/join", "L2/c", True) in edges
    assert ("L2/join", "aggregator", False) in edges
    assert "stop if similarity ≥ 0.8" in texts["L1/join"]


def test_the_budget_estimate_counts_each_modes_calls() -> None:
    def calls(aggregator: dict) -> int:
        topology = parse_topology(spec({"model": "openai:j", **aggregator}, size=4))
        return estimate(topology, [HumanMessage("hi")], prices=PriceTable({})).calls

    assert calls({}) == 2 + 1
    assert calls({"mode": "vote", "extract": "number"}) == 2 + 1  # a tie may synthesize
    assert calls({"mode": "vote", "extract": "number", "on_tie": "first"} | FIRST) == 2
    assert calls({"mode": "select"}) == 2 + 2
    assert calls({"mode": "rank", "judge": "pairwise", "fuse": 2}) == 2 + 12 + 1
    assert calls({"mode": "self-moa-seq", "window": 2}) == 2 + 3


def test_a_plain_agent_is_still_an_aggregator() -> None:
    topology = Topology(
        layers=[Layer(proposers=[Agent(model="openai:a")])],
        aggregator=Agent(model="openai:j", temperature=0.1),  # type: ignore[arg-type]
    )
    assert topology.aggregator.mode == "synthesize"
    assert topology.aggregator.model == "openai:j" and topology.aggregator.temperature == 0.1


def joined(join: dict, *, size: int = 3, aggregator: dict | None = None, **more: object) -> dict:
    """Layer 1 (``size`` samples of a) joins by ``join``; layer 2 is b."""
    return {
        "layers": [
            {"proposers": [{"model": "openai:a", "n": size}], "join": join, **more},
            {"proposers": [{"model": "openai:b"}]},
        ],
        "aggregator": aggregator or {"model": "openai:j"},
    }


RANK_JOIN = {"mode": "rank", "model": "openai:judge"}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (joined({"mode": "select"}), "layers.0.join: join mode 'select' needs a model (the judge)"),
        (joined({"mode": "rank", "keep": 2}), "layers.0.join: join mode 'rank' needs a model"),
        (joined(RANK_JOIN | {"keep": 4}), "layers.0: join.keep: 4 is more than the layer's 3"),
        (joined(RANK_JOIN | {"keep": 0}), "layers.0.join.keep: Input should be greater than"),
        (joined(RANK_JOIN | {"fuse": 2}), "layers.0.join: fuse belongs to the aggregator"),
        (joined({"mode": "poll"}), "layers.0.join.mode: Input should be 'all', 'vote', 'select'"),
        (joined({"mode": "select", "model": "x:y"}), "layers.0.join.model: unknown provider 'x'"),
        (joined({"mode": "all", "model": "openai:j"}), "model applies only to join modes select"),
        (
            joined({"mode": "select", "model": "openai:j", "keep": 2}),
            "keep applies only to join mode 'rank', not 'select'",
        ),
        (
            joined({"mode": "select", "model": "openai:j", "judge": "pairwise"}),
            "judge applies only to join mode 'rank', not 'select'",
        ),
        (
            joined(RANK_JOIN | {"on_no_answer": "first"}),
            "on_no_answer applies only to join mode 'select', not 'rank'",
        ),
        (
            joined(RANK_JOIN | {"extract": "number"}),
            "extract applies only to join mode 'vote', not 'rank'",
        ),
        (
            joined(RANK_JOIN | {"temperature": 2.5}),
            "layers.0.join.temperature: Input should be less than or equal to 2",
        ),
        (
            {
                "layers": [
                    {
                        "proposers": [{"model": "openai:a", "n": 3}],
                        "join": RANK_JOIN | {"keep": 2},
                    }
                ],
                "aggregator": {"mode": "rank", "model": "openai:j", "fuse": 3},
            },
            "aggregator.fuse: 3 is more than the 2 candidate(s) the last layer's join passes on",
        ),
        (
            {
                "layers": [{"proposers": [{"model": "openai:a", "name": "rank"}]}],
                "aggregator": {"model": "openai:j"},
            },
            "name 'rank' is reserved",
        ),
    ],
)
def test_bad_layer_joins_are_one_line_naming_the_field(data: dict, expected: str) -> None:
    assert expected in error_of(data)


def test_layer_join_judges_are_agents_that_count_and_cost() -> None:
    select = parse_topology(joined({"mode": "select", "model": "openai:judge"}))
    judge = select.join_agent(1)
    assert judge is not None and judge.name == "L1-select" and judge.model == "openai:judge"
    assert judge.temperature == 0.0 and judge.retry == select.retry
    assert select.join_agent(2) is None
    assert judge in select.agents()  # key checks and prices see the judge too
    assert select.calls_per_query() == 1 + 1 + 1 + 1  # a (n=3), the select, b, the aggregator
    pairwise = parse_topology(joined(RANK_JOIN | {"judge": "pairwise", "keep": 2}, size=4))
    assert pairwise.calls_per_query() == 1 + 12 + 1 + 1
    assert pairwise.layers[0].passes_on == 2

    def planned(topology: Topology) -> list[str]:
        est = estimate(topology, [HumanMessage("hi")], prices=PriceTable({}))
        return [stage for stage, *_ in est.stages]

    assert planned(select) == ["L1/a", "L1/select", "L2/b", "aggregator"]
    assert planned(pairwise).count("L1/rank") == 12


def test_layer_joins_are_nodes_of_the_graph_and_drawn_as_judges() -> None:
    nodes, texts, edges = drawn(
        {"model": "openai:j"},
        join={"mode": "rank", "model": "openai:judge", "keep": 2},
        early_stop={"similarity": 0.8},
    )
    assert {"L1/join", "L1/rank"} <= nodes
    assert ("L1/join", "L1/rank", False) in edges
    assert ("L1/rank", "L2/c", True) in edges and ("L1/rank", "aggregator", True) in edges
    assert not any(e[0] == "L1/join" and e[1] != "L1/rank" for e in edges)
    assert "rank listwise · openai:judge · passes on the top 2" in texts["L1/rank"]
    assert "stop if similarity ≥ 0.8" in texts["L1/rank"]  # checked after the judge
    nodes, texts, edges = drawn({"model": "openai:j"}, join={"mode": "select", "model": "openai:s"})
    assert ("L1/join", "L1/select", False) in edges and ("L1/select", "L2/c", False) in edges
    assert "select (USC) · openai:s · passes on 1" in texts["L1/select"]
    nodes, texts, _ = drawn({"model": "openai:j"}, join={"mode": "vote", "extract": "number"})
    assert not nodes & {"L1/select", "L1/rank"}  # a vote is the join itself, no model call
    assert "passes on the majority (number)" in texts["L1/join"]


@pytest.mark.parametrize(
    "join",
    [
        {"mode": "vote", "extract": "number"},
        {"mode": "select", "model": "openai:s", "on_no_answer": "first"},
        RANK_JOIN | {"judge": "pairwise", "keep": 2, "references": {"order": "shuffle"}},
    ],
)
def test_a_layer_join_reads_back_as_written(join: dict) -> None:
    """A thread stores its topology with every field written out, defaults included."""
    topology = parse_topology(joined(join))
    assert parse_topology(topology.model_dump(mode="json")) == topology


def test_studio_draws_a_layer_judge_from_an_assistants_topology() -> None:
    graph = configurable({"configurable": {"topology": joined(RANK_JOIN)}})
    assert ("L1/join", "L1/rank") in {(e.source, e.target) for e in graph.get_graph().edges}


def test_a_replan_in_the_join_counts_the_judge_still_to_run() -> None:
    topology = parse_topology(joined(RANK_JOIN | {"keep": 1}))

    def stages(**kwargs: object) -> list[str]:
        est = estimate(topology, [HumanMessage("hi")], prices=PriceTable({}), **kwargs)  # type: ignore[arg-type]
        return [stage for stage, *_ in est.stages]

    assert stages(from_layer=2, previous_refs_tokens=300, pending_join=True) == [
        "L1/rank",
        "L2/b",
        "aggregator",
    ]
    assert stages(from_layer=2, previous_refs_tokens=300) == ["L2/b", "aggregator"]
