"""The OpenAI-compatible server as a real process (``moa serve``), driven by
the official ``openai`` client and by raw httpx, with every upstream model faked at HTTP by the
fake OpenAI server of conftest.py.

Two server processes are shared by the tests of this module: ``served`` (bearer keys from a keys
file and from MOA_SERVE_KEYS, a small body limit) and ``busy`` (no keys, max concurrency 1).
Their environment is what the ``fake`` fixture sets (providers pointed at the fake server, a test
key); each test still takes ``fake`` to start from a clean fake server. Each process is stopped
by its own pid at the end.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import pytest
import yaml
from openai.types.chat import (
    ChatCompletionMessageFunctionToolCallParam,
    ChatCompletionMessageParam,
    ChatCompletionToolUnionParam,
)

from langgraph_moa.serving import create_app
from langgraph_moa.serving.access import KeyRing, SelfAddress, load_keys
from langgraph_moa.spec.topology import list_presets
from langgraph_moa.testing.fake_openai import Behavior, FakeOpenAI
from tests.conftest import TEST_KEY

SERVE = [sys.executable, "-m", "langgraph_moa.cli", "serve"]
FILE_KEY = "moa-file-key-0123456789"
ENV_KEY = "moa-env-key-9876543210"
BODY_LIMIT = 64 * 1024
STARTUP_DEADLINE_S = 60.0

HAS_FAKE_TOOLS = hasattr(Behavior, "tool_calls")

MINE = """\
name: mine
retry: {attempts: 1}
layers:
  - proposers: [{model: 'openai:a'}, {model: 'openai:b'}]
aggregator: {model: 'openai:agg'}
prices:
  'openai:a': {input_per_mtok: 1.0, output_per_mtok: 2.0}
  'openai:b': {input_per_mtok: 1.0, output_per_mtok: 2.0}
  'openai:agg': {input_per_mtok: 5.0, output_per_mtok: 10.0}
"""
FALLBACK = """\
name: fallback
retry: {attempts: 1}
layers:
  - proposers: [{model: 'openai:a'}, {model: 'openai:b'}]
aggregator: {model: 'openai:agg'}
fallback: best_proposal
"""
NEEDS_KEY = """\
name: needkey
layers:
  - proposers: [{model: 'openai:a'}]
aggregator: {model: 'fireworks:accounts/x/models/y'}
"""
# vLLM is pointed back at the `served` process itself (VLLM_BASE_URL, below).
LOOP = """\
name: loop
layers:
  - proposers: [{model: 'openai:a'}]
aggregator: {model: 'vllm:agg'}
"""
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Why is the sky blue?"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fake_env(fake: FakeOpenAI) -> dict[str, str]:
    """The environment the ``fake`` fixture gives a test, for a server process."""
    env = dict(os.environ)
    for provider in ("OPENAI", "TOGETHER", "GROQ"):
        env[f"{provider}_BASE_URL"] = fake.base_url
        env[f"{provider}_API_KEY"] = TEST_KEY
    for name in ("MOA_PRICES", "MOA_SERVE_KEYS", "FIREWORKS_API_KEY", "VLLM_BASE_URL"):
        env.pop(name, None)
    return env


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    key: str | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def client(self, key: str | None = None, **kwargs: Any) -> openai.OpenAI:
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 60)
        return openai.OpenAI(base_url=self.url, api_key=key or self.key or "none", **kwargs)

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"} if self.key else {}

    def post(self, body: Any, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("timeout", 60)
        headers = {**self.headers(), **kwargs.pop("headers", {})}
        if isinstance(body, bytes):
            return httpx.post(
                f"{self.url}/chat/completions", content=body, headers=headers, **kwargs
            )
        return httpx.post(f"{self.url}/chat/completions", json=body, headers=headers, **kwargs)


def start(args: list[str], env: dict[str, str], port: int, log: Path, key: str | None) -> Server:
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [*SERVE, "--port", str(port), "--log-level", "warning", *args],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = Server(proc, port, log, key)
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moa serve exited early:\n{log.read_text()}")
        try:
            httpx.get(f"{server.url}/models", headers=server.headers(), timeout=2)
            return server
        except httpx.TransportError:
            if time.monotonic() > deadline:
                stop(server)
                raise RuntimeError(f"moa serve did not start:\n{log.read_text()}") from None
            time.sleep(0.1)


def stop(server: Server) -> str:
    """Stop the process by its own pid; return what it logged."""
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(timeout=15)
    return server.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def topologies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("topologies")
    (folder / "mine.yaml").write_text(MINE)
    (folder / "needkey.yml").write_text(NEEDS_KEY)
    (folder / "fallback.json").write_text(json.dumps(yaml.safe_load(FALLBACK)))
    (folder / "loop.yaml").write_text(LOOP)
    (folder / "unpriced.yaml").write_text(
        "layers: [{proposers: [{model: 'openai:mystery'}]}]\naggregator: {model: 'openai:agg'}\n"
        "budget: {max_usd: 0.01}\n"
    )
    (folder / "notes.txt").write_text("not a topology")
    return folder


@pytest.fixture(scope="module")
def served(
    _server: FakeOpenAI, topologies: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("served")
    keys = folder / "keys.txt"
    keys.write_text(f"# the test suite\n\n{FILE_KEY}\n")
    port = free_port()
    env = fake_env(_server)
    env["MOA_SERVE_KEYS"] = f" {ENV_KEY} ,"
    env["VLLM_BASE_URL"] = f"http://localhost:{port}/v1"  # the recursion the guard must refuse
    args = ["--topologies", str(topologies), "--keys-file", str(keys)]
    args += ["--max-body-bytes", str(BODY_LIMIT), "--max-concurrency", "8"]
    server = start(args, env, port, folder / "serve.log", FILE_KEY)
    yield server
    log = stop(server)
    assert "Traceback" not in log, log


@pytest.fixture(scope="module")
def busy(
    _server: FakeOpenAI, topologies: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("busy")
    args = ["--topologies", str(topologies), "--max-concurrency", "1"]
    server = start(args, fake_env(_server), free_port(), folder / "serve.log", None)
    yield server
    log = stop(server)
    assert "Traceback" not in log, log


def assert_openai_error(response: httpx.Response, status: int, expected: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert expected in error["message"], error
    assert "Traceback" not in response.text
    return error


def fake_usage(fake: FakeOpenAI) -> tuple[int, int]:
    """Prompt and completion tokens as the fake server counted them (words), over every call."""
    prompt = completion = 0
    for r in fake.requests:
        prompt += sum(len(str(m.get("content", "")).split()) for m in r.messages)
    for model in ("a", "b", "agg"):
        for k, _ in enumerate(fake.requests_for(model), 1):
            behavior = fake.behaviors.get(model, fake.default)
            completion += len(behavior.reply({"model": model}, k, 0).split())
    return prompt, completion


# --- /v1/models -------------------------------------------------------------------------------


@pytest.mark.slow
def test_models_lists_presets_and_topology_files(served: Server) -> None:
    ids = [m.id for m in served.client().models.list()]
    assert set(list_presets()) <= set(ids)
    assert {"moa", "moa-lite", "openpipe", "local", "mine", "fallback"} <= set(ids)
    assert "loop" not in ids  # it points back at this server
    assert "needkey" not in ids  # FIREWORKS_API_KEY is not set
    assert "notes" not in ids
    raw = httpx.get(f"{served.url}/models", headers=served.headers()).json()
    assert raw["object"] == "list"
    unavailable = {m["id"]: m["reason"] for m in raw["unavailable"]}
    assert "points back at this server" in unavailable["loop"]
    assert "FIREWORKS_API_KEY is not set" in unavailable["needkey"]
    assert all(m["object"] == "model" and m["owned_by"] for m in raw["data"])
    assert served.client().models.retrieve("mine").id == "mine"


# --- answers ----------------------------------------------------------------------------------


def test_completion_answer_usage_and_moa_record(served: Server, fake: FakeOpenAI) -> None:
    fake.behave("agg", reply=lambda body, n, k: "Rayleigh scattering favours short wavelengths.")
    history: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi! Ask away."},
        *MESSAGES,
    ]
    completion = served.client().chat.completions.create(
        model="mine",
        messages=history,
        temperature=0.2,
        max_tokens=64,
    )
    assert completion.object == "chat.completion"
    assert completion.model == "mine"
    assert completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Rayleigh scattering favours short wavelengths."
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"

    prompt, written = fake_usage(fake)
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (prompt, written)
    assert completion.usage.total_tokens == prompt + written

    assert set(completion.model_extra or {}) == {"moa"}  # the one extra field
    moa = (completion.model_extra or {})["moa"]
    assert [[p["node"] for p in layer] for layer in moa["layers"]] == [["L1/a", "L1/b"]]
    assert all(p["ok"] and p["text"] for p in moa["layers"][0])
    assert moa["degraded"] is False
    assert moa["critique"] is None and moa["ledger"] is None and moa["fallback"] is None
    assert moa["cost_usd"] > 0
    assert set(moa["by_model"]) == {"openai:a", "openai:b", "openai:agg"}

    # the request's sampling reaches the aggregator only; the conversation reaches everyone
    agg = fake.requests_for("agg")[0].body
    assert agg["temperature"] == 0.2
    assert agg.get("max_completion_tokens", agg.get("max_tokens")) == 64
    for r in fake.requests_for("a") + fake.requests_for("b"):
        assert r.body["temperature"] == 0.7
    texts = [m["content"] for m in fake.requests_for("agg")[0].messages]
    assert (
        "Hello there" in texts and "Hi! Ask away." in texts and texts[-2] == MESSAGES[0]["content"]
    )
    assert any("Answer in one sentence." in t for t in texts)


def test_a_preset_is_served_under_its_own_name(served: Server, fake: FakeOpenAI) -> None:
    completion = served.client().chat.completions.create(model="moa-lite", messages=MESSAGES)
    # Qwen1.5-72B-Chat proposes (its request 1), then aggregates (its request 2)
    assert completion.choices[0].message.content == "Answer 2 from Qwen/Qwen1.5-72B-Chat."
    moa = (completion.model_extra or {})["moa"]
    assert len(moa["layers"][0]) == 6 and moa["cost_usd"] > 0


def test_streaming_to_a_plain_openai_client(served: Server, fake: FakeOpenAI) -> None:
    answer = "Blue light is scattered more than red light by the air."
    fake.behave("agg", reply=lambda body, n, k: answer)
    stream = served.client().chat.completions.create(
        model="mine",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    # only regular chunks reach the client: role, one per streamed word, finish, usage
    assert len(chunks) == 1 + len(answer.split(" ")) + 1 + 1
    assert all(c.object == "chat.completion.chunk" and c.model == "mine" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer
    *body, finish, usage = chunks
    assert [c.choices[0].finish_reason for c in body] == [None] * len(body)
    assert finish.choices[0].finish_reason == "stop"
    assert set(finish.model_extra or {}) == {"moa"}
    assert (finish.model_extra or {})["moa"]["layers"][0][0]["node"] == "L1/a"
    assert all(not (c.model_extra or {}) for c in body)
    assert usage.choices == [] and usage.usage is not None
    prompt, written = fake_usage(fake)
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (prompt, written)
    assert fake.requests_for("agg")[0].body["stream"] is True


def test_raw_stream_carries_progress_as_comments(served: Server, fake: FakeOpenAI) -> None:
    body = {"model": "mine", "messages": MESSAGES, "stream": True}
    with httpx.stream(
        "POST", f"{served.url}/chat/completions", json=body, headers=served.headers(), timeout=60
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    comments = [json.loads(line.removeprefix(": moa ")) for line in lines if line.startswith(":")]
    assert all(line.startswith((": moa {", "data: ")) for line in lines), lines
    assert sorted((c["event"], c["node"]) for c in comments) == [
        ("proposer_finished", "L1/a"),
        ("proposer_finished", "L1/b"),
        ("proposer_started", "L1/a"),
        ("proposer_started", "L1/b"),
    ]
    assert all(c["ok"] for c in comments if c["event"] == "proposer_finished")
    data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    first_text = next(i for i, line in enumerate(lines) if '"content": "Answer' in line)
    last_comment = max(i for i, line in enumerate(lines) if line.startswith(":"))
    assert last_comment < first_text  # progress comes while the proposers work
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == (
        "Answer 1 from agg."
    )
    assert "moa" in chunks[-1] and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in chunks[-1]  # no include_usage: no usage chunk


def test_a_fallback_answer_is_sent_whole(served: Server, fake: FakeOpenAI) -> None:
    fake.behave("agg", always=500)
    client = served.client()
    completion = client.chat.completions.create(model="fallback", messages=MESSAGES)
    assert completion.choices[0].message.content == "Answer 1 from a."
    moa = (completion.model_extra or {})["moa"]
    assert moa["degraded"] is True
    assert moa["fallback"]["policy"] == "best_proposal" and moa["fallback"]["source"] == "L1/a"
    # the proposal is not streamed token by token, so it comes as one delta before the end
    stream = client.chat.completions.create(model="fallback", messages=MESSAGES, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Answer 2 from a."
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert (chunks[-1].model_extra or {})["moa"]["fallback"]["source"] == "L1/a"


# --- tools ------------------------------------------------------------------------------------

WEATHER_TOOL: ChatCompletionToolUnionParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.mark.skipif(not HAS_FAKE_TOOLS, reason="needs fake tool calls")
def test_tools_round_trip(served: Server, fake: FakeOpenAI) -> None:
    def agg_calls(body: dict[str, Any], number: int) -> list[dict[str, Any]] | None:
        answered = any(m["role"] == "tool" for m in body["messages"])
        return None if answered else [{"name": "get_weather", "arguments": {"city": "Paris"}}]

    fake.behave("agg", tool_calls=agg_calls, reply=lambda body, n, k: "Take sunglasses.")
    client = served.client()
    ask: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "What should I wear in Paris?"}
    ]
    first = client.chat.completions.create(
        model="mine",
        messages=ask,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    agg = fake.requests_for("agg")[0].body
    assert agg["tools"][0]["function"]["name"] == "get_weather"
    assert agg["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert all("tools" not in r.body for r in fake.requests_for("a") + fake.requests_for("b"))

    # the client runs the tool and sends the result back
    follow_up: list[ChatCompletionMessageParam] = [
        *ask,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [cast(ChatCompletionMessageFunctionToolCallParam, call.model_dump())],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"},
    ]
    second = client.chat.completions.create(
        model="mine",
        messages=follow_up,
        tools=[WEATHER_TOOL],
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "Take sunglasses."
    sent = fake.requests_for("agg")[1].messages[:-1]  # the references come last
    assert [m["role"] for m in sent][-3:] == ["user", "assistant", "tool"]
    assert sent[-1]["tool_call_id"] == call.id and sent[-1]["content"] == "18 C and sunny"

    # and streamed: the tool call arrives as tool_call deltas
    stream = client.chat.completions.create(
        model="mine",
        messages=ask,
        tools=[WEATHER_TOOL],
        stream=True,
    )
    chunks = [c for c in stream if c.choices]
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].id and deltas[0].function
    assert deltas[0].function.name == "get_weather"
    arguments = "".join((d.function.arguments or "") for d in deltas if d.function)
    assert json.loads(arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


# --- errors -----------------------------------------------------------------------------------

TOOL_CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("body", "expected", "param"),
    [
        (b"{not json", "not valid JSON", None),
        (b"[1, 2]", "must be a JSON object", None),
        ({"messages": MESSAGES}, "model: Field required", "model"),
        ({"model": "mine"}, "messages: Field required", "messages"),
        ({"model": "mine", "messages": []}, "messages: List should have at least 1", "messages"),
        ({"model": "mine", "messages": "hi"}, "messages: Input should be a valid list", "messages"),
        (
            {"model": "mine", "messages": [{"role": "user", "content": "  "}]},
            "the last user message is empty",
            "messages[0].content",
        ),
        (
            {"model": "mine", "messages": [{"role": "robot", "content": "x"}]},
            "messages[0].role: Input should be",
            "messages[0].role",
        ),
        (
            {"model": "mine", "messages": [*MESSAGES, {"role": "assistant", "content": "ok"}]},
            "must end with a user message",
            "messages",
        ),
        (
            {"model": "mine", "messages": [{"role": "user", "content": 5}]},
            "content must be a string or a list",
            "messages[0]",
        ),
        (
            {"model": "mine", "messages": [{"role": "tool", "tool_call_id": "c9", "content": "x"}]},
            "must answer a tool call",
            "messages[0].tool_call_id",
        ),
        (
            {
                "model": "mine",
                "messages": [
                    *MESSAGES,
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {**TOOL_CALL, "function": {"name": "f", "arguments": "{oops"}}
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c1", "content": "x"},
                ],
            },
            "must be a JSON object encoded as a string",
            "messages[1].tool_calls[0].function.arguments",
        ),
        ({"model": "mine", "messages": MESSAGES, "temperature": 3}, "temperature", "temperature"),
        ({"model": "mine", "messages": MESSAGES, "max_tokens": 0}, "max_tokens", "max_tokens"),
        ({"model": "mine", "messages": MESSAGES, "stream": "yes"}, "stream", "stream"),
        ({"model": "mine", "messages": MESSAGES, "n": 2}, "only n=1", "n"),
        (
            {"model": "mine", "messages": MESSAGES, "stream_options": {"include_usage": True}},
            "only allowed when stream is true",
            "stream_options",
        ),
        (
            {"model": "mine", "messages": MESSAGES, "tool_choice": "auto"},
            "only allowed when tools are given",
            "tool_choice",
        ),
        (
            {
                "model": "mine",
                "messages": MESSAGES,
                "tools": [WEATHER_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
            "not among the tools",
            "tool_choice",
        ),
        (
            {
                "model": "mine",
                "messages": MESSAGES,
                "tools": [{"type": "function", "function": {"name": "bad name!"}}],
            },
            "function name",
            "tools[0].function.name",
        ),
    ],
)
def test_bad_requests_are_400(
    served: Server, fake: FakeOpenAI, body: Any, expected: str, param: str | None
) -> None:
    error = assert_openai_error(served.post(body), 400, expected)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert fake.requests == []  # nothing was asked upstream


def test_the_openai_client_sees_400_as_bad_request(served: Server, fake: FakeOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        served.client().chat.completions.create(
            model="mine",
            messages=MESSAGES,
            temperature=2.5,
        )
    assert caught.value.status_code == 400
    assert "temperature" in caught.value.message


def test_keys_are_required_and_checked(served: Server, fake: FakeOpenAI) -> None:
    body = {"model": "mine", "messages": MESSAGES}
    error = assert_openai_error(
        httpx.post(f"{served.url}/chat/completions", json=body), 401, "missing API key"
    )
    assert error["code"] == "invalid_api_key"
    assert_openai_error(httpx.get(f"{served.url}/models"), 401, "missing API key")
    wrong = served.post(body, headers={"authorization": "Bearer not-the-key"})
    assert_openai_error(wrong, 401, "invalid API key")
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert "not-the-key" not in wrong.text
    with pytest.raises(openai.AuthenticationError):
        served.client(key="sk-wrong").models.list()
    # both the keys file's key and MOA_SERVE_KEYS's key are accepted
    for key in (FILE_KEY, ENV_KEY):
        answer = served.client(key=key).chat.completions.create(model="mine", messages=MESSAGES)
        assert answer.choices[0].message.content == "Answer 1 from agg."
        fake.reset()
    assert fake.requests == []


def test_unknown_model_and_route_are_404(served: Server, fake: FakeOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        served.client().chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert "gpt-9" in caught.value.message and "mine" in caught.value.message
    error = assert_openai_error(
        served.post({"model": "gpt-9", "messages": MESSAGES}), 404, "does not exist"
    )
    assert error["code"] == "model_not_found" and error["param"] == "model"
    response = httpx.get(f"{served.url}/engines", headers=served.headers())
    assert_openai_error(response, 404, "unknown route")
    response = httpx.get(f"{served.url}/chat/completions", headers=served.headers())
    assert_openai_error(response, 405, "not allowed")


def test_a_body_over_the_limit_is_413(served: Server, fake: FakeOpenAI) -> None:
    big = {"model": "mine", "messages": [{"role": "user", "content": "x" * BODY_LIMIT}]}
    error = assert_openai_error(served.post(big), 413, "too large")
    assert error["code"] == "request_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: the bytes really sent are counted
        payload = json.dumps(big).encode()
        for k in range(0, len(payload), 8192):
            yield payload[k : k + 8192]

    response = httpx.post(
        f"{served.url}/chat/completions", content=chunked(), headers=served.headers(), timeout=30
    )
    assert "content-length" not in response.request.headers
    assert_openai_error(response, 413, "too large")
    assert fake.requests == []


@pytest.mark.slow
def test_a_full_server_answers_429_at_once(busy: Server, fake: FakeOpenAI) -> None:
    fake.behave("agg", latency_s=1.5)
    results: dict[str, Any] = {}

    def first() -> None:
        results["first"] = busy.client().chat.completions.create(model="mine", messages=MESSAGES)

    worker = threading.Thread(target=first)
    worker.start()
    deadline = time.monotonic() + 30
    while not fake.requests_for("agg"):  # the first request is in its aggregator stage
        assert time.monotonic() < deadline
        time.sleep(0.02)
    started = time.perf_counter()
    response = busy.post({"model": "mine", "messages": MESSAGES})
    assert time.perf_counter() - started < 1.0  # rejected, not queued
    error = assert_openai_error(response, 429, "busy")
    assert error["code"] == "server_busy"
    assert response.headers["retry-after"] == "1"
    worker.join(timeout=30)
    assert results["first"].choices[0].message.content == "Answer 1 from agg."
    fake.behave("agg", latency_s=0.0)
    again = busy.client().chat.completions.create(model="mine", messages=MESSAGES)
    assert again.choices[0].finish_reason == "stop"


def test_a_client_that_leaves_frees_its_slot(busy: Server, fake: FakeOpenAI) -> None:
    fake.behave("agg", latency_s=3.0)
    for stream in (False, True):
        body = {"model": "mine", "messages": MESSAGES, "stream": stream}
        with pytest.raises(httpx.ReadTimeout):
            busy.post(body, timeout=httpx.Timeout(60, read=0.5))
        # the abandoned run is cancelled and its slot freed well before the upstream answers
        deadline = time.monotonic() + 2.0
        while True:
            fake.behave("agg", latency_s=0.0)
            response = busy.post({"model": "mine", "messages": MESSAGES})
            if response.status_code != 429 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert response.status_code == 200, response.text
        fake.behave("agg", latency_s=3.0)


@pytest.mark.slow
def test_failing_upstreams_are_502_and_not_retried(served: Server, fake: FakeOpenAI) -> None:
    fake.behave("a", always=500)
    fake.behave("b", always=503)
    client = served.client(max_retries=2)  # the openai client's default retries
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="mine", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert "below its quorum" in caught.value.message
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert len(fake.requests) == 2  # one request per proposer: the client did not retry
    error = assert_openai_error(
        served.post({"model": "mine", "messages": MESSAGES}), 502, "upstream models failed"
    )
    assert error["type"] == "upstream_error"

    # streaming has already answered 200: the failure arrives as an error event
    stream = client.chat.completions.create(model="mine", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError) as streamed:
        list(stream)
    assert "below its quorum" in streamed.value.message


def test_a_missing_server_key_is_503(served: Server, fake: FakeOpenAI) -> None:
    response = served.post({"model": "needkey", "messages": MESSAGES})
    error = assert_openai_error(response, 503, "FIREWORKS_API_KEY is not set")
    assert error["code"] == "missing_api_key"
    assert response.headers["x-should-retry"] == "false"
    assert fake.requests == []


def test_a_topology_calling_this_server_is_refused(served: Server, fake: FakeOpenAI) -> None:
    response = served.post({"model": "loop", "messages": MESSAGES})
    error = assert_openai_error(response, 400, "points back at this server")
    assert f"localhost:{served.port}" in error["message"]
    assert error["param"] == "model" and error["code"] == "model_refused"
    assert fake.requests == []


def test_a_usd_budget_without_prices_is_refused_at_start_up(
    served: Server, fake: FakeOpenAI
) -> None:
    """Configuration, found when the server starts (and logged), not a 502 per request."""
    response = served.post({"model": "unpriced", "messages": MESSAGES})
    error = assert_openai_error(response, 400, "budget.max_usd needs a price for")
    assert error["code"] == "model_refused"
    assert fake.requests == []
    assert "not serving 'unpriced': budget.max_usd needs a price" in served.log.read_text()


# --- starting up ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "keys_text", "expected"),
    [
        (["--keys-file", "{tmp}/missing.txt"], None, "cannot read the keys file"),
        (["--keys-file", "{tmp}/keys.txt"], "# nobody\n\n", "holds no key"),
        (["--keys-file", "{tmp}/keys.txt"], "two words\n", "line 1: a key is one word"),
        (["--host", "0.0.0.0"], None, "refusing to listen on 0.0.0.0 without authentication"),
        (["--topologies", "{tmp}/nowhere"], None, "is not a directory"),
        (["--topologies", "{tmp}"], None, "invalid topology file"),
        (["--max-concurrency", "0"], None, "max concurrency must be at least 1"),
    ],
)
def test_bad_startup_is_one_line(
    tmp_path: Path, _server: FakeOpenAI, args: list[str], keys_text: str | None, expected: str
) -> None:
    if keys_text is not None:
        (tmp_path / "keys.txt").write_text(keys_text)
    (tmp_path / "broken.yaml").write_text("layers: []\naggregator: {model: 'openai:x'}\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = subprocess.run(
        [*SERVE, "--port", str(free_port()), *argv],
        env=fake_env(_server),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("moa: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr


# --- pieces, in process -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "url", "loops"),
    [
        ("127.0.0.1", "http://127.0.0.1:8080/v1", True),
        ("127.0.0.1", "http://localhost:8080/v1", True),
        ("127.0.0.1", "http://0.0.0.0:8080/v1", True),
        ("127.0.0.1", "http://[::1]:8080/v1", True),
        ("127.0.0.1", "http://127.0.0.2:8080", True),
        ("127.0.0.1", "http://LOCALHOST:8080/v1/", True),
        ("127.0.0.1", "http://127.0.0.1:8081/v1", False),
        ("127.0.0.1", "http://localhost:11434/v1", False),
        ("127.0.0.1", "https://api.together.xyz/v1", False),
        ("localhost", "http://127.0.0.1:8080/v1", True),
        ("0.0.0.0", "http://localhost:8080/v1", True),
        ("0.0.0.0", f"http://{socket.gethostname()}:8080/v1", True),
        ("0.0.0.0", "http://example.com:8080/v1", False),
        ("10.1.2.3", "http://10.1.2.3:8080/v1", True),
        ("10.1.2.3", "http://10.1.2.4:8080/v1", False),
    ],
)
def test_self_address(host: str, url: str, loops: bool) -> None:
    assert SelfAddress(host, 8080).matches(url) is loops


def test_self_address_default_ports() -> None:
    assert SelfAddress("127.0.0.1", 80).matches("http://localhost/v1")
    assert SelfAddress("127.0.0.1", 443).matches("https://localhost/v1")
    assert not SelfAddress("127.0.0.1", 80).matches("https://localhost/v1")


def test_keys_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# ops team\nalpha-key\n\n  beta-key  \n#gamma-key\nalpha-key\n")
    assert load_keys(path, env_value="delta, ,epsilon") == [
        "alpha-key",
        "beta-key",
        "delta",
        "epsilon",
    ]
    assert load_keys(None, env_value="") == []
    ring = KeyRing(["alpha-key", "beta-key"])
    assert ring.accepts("beta-key") and not ring.accepts("beta-ke") and not ring.accepts("")
    assert not KeyRing([])


class _BrokenGraph:
    """A graph that fails as it starts, whichever way the run loop calls it."""

    async def ainvoke(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom at /secret/path")

    async def astream(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom at /secret/path")
        yield  # pragma: no cover


async def test_an_unexpected_failure_is_a_bare_500(
    fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app()
    app.state.moa.graphs["local"] = _BrokenGraph()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test/v1") as client:
        body = {"model": "local", "messages": MESSAGES}
        response = await client.post("/chat/completions", json=body)
        error = assert_openai_error(response, 500, "internal server error")
        assert "boom" not in response.text
        assert error["type"] == "server_error"
        streamed = await client.post("/chat/completions", json={**body, "stream": True})
        assert streamed.status_code == 200
        events = [line for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert json.loads(events[-2].removeprefix("data: "))["error"]["code"] == "internal_error"
        assert events[-1] == "data: [DONE]" and "boom" not in streamed.text
    logged = capsys.readouterr().err
    assert "RuntimeError: boom" in logged and "Traceback" not in logged


@pytest.mark.slow
def test_workers_share_the_port_and_stop_together(
    _server: FakeOpenAI, topologies: Path, tmp_path: Path
) -> None:
    """--workers 2: two processes answer on one port; stopping the parent stops them both."""
    args = ["--topologies", str(topologies), "--workers", "2", "--log-level", "info"]
    server = start(args, fake_env(_server), free_port(), tmp_path / "serve.log", None)
    try:
        client = server.client()
        messages: Any = [{"role": "user", "content": "Hello?"}]
        replies = [client.chat.completions.create(model="mine", messages=messages) for _ in "abcd"]
        assert all(r.choices[0].message.content for r in replies)
        log = server.log.read_text()
        assert "in each of 2 worker processes" in log, log
    finally:
        log = stop(server)
    workers = {int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", log)}
    assert len(workers) == 2, log
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone with the parent (the parent reaped them)
    assert "Traceback" not in log, log
