"""The topology spec: parsing, naming, presets, and every validation error naming its field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from langgraph_moa import MoAInputError, Topology, list_presets, load_preset, load_topology
from langgraph_moa.spec.topology import DEFAULT_PRESET, parse_topology, resolve_topology


def spec(**overrides: object) -> dict:
    base: dict = {
        "layers": [{"proposers": [{"model": "openai:gpt-4o-mini"}]}],
        "aggregator": {"model": "openai:gpt-4o"},
    }
    base.update(overrides)
    return base


def error_of(data: object) -> str:
    with pytest.raises(MoAInputError) as info:
        parse_topology(data)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (spec(extra=1), "extra: Extra inputs are not permitted"),
        (spec(layers=[]), "layers: List should have at least 1 item"),
        (spec(layers=[{"proposers": []}]), "layers.0.proposers: List should have at least 1"),
        (
            spec(layers=[{"proposers": [{"model": "openai:x", "temprature": 1}]}]),
            "layers.0.proposers.0.temprature: Extra inputs are not permitted",
        ),
        (
            spec(layers=[{"proposers": [{"model": "openai:x", "temperature": "hot"}]}]),
            "layers.0.proposers.0.temperature: Input should be a valid number",
        ),
        (
            spec(layers=[{"proposers": [{"model": "openai:x", "max_tokens": 0}]}]),
            "layers.0.proposers.0.max_tokens: Input should be greater than 0",
        ),
        (
            spec(layers=[{"proposers": [{"model": "openai:x", "n": 0}]}]),
            "layers.0.proposers.0.n: Input should be greater than or equal to 1",
        ),
        (
            spec(layers=[{"proposers": [{"model": "gpt-4o"}]}]),
            'layers.0.proposers.0.model: model must look like "provider:model"',
        ),
        (
            spec(layers=[{"proposers": [{"model": "acme:big"}]}]),
            "layers.0.proposers.0.model: unknown provider 'acme'",
        ),
        (
            spec(
                layers=[
                    {
                        "proposers": [
                            {"name": "a", "model": "openai:x"},
                            {"name": "a", "model": "openai:y"},
                        ]
                    }
                ]
            ),
            "layers.0: duplicate proposer name 'a'",
        ),
        (
            spec(layers=[{"proposers": [{"name": "a/b", "model": "openai:x"}]}]),
            "layers.0.proposers.0.name: name may hold only",
        ),
        (spec(aggregator=None), "aggregator: Input should be a valid dictionary"),
        ({"layers": [{"proposers": [{"model": "openai:x"}]}]}, "aggregator: Field required"),
        (spec(critic={"model": "openai:x", "bogus": True}), "critic.bogus: Extra inputs"),
        (["not", "a", "mapping"], "expected a mapping"),
    ],
)
def test_validation_errors_name_the_field(data: object, expected: str) -> None:
    assert expected in error_of(data)


def test_names_are_derived_and_made_unique() -> None:
    topology = Topology.model_validate(
        spec(
            layers=[
                {
                    "proposers": [
                        {"model": "together:Qwen/Qwen1.5-72B-Chat"},
                        {"model": "together:Qwen/Qwen1.5-72B-Chat"},
                        {"name": "Qwen1.5-72B-Chat-2", "model": "openai:gpt-4o"},
                        {"model": "local:/models/tiny.gguf"},
                    ]
                }
            ]
        )
    )
    names = [a.name for a in topology.layers[0].proposers]
    assert names == ["Qwen1.5-72B-Chat", "Qwen1.5-72B-Chat-3", "Qwen1.5-72B-Chat-2", "tiny"]
    assert topology.aggregator.name == "aggregator"


def test_presets_ship_and_describe_themselves() -> None:
    presets = list_presets()
    assert set(presets) >= {"moa", "moa-lite", "moa-gpt4o", "self-moa", "openpipe", "local"}
    assert all(presets.values())


def test_paper_shapes() -> None:
    moa = load_preset("moa")
    assert [len(layer.proposers) for layer in moa.layers] == [6, 6]
    assert moa.calls_per_query() == 13  # 6 + 6 + 1
    assert moa.aggregator.model == "together:Qwen/Qwen1.5-110B-Chat"
    assert {a.temperature for a in moa.agents()} == {0.7}
    assert {a.max_tokens for a in moa.agents()} == {512}
    assert load_preset("moa-lite").calls_per_query() == 7
    assert load_preset("moa-lite").aggregator.model == "together:Qwen/Qwen1.5-72B-Chat"
    assert load_preset("moa-gpt4o").aggregator.model == "openai:gpt-4o"
    self_moa = load_preset("self-moa")
    assert self_moa.layers[0].proposers[0].n == 6
    # the paper's AlpacaEval setting: WizardLM samples, Qwen1.5-110B-Chat aggregates
    assert self_moa.layers[0].proposers[0].model == "together:microsoft/WizardLM-2-8x22B"
    assert self_moa.aggregator.model == "together:Qwen/Qwen1.5-110B-Chat"
    assert self_moa.calls_per_query() == 2
    openpipe = load_preset("openpipe")
    assert openpipe.critic is not None and openpipe.layers[0].proposers[0].n == 3
    local = load_preset("local")
    assert {a.provider for a in local.agents()} == {"local"}
    assert len({a.system_prompt for a in local.layers[0].proposers}) == 3


def test_unknown_preset() -> None:
    with pytest.raises(MoAInputError, match="unknown preset 'nope'; known presets: local, moa"):
        load_preset("nope")


def test_resolve_topology_takes_a_preset_or_a_file(tmp_path: Path) -> None:
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps(spec(name="mine")))
    assert resolve_topology(path=mine).name == "mine"
    assert resolve_topology(path=str(mine)).name == "mine"
    assert resolve_topology(preset="moa") == load_preset("moa")
    assert resolve_topology() == load_preset(DEFAULT_PRESET)
    with pytest.raises(MoAInputError, match=r"^give either --preset or --topology, not both$"):
        resolve_topology(preset="moa", path=mine)
    with pytest.raises(MoAInputError, match="unknown preset 'nope'"):
        resolve_topology(preset="nope")


def test_files(tmp_path: Path) -> None:
    yaml_file = tmp_path / "t.yaml"
    yaml_file.write_text(
        "name: mine\nlayers:\n  - proposers:\n      - {model: 'openai:a', n: 2}\n"
        "critic: {model: 'openai:c'}\naggregator: {model: 'openai:b'}\n"
    )
    topology = load_topology(yaml_file)
    assert topology.name == "mine" and topology.critic is not None
    json_file = tmp_path / "t.json"
    json_file.write_text(json.dumps(spec()))
    assert load_topology(json_file).aggregator.model == "openai:gpt-4o"

    broken = tmp_path / "broken.yaml"
    broken.write_text("layers: [\n")
    with pytest.raises(
        MoAInputError, match="is not valid YAML: line 2, column 1: expected the node content"
    ):
        load_topology(broken)
    with pytest.raises(MoAInputError, match="cannot read topology file"):
        load_topology(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("layers: []\naggregator: {model: 'openai:b'}\n")
    with pytest.raises(MoAInputError, match=r"bad.yaml'.*layers: List should have at least 1"):
        load_topology(bad)
