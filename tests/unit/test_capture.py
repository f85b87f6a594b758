"""The capture directory of ``moa serve --capture``: rows, dropped and hashed fields, rotation,
the configuration file's errors (the HTTP side is in tests/integration/test_serve_capture.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from langgraph_moa.errors import MoAInputError
from langgraph_moa.serving.capture import (
    CaptureConfig,
    CaptureSink,
    capture_row,
    load_capture_config,
)


def row(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return capture_row(
        model="openai:gpt-x",
        messages=[{"role": "user", "content": text}],
        completion={"role": "assistant", "content": "hi"},
        request={"model": "gpt-x", "messages": []},
        usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        latency_s=0.12345,
        user=extra.get("user"),
        metadata=extra.get("metadata"),
    )


def written(folder: Path) -> list[dict[str, Any]]:
    lines = []
    for path in sorted(folder.glob("capture-*.jsonl")):
        text = path.read_text()
        assert text.endswith("\n")
        lines += [json.loads(line) for line in text.splitlines()]
    return lines


def test_rows_are_whole_lines_in_the_relabel_format(tmp_path: Path) -> None:
    sink = CaptureSink(tmp_path, CaptureConfig())
    for k in range(5):
        sink.submit(row(f"question {k}", user="u", metadata={"team": "a"}))
    sink.close()
    rows = written(tmp_path)
    assert [r["messages"][0]["content"] for r in rows] == [f"question {k}" for k in range(5)]
    first = rows[0]
    assert first["messages"][-1] == {"role": "assistant", "content": "hi"}
    assert first["metadata"] == {"user": "u", "team": "a"}
    assert first["latency_s"] == 0.1235 and first["model"] == "openai:gpt-x"
    assert len({r["id"] for r in rows}) == 5
    assert sink.snapshot()["rows"] == 5 and sink.snapshot()["pending"] == 0


def test_drop_and_hash_by_dotted_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = CaptureConfig(
        drop=["metadata.secret", "usage"], hash=["metadata.user", "messages.*.content"]
    )
    sink = CaptureSink(tmp_path / "a", config)
    sink.submit(row("private", user="alice", metadata={"secret": "x", "team": "t"}))
    sink.close()
    monkeypatch.setenv("MOA_CAPTURE_SALT", "pepper")
    salted = CaptureSink(tmp_path / "b", config)
    salted.submit(row("private", user="alice"))
    salted.close()
    (plain,) = written(tmp_path / "a")
    (peppered,) = written(tmp_path / "b")
    assert "usage" not in plain and plain["metadata"].keys() == {"user", "team"}
    assert plain["metadata"]["user"].startswith("sha256:")
    assert all(m["content"].startswith("sha256:") for m in plain["messages"])
    assert "alice" not in json.dumps(plain) and "private" not in json.dumps(plain)
    assert peppered["metadata"]["user"] != plain["metadata"]["user"]  # the salt changes it


def test_files_rotate_by_size(tmp_path: Path) -> None:
    sink = CaptureSink(tmp_path, CaptureConfig(rotate_mb=0.0005))  # ~520 bytes
    for k in range(6):
        sink.submit(row("x" * 200 + str(k)))
    sink.close()
    files = sorted(tmp_path.glob("capture-*.jsonl"))
    assert len(files) >= 3
    assert len(written(tmp_path)) == 6


def test_a_restart_starts_a_new_file(tmp_path: Path) -> None:
    for _ in range(2):
        sink = CaptureSink(tmp_path, CaptureConfig())
        sink.submit(row())
        sink.close()
    assert [p.name[-10:] for p in sorted(tmp_path.glob("*.jsonl"))] == ["0001.jsonl", "0002.jsonl"]


def test_an_unwritable_directory_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(MoAInputError, match="cannot write to the capture directory"):
        CaptureSink(blocker / "sub", CaptureConfig())


def test_sampling_and_capture_off() -> None:
    config = CaptureConfig(
        sample_rate=0.0,
        models={"on": {"sample_rate": 1.0}, "off": {"capture": False}},  # type: ignore[dict-item]
    )
    assert config.settings("on") == (True, 1.0)
    assert config.settings("off") == (False, 0.0)
    assert config.settings("other") == (True, 0.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sample_rate: 2\n", "sample_rate"),
        ("models: {x: {capture: maybe}}\n", "models.x.capture"),
        ("surprise: 1\n", "surprise"),
        ("aliases: [\n", "is not YAML"),
    ],
)
def test_a_bad_config_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "capture.yaml"
    path.write_text(text)
    with pytest.raises(MoAInputError) as raised:
        load_capture_config(path)
    assert expected in str(raised.value) and str(path) in str(raised.value)
    assert "\n" not in str(raised.value)
