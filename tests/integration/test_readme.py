"""The README's Python examples run as pasted, against the fake OpenAI-compatible server (every
provider's base URL points at it) and the embedded model; the `moa serve` example against a real
`moa serve` process (only its port differs from the README's)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import TEST_KEY
from tests.integration.test_serve import fake_env, free_port, start, stop

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def run_block(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )


def test_the_readme_has_the_examples_this_module_runs() -> None:
    assert len(BLOCKS) == 4
    assert "ChatMixtureOfAgents.from_preset" in BLOCKS[0]
    assert "OpenAI(base_url=" in BLOCKS[1]
    assert "build_graph(load_preset" in BLOCKS[2]
    assert "register_model" in BLOCKS[3]  # run by tests/integration/test_providers.py


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 2])
def test_python_examples_run_as_pasted(fake: FakeOpenAI, index: int, tmp_path: Path) -> None:
    env = fake_env(fake) | {"MOA_DB": str(tmp_path / "threads.sqlite")}
    done = run_block(BLOCKS[index], env)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert TEST_KEY not in done.stdout
    if index == 0:
        assert "input_tokens" in done.stdout  # the usage printed
        assert len(fake.requests_for("Qwen/Qwen1.5-110B-Chat")) >= 2  # it really ran the preset
    else:
        assert "graph TD" in done.stdout or "graph LR" in done.stdout  # the mermaid drawing
        assert len(fake.requests_for("gpt-4o-mini")) == 2  # two turns, n=3 in one request each


@pytest.mark.slow
def test_the_serve_example_runs_against_moa_serve(fake: FakeOpenAI, tmp_path: Path) -> None:
    env = fake_env(fake)
    port = free_port()
    server = start(["--port", str(port)], env, port, tmp_path / "serve.log", None)
    try:
        code = BLOCKS[1].replace("8080", str(port))
        code += "\nprint(r.choices[0].message.content, r.model_extra['moa']['degraded'])\n"
        done = run_block(code, dict(os.environ))
        assert done.returncode == 0, done.stderr
        # the aggregator (Qwen1.5-110B-Chat) is also a proposer of both layers: its 3rd request
        assert done.stdout.strip() == "Answer 3 from Qwen/Qwen1.5-110B-Chat. False"
    finally:
        stop(server)
