"""The OpenAI request fields ``moa serve`` honours, and where each goes (README, "Request
fields"): the official openai client and LangChain's ChatOpenAI against a real ``moa serve``
process, the fake upstream's request log showing which call received what. Also the server's
polish: ``/health``, ``/v1/models`` naming what cannot run, the access log."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from langgraph_moa import ChatMixtureOfAgents
from langgraph_moa.spec.topology import load_topology
from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import TEST_KEY
from tests.integration.test_serve import (
    MESSAGES,
    MINE,
    NEEDS_KEY,
    Server,
    assert_openai_error,
    fake_env,
    free_port,
    start,
    stop,
)

KEY = "moa-fields-key-0123456789"
PROPOSERS = ("a", "b")
LOCAL_AGG = """\
name: localagg
layers:
  - proposers: [{model: 'openai:a'}]
aggregator: {model: 'local:smollm2'}
"""


class Weather(BaseModel):
    city: str
    celsius: float


WEATHER_JSON = '{"city": "Lyon", "celsius": 21.5}'


@pytest.fixture(scope="module")
def server(_server: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("fields")
    topologies = folder / "topologies"
    topologies.mkdir()
    (topologies / "mine.yaml").write_text(MINE)
    (topologies / "needkey.yaml").write_text(NEEDS_KEY)
    (topologies / "localagg.yaml").write_text(LOCAL_AGG)
    env = fake_env(_server) | {"MOA_SERVE_KEYS": KEY}
    args = ["--topologies", str(topologies), "--log-level", "info"]
    server = start(args, env, free_port(), folder / "serve.log", KEY)
    yield server
    log = stop(server)
    assert "Traceback" not in log, log


def bodies(fake: FakeOpenAI, model: str) -> list[dict[str, Any]]:
    return [r.body for r in fake.requests_for(model)]


# --- where each field goes ---------------------------------------------------------------------


@pytest.mark.slow
def test_sampling_fields_reach_the_aggregator_and_seed_every_call(
    server: Server, fake: FakeOpenAI
) -> None:
    completion = server.client().chat.completions.create(
        model="mine",
        messages=MESSAGES,
        top_p=0.5,
        presence_penalty=0.25,
        frequency_penalty=-0.5,
        stop=["END", "###"],
        seed=1234,
        user="end-user-42",
    )
    assert completion.choices[0].message.content == "Answer 1 from agg."
    (agg,) = bodies(fake, "agg")
    assert agg["top_p"] == 0.5
    assert agg["presence_penalty"] == 0.25
    assert agg["frequency_penalty"] == -0.5
    assert agg["stop"] == ["END", "###"]
    assert agg["seed"] == 1234
    for model in PROPOSERS:
        (body,) = bodies(fake, model)
        assert body["seed"] == 1234  # seed: every call
        for field in ("top_p", "presence_penalty", "frequency_penalty", "stop"):
            assert field not in body, (model, field)  # the rest: the answer's writer only
    assert all("user" not in r.body for r in fake.requests)  # user stays on this server


@pytest.mark.slow
def test_a_seed_does_not_stick_to_later_requests(server: Server, fake: FakeOpenAI) -> None:
    client = server.client()
    client.chat.completions.create(model="mine", messages=MESSAGES, seed=7)
    client.chat.completions.create(model="mine", messages=MESSAGES)
    seeds = [r.body.get("seed") for r in fake.requests_for("a")]
    assert seeds == [7, None]


def test_json_schema_response_format_reaches_the_aggregator(
    server: Server, fake: FakeOpenAI
) -> None:
    fake.behave("agg", reply=lambda body, n, k: WEATHER_JSON)
    schema = Weather.model_json_schema()
    completion = server.client().chat.completions.create(
        model="mine",
        messages=[{"role": "user", "content": "Weather in Lyon?"}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "Weather", "schema": schema, "strict": True},
        },
    )
    assert Weather.model_validate_json(completion.choices[0].message.content or "").city == "Lyon"
    (agg,) = bodies(fake, "agg")
    assert agg["response_format"]["type"] == "json_schema"
    assert agg["response_format"]["json_schema"]["name"] == "Weather"
    assert agg["response_format"]["json_schema"]["schema"]["properties"].keys() == {
        "city",
        "celsius",
    }
    assert all("response_format" not in b for m in PROPOSERS for b in bodies(fake, m))


@pytest.mark.slow
def test_json_object_response_format_streamed(server: Server, fake: FakeOpenAI) -> None:
    fake.behave("agg", reply=lambda body, n, k: WEATHER_JSON)
    stream = server.client().chat.completions.create(
        model="mine",
        messages=[{"role": "user", "content": "Weather in Lyon, as JSON?"}],
        response_format={"type": "json_object"},
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert json.loads(text) == {"city": "Lyon", "celsius": 21.5}
    (agg,) = bodies(fake, "agg")
    assert agg["response_format"] == {"type": "json_object"}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_langchain_with_structured_output_through_moa_serve(
    server: Server, fake: FakeOpenAI, method: str
) -> None:
    """LangChain's ChatOpenAI pointed at moa serve: with_structured_output(PydanticModel)
    gives the model instance, whichever method LangChain uses to ask for it."""
    fake.behave(
        "agg",
        reply=lambda body, n, k: WEATHER_JSON,
        tool_calls=(
            (lambda body, n: [{"name": "Weather", "arguments": json.loads(WEATHER_JSON)}])
            if method == "function_calling"
            else None
        ),
    )
    llm = ChatOpenAI(model="mine", base_url=server.url, api_key=KEY, max_retries=0)  # type: ignore[arg-type]
    structured = llm.with_structured_output(Weather, method=method)  # type: ignore[arg-type]
    weather = structured.invoke("What is the weather in Lyon? Answer in JSON.")
    assert weather == Weather(city="Lyon", celsius=21.5)
    (agg,) = bodies(fake, "agg")
    if method == "function_calling":
        assert [t["function"]["name"] for t in agg["tools"]] == ["Weather"]
    else:
        assert agg["response_format"]["type"] == method.replace("json_mode", "json_object")


def test_langchain_default_structured_output(server: Server, fake: FakeOpenAI) -> None:
    fake.behave("agg", reply=lambda body, n, k: WEATHER_JSON)
    llm = ChatOpenAI(model="mine", base_url=server.url, api_key=KEY, max_retries=0)  # type: ignore[arg-type]
    assert llm.with_structured_output(Weather).invoke("Lyon?") == Weather(city="Lyon", celsius=21.5)


# --- what cannot be honoured is refused --------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2, "logprobs": True}, "top_logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"store": True}, "store"),
        ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"frobnicate": 1}, "frobnicate"),
    ],
)
def test_fields_that_cannot_be_honoured_are_a_400_naming_them(
    server: Server, fake: FakeOpenAI, extra: dict[str, Any], field: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        server.client().chat.completions.create(model="mine", messages=MESSAGES, extra_body=extra)
    error = raised.value.body
    assert isinstance(error, dict)
    assert error["param"] == field and field in error["message"], error
    assert error["code"] == "unsupported_parameter"
    assert fake.requests == []


def test_asking_for_nothing_is_honoured(server: Server, fake: FakeOpenAI) -> None:
    completion = server.client().chat.completions.create(
        model="mine", messages=MESSAGES, logprobs=False, store=False, metadata={"k": "v"}
    )
    assert completion.choices[0].message.content


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"top_p": 1.5}, "top_p"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"seed": "x"}, "seed"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
    ],
)
def test_bad_field_values_are_a_400(
    server: Server, fake: FakeOpenAI, body: dict[str, Any], param: str
) -> None:
    error = assert_openai_error(
        server.post({"model": "mine", "messages": MESSAGES, **body}), 400, ""
    )
    assert error["param"] == param, error
    assert fake.requests == []


def test_an_in_process_aggregator_refuses_what_it_cannot_take(
    server: Server, fake: FakeOpenAI
) -> None:
    error = assert_openai_error(
        server.post({"model": "localagg", "messages": MESSAGES, "top_p": 0.5}),
        400,
        "local:smollm2",
    )
    assert error["param"] == "top_p"
    assert fake.requests == []


# --- ChatMixtureOfAgents honours stop ----------------------------------------------------------


def test_chat_model_stop_reaches_the_aggregator(fake: FakeOpenAI, tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(MINE)
    model = ChatMixtureOfAgents(topology=load_topology(path), proposal_cache=False)
    answer = model.invoke("Why?", stop=["STOP"])
    assert answer.content == "Answer 1 from agg."
    (agg,) = bodies(fake, "agg")
    assert agg["stop"] == ["STOP"]
    assert all("stop" not in b for m in PROPOSERS for b in bodies(fake, m))
    fake.reset()
    chunks = list(model.stream("Why?", stop=["X", "Y"]))
    assert "".join(str(c.content) for c in chunks) == "Answer 1 from agg."
    assert bodies(fake, "agg")[0]["stop"] == ["X", "Y"]


# --- polish: /health, /v1/models, HTTP wording, access log -------------------------------------


def test_health_answers_without_a_key(server: Server) -> None:
    response = httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and "active_requests" in body
    assert "mine" not in response.text  # no model names without a key


def test_models_say_which_cannot_run_and_why(server: Server) -> None:
    listed = server.client().models.list()
    ids = [m.id for m in listed.data]
    assert "mine" in ids and "needkey" not in ids
    raw = httpx.get(f"{server.url}/models", headers=server.headers(), timeout=10).json()
    reasons = {m["id"]: m["reason"] for m in raw["unavailable"]}
    assert "FIREWORKS_API_KEY is not set" in reasons["needkey"]
    assert "--" not in reasons["needkey"]  # no command-line advice over HTTP


def test_missing_key_error_speaks_http(server: Server, fake: FakeOpenAI) -> None:
    error = assert_openai_error(
        server.post({"model": "needkey", "messages": MESSAGES}), 503, "FIREWORKS_API_KEY"
    )
    assert "--preset" not in error["message"] and "export" not in error["message"]


def logged(server: Server, expected: str) -> str:
    """The server's log once it holds ``expected`` (a line is written once its response is
    sent, so it can lag the client by a moment)."""
    deadline = time.monotonic() + 10
    while expected not in (log := server.log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return log


def test_access_log_line_per_request_without_keys(server: Server, fake: FakeOpenAI) -> None:
    server.client().chat.completions.create(model="mine", messages=MESSAGES, user="u-1")
    server.post({"model": "nope", "messages": MESSAGES})
    httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=10)
    log = logged(server, "GET /health 200")
    lines = [line for line in log.splitlines() if "POST /v1/chat/completions" in line]
    ok = [line for line in lines if " 200 " in line and "model=mine" in line]
    assert ok, log
    assert "prompt_tokens=" in ok[-1] and "completion_tokens=" in ok[-1]
    assert "cost_usd=" in ok[-1] and "ms" in ok[-1]
    assert any(" 404 " in line and "model=nope" in line for line in lines), log
    assert "GET /health 200" in log
    assert KEY not in log and TEST_KEY not in log
