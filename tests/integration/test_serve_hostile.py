"""``moa serve`` against hostile or careless clients and configurations: a recursion guard that
sees through every spelling of "this machine", clients that are slow, leave, or flood the server
with connections, a conversation too large to handle, JSON that Python's parser chokes on, keys
no HTTP header can carry, and runs whose client leaves.

Servers run as real processes (``run_server`` with the limits under test, or ``moa serve``)
driven over real sockets, httpx and the official openai client, with the upstream models faked
at HTTP by the fake OpenAI server of conftest.py. The two tests that need to look inside the
server (which tasks are alive when a concurrency slot is freed) run uvicorn in the test's own
event loop with the configuration ``run_server`` uses.
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from openai.types.chat import ChatCompletionMessageParam

from langgraph_moa.errors import MoAInputError
from langgraph_moa.serving import create_app
from langgraph_moa.serving.access import SelfAddress, load_keys
from langgraph_moa.serving.server import server_config
from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.integration.test_serve import (
    LOOP,
    MESSAGES,
    MINE,
    SERVE,
    Server,
    assert_openai_error,
    fake_env,
    free_port,
    stop,
)

LAUNCH = "import json, sys; from langgraph_moa.serving import run_server; " + (
    "run_server(**json.loads(sys.argv[1]))"
)
READ_TIMEOUT_S = 1.0
STARTUP_DEADLINE_S = 60.0


def launch(
    settings: dict[str, Any],
    env: dict[str, str],
    log: Path,
    *,
    port: int | None = None,
    fd_limit: int | None = None,
) -> Server:
    """``run_server(**settings)`` in its own process, once it answers /v1/models."""
    port = port or free_port()

    def limit_fds() -> None:
        if fd_limit is not None:
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, hard))

    settings = {"port": port, "log_level": "warning", **settings}
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, json.dumps(settings)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            preexec_fn=limit_fds,
        )
    server = Server(proc, port, log, None)
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited early:\n{log.read_text()}")
        try:
            httpx.get(f"{server.url}/models", timeout=2)
            return server
        except httpx.TransportError:
            if time.monotonic() > deadline:
                stop(server)
                raise RuntimeError(f"the server did not start:\n{log.read_text()}") from None
            time.sleep(0.1)


def quiet_log(log: str) -> None:
    """Nothing a client did is logged as the server's fault."""
    assert "Traceback" not in log, log
    assert "internal error" not in log, log
    assert "ERROR" not in log, log


@pytest.fixture(scope="module")
def topologies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("topologies")
    (folder / "mine.yaml").write_text(MINE)
    (folder / "loop.yaml").write_text(LOOP)
    return folder


@pytest.fixture(scope="module")
def hardened(
    _server: FakeOpenAI, topologies: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A server with a short read timeout and room for one run at a time."""
    folder = tmp_path_factory.mktemp("hardened")
    settings = {
        "topologies_dir": str(topologies),
        "max_concurrency": 1,
        "read_timeout_s": READ_TIMEOUT_S,
    }
    server = launch(settings, fake_env(_server), folder / "serve.log")
    yield server
    quiet_log(stop(server))


# --- 1. the recursion guard ---------------------------------------------------------------------

SPELLINGS_OF_HERE = [
    "127.1",
    "2130706433",
    "0x7f000001",
    "0177.0.0.1",
    "0",
    "0.0.0.0",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "localhost.",
    "LocalHost",
    socket.gethostname(),
]


@pytest.mark.parametrize("bind", ["127.0.0.1", "localhost", "0.0.0.0"])
@pytest.mark.parametrize("host", SPELLINGS_OF_HERE)
def test_every_spelling_of_this_machine_is_this_server(bind: str, host: str) -> None:
    here = SelfAddress(bind, 8080)
    assert here.matches(f"http://{host}:8080/v1")
    assert here.matches(f"http://user:pw@{host}:8080/v1?key=x")
    assert not here.matches(f"http://{host}:8081/v1")  # another port is another server


@pytest.mark.parametrize(
    ("bind", "url"),
    [
        ("10.1.2.3", "http://127.1:8080/v1"),  # bound elsewhere: loopback does not reach it
        ("10.1.2.3", "http://10.1.2.4:8080/v1"),
        ("127.0.0.1", "http://10.1.2.3:8080/v1"),
        ("127.0.0.1", "http://1.2.3.4:8080/v1"),
        ("127.0.0.1", "https://api.together.xyz/v1"),
    ],
)
def test_other_machines_are_not_this_server(bind: str, url: str) -> None:
    assert not SelfAddress(bind, 8080).matches(url)


@pytest.mark.slow
def test_a_numeric_spelling_of_this_machine_is_refused_without_leaking_credentials(
    _server: FakeOpenAI, topologies: Path, tmp_path: Path, fake: FakeOpenAI
) -> None:
    port = free_port()
    env = fake_env(fake)
    # the agent's base URL reaches this very server, with a password and a key on the way
    env["VLLM_BASE_URL"] = f"http://moa:hunter2-pw@2130706433:{port}/v1?api_key=sk-leak-123456"
    server = launch({"topologies_dir": str(topologies)}, env, tmp_path / "serve.log", port=port)
    try:
        ids = [m.id for m in server.client().models.list()]
        assert "mine" in ids and "loop" not in ids
        response = server.post({"model": "loop", "messages": MESSAGES})
        error = assert_openai_error(response, 400, "points back at this server")
        assert f"(http://2130706433:{port}/v1)" in error["message"]
        assert fake.requests == []
    finally:
        log = stop(server)
    for secret in ("hunter2-pw", "sk-leak-123456", "moa:"):
        assert secret not in response.text and secret not in log, log
    assert "not serving 'loop'" in log


# --- 2. slow clients, floods of connections, clients that leave ----------------------------------


def _closed(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (without waiting)."""
    sock.setblocking(False)
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (whatever it sent first)."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
    return False


@pytest.mark.slow
def test_a_silent_or_trickling_client_is_cut_off(hardened: Server) -> None:
    silent = socket.create_connection(("127.0.0.1", hardened.port))
    trickling = socket.create_connection(("127.0.0.1", hardened.port))
    started = time.monotonic()
    with silent, trickling:
        trickling.settimeout(0.2)
        closed = False
        for byte in b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:
            try:
                trickling.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            if time.monotonic() - started > READ_TIMEOUT_S + 3:
                break
            time.sleep(0.05)
        assert closed or _closed_within(trickling, 1.0), "a trickled header kept its connection"
        assert time.monotonic() - started < READ_TIMEOUT_S + 3
        assert _closed_within(silent, 2.0)
    # and the server still answers
    assert httpx.get(f"{hardened.url}/models", timeout=5).status_code == 200


@pytest.mark.slow
def test_a_body_that_does_not_arrive_in_time_is_408(hardened: Server, fake: FakeOpenAI) -> None:
    body = json.dumps({"model": "mine", "messages": MESSAGES}).encode()
    with socket.create_connection(("127.0.0.1", hardened.port)) as sock:
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body[:10])
        sock.settimeout(READ_TIMEOUT_S + 5)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout", answer
    headers, _, payload = rest.partition(b"\r\n\r\n")
    assert b"connection: close" in headers.lower()
    error = json.loads(payload)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "request_timeout" and "did not arrive" in error["message"]
    assert fake.requests == []


@pytest.mark.slow
def test_half_open_connections_do_not_lock_clients_out(
    _server: FakeOpenAI, topologies: Path, tmp_path: Path, fake: FakeOpenAI
) -> None:
    # A low descriptor limit and a read timeout far longer than the test: only the connection
    # cap can make room for the real client.
    settings = {"topologies_dir": str(topologies), "read_timeout_s": 120.0}
    server = launch(settings, fake_env(fake), tmp_path / "serve.log", fd_limit=160)
    flood: list[socket.socket] = []
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            flood.append(sock)
        time.sleep(0.5)  # the server has accepted what it will
        started = time.monotonic()
        answer = server.client(timeout=20).chat.completions.create(model="mine", messages=MESSAGES)
        assert answer.choices[0].message.content == "Answer 1 from agg."
        assert time.monotonic() - started < 10
        assert httpx.get(f"{server.url}/models", timeout=10).status_code == 200
        # most of the flood was closed to make room; the process never ran out of descriptors
        assert sum(_closed(s) for s in flood) >= 100
    finally:
        for sock in flood:
            sock.close()
        log = stop(server)
    quiet_log(log)
    assert "accept" not in log.lower(), log  # no "socket.accept() out of system resource"


@pytest.mark.slow
def test_clients_that_leave_mid_upload_or_mid_stream_are_not_errors(
    _server: FakeOpenAI, topologies: Path, tmp_path: Path, fake: FakeOpenAI
) -> None:
    settings = {"topologies_dir": str(topologies), "log_level": "info"}
    server = launch(settings, fake_env(fake), tmp_path / "serve.log")
    try:
        body = json.dumps({"model": "mine", "messages": MESSAGES}).encode()
        for _ in range(3):  # gone mid-upload
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                head = (
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                )
                sock.sendall(head.encode() + body[: len(body) // 2])
                time.sleep(0.2)
        # the aggregator would answer long after the deadline, so only a cancelled run can pass;
        # the deadline is generous for a loaded machine (the suite runs on parallel workers)
        fake.behave("agg", latency_s=60.0)
        stream = {"model": "mine", "messages": MESSAGES, "stream": True}
        with httpx.stream("POST", f"{server.url}/chat/completions", json=stream) as response:
            lines = response.iter_lines()  # kept: dropping it would close the connection
            assert next(lines).startswith("data: ")  # the stream has begun
            deadline = time.monotonic() + 30
            while not fake.requests_for("agg"):  # the run is in its last stage
                assert time.monotonic() < deadline, [(r.model, r.status) for r in fake.requests]
                time.sleep(0.02)
        # gone mid-stream: the run is cancelled, its aggregator request with it
        while not fake.requests_for("agg")[0].disconnected:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert httpx.get(f"{server.url}/models", timeout=5).status_code == 200
    finally:
        log = stop(server)
    quiet_log(log)
    assert "ClientDisconnect" not in log


# --- 3. a conversation too large to handle ------------------------------------------------------


def many_messages(count: int) -> list[ChatCompletionMessageParam]:
    """A conversation of ``count`` tiny messages, ending with a question."""
    turns: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hi"},
    ]
    return [turns[k % 2] for k in range(count - 1)] + MESSAGES


@pytest.mark.slow
def test_too_many_messages_is_400_at_once(hardened: Server, fake: FakeOpenAI) -> None:
    body: dict[str, object] = {"model": "mine", "messages": many_messages(20_000)}
    raw = json.dumps(body).encode()
    assert len(raw) < 1024 * 1024  # under the body limit: only the message cap refuses it
    started = time.perf_counter()
    error = assert_openai_error(hardened.post(raw), 400, "too many messages: 20000")
    assert time.perf_counter() - started < 2.0
    assert error["param"] == "messages" and error["code"] == "array_above_max_length"
    parts = [{"type": "text", "text": "x"}] * 5000
    body = {"model": "mine", "messages": [{"role": "user", "content": parts}]}
    assert_openai_error(hardened.post(body), 400, "too many content parts")
    assert fake.requests == []


@pytest.mark.slow
def test_a_large_conversation_does_not_stall_other_requests(
    _server: FakeOpenAI, topologies: Path, tmp_path: Path, fake: FakeOpenAI
) -> None:
    server = launch({"topologies_dir": str(topologies)}, fake_env(fake), tmp_path / "serve.log")
    try:
        big = {"model": "mine", "messages": many_messages(2000)}  # at the cap: accepted
        result: dict[str, Any] = {}

        def ask() -> None:
            result["response"] = server.post(big, timeout=120)

        worker = threading.Thread(target=ask)
        worker.start()
        latencies = []
        with httpx.Client(timeout=30) as client:
            while worker.is_alive():
                started = time.perf_counter()
                assert client.get(f"{server.url}/models").status_code == 200
                latencies.append(time.perf_counter() - started)
                time.sleep(0.02)
        worker.join()
        assert result["response"].status_code == 200, result["response"].text
        assert len(fake.requests) == 3
        assert all(len(r.messages) == 2000 for r in fake.requests_for("a"))
        assert len(latencies) >= 10  # the big request took a while: the probes ran meanwhile
        assert max(latencies) < 0.5, sorted(latencies)[-5:]
    finally:
        quiet_log(stop(server))


# --- 4. JSON that Python's parser chokes on -----------------------------------------------------

DEEP = 100_000


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            b'{"model": "mine", "messages": [], "seed": ' + b"7" * 5000 + b"}",
            "a number has too many digits",
        ),
        (b"[" * DEEP + b"]" * DEEP, "nested too deeply"),
        (
            b'{"model": "mine", "messages": [{"role": "user", "content": "hi \\ud800"}]}',
            "lone UTF-16 surrogate",
        ),
        (
            b'{"model": "mine", "messages": [{"role": "user", "content": "hi"}], '
            b'"temperature": NaN}',
            "NaN is not a JSON value",
        ),
        (b'{"model": "mine", "messages": \xff}', "not UTF-8 text"),
    ],
    ids=["huge-integer", "deep-nesting", "lone-surrogate", "nan", "not-utf8"],
)
def test_json_python_chokes_on_is_400(
    hardened: Server, fake: FakeOpenAI, raw: bytes, expected: str
) -> None:
    error = assert_openai_error(hardened.post(raw), 400, expected)
    assert error["code"] == "invalid_json" and "not valid JSON" in error["message"]
    assert fake.requests == []


@pytest.mark.slow
def test_a_valid_surrogate_pair_still_goes_through(hardened: Server, fake: FakeOpenAI) -> None:
    raw = b'{"model": "mine", "messages": [{"role": "user", "content": "hi \\ud83d\\ude00"}]}'
    response = hardened.post(raw)
    assert response.status_code == 200, response.text
    assert fake.requests_for("a")[0].messages[-1]["content"] == "hi \U0001f600"


# --- 5. keys no Authorization header can carry --------------------------------------------------


@pytest.mark.slow
def test_non_ascii_keys_are_refused_at_load(tmp_path: Path, _server: FakeOpenAI) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("# the team\nplain-key-0123\nclé-secrète-0123\n", encoding="utf-8")
    with pytest.raises(MoAInputError) as caught:
        load_keys(path, env_value="")
    message = str(caught.value)
    assert str(path) in message and "line 3" in message and "ASCII" in message
    assert "secrète" not in message  # the key itself is not repeated
    with pytest.raises(MoAInputError, match=r"MOA_SERVE_KEYS: .*ASCII"):
        load_keys(None, env_value="ok-key,schlüssel-0123")
    result = subprocess.run(
        [*SERVE, "--port", str(free_port()), "--keys-file", str(path)],
        env=fake_env(_server),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moa: error: ") and "line 3" in lines[0]


# --- 6. a client that leaves cancels its run ----------------------------------------------------

# Code that belongs to a run: LangGraph's nodes, the proposers' calls, the HTTP clients.
RUN_CODE = ("langgraph/", "langchain", "langgraph_moa/nodes", "openai/", "httpx/", "httpcore/")


def _run_tasks(loop: asyncio.AbstractEventLoop | None = None) -> list[str]:
    """The live tasks of the current loop that run a graph's code."""
    found = []
    for task in asyncio.all_tasks(loop):
        if task.done():
            continue
        code = getattr(task.get_coro(), "cr_code", None)
        where = code.co_filename if code is not None else ""
        if any(part in where for part in RUN_CODE):
            found.append(f"{task.get_name()} {code.co_name if code else '?'} {where}")
    return found


async def _every_run_task(app: Any) -> list[str]:
    """The tasks running graph code on the serving loop and, if it has one, the runs loop."""
    found = _run_tasks()
    runner = getattr(app.state.moa, "runner", None)
    loop = getattr(runner, "_loop", None)
    if loop is not None:

        async def there() -> list[str]:
            return [
                f"{t.get_name()} {t.get_coro()}"
                for t in asyncio.all_tasks()
                if t is not asyncio.current_task() and not t.done()
            ]

        found += await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(there(), loop))
    return found


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_leaving_client_frees_its_slot_only_once_its_run_is_gone(
    fake: FakeOpenAI, topologies: Path, stream: bool
) -> None:
    fake.behave("a", latency_s=5.0)
    fake.behave("b", faults=["hang"], hang_s=5.0)
    app = create_app(topologies_dir=topologies, max_concurrency=1)
    service = app.state.moa
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/chat/completions"
    server = uvicorn.Server(server_config(app, log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        body = {"model": "mine", "messages": MESSAGES, "stream": stream}
        async with httpx.AsyncClient() as client:
            request = asyncio.create_task(client.post(url, json=body, timeout=60))
            while len(fake.requests) < 2:  # both proposers are waiting on the slow upstream
                await asyncio.sleep(0.01)
            assert service.active == 1
            request.cancel()  # the client leaves: its connection closes
            await asyncio.gather(request, return_exceptions=True)
        left = time.monotonic()
        while service.active:
            await asyncio.sleep(0.001)
        freed = time.monotonic() - left
        # at the moment the slot is free, nothing of the run is left on any loop
        assert await _every_run_task(app) == []
        assert freed < 2.0  # cancelled, not waited out (the upstream takes 5 s)
        deadline = time.monotonic() + 2
        while not all(r.disconnected for r in fake.requests):
            assert time.monotonic() < deadline, [(r.model, r.status) for r in fake.requests]
            await asyncio.sleep(0.02)
        assert fake.requests_for("agg") == []  # the run never went on to its aggregator
        fake.behave("a", latency_s=0.0)
        async with httpx.AsyncClient() as client:
            again = await client.post(url, json={**body, "stream": False}, timeout=30)
        assert again.status_code == 200, again.text  # the slot was free: not 429
    finally:
        server.should_exit = True
        await serving
        service.runner.close()


@pytest.mark.slow
def test_a_leaving_client_cancels_its_run_in_a_real_server(
    hardened: Server, fake: FakeOpenAI
) -> None:
    for stream in (False, True):
        fake.reset()
        # the upstream would answer long after the deadlines, so only a cancelled run can pass;
        # the client leaves once both proposers' requests are in flight (not after a fixed time,
        # which a busy machine can outlast before the run has even started), and the deadlines
        # are generous for a loaded machine (the suite runs on parallel workers)
        fake.behave("a", latency_s=60.0)
        fake.behave("b", latency_s=60.0)
        payload = json.dumps({"model": "mine", "messages": MESSAGES, "stream": stream}).encode()
        head = "".join(f"{k}: {v}\r\n" for k, v in hardened.headers().items())
        with socket.create_connection(("127.0.0.1", hardened.port)) as sock:
            sock.sendall(
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{head}"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            deadline = time.monotonic() + 30
            while len(fake.requests) < 2:
                assert time.monotonic() < deadline, (stream, "the run never reached its proposers")
                time.sleep(0.02)
        deadline = time.monotonic() + 30
        while not (len(fake.requests) == 2 and all(r.disconnected for r in fake.requests)):
            assert time.monotonic() < deadline, (
                stream,
                [(r.model, r.status) for r in fake.requests],
            )
            time.sleep(0.02)
        fake.behave("a", latency_s=0.0)
        fake.behave("b", latency_s=0.0)
        response = hardened.post({"model": "mine", "messages": MESSAGES})
        assert response.status_code == 200, response.text
        assert len(fake.requests_for("agg")) == 1  # the abandoned run never aggregated
