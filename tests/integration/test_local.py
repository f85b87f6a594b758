"""The embedded offline model: a real (short) generation through llama.cpp, no network."""

from __future__ import annotations

import asyncio
import platform
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from langchain_core.messages import HumanMessage

from langgraph_moa import MoAInputError, Topology, build_graph
from langgraph_moa.errors import LocalModelUnusableError
from langgraph_moa.llm.local_model import ChatLocalLlama, resolve_model_path
from langgraph_moa.llm.local_runtime import check_local_runtime, compiled_cpu_features
from tests.conftest import one_line_error, run_moa


def test_packaged_model_is_found_without_importing_its_package() -> None:
    path = resolve_model_path("smollm2")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    with pytest.raises(MoAInputError, match="no such file"):
        resolve_model_path("/nowhere/model.gguf")


@pytest.mark.slow
async def test_local_moa_run_generates_and_reports_usage() -> None:
    topology = Topology.model_validate(
        {
            "layers": [
                {
                    "proposers": [
                        {"name": "x", "model": "local:smollm2", "max_tokens": 8},
                        {"name": "y", "model": "local:smollm2", "max_tokens": 8},
                    ]
                }
            ],
            "aggregator": {"model": "local:smollm2", "max_tokens": 8},
        }
    )
    graph = build_graph(topology)
    chunks = []
    final = None
    parts = graph.astream(
        {"messages": [HumanMessage("Name a color.")]}, stream_mode=["messages", "values"]
    )
    # a list of stream modes yields (mode, data) pairs; langgraph types them dict | Any
    async for mode, data in cast(AsyncIterator[tuple[str, Any]], parts):
        if mode == "messages" and data[1]["langgraph_node"] == "aggregator" and data[0].content:
            chunks.append(data[0].content)
        elif mode == "values":
            final = data
    assert final is not None
    answer = final["messages"][-1]
    assert answer.content.strip()
    assert len(chunks) >= 2 and "".join(chunks) == answer.content  # streamed token by token
    assert all(p["ok"] and p["text"] for p in final["layers"][0])
    usage = final["usage"]["by_model"]["local:smollm2"]
    assert usage["calls"] == 3
    assert 0 < usage["completion_tokens"] <= 3 * 8
    assert usage["prompt_tokens"] > 20
    assert final["usage"]["cost_usd"] == 0.0


async def test_concurrent_calls_are_serialized_safely() -> None:
    model = ChatLocalLlama(max_tokens=4, temperature=0.0)
    replies = await asyncio.gather(*(model.ainvoke("Say hi.") for _ in range(4)))
    assert len({r.content for r in replies}) == 1  # greedy decoding: same prompt, same reply
    assert all(r.usage_metadata and r.usage_metadata["output_tokens"] > 0 for r in replies)


@pytest.mark.slow
async def test_samples_differ_unless_seeded() -> None:
    model = ChatLocalLlama(max_tokens=12, temperature=1.0)
    replies = {(await model.ainvoke("Tell me a random word.")).content for _ in range(3)}
    assert len(replies) > 1
    seeded = ChatLocalLlama(max_tokens=12, temperature=1.0, seed=7)
    again = {(await seeded.ainvoke("Tell me a random word.")).content for _ in range(2)}
    assert len(again) == 1


def test_llama_cpp_is_built_for_any_x86_64_cpu() -> None:
    """The installed llama.cpp uses the AVX2/FMA/F16C baseline and nothing newer that only the
    build machine may have (a native build on an AVX-512/AMX machine would list those)."""
    features = compiled_cpu_features()
    if platform.machine() in ("x86_64", "AMD64"):
        assert features.get("AVX2") and features.get("FMA") and features.get("F16C"), features
    newer = [
        name
        for name, on in features.items()
        if on and name.startswith(("AVX512", "AMX", "AVX_VNNI", "AVX_VNNI_INT8"))
    ]
    assert newer == [], f"built with CPU features beyond the baseline: {newer}"
    assert features, "llama.cpp reported no CPU features"


def test_a_build_that_crashes_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that dies with SIGSEGV (here: on start-up, through a sitecustomize that only
    fires in `python -c`, which is how the check runs) becomes a sentence, remembered on disk."""
    crash = tmp_path / "crash"
    crash.mkdir()
    (crash / "sitecustomize.py").write_text(
        "import os, signal, sys\n"
        "if sys.argv[:1] == ['-c']:\n"
        "    os.kill(os.getpid(), signal.SIGSEGV)\n"
    )
    model = tmp_path / "model.gguf"
    model.write_bytes(resolve_model_path("smollm2").read_bytes()[:1_000_000])  # its own key
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", str(crash))
    with pytest.raises(LocalModelUnusableError) as raised:
        check_local_runtime(model)
    message = str(raised.value)
    assert "llama.cpp was checked loading model.gguf and it crashed with SIGSEGV" in message
    assert "make clean && make install" in message and "\n" not in message
    remembered = list((tmp_path / "cache" / "langgraph-moa" / "local-check").glob("*.json"))
    assert len(remembered) == 1 and "SIGSEGV" in remembered[0].read_text()


@pytest.mark.slow
def test_a_file_that_is_not_gguf_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bogus = tmp_path / "notes.gguf"
    bogus.write_text("not a model\n" * 100)
    topology = tmp_path / "t.yaml"
    topology.write_text(
        f"layers:\n  - proposers: [{{model: 'local:{bogus}'}}]\n"
        f"aggregator: {{model: 'local:{bogus}'}}\n"
    )
    one_line_error(
        run_moa("ask", "hi", "-t", str(topology)),
        f"the local model {str(bogus)!r} cannot be loaded by llama.cpp (is it a GGUF model?): "
        "ValueError: Failed to load model from file",
    )


@pytest.mark.slow
def test_the_packaged_model_passes_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a fresh process (this one has the verdict in memory): the check runs, passes and is
    remembered on disk, so the next process only reads it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code = (
        "from langgraph_moa.llm.local_model import resolve_model_path\n"
        "from langgraph_moa.llm.local_runtime import check_local_runtime\n"
        "check_local_runtime(resolve_model_path('smollm2'))\n"
    )
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        (verdict,) = (tmp_path / "cache" / "langgraph-moa" / "local-check").glob("*.json")
        assert '"reason": null' in verdict.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("streaming", [False, True])
async def test_a_cancelled_call_stops_the_model_at_the_next_token(streaming: bool) -> None:
    model = ChatLocalLlama(max_tokens=2000, temperature=0.0)
    await model.ainvoke("Hi.")  # loaded, so the cancelled call is busy generating
    # the call's stream= picks the path (ChatLocalLlama has no `streaming` field): True runs
    # _astream, False _agenerate
    story = model.ainvoke("Write a very long story about a dragon.", stream=streaming)
    call = asyncio.ensure_future(story)
    await asyncio.sleep(1.0)
    started = time.perf_counter()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # stopped, not run to its 2,000 tokens (~30 s here); the bound is loose: 2 noisy cores
    assert time.perf_counter() - started < 5.0
    engine = model._engine()
    assert not engine.lock.locked()
    quick = ChatLocalLlama(max_tokens=2, temperature=0.0)
    started = time.perf_counter()
    await quick.ainvoke("Hi.")  # the model is free at once
    assert time.perf_counter() - started < 5.0


@pytest.mark.slow
def test_a_local_run_exits_without_a_traceback(tmp_path: Path) -> None:
    """`moa ask` on the embedded model frees it before the interpreter tears its modules down:
    left to ``Llama.__del__`` at teardown, freeing it printed a traceback after the answer."""
    topology = tmp_path / "tiny.yaml"
    topology.write_text(
        "layers:\n"
        "  - proposers: [{name: x, model: 'local:smollm2', max_tokens: 8}]\n"
        "aggregator: {model: 'local:smollm2', max_tokens: 8}\n"
    )
    result = run_moa("ask", "Name a color.", "--topology", str(topology), "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    # what is left is the command's own notes (here: the 8-token answer was cut)
    assert all(line.startswith("moa: note:") for line in result.stderr.splitlines()), result.stderr
