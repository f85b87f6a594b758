"""Bad input found by a hostile audit: each gets one clear line (CLI exit 2) instead of a
crash, a hang, a silent wrong result, a leaked key or unbounded growth."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage

from langgraph_moa import MoAInputError, Topology, build_graph
from langgraph_moa.llm.call_cache import BoundedMemoryCache
from langgraph_moa.spec.topology import load_topology
from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import MOA, one_line_error
from tests.conftest import run_moa as run

TWO = (
    "name: mine\nlayers:\n  - proposers: [{model: 'openai:a'}, {model: 'openai:b'}]\n"
    "aggregator: {model: 'openai:agg'}\n"
)


@pytest.fixture
def two(tmp_path: Path) -> Path:
    path = tmp_path / "two.yaml"
    path.write_text(TWO)
    return path


@pytest.mark.slow
def test_a_proposer_cannot_be_named_like_a_join_node(tmp_path: Path, fake: FakeOpenAI) -> None:
    named = tmp_path / "named.yaml"
    named.write_text(
        "layers:\n  - proposers: [{name: join, model: 'openai:a'}]\n"
        "aggregator: {model: 'openai:agg'}\n"
    )
    one_line_error(run("ask", "hi", "-t", str(named)), "name 'join' is reserved")
    derived = Topology.model_validate(
        {
            "layers": [{"proposers": [{"model": "openai:x/join"}, {"model": "openai:a"}]}],
            "aggregator": {"model": "openai:agg"},
        }
    )
    assert [a.name for a in derived.layers[0].proposers] == ["join-2", "a"]
    state = asyncio.run(build_graph(derived).ainvoke({"messages": [HumanMessage("hi")]}))
    assert [p["node"] for p in state["layers"][0]] == ["L1/join-2", "L1/a"]


@pytest.mark.slow
def test_oversized_topologies_are_refused(tmp_path: Path) -> None:
    wide = tmp_path / "wide.yaml"
    wide.write_text(
        "layers:\n  - proposers: ["
        + ", ".join(f"{{model: 'openai:m{k}'}}" for k in range(65))
        + "]\naggregator: {model: 'openai:agg'}\n"
    )
    one_line_error(run("ask", "hi", "-t", str(wide)), "layer 1 has 65 proposers, more than the")
    # A few hundred bytes of YAML aliases that expand to 32,768 proposers.
    bomb = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [{model: 'openai:x'}, {model: 'openai:x'}]"]
    lines += [f"a{k}: &a{k} [*a{k - 1}, *a{k - 1}]" for k in range(1, 15)]
    lines += ["layers:", "  - proposers: *a14", "aggregator: {model: 'openai:agg'}"]
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(MoAInputError, match="proposers"):
        load_topology(bomb)
    deep = tmp_path / "deep.yaml"
    deep.write_text("layers: " + "[" * 100_000 + "]" * 100_000 + "\n")
    one_line_error(run("ask", "hi", "-t", str(deep)), "is nested too deeply")
    deep_json = tmp_path / "deep.json"
    deep_json.write_text("[" * 100_000 + "]" * 100_000)
    one_line_error(run("ask", "hi", "-t", str(deep_json)), "is nested too deeply")


@pytest.mark.slow
def test_files_and_stores_that_cannot_be_used_are_named(tmp_path: Path) -> None:
    one_line_error(run("ask", "hi", "-t", "/dev/zero"), "'/dev/zero' is larger than 1024 KiB")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    one_line_error(run("ask", "hi", "-t", str(latin)), "is not UTF-8 text (byte 9)")
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database" * 100)
    one_line_error(
        run("history", "--thread", "x", "--db", str(corrupt)),
        f"cannot use the thread store {str(corrupt)!r}: file is not a database",
    )
    one_line_error(run("serve", "--log-level", "bogus"), "'bogus' is not one of 'critical'")


@pytest.mark.slow
def test_a_prompt_that_is_not_utf8_is_refused(two: Path) -> None:
    done = subprocess.run(
        [*[a.encode() for a in MOA], b"ask", b"caf\xff", b"-t", str(two).encode()],
        capture_output=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert done.returncode == 2
    assert done.stderr.decode().strip() == "moa: error: the prompt is not valid UTF-8 text"


@pytest.mark.slow
def test_a_usd_budget_without_prices_is_configuration(tmp_path: Path, fake: FakeOpenAI) -> None:
    budget = tmp_path / "budget.yaml"
    budget.write_text(TWO + "budget: {max_usd: 0.01}\n")
    expected = "budget.max_usd needs a price for openai:a, openai:b, openai:agg"
    one_line_error(run("ask", "hi", "-t", str(budget), "--estimate"), expected)
    one_line_error(run("ask", "hi", "-t", str(budget)), expected)
    assert fake.requests == []  # refused before any call


@pytest.mark.slow
def test_fork_cannot_drop_every_proposal(two: Path, fake: FakeOpenAI) -> None:
    assert run("ask", "q", "-t", str(two), "--thread", "d", "-q").returncode == 0
    one_line_error(
        run("fork", "--thread", "d", "--at", "L1/a", "--drop", "L1/a", "--drop", "L1/b"),
        "dropping L1/a, L1/b leaves layer 1 with no proposal",
    )
    assert len(fake.requests_for("agg")) == 1


@pytest.mark.slow
def test_short_keys_are_masked_too(two: Path, fake: FakeOpenAI, tmp_path: Path) -> None:
    fake.behave("a", always=401, error_message="Incorrect API key provided: {key}.")
    db = tmp_path / "threads.sqlite"
    env = dict(os.environ, OPENAI_API_KEY="k9x2", MOA_DB=str(db))
    result = run("ask", "hi", "-t", str(two), "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert "Incorrect API key provided: ***." in result.stdout  # the echo, masked
    assert "k9x2" not in result.stdout + result.stderr
    assert b"k9x2" not in db.read_bytes()


@pytest.mark.slow
def test_control_characters_never_reach_the_terminal(tmp_path: Path, fake: FakeOpenAI) -> None:
    escape = tmp_path / "escape.yaml"
    escape.write_text('name: "evil\\e[2J"\n' + TWO.split("\n", 1)[1])
    one_line_error(run("ask", "hi", "-t", str(escape)), "name: must be printable text")
    fake.behave("b", always=400, error_message="\x1b[2J\x1b[31mbad\x07thing")
    two = tmp_path / "two.yaml"
    two.write_text(TWO)
    result = run("ask", "hi", "-t", str(two))
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert "HTTP 400: [2J [31mbad thing" in result.stderr


def test_replies_beyond_any_max_tokens_are_refused(fake: FakeOpenAI) -> None:
    fake.behave("a", reply=lambda body, n, k: "word " * 60_000)  # 300,000 characters
    fake.behave("b", usage={"prompt_tokens": -5, "completion_tokens": -7, "total_tokens": -12})
    topology = Topology.model_validate(
        {
            "layers": [{"proposers": [{"model": "openai:a"}, {"model": "openai:b"}]}],
            "aggregator": {"model": "openai:agg"},
        }
    )
    state = asyncio.run(build_graph(topology).ainvoke({"messages": [HumanMessage("hi")]}))
    a, b = state["layers"][0]
    # far past what max_tokens (512) allows: reading stopped at the body's allowance
    assert not a["ok"] and a["error"] == (
        "the upstream ignored max_tokens: the reply passed 22528 bytes; reading stopped there"
    )
    assert a["text"] is None  # not stored
    assert b["ok"] and b["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_the_default_cache_is_bounded() -> None:
    cache = BoundedMemoryCache(max_bytes=10_000, ttl_s=0.2)
    ns = ("t",)
    for k in range(100):
        cache.set({(ns, f"k{k}"): ({"texts": ["x" * 500]}, None)})
        cache.get([(ns, "k0")])  # k0 stays recently used
    assert cache.size <= 10_000 and 0 < len(cache) < 100
    assert cache.get([(ns, "k0")]) and not cache.get([(ns, "k1")])  # LRU: k1 went, k0 stayed
    import time

    time.sleep(0.3)
    assert cache.get([(ns, "k0")]) == {}  # expired


@pytest.mark.slow
def test_a_broken_prices_file_is_one_line_naming_it(two: Path, tmp_path: Path) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text("openai:a: {input_per_mtok: [\n  1, 2\n")
    env = dict(os.environ, MOA_PRICES=str(prices))
    one_line_error(
        run("ask", "hi", "-t", str(two), "--estimate", env=env),
        f"MOA_PRICES file {str(prices)!r} is not valid YAML: line 3, column 1:",
    )
    decision = tmp_path / "decision.json"
    decision.write_text("{not json")
    one_line_error(
        run("resume", "--thread", "nope", "--decision", str(decision)),
        f"decision file {str(decision)!r} is not valid JSON: line 1, column 2:",
    )
