"""Pass-through models and traffic capture (``moa serve --capture DIR``): the official openai
client through a real ``moa serve`` process to the fake upstream, the answer unchanged, and each
completed exchange one whole JSONL row in the relabel input format."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from langgraph_moa.serving import create_app
from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import TEST_KEY, one_line_error, run_moa
from tests.integration.test_serve import (
    Server,
    assert_openai_error,
    fake_env,
    free_port,
    start,
    stop,
)

KEY = "moa-capture-key-0123456789"
CONFIG = """\
aliases:
  prod: openai:gpt-x
models:
  capture/openai:gpt-off: {capture: false}
hash: [metadata.user]
drop: [metadata.secret]
"""
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def capture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("captured")


@pytest.fixture(scope="module")
def server(
    _server: FakeOpenAI, capture_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("capture-serve")
    config = folder / "capture.yaml"
    config.write_text(CONFIG)
    env = fake_env(_server) | {"MOA_SERVE_KEYS": KEY}
    args = ["--capture", str(capture_dir), "--capture-config", str(config)]
    server = start([*args, "--log-level", "info"], env, free_port(), folder / "serve.log", KEY)
    yield server
    log = stop(server)
    assert "Traceback" not in log, log
    assert KEY not in log and TEST_KEY not in log
    for path in capture_dir.iterdir():  # no key in any captured byte
        data = path.read_bytes()
        assert KEY.encode() not in data and TEST_KEY.encode() not in data, path


def stats(server: Server) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/capture/stats", headers=server.headers(), timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def rows(capture_dir: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted(capture_dir.glob("capture-*.jsonl")):
        text = path.read_text(encoding="utf-8")
        assert not text or text.endswith("\n"), path  # whole rows only
        found += [json.loads(line) for line in text.splitlines()]
    return found


def new_rows(server: Server, capture_dir: Path, before: dict[str, Any], count: int) -> list[Any]:
    """The rows written since ``before`` (stats), once ``count`` of them are on disk."""
    deadline = time.monotonic() + 10
    while stats(server)["rows"] < before["rows"] + count:
        assert time.monotonic() < deadline, stats(server)
        time.sleep(0.02)
    return rows(capture_dir)[before["rows"] :]


def assert_relabel_row(row: dict[str, Any]) -> None:
    """The relabel input format: OpenAI chat messages ending with the captured completion."""
    assert row["id"].startswith("cap-") and row["timestamp"].endswith("+00:00")
    assert isinstance(row["messages"], list) and row["messages"][-1]["role"] == "assistant"
    assert row["messages"][0]["role"] in ("system", "user")
    assert isinstance(row["latency_s"], float) and row["latency_s"] >= 0
    assert ":" in row["model"]


# --- pass-through ------------------------------------------------------------------------------


@pytest.mark.slow
def test_non_streamed_answer_is_unchanged_and_captured(
    server: Server, fake: FakeOpenAI, capture_dir: Path
) -> None:
    before = stats(server)
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why is the sky blue?"},
    ]
    completion = server.client().chat.completions.create(
        model="capture/openai:gpt-x",
        messages=messages,
        temperature=0.3,
        top_p=0.9,
        seed=5,
        user="alice",
        metadata={"team": "search", "secret": "s3"},
        logprobs=True,  # not a mixture: forwarded as sent
    )
    # the upstream's answer, as the upstream wrote it
    assert completion.id == "chatcmpl-fake-gpt-x-1"
    assert completion.model == "gpt-x"
    assert completion.choices[0].message.content == "Answer 1 from gpt-x."
    (sent,) = fake.requests
    assert sent.body["model"] == "gpt-x"
    assert sent.body["messages"] == messages
    for field, value in (("temperature", 0.3), ("top_p", 0.9), ("seed", 5), ("logprobs", True)):
        assert sent.body[field] == value
    assert sent.body["user"] == "alice"
    assert sent.headers["authorization"] == f"Bearer {TEST_KEY}"  # the provider's key, not ours
    (row,) = new_rows(server, capture_dir, before, 1)
    assert_relabel_row(row)
    assert row["model"] == "openai:gpt-x"
    assert row["messages"] == [
        *messages,
        {"role": "assistant", "content": "Answer 1 from gpt-x."},
    ]
    assert row["usage"]["completion_tokens"] == 4
    assert "tools" not in row
    # hash: [metadata.user], drop: [metadata.secret]
    assert row["metadata"]["team"] == "search" and "secret" not in row["metadata"]
    assert row["metadata"]["user"].startswith("sha256:") and "alice" not in json.dumps(row)


@pytest.mark.slow
def test_streamed_answer_is_relayed_and_captured_once_complete(
    server: Server, fake: FakeOpenAI, capture_dir: Path
) -> None:
    before = stats(server)
    stream = server.client().chat.completions.create(
        model="capture/openai:gpt-x",
        messages=[{"role": "user", "content": "Stream it"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Answer 1 from gpt-x."
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert all(c.id == "chatcmpl-fake-gpt-x-1" for c in chunks)
    assert fake.requests[0].body["stream_options"] == {"include_usage": True}
    (row,) = new_rows(server, capture_dir, before, 1)
    assert_relabel_row(row)
    assert row["messages"][-1] == {"role": "assistant", "content": "Answer 1 from gpt-x."}
    assert row["usage"]["total_tokens"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_pass_through_and_are_captured(
    server: Server, fake: FakeOpenAI, capture_dir: Path, stream: bool
) -> None:
    fake.behave(
        "gpt-x", tool_calls=lambda body, n: [{"name": "get_weather", "arguments": {"city": "Lyon"}}]
    )
    before = stats(server)
    client = server.client()
    kwargs: dict[str, Any] = {
        "model": "prod",  # an alias of openai:gpt-x
        "messages": [{"role": "user", "content": "Weather in Lyon?"}],
        "tools": [WEATHER_TOOL],
        "tool_choice": "auto",
    }
    if stream:
        chunks = list(client.chat.completions.create(**kwargs, stream=True))
        calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
        assert calls[0].function and calls[0].function.name == "get_weather"
    else:
        message = client.chat.completions.create(**kwargs).choices[0].message
        assert message.tool_calls and message.tool_calls[0].function.name == "get_weather"
    sent = fake.requests[0].body
    assert sent["tools"] == [WEATHER_TOOL] and sent["tool_choice"] == "auto"
    (row,) = new_rows(server, capture_dir, before, 1)
    assert_relabel_row(row)
    assert row["model"] == "openai:gpt-x"
    assert row["tools"] == [WEATHER_TOOL]
    last = row["messages"][-1]
    assert not last["content"]  # as the upstream answered: "" or null
    (call,) = last["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Lyon"}
    assert call["id"] == "call_1_0"


def test_upstream_4xx_passes_through_and_is_counted_not_captured(
    server: Server, fake: FakeOpenAI, capture_dir: Path
) -> None:
    # the upstream echoes the key it was sent, as OpenAI does on a 401
    fake.behave("gpt-bad", always=401, error_message="Incorrect API key provided: {key}")
    fake.behave("gpt-slow", always=429, retry_after=3)
    before = stats(server)
    with pytest.raises(openai.AuthenticationError) as denied:
        server.client().chat.completions.create(
            model="capture/openai:gpt-bad", messages=[{"role": "user", "content": "hi"}]
        )
    assert denied.value.status_code == 401
    assert "Incorrect API key provided" in denied.value.message
    assert TEST_KEY not in str(denied.value.body) and "***" in str(denied.value.body)
    limited = server.post(
        {"model": "capture/openai:gpt-slow", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert limited.status_code == 429 and limited.headers["retry-after"] == "3"
    after = stats(server)
    assert after["failed"] == before["failed"] + 2
    assert after["rows"] == before["rows"]


def test_a_client_leaving_mid_stream_is_counted_not_captured(
    server: Server, fake: FakeOpenAI, capture_dir: Path
) -> None:
    fake.behave("gpt-drip", drip_s=0.05)
    before = stats(server)
    body = {
        "model": "capture/openai:gpt-drip",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{server.url}/chat/completions", json=body, headers=server.headers(), timeout=10
    ) as response:
        assert response.status_code == 200
        next(response.iter_bytes())
    deadline = time.monotonic() + 10
    while stats(server)["cancelled"] == before["cancelled"]:
        assert time.monotonic() < deadline, stats(server)
        time.sleep(0.05)
    assert stats(server)["rows"] == before["rows"]


@pytest.mark.slow
def test_capture_off_and_sampling_count_but_do_not_write(
    server: Server, fake: FakeOpenAI, capture_dir: Path
) -> None:
    before = stats(server)
    completion = server.client().chat.completions.create(
        model="capture/openai:gpt-off", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == "Answer 1 from gpt-off."
    after = stats(server)
    assert after["sampled_out"] == before["sampled_out"] + 1
    assert after["rows"] == before["rows"]


def test_keys_in_a_conversation_are_masked(
    server: Server, fake: FakeOpenAI, capture_dir: Path
) -> None:
    before = stats(server)
    server.client().chat.completions.create(
        model="capture/openai:gpt-x",
        messages=[{"role": "user", "content": f"my key is {TEST_KEY}, keep it"}],
    )
    (row,) = new_rows(server, capture_dir, before, 1)
    assert row["messages"][0]["content"] == "my key is ***, keep it"


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_captured_rows_are_relabel_input_end_to_end(
    server: Server, fake: FakeOpenAI, capture_dir: Path, tmp_path: Path
) -> None:
    """capture -> relabel -> export is one loop: the captured completion is the DPO pair's
    rejected answer and the mixture's answer the chosen one."""
    before = stats(server)
    client = server.client()
    for k in range(3):
        client.chat.completions.create(
            model="capture/openai:gpt-x",
            messages=[{"role": "user", "content": f"Loop question {k}?"}],
        )
    captured = new_rows(server, capture_dir, before, 3)
    originals = {row["id"]: row["messages"][-1]["content"] for row in captured}
    for model in ("a", "b", "agg"):
        fake.behave(model, reply=lambda body, number, choice: f"{body['model']} relabelled")
    topology = tmp_path / "mix.yaml"
    topology.write_text(
        "name: mix\nlayers:\n"
        "  - proposers: [{name: a, model: 'openai:a'}, {name: b, model: 'openai:b'}]\n"
        "aggregator: {model: 'openai:agg'}\n"
    )
    out = tmp_path / "runs"
    result = run_moa("relabel", str(capture_dir), "-t", str(topology), "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["totals"]["done"] >= 3 and summary["totals"].get("invalid", 0) == 0, summary
    run_dir = out / summary["name"]
    pairs_file = tmp_path / "pairs.jsonl"
    exported = run_moa("export", str(run_dir), "--format", "dpo", "-o", str(pairs_file))
    assert exported.returncode == 0, exported.stderr
    pairs = {p["id"]: p for p in map(json.loads, pairs_file.read_text().splitlines())}
    for row_id, original in originals.items():
        pair = pairs[row_id]
        assert pair["rejected"][0]["content"] == original and pair["rejected_from"] == "original"
        assert pair["chosen"][0]["content"] == "agg relabelled"
        assert pair["prompt"][-1]["content"].startswith("Loop question")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "status", "expected"),
    [
        ("capture/nosuch:gpt-x", 404, "unknown provider 'nosuch'"),
        ("capture/gpt-x", 404, "capture/<provider>:<model>"),
        ("capture/local:smollm2", 400, "not an OpenAI-compatible service"),
        # not configured (no key, no base URL): refused before anything else is checked
        ("capture/fireworks:x", 403, "set FIREWORKS_API_KEY or FIREWORKS_BASE_URL, or start"),
    ],
)
def test_pass_through_models_that_cannot_be_served(
    server: Server, fake: FakeOpenAI, model: str, status: int, expected: str
) -> None:
    error = assert_openai_error(
        server.post({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        status,
        expected,
    )
    assert error["param"] == "model"
    assert fake.requests == []


@pytest.mark.slow
def test_stats_and_models_need_the_key(server: Server) -> None:
    assert httpx.get(f"{server.url}/capture/stats", timeout=10).status_code == 401
    listed = [m.id for m in server.client().models.list()]
    assert "prod" in listed
    assert server.client().models.retrieve("capture/openai:gpt-x").id == "capture/openai:gpt-x"


@pytest.mark.slow
def test_an_oversized_request_is_413_and_nothing_is_written(
    server: Server, fake: FakeOpenAI
) -> None:
    before = stats(server)
    huge = "x" * (2 * 1024 * 1024)
    response = server.post(
        {"model": "capture/openai:gpt-x", "messages": [{"role": "user", "content": huge}]}
    )
    assert response.status_code == 413
    assert fake.requests == [] and stats(server)["rows"] == before["rows"]


@pytest.mark.slow
def test_a_capture_dir_that_cannot_be_written_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_moa("serve", "--port", "0", "--capture", str(blocker / "sub"))
    one_line_error(result, "cannot write to the capture directory")


def test_no_capture_dir_means_no_pass_through(tmp_path: Path, _server: FakeOpenAI) -> None:
    client = TestClient(create_app())
    response = client.post(
        "/v1/chat/completions",
        json={"model": "capture/openai:gpt-x", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 404
    assert "without a capture directory" in response.json()["error"]["message"]
    assert client.get("/v1/capture/stats").status_code == 404


# --- kill -9 -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_during_a_burst_leaves_only_whole_rows(
    _server: FakeOpenAI, fake: FakeOpenAI, tmp_path: Path
) -> None:
    captured = tmp_path / "captured"
    server = start(
        ["--capture", str(captured)], fake_env(_server), free_port(), tmp_path / "serve.log", None
    )
    stop_burst = threading.Event()
    sent = [0]
    long_text = "word " * 2000  # rows of ~10 kB: a write that could be cut is a real one

    def burst() -> None:
        client = server.client(timeout=5)
        while not stop_burst.is_set():
            try:
                client.chat.completions.create(
                    model="capture/openai:gpt-x",
                    messages=[{"role": "user", "content": long_text}],
                )
                sent[0] += 1
            except openai.APIError:
                return

    threads = [threading.Thread(target=burst) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while sent[0] < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=10)
    finally:
        stop_burst.set()
        for t in threads:
            t.join(timeout=10)
        if server.proc.poll() is None:
            server.proc.kill()
    assert sent[0] >= 50
    found = rows(captured)  # every line parses, every file ends with a newline
    assert len(found) >= 10
    for row in found:
        assert_relabel_row(row)
        assert row["messages"][0]["content"] == long_text
