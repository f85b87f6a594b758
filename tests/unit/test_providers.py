"""Which provider serves a model name: the OpenAI table, LangChain's init_chat_model providers,
and what a user registers; the one-line errors when a name or a package is wrong."""

from __future__ import annotations

import pytest
from langchain.chat_models import base as init_chat_model_module
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from langgraph_moa import (
    MissingCredentialsError,
    MoAInputError,
    Topology,
    register_model,
    register_provider,
    unregister,
)
from langgraph_moa.errors import MissingExtraError
from langgraph_moa.llm.chat_models import check_ready, make_chat_model, redact
from langgraph_moa.llm.langchain_models import is_transient, status_of
from langgraph_moa.spec.providers import LANGCHAIN_PROVIDERS, provider_kind, requests_for
from langgraph_moa.spec.topology import parse_topology


def topology(*models: str, aggregator: str | None = None) -> Topology:
    return parse_topology(
        {
            "layers": [{"proposers": [{"model": m} for m in models]}],
            "aggregator": {"model": aggregator or models[0]},
        }
    )


def test_the_langchain_list_is_init_chat_models_own() -> None:
    # the list is kept as data (langchain is optional); it must not drift from LangChain's
    theirs = {name: entry[0] for name, entry in init_chat_model_module._BUILTIN_PROVIDERS.items()}
    ours = {name: p.module for name, p in LANGCHAIN_PROVIDERS.items()}
    assert ours == theirs


def test_langchain_names_are_accepted_and_the_table_wins_for_its_prefixes() -> None:
    topo = topology("anthropic:claude-sonnet-4-5", "openai:gpt-4o", aggregator="bedrock:x.y")
    assert [provider_kind(a.model) for a in topo.agents()] == ["langchain", "openai", "langchain"]
    assert provider_kind("groq:llama") == "openai"  # both know groq: the table's path
    assert provider_kind("local:smollm2") == "local"
    sampled = parse_topology(
        {
            "layers": [{"proposers": [{"model": "anthropic:claude-haiku-4-5", "n": 3}]}],
            "aggregator": {"model": "openai:x"},
        }
    )
    assert requests_for(sampled.layers[0].proposers[0]) == 3  # one request per sample


def test_an_unknown_provider_names_the_table_and_langchains_providers() -> None:
    with pytest.raises(MoAInputError) as caught:
        topology("antrhopic:claude")
    message = str(caught.value)
    assert "\n" not in message
    assert "unknown provider 'antrhopic'" in message
    for name in ("openai", "together", "vllm", "local", "anthropic", "google_genai", "bedrock"):
        assert name in message


def test_a_missing_integration_is_one_line_naming_the_pip_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", "g-123456789")
    topo = topology("openai:a", "google_genai:gemini-2.5-flash")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-123456789")
    with pytest.raises(MissingExtraError) as caught:
        check_ready(topo)
    assert str(caught.value) == (
        "google_genai:gemini-2.5-flash needs langchain-google-genai (LangChain's google_genai "
        "integration): pip install langchain-google-genai"
    )


def test_a_missing_key_of_a_langchain_provider_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-123456789")
    with pytest.raises(MissingCredentialsError, match=r"^ANTHROPIC_API_KEY is not set"):
        check_ready(topology("anthropic:claude-haiku-4-5", "openai:a"))


def test_an_init_chat_model_provider_gets_the_agents_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-123456789")
    agent = (
        parse_topology(
            {
                "layers": [
                    {
                        "proposers": [
                            {
                                "model": "anthropic:claude-haiku-4-5",
                                "temperature": 0.2,
                                "max_tokens": 77,
                                "timeout_s": 9,
                            }
                        ]
                    }
                ],
                "aggregator": {"model": "openai:x"},
            }
        )
        .layers[0]
        .proposers[0]
    )
    model = make_chat_model(agent)
    assert type(model).__name__ == "ChatAnthropic"
    settings = model.model_dump()
    assert settings["model"] == "claude-haiku-4-5" and settings["max_tokens"] == 77
    assert settings["temperature"] == 0.2 and settings["default_request_timeout"] == 9
    assert settings["max_retries"] == 0  # moa retries, and counts every attempt


def test_registered_model_and_factory_provider(registry: list[str]) -> None:
    made: list[tuple[str, dict[str, object]]] = []

    def factory(model: str, **settings: object) -> GenericFakeChatModel:
        made.append((model, settings))
        return GenericFakeChatModel(messages=iter([AIMessage("hi")]))

    ready = GenericFakeChatModel(messages=iter([AIMessage("ready")]))
    registry += ["house", "mine:judge"]
    register_provider("house", factory)
    register_model("mine:judge", ready)
    topo = parse_topology(
        {
            "layers": [{"proposers": [{"model": "house:big-1", "max_tokens": 50}]}],
            "aggregator": {"model": "mine:judge"},
        }
    )
    assert provider_kind("house:big-1") == "factory"
    assert provider_kind("mine:judge") == "registered_model"
    assert provider_kind("mine:other") is None  # only the exact registered name
    check_ready(topo)  # nothing to install, no key to read
    assert make_chat_model(topo.aggregator) is ready
    assert isinstance(make_chat_model(topo.layers[0].proposers[0]), GenericFakeChatModel)
    assert made == [("big-1", {"temperature": 0.7, "max_tokens": 50, "timeout": 120.0})]
    unregister("house")
    with pytest.raises(MoAInputError, match="unknown provider 'house'"):
        topology("house:big-1")


def test_an_openai_compatible_provider_is_registered_by_url(
    registry: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.append("inhouse")
    register_provider("inhouse", base_url="http://127.0.0.1:9/v1", api_key_env="INHOUSE_TOKEN")
    topo = topology("inhouse:m")
    monkeypatch.delenv("INHOUSE_TOKEN", raising=False)
    with pytest.raises(MissingCredentialsError, match=r"^INHOUSE_TOKEN is not set"):
        check_ready(topo)
    monkeypatch.setenv("INHOUSE_TOKEN", "tok-123456789")
    model = make_chat_model(topo.aggregator)
    assert isinstance(model, ChatOpenAI) and model.openai_api_base == "http://127.0.0.1:9/v1"
    assert redact("said tok-123456789") == "said ***"


def test_registration_refuses_what_it_cannot_honour(registry: list[str]) -> None:
    with pytest.raises(MoAInputError, match=r"built-in provider.*OPENAI_BASE_URL"):
        register_provider("openai", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(MoAInputError, match="a factory or a base_url"):
        register_provider("house")
    with pytest.raises(MoAInputError, match='"provider:model"'):
        register_model("no-colon", GenericFakeChatModel(messages=iter([])))
    with pytest.raises(MoAInputError, match="not a LangChain chat model"):
        register_model("mine:x", object())  # type: ignore[arg-type]


def test_keys_of_langchain_providers_and_registered_models_are_masked(
    monkeypatch: pytest.MonkeyPatch, registry: list[str]
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret-value")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value")  # bedrock's, not required

    class Keyed(GenericFakeChatModel):
        api_key: SecretStr

    registry.append("mine:keyed")
    register_model("mine:keyed", Keyed(messages=iter([]), api_key=SecretStr("own-secret-key")))
    assert (
        redact("a sk-ant-secret-value b own-secret-key c aws-secret-value") == "a *** b *** c ***"
    )


class _StatusError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"status {status}")
        self.status_code = status


class APIConnectionError(Exception):  # named as the SDKs name theirs
    pass


def test_transient_failures_are_told_apart_across_sdks() -> None:
    assert status_of(_StatusError(529)) == 529
    assert [is_transient(_StatusError(s)) for s in (400, 401, 408, 409, 429, 500, 529)] == [
        False,
        False,
        True,
        True,
        True,
        True,
        True,
    ]
    assert is_transient(TimeoutError()) and is_transient(APIConnectionError())
    assert not is_transient(ValueError("bad request shape"))
