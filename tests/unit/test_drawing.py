"""The offline SVG/HTML drawings of built graphs, read back with a real XML parser."""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from langchain_core.runnables.graph import Graph

from langgraph_moa import MoAInputError, Topology, build_graph, load_preset
from langgraph_moa.cli.drawing import to_html, to_svg, write_drawing

NS = "{http://www.w3.org/2000/svg}"
WEIRD_MODEL = "openai:a<b&c\"d'e>"


def weird_topology() -> Topology:
    return Topology.model_validate(
        {
            "name": 'odd <"&"> name',
            "description": "models & <markup>",
            "layers": [
                {
                    "proposers": [
                        {"name": "odd", "model": WEIRD_MODEL, "n": 2, "temperature": 0.3},
                        {"name": "plain", "model": "openai:plain", "max_tokens": 77},
                    ],
                    "deadline_s": 30,
                    "min_proposals": 2,
                },
                {"proposers": [{"name": "second", "model": "groq:llama"}]},
            ],
            "critic": {"model": "openai:crit"},
            "aggregator": {"model": "openai:agg&co"},
            "fallback": {"model": "openai:fb"},
        }
    )


def svg_for(topology: Topology) -> tuple[ET.Element, Graph]:
    graph = build_graph(topology)
    return ET.fromstring(to_svg(graph, topology)), graph.get_graph()


def node_groups(root: ET.Element) -> dict[str, ET.Element]:
    return {
        g.attrib["data-node"]: g for g in root.iter(f"{NS}g") if g.attrib.get("class") == "node"
    }


def box_x(group: ET.Element) -> float:
    rect = group.find(f"{NS}rect")
    assert rect is not None
    return float(rect.attrib["x"])


def texts(element: ET.Element) -> list[str]:
    return [t.text or "" for t in element.iter(f"{NS}text")]


def edge_paths(root: ET.Element) -> list[ET.Element]:
    return [p for p in root.iter(f"{NS}path") if p.attrib.get("class") == "edge"]


@pytest.mark.parametrize("preset", ["moa", "openpipe", "local"])
def test_every_node_and_edge_is_drawn(preset: str) -> None:
    topology = load_preset(preset)
    root, drawn = svg_for(topology)
    assert root.tag == f"{NS}svg"

    groups = node_groups(root)
    assert set(groups) == set(drawn.nodes)
    for node_id, group in groups.items():
        shown = texts(group)
        if node_id == "__start__":
            assert shown == ["start"]
        elif node_id == "__end__":
            assert shown == ["end"]
        else:
            assert shown[0] == node_id

    paths = edge_paths(root)
    assert len(paths) == len(drawn.edges)
    drawn_pairs = sorted((p.attrib["data-source"], p.attrib["data-target"]) for p in paths)
    graph_pairs = sorted((e.source, e.target) for e in drawn.edges)
    assert drawn_pairs == graph_pairs
    assert all(p.attrib["marker-end"] == "url(#moa-arrow)" for p in paths)
    assert root.find(f"{NS}defs/{NS}marker[@id='moa-arrow']") is not None


@pytest.mark.parametrize("preset", ["moa", "openpipe", "local"])
def test_models_and_title_appear(preset: str) -> None:
    topology = load_preset(preset)
    root, _ = svg_for(topology)
    groups = node_groups(root)
    for number, layer in enumerate(topology.layers, 1):
        for agent in layer.proposers:
            label = texts(groups[f"L{number}/{agent.name}"])[1]
            assert label.startswith(agent.model)
            assert label.endswith(f"\u00d7{agent.n}") == (agent.n > 1)
    assert texts(groups["aggregator"])[1] == topology.aggregator.model
    if topology.critic is not None:
        assert texts(groups["critic"])[1] == topology.critic.model
    title = root.find(f"{NS}title")
    assert title is not None and topology.name in (title.text or "")


def test_openpipe_shows_n_and_critic() -> None:
    root, _ = svg_for(load_preset("openpipe"))
    groups = node_groups(root)
    assert texts(groups["L1/gpt-4o"]) == ["L1/gpt-4o", "openai:gpt-4o \u00d73"]
    assert texts(groups["critic"]) == ["critic", "openai:gpt-4o"]
    assert groups["critic"].attrib["data-kind"] == "critic"


def test_columns_run_left_to_right() -> None:
    root, _ = svg_for(load_preset("moa"))
    groups = node_groups(root)
    xs = {node_id: box_x(group) for node_id, group in groups.items()}
    layer1 = [x for n, x in xs.items() if n.startswith("L1/") and n != "L1/join"]
    layer2 = [x for n, x in xs.items() if n.startswith("L2/") and n != "L2/join"]
    assert len(layer1) == 6 and len(layer2) == 6
    assert len(set(layer1)) == 1  # one column, boxes stacked vertically
    assert xs["__start__"] < xs["prepare"] < min(layer1)
    assert max(layer1) < xs["L1/join"] < min(layer2)
    assert max(layer2) < xs["L2/join"] < xs["aggregator"] < xs["__end__"]


def test_column_is_centred_vertically() -> None:
    root, _ = svg_for(load_preset("local"))
    groups = node_groups(root)

    def centre(node_id: str) -> float:
        rect = groups[node_id].find(f"{NS}rect")
        assert rect is not None
        return float(rect.attrib["y"]) + float(rect.attrib["height"]) / 2

    proposers = [centre(f"L1/{name}") for name in ("expert", "teacher", "skeptic")]
    assert proposers == sorted(proposers) and len(set(proposers)) == 3
    assert centre("prepare") == pytest.approx(sum(proposers) / 3)
    assert centre("prepare") == pytest.approx(centre("aggregator"))


def test_special_characters_are_escaped() -> None:
    topology = weird_topology()
    svg = to_svg(build_graph(topology), topology)
    assert "a&lt;b&amp;c&quot;d&#x27;e&gt;" in svg
    assert WEIRD_MODEL not in svg
    assert "openai:agg&amp;co" in svg

    root = ET.fromstring(svg)  # still well-formed
    groups = node_groups(root)
    assert texts(groups["L1/odd"]) == ["L1/odd", f"{WEIRD_MODEL} \u00d72"]
    assert texts(groups["aggregator"])[1] == "openai:agg&co"
    title = root.find(f"{NS}title")
    assert title is not None and title.text is not None and 'odd <"&"> name' in title.text


def test_fallback_is_drawn_with_dashed_conditional_edges() -> None:
    topology = weird_topology()
    root, drawn = svg_for(topology)
    groups = node_groups(root)
    assert groups["fallback"].attrib["data-kind"] == "fallback"
    assert texts(groups["fallback"]) == ["fallback", "openai:fb"]
    assert "deadline 30 s" in texts(groups["L1/join"])[1]

    paths = {(p.attrib["data-source"], p.attrib["data-target"]): p for p in edge_paths(root)}
    conditional = {(e.source, e.target) for e in drawn.edges if e.conditional}
    assert conditional == {("aggregator", "fallback"), ("aggregator", "__end__")}
    for pair, path in paths.items():
        assert ("stroke-dasharray" in path.attrib) == (pair in conditional)
    xs = {n: box_x(g) for n, g in groups.items()}
    assert xs["L2/join"] < xs["critic"] < xs["aggregator"] < xs["fallback"] < xs["__end__"]


def test_distinct_fills_per_kind_and_a_legend() -> None:
    root, _ = svg_for(weird_topology())
    fills: dict[str, set[str]] = {}
    for group in node_groups(root).values():
        rect = group.find(f"{NS}rect")
        assert rect is not None
        fills.setdefault(group.attrib["data-kind"], set()).add(rect.attrib["fill"])
    assert set(fills) == {
        "terminal",
        "prepare",
        "proposer",
        "join",
        "critic",
        "aggregator",
        "fallback",
    }
    assert all(len(colours) == 1 for colours in fills.values())
    assert len({next(iter(colours)) for colours in fills.values()}) == len(fills)

    legend = next(g for g in root.iter(f"{NS}g") if g.attrib.get("class") == "legend")
    assert {"proposer", "join", "critic", "aggregator", "fallback", "conditional edge"} <= set(
        texts(legend)
    )


def test_canvas_fits_every_box() -> None:
    root, _ = svg_for(load_preset("moa"))
    width, height = float(root.attrib["width"]), float(root.attrib["height"])
    assert root.attrib["viewBox"] == f"0 0 {root.attrib['width']} {root.attrib['height']}"
    for group in node_groups(root).values():
        rect = group.find(f"{NS}rect")
        assert rect is not None
        x, y = float(rect.attrib["x"]), float(rect.attrib["y"])
        assert x >= 0 and y >= 0
        assert x + float(rect.attrib["width"]) <= width
        assert y + float(rect.attrib["height"]) <= height


def test_a_cycle_still_gets_columns() -> None:
    """A back edge (as a review loop would add) must not stop the layout or push nodes right."""
    topology = load_preset("openpipe")
    drawn = build_graph(topology).get_graph()
    drawn.add_edge(drawn.nodes["aggregator"], drawn.nodes["L1/gpt-4o"], conditional=True)
    root = ET.fromstring(to_svg(drawn, topology))
    xs = {n: box_x(g) for n, g in node_groups(root).items()}
    assert xs["prepare"] < xs["L1/gpt-4o"] < xs["critic"] < xs["aggregator"] < xs["__end__"]
    assert len(edge_paths(root)) == len(drawn.edges)


@pytest.mark.parametrize("preset", ["moa", "openpipe"])
def test_html_is_self_contained(preset: str) -> None:
    topology = load_preset(preset)
    page = to_html(build_graph(topology), topology)
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 1
    assert f"<h1>MoA topology: {topology.name}</h1>" in page
    assert f'<p class="description">{html.escape(topology.description)}</p>' in page
    urls = re.findall(r"https?://[^\s\"'<>]*", page)
    assert urls == ["http://www.w3.org/2000/svg"]
    assert "<script" not in page and "<link" not in page and "@import" not in page

    svg = page[page.index("<svg") : page.index("</svg>") + len("</svg>")]
    ET.fromstring(svg)
    for number, layer in enumerate(topology.layers, 1):
        for agent in layer.proposers:
            assert f"<td><code>L{number}/{agent.name}</code></td>" in page


def test_html_table_lists_agents_and_layer_limits() -> None:
    topology = weird_topology()
    page = to_html(build_graph(topology), topology)
    assert "models &amp; &lt;markup&gt;" in page
    assert "<h1>MoA topology: odd &lt;&quot;&amp;&quot;&gt; name</h1>" in page
    assert WEIRD_MODEL not in page
    rows = re.findall(r"<tr>.*?</tr>", page)
    odd = next(r for r in rows if "<code>L1/odd</code>" in r)
    assert "deadline 30 s, min_proposals 2" in odd
    assert "a&lt;b&amp;c&quot;d&#x27;e&gt;" in odd
    assert re.search(r'<td class="num">2</td><td class="num">0.3</td>', odd)
    plain = next(r for r in rows if "<code>L1/plain</code>" in r)
    assert plain.endswith('<td class="num">77</td></tr>')
    for role, model in (("critic", "openai:crit"), ("aggregator", "openai:agg&amp;co")):
        assert any(r.startswith(f"<tr><td>{role}</td>") and model in r for r in rows)
    assert any(r.startswith("<tr><td>fallback</td>") and "openai:fb" in r for r in rows)
    second = next(r for r in rows if "<code>L2/second</code>" in r)
    assert "deadline" not in second


def test_write_drawing_picks_the_format_by_suffix(tmp_path: Path) -> None:
    topology = load_preset("openpipe")
    graph = build_graph(topology)

    svg_file = tmp_path / "graph.svg"
    write_drawing(graph, topology, svg_file)
    root = ET.parse(svg_file).getroot()
    assert root.tag == f"{NS}svg"
    assert svg_file.read_text(encoding="utf-8") == to_svg(graph, topology)

    for name in ("graph.html", "graph.HTM"):
        page_file = tmp_path / name
        write_drawing(graph, topology, str(page_file))
        text = page_file.read_text(encoding="utf-8")
        assert text.startswith("<!DOCTYPE html>") and "<svg" in text


def test_write_drawing_rejects_other_suffixes(tmp_path: Path) -> None:
    topology = load_preset("openpipe")
    graph = build_graph(topology)
    target = tmp_path / "graph.png"
    with pytest.raises(MoAInputError) as caught:
        write_drawing(graph, topology, target)
    message = str(caught.value)
    assert "\n" not in message
    assert all(suffix in message for suffix in (".svg", ".html", ".htm"))
    assert ".png" in message
    assert not target.exists()
