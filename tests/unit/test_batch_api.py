"""The Batch API adapters without a server: which providers have one and with which limits,
the lines of a batch file, the custom_id rules, and how a result line is read."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from langgraph_moa import MissingCredentialsError, MoAInputError, register_model, register_provider
from langgraph_moa.llm.batch_api import (
    ANTHROPIC_LIMITS,
    OPENAI_LIMITS,
    REGISTERED_LIMITS,
    TOGETHER_LIMITS,
    AnthropicBatchAPI,
    BatchAPI,
    BatchLimits,
    OpenAIBatchAPI,
    batch_api_for,
)


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in ("OPENAI_API_KEY", "TOGETHER_API_KEY", "ANTHROPIC_API_KEY", "HOUSE_KEY"):
        monkeypatch.setenv(env, "sk-unit-test-key-000")


@pytest.fixture
async def apis(keys: None) -> AsyncIterator[tuple[BatchAPI, BatchAPI]]:
    openai_api, anthropic_api = batch_api_for("openai:m"), batch_api_for("anthropic:c")
    assert openai_api is not None and anthropic_api is not None
    yield openai_api, anthropic_api
    await openai_api.aclose()
    await anthropic_api.aclose()


async def test_the_providers_with_a_batch_api_and_their_limits(keys: None) -> None:
    shapes = {}
    for model in ("openai:gpt-x", "together:meta/llama", "anthropic:claude-x"):
        api = batch_api_for(model)
        assert api is not None
        shapes[model] = (api.name, api.provider, api.limits)
        await api.aclose()
    assert shapes == {
        "openai:gpt-x": ("openai", "openai", OPENAI_LIMITS),
        "together:meta/llama": ("openai", "together", TOGETHER_LIMITS),
        "anthropic:claude-x": ("anthropic", "anthropic", ANTHROPIC_LIMITS),
    }
    assert BatchLimits(50_000, 200_000_000, True, 64) == OPENAI_LIMITS
    assert BatchLimits(50_000, 100_000_000, True, 64) == TOGETHER_LIMITS
    assert ANTHROPIC_LIMITS.max_requests == 100_000 and not ANTHROPIC_LIMITS.one_model_per_batch
    for model in ("groq:m", "ollama:m", "local:m", "google_genai:gemini", "nothing:m", "plain"):
        assert batch_api_for(model) is None, model


async def test_a_registered_service_has_a_batch_api_when_it_says_so(
    keys: None, registry: list[str]
) -> None:
    registry += ["house", "shed", "barn", "openai:mine"]
    register_provider(
        "house", base_url="http://127.0.0.1:9/v1", api_key_env="HOUSE_KEY", batch_api="openai"
    )
    register_provider("shed", base_url="http://127.0.0.1:9/v1")
    api = batch_api_for("house:m")
    assert isinstance(api, OpenAIBatchAPI) and api.limits == REGISTERED_LIMITS
    assert str(api.client.base_url) == "http://127.0.0.1:9/v1/"
    await api.aclose()
    assert batch_api_for("shed:m") is None
    with pytest.raises(MoAInputError, match="batch_api goes with a base_url"):
        register_provider(
            "barn", lambda name, **kw: GenericFakeChatModel(messages=iter([])), batch_api="openai"
        )
    with pytest.raises(MoAInputError, match="batch_api is 'openai' or None"):
        register_provider("barn", base_url="http://x/v1", batch_api="anthropic")  # type: ignore[arg-type]
    # a ready-made model registered under an openai: name is used as it is, never batched
    register_model("openai:mine", GenericFakeChatModel(messages=iter([AIMessage("x")])))
    assert batch_api_for("openai:mine") is None


def test_a_missing_key_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(MissingCredentialsError, match="OPENAI_API_KEY is not set: openai:m"):
        batch_api_for("openai:m")
    with pytest.raises(MissingCredentialsError, match="ANTHROPIC_API_KEY is not set"):
        batch_api_for("anthropic:c")


async def test_a_line_is_one_request_of_the_shapes_file(apis: tuple[BatchAPI, BatchAPI]) -> None:
    openai_api, anthropic_api = apis
    body = {"model": "m", "messages": [{"role": "user", "content": "two\nlines, ünïcode"}]}
    for api, expected in (
        (
            openai_api,
            {"custom_id": "r-1", "method": "POST", "url": "/v1/chat/completions", "body": body},
        ),
        (anthropic_api, {"custom_id": "r-1", "params": body}),
    ):
        line = api.line("r-1", body)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert "ünïcode".encode() in line  # UTF-8, not escaped
        assert json.loads(line) == expected


async def test_custom_ids_are_checked_where_lines_are_written(
    apis: tuple[BatchAPI, BatchAPI],
) -> None:
    for api in apis:
        assert api.line("row-7_a", {"model": "m"})
        assert api.line("x" * 64, {"model": "m"})
        for bad in ("", "x" * 65):
            with pytest.raises(MoAInputError, match="custom_id"):
                api.line(bad, {"model": "m"})
    openai_api, anthropic_api = apis
    assert openai_api.line("row 7:a/b", {"model": "m"})
    with pytest.raises(MoAInputError, match="letters, digits"):
        anthropic_api.line("row 7:a/b", {"model": "m"})


def test_openai_result_lines_are_read() -> None:
    parse = OpenAIBatchAPI.parse
    done = parse({"custom_id": "a", "response": {"status_code": 200, "body": {"id": "c"}}})
    assert (done.body, done.error, done.retryable, done.unfinished) == (
        {"id": "c"},
        None,
        False,
        False,
    )
    for status, retryable in ((500, True), (429, True), (400, False), (401, False)):
        line = {
            "custom_id": "b",
            "response": {
                "status_code": status,
                "body": {"error": {"message": "went\nwrong", "type": "x"}},
            },
            "error": None,
        }
        failed = parse(line)
        assert (failed.body, failed.error) == (None, f"HTTP {status}: went wrong")
        assert (failed.retryable, failed.unfinished) == (retryable, False)
    for code in ("batch_expired", "batch_cancelled"):
        late = parse(
            {"custom_id": "c", "response": None, "error": {"code": code, "message": "not run"}}
        )
        assert (late.error, late.retryable, late.unfinished) == (f"{code}: not run", True, True)
    odd = parse({"custom_id": "d", "response": None, "error": {"code": "weird", "message": "?"}})
    assert (odd.error, odd.retryable, odd.unfinished) == ("weird: ?", False, False)


def test_anthropic_result_lines_are_read() -> None:
    parse = AnthropicBatchAPI.parse
    message = {"id": "msg", "type": "message", "content": [{"type": "text", "text": "hi"}]}
    done = parse({"custom_id": "a", "result": {"type": "succeeded", "message": message}})
    assert (done.body, done.error, done.unfinished) == (message, None, False)

    def errored(kind: str) -> dict[str, object]:
        error = {"type": "error", "error": {"type": kind, "message": "nope"}}
        return {"custom_id": "b", "result": {"type": "errored", "error": error}}

    assert parse(errored("overloaded_error")).error == "HTTP 529: nope"
    assert parse(errored("overloaded_error")).retryable
    assert parse(errored("invalid_request_error")).error == "HTTP 400: nope"
    assert not parse(errored("invalid_request_error")).retryable
    for kind in ("canceled", "expired"):
        late = parse({"custom_id": "c", "result": {"type": kind}})
        assert late.unfinished and late.retryable and late.body is None
        assert (late.error or "").startswith(f"{kind}: ")
