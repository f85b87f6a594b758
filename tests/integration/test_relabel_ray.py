"""`engine="ray"`: rows on Ray actors (a local Ray with 2 CPUs) give the same records as the
in-process engine, and resume by row id the same way."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from langgraph_moa.batch import relabel
from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import one_line_error
from tests.conftest import run_moa as moa
from tests.integration.test_relabel import rows, topology, upstream, write_jsonl

__all__ = ["upstream"]  # the fixture, shared with test_relabel


@pytest.fixture
def local_ray(upstream: FakeOpenAI) -> Iterator[None]:
    """A local Ray started after the fake upstream's environment is set (workers inherit it)."""
    for name, value in {
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DISABLE_IMPORT_WARNING": "1",
        "RAY_DEDUP_LOGS": "0",
    }.items():
        os.environ.setdefault(name, value)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        object_store_memory=80 * 1024 * 1024,
    )
    try:
        yield
    finally:
        ray.shutdown()


def _answers(run: object) -> dict[str, tuple[str, str]]:
    return {
        r["id"]: (r["status"], (r["result"] or {}).get("answer", ""))
        for r in run.records()  # type: ignore[attr-defined]
    }


def test_ray_engine_gives_the_same_records_and_resumes(
    upstream: FakeOpenAI, local_ray: None, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "logs.jsonl", rows(12))
    topo = topology(tmp_path)
    local = relabel(data, topology=topo, out=tmp_path / "local", concurrency=8)
    assert local.totals["done"] == 12
    calls_local = len(upstream.requests)
    upstream.reset()

    trial = relabel(data, topology=topo, out=tmp_path / "ray", engine="ray", limit=5, concurrency=8)
    assert trial.totals["done"] == 5 and trial.manifest.sessions[-1].engine == "ray"
    run = relabel(data, topology=topo, out=tmp_path / "ray", engine="ray", concurrency=8)
    assert run.session.skipped == 5 and run.session.done == 7
    assert len(upstream.requests) == calls_local  # each call once, across both sessions
    assert _answers(run) == _answers(local)


def test_moa_relabel_engine_ray_starts_a_local_ray(upstream: FakeOpenAI, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "logs.jsonl", rows(4))
    env = dict(os.environ) | {"RAY_USAGE_STATS_ENABLED": "0"}
    done = moa(
        "relabel",
        str(data),
        "-t",
        str(topology(tmp_path)),
        "--out",
        str(tmp_path / "runs"),
        "--engine",
        "ray",
        "--ray-workers",
        "2",
        "--json",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["session"]["done"] == 4 and summary["session"]["calls"] == 12
    assert len(upstream.requests) == 12


def test_engine_ray_without_the_extra_is_one_line(upstream: FakeOpenAI, tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "ray"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(shadow.parent), env.get("PYTHONPATH", "")])
    data = write_jsonl(tmp_path / "logs.jsonl", rows(1))
    out = tmp_path / "runs"
    args = ["relabel", str(data), "-t", str(topology(tmp_path)), "--out", str(out)]
    one_line_error(moa(*args, "--engine", "ray", env=env), "pip install 'langgraph-moa[ray]'")
    assert not out.exists() and upstream.requests == []
