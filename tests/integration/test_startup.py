"""What a command that runs nothing loads: ``moa --help``, ``moa presets`` and ``moa graph`` start
without the model stack (langchain-openai, the openai client), and the first two without
LangGraph, LangChain or httpx either; FastAPI, psycopg and llama.cpp load only for the commands
that use them.

Checked in a fresh interpreter, by the modules it has imported (``sys.modules``), not by time:
import time is a figure for bench/, what loads is a property of the code.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

MODEL_STACK = ("langchain_openai", "openai")
HTTP = ("httpx2", "httpx")  # LangGraph's own dependencies (langsmith) load them with LangGraph
OPTIONAL = ("fastapi", "uvicorn", "psycopg", "llama_cpp", "langgraph.checkpoint.postgres")
ENGINE = ("langgraph", "langchain_core")

# Runs a `moa` command in-process (its output discarded), then prints the top-level packages and
# the optional modules it imported.
PROBE = """
import contextlib, io, json, sys
from langgraph_moa.cli.app import main

with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        main(sys.argv[1:])
    except SystemExit as exit:
        code = exit.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def loaded(*args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] in (0, None), report["code"]
    return set(report["modules"])


def _has(modules: set[str], name: str) -> bool:
    return name in modules or any(m.startswith(name + ".") for m in modules)


@pytest.mark.parametrize("args", [["--help"], ["presets"], ["ask", "--help"]])
def test_help_and_presets_load_neither_engine_nor_model_stack(args: list[str]) -> None:
    modules = loaded(*args)
    assert "langgraph_moa.cli.conversation" in modules  # the probe did run the command line
    for name in (*ENGINE, *MODEL_STACK, *HTTP, *OPTIONAL):
        assert not _has(modules, name), f"`moa {' '.join(args)}` imported {name}"


def test_graph_builds_the_graph_without_the_model_stack() -> None:
    modules = loaded("graph", "--preset", "moa")
    assert "langgraph.graph.state" in modules  # it did build the graph
    for name in (*MODEL_STACK, *OPTIONAL):
        assert not _has(modules, name), f"`moa graph` imported {name}"


def test_the_package_itself_loads_nothing_heavy() -> None:
    code = "import json, sys, langgraph_moa; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    modules = set(json.loads(done.stdout))
    for name in (*ENGINE, *MODEL_STACK, *HTTP, *OPTIONAL, "pydantic"):
        assert not _has(modules, name), f"`import langgraph_moa` imported {name}"
