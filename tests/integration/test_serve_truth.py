"""``moa serve`` keeps its word (issue 22): a topology's ``deadline_s`` through the one run loop,
streamed and not; a pass-through cancelled with its client and not captured; pass-through only
to the providers the operator configured (no default loopback URL on a client's say-so); a
worker killed after it started is replaced; no 502 when the upstream closes keep-alive
connections; a topology file named like a preset is refused. Every upstream is the fake
OpenAI server, reached over HTTP; the servers are real ``moa serve`` processes, or the real app
in process where the provider table itself has to change (the default base URL of a provider).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import select
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from langgraph_moa.serving import create_app
from langgraph_moa.serving.workers import run_workers
from langgraph_moa.spec.providers import PROVIDERS
from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import one_line_error, run_moa
from tests.integration.test_serve import MINE, Server, fake_env, free_port, start, stop
from tests.integration.test_serve_capture import rows, stats

DEADLINE = """\
name: hasty
retry: {attempts: 1}
deadline_s: 4
layers:
  - proposers: [{model: 'openai:quick-a'}, {model: 'openai:quick-b'}]
aggregator: {model: 'openai:slow-agg'}
prices:
  'openai:quick-a': {input_per_mtok: 1.0, output_per_mtok: 2.0}
  'openai:quick-b': {input_per_mtok: 1.0, output_per_mtok: 2.0}
  'openai:slow-agg': {input_per_mtok: 1.0, output_per_mtok: 2.0}
"""
HI = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def server(_server: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One ``moa serve`` with a deadline topology and pass-through capture."""
    folder = tmp_path_factory.mktemp("truth")
    (folder / "topologies").mkdir()
    (folder / "topologies" / "hasty.yaml").write_text(DEADLINE)
    args = ["--topologies", str(folder / "topologies"), "--capture", str(folder / "captured")]
    server = start(args, fake_env(_server), free_port(), folder / "serve.log", None)
    yield server
    log = stop(server)
    assert "Traceback" not in log, log


def captured(server: Server) -> Path:
    args = server.proc.args
    assert isinstance(args, list)
    return Path(str(args[args.index("--capture") + 1]))


def wait_for(condition: Any, what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


# --- deadline_s: one run loop, streamed and not ---


def assert_partial_record(record: dict[str, Any]) -> None:
    """What finished before the deadline is in the record: both proposals, and their cost."""
    assert record["topology"] == "hasty"
    proposals = record["layers"][0]
    assert [p["node"] for p in proposals] == ["L1/quick-a", "L1/quick-b"], proposals
    assert all(p["ok"] and p["text"] for p in proposals), proposals
    assert record["cost_usd"] > 0, record
    assert set(record["by_model"]) == {"openai:quick-a", "openai:quick-b"}, record


@pytest.mark.slow
def test_a_run_within_its_deadline_answers(server: Server, fake: FakeOpenAI) -> None:
    """(First: it also warms the server up, so the proposers of the next tests finish well
    within the deadline.)"""
    response = server.post({"model": "hasty", "messages": HI}, timeout=50)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Answer 1 from slow-agg."


@pytest.mark.slow
def test_a_passed_deadline_is_a_504_with_what_finished(server: Server, fake: FakeOpenAI) -> None:
    fake.behave("slow-agg", latency_s=60)
    response = server.post({"model": "hasty", "messages": HI}, timeout=50)
    assert response.status_code == 504, response.text
    assert response.headers["x-should-retry"] == "false"
    body = response.json()
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == "deadline_exceeded" and "deadline of 4s passed" in error["message"]
    assert_partial_record(body["moa"])
    # the aggregator's request was cancelled with the run, not left running upstream
    wait_for(lambda: fake.requests_for("slow-agg")[0].disconnected, "aggregator not cancelled")


@pytest.mark.slow
def test_a_passed_deadline_ends_a_stream_with_an_error_event(
    server: Server, fake: FakeOpenAI
) -> None:
    fake.behave("slow-agg", latency_s=60)
    body = {"model": "hasty", "messages": HI, "stream": True}
    with httpx.stream("POST", f"{server.url}/chat/completions", json=body, timeout=50) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]", events
    failure = json.loads(events[-2].removeprefix("data: "))
    assert failure["error"]["code"] == "deadline_exceeded", failure
    assert_partial_record(failure["moa"])
    wait_for(lambda: fake.requests_for("slow-agg")[0].disconnected, "aggregator not cancelled")


# --- a pass-through is cancelled with its client, and not captured ---


@pytest.mark.slow
def test_a_non_streamed_pass_through_is_cancelled_with_its_client(
    server: Server, fake: FakeOpenAI
) -> None:
    fake.behave("gpt-slow", latency_s=60)
    before = stats(server)
    body = {"model": "capture/openai:gpt-slow", "messages": [{"role": "user", "content": "zq7"}]}
    with pytest.raises(httpx.ReadTimeout):
        server.post(body, timeout=httpx.Timeout(10, read=1.5))
    left = time.perf_counter()  # the fake server runs in this process: the same clock
    wait_for(lambda: fake.requests_for("gpt-slow"), "never reached the upstream")
    upstream = fake.requests_for("gpt-slow")[0]
    wait_for(lambda: upstream.disconnected, "the upstream request was not cancelled")
    assert upstream.status == 499
    assert upstream.finished - left < 1.0, upstream.finished - left
    wait_for(lambda: stats(server)["cancelled"] == before["cancelled"] + 1, "not counted")
    # a complete exchange after it is captured, the cancelled one never is
    done = server.post({"model": "capture/openai:gpt-x", "messages": HI}, timeout=30)
    assert done.status_code == 200, done.text
    wait_for(lambda: stats(server)["rows"] == before["rows"] + 1, "the complete one not captured")
    assert not any("zq7" in json.dumps(row) for row in rows(captured(server)))


# --- pass-through only where the operator said so ---


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A listening socket standing in for vLLM's and Ollama's default local port: their
    default base URLs (the provider table's own, not the environment's) point at it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    for name in ("vllm", "ollama"):
        default = dataclasses.replace(PROVIDERS[name], base_url=f"http://localhost:{port}/v1")
        monkeypatch.setitem(PROVIDERS, name, default)
        monkeypatch.delenv(f"{name.upper()}_BASE_URL", raising=False)
        monkeypatch.delenv(f"{name.upper()}_API_KEY", raising=False)
    yield sock
    sock.close()


def connected(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0.5)[0])


@pytest.mark.parametrize("provider", ["vllm", "ollama"])
def test_a_default_loopback_provider_is_refused_and_never_reached(
    listener: socket.socket, tmp_path: Path, provider: str
) -> None:
    client = TestClient(create_app(capture_dir=tmp_path / "cap"))
    for stream in (False, True):
        response = client.post(
            "/v1/chat/completions",
            json={"model": f"capture/{provider}:x", "messages": HI, "stream": stream},
        )
        assert response.status_code == 403, response.text
        error = response.json()["error"]
        assert error["code"] == "provider_not_allowed" and error["param"] == "model"
        assert f"provider {provider!r} is not configured" in error["message"]
        assert f"--allow-provider {provider}" in error["message"]
    models = client.get("/v1/models").json()
    assert f"capture/{provider}:x" not in json.dumps(models["data"])
    assert not connected(listener)  # no connection at all reached the default port


def test_an_allowed_provider_is_reached_at_its_default_url(
    listener: socket.socket, tmp_path: Path
) -> None:
    """The control for the test above: allowed, the same request does reach the listener (which
    hangs up before answering, twice, hence a 502)."""
    client = TestClient(create_app(capture_dir=tmp_path / "cap", allow_providers=["vllm"]))

    async def hang_up() -> None:  # twice: the request, and its one retry on a new connection
        loop = asyncio.get_running_loop()
        for _ in range(2):
            conn, _ = await loop.sock_accept(listener)
            conn.close()

    async def both() -> Any:
        refusing = asyncio.ensure_future(hang_up())
        response = await asyncio.to_thread(
            client.post, "/v1/chat/completions", json={"model": "capture/vllm:x", "messages": HI}
        )
        await refusing
        return response

    response = asyncio.run(both())
    assert response.status_code == 502, response.text


def test_a_provider_with_its_base_url_set_is_configured(
    listener: socket.socket, tmp_path: Path, _server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_BASE_URL", _server.base_url)
    client = TestClient(create_app(capture_dir=tmp_path / "cap"))
    response = client.post("/v1/chat/completions", json={"model": "capture/vllm:m", "messages": HI})
    assert response.status_code == 200, response.text
    assert not connected(listener)


@pytest.mark.slow
def test_allow_provider_is_checked_at_start_up(tmp_path: Path) -> None:
    capture = ["--capture", str(tmp_path / "cap")]
    one_line_error(
        run_moa("serve", "--port", "0", *capture, "--allow-provider", "nope"),
        "--allow-provider: 'nope' is not an OpenAI-compatible provider",
    )
    one_line_error(
        run_moa("serve", "--port", "0", "--allow-provider", "vllm"),
        "--allow-provider is for pass-through models: give --capture too",
    )


# --- --workers: a worker killed after it started is replaced ---


def worker_pids(log: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", log)]


@pytest.mark.slow
def test_a_killed_worker_is_replaced_whatever_its_age(_server: FakeOpenAI, tmp_path: Path) -> None:
    """Killed at 3 s and at 10 s after the server started: both replaced, the server answers
    throughout. (The supervisor no longer looks at a worker's age, only at whether it had begun
    serving: 10 s stands for any later age, past the former 5 s cut-off.)"""
    (tmp_path / "topologies").mkdir()
    (tmp_path / "topologies" / "mine.yaml").write_text(MINE)
    args = ["--topologies", str(tmp_path / "topologies"), "--workers", "2", "--log-level", "info"]
    begun = time.monotonic()
    server = start(args, fake_env(_server), free_port(), tmp_path / "serve.log", None)
    try:
        wait_for(lambda: len(worker_pids(server.log.read_text())) == 2, "workers not started")
        first, second = worker_pids(server.log.read_text())
        for started, (victim, age) in enumerate(((first, 3.0), (second, 10.0)), 3):
            time.sleep(max(0.0, begun + age - time.monotonic()))
            os.kill(victim, signal.SIGKILL)
            said = f"worker {victim} exited with code -9; replacing it"
            wait_for(lambda s=said: s in server.log.read_text(), f"not replaced: {victim}")
            wait_for(
                lambda n=started: len(worker_pids(server.log.read_text())) == n,
                "no replacement started",
            )
            assert server.proc.poll() is None, server.log.read_text()
            for _ in range(4):  # whichever worker takes it, it answers
                answer = server.post({"model": "mine", "messages": HI}, timeout=60)
                assert answer.status_code == 200, answer.text
    finally:
        log = stop(server)
    assert "before it served" not in log and "Traceback" not in log, log


def test_a_worker_that_dies_before_serving_stops_them_all() -> None:
    """The start-up crash guard: a worker that exits before it ever served is not replaced
    (it would fail again), and the supervisor returns instead of looping."""
    said: list[str] = []
    run_workers(lambda ready: sys.exit(3), 2, said.append)
    assert said, said
    assert re.fullmatch(r"worker \d+ exited with code 3 before it served; stopping", said[0])
    assert "replacing" not in " ".join(said), said


# --- 200 concurrent pass-through requests, the upstream closing idle connections ---


@pytest.mark.slow
def test_keep_alive_closes_upstream_are_not_502(tmp_path: Path) -> None:
    with FakeOpenAI(keep_alive_s=0.05) as upstream:
        env = fake_env(upstream)
        args = ["--capture", str(tmp_path / "cap"), "--max-connections", "1024"]
        server = start(args, env, free_port(), tmp_path / "serve.log", None)
        try:

            async def burst() -> list[tuple[int, str]]:
                # a new connection to moa serve for each request: the hop under test is the
                # one to the upstream; this client reusing a connection moa serve has just
                # closed would be the same race on the test's own side
                limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
                async with httpx.AsyncClient(timeout=60, limits=limits) as client:

                    async def one(k: int) -> tuple[int, str]:
                        await asyncio.sleep((k % 20) * 0.01)
                        reply = await client.post(
                            f"{server.url}/chat/completions",
                            json={"model": "capture/openai:gpt-x", "messages": HI},
                        )
                        return reply.status_code, reply.text

                    statuses: list[tuple[int, str]] = []
                    for _ in range(3):  # idle gaps of about the upstream's keep-alive
                        statuses += await asyncio.gather(*(one(k) for k in range(200)))
                        await asyncio.sleep(0.05)
                    return statuses

            statuses = asyncio.run(burst())
        finally:
            log = stop(server)
        failed = [(status, text) for status, text in statuses if status != 200]
        assert not failed and len(statuses) == 600, failed
        assert len(upstream.requests) == 600  # each answered once
    assert "Traceback" not in log, log


# --- a topology file named like a preset ---


@pytest.mark.slow
def test_a_topology_file_shadowing_a_preset_is_refused(tmp_path: Path) -> None:
    (tmp_path / "vote.yaml").write_text(DEADLINE)
    one_line_error(
        run_moa("serve", "--port", "0", "--topologies", str(tmp_path)),
        "would shadow the preset 'vote': rename the file",
    )


def test_an_allowed_provider_still_needs_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FIREWORKS_API_KEY", raising=False)
    monkeypatch.delenv("FIREWORKS_BASE_URL", raising=False)
    app = create_app(capture_dir=tmp_path / "cap", allow_providers=["fireworks"])
    response = TestClient(app).post(
        "/v1/chat/completions", json={"model": "capture/fireworks:x", "messages": HI}
    )
    assert response.status_code == 503, response.text
    assert "FIREWORKS_API_KEY is not set" in response.json()["error"]["message"]
