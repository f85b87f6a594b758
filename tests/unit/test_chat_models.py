"""Providers: base URLs and keys from the environment, n support, masking keys in errors."""

from __future__ import annotations

import pytest
from langchain_openai import ChatOpenAI

from langgraph_moa import MissingCredentialsError, Topology, load_preset
from langgraph_moa.llm.call import error_text
from langgraph_moa.llm.chat_models import check_credentials, make_chat_model
from langgraph_moa.spec.providers import PROVIDERS


def agent(model: str, **kw: object) -> object:
    spec = {"layers": [{"proposers": [{"model": model, **kw}]}], "aggregator": {"model": model}}
    return Topology.model_validate(spec).layers[0].proposers[0]


def test_every_openai_compatible_provider_has_a_default_and_an_override(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, spec in PROVIDERS.items():
        if not spec.openai_compatible:
            continue
        monkeypatch.setenv(spec.key_env, "k-123456")
        monkeypatch.delenv(spec.base_url_env, raising=False)
        model = make_chat_model(agent(f"{name}:some/model"))  # type: ignore[arg-type]
        assert isinstance(model, ChatOpenAI) and model.model_name == "some/model"
        if name != "openai":
            assert model.openai_api_base == spec.base_url
        monkeypatch.setenv(spec.base_url_env, "http://127.0.0.1:9/v1")
        model = make_chat_model(agent(f"{name}:m"))  # type: ignore[arg-type]
        assert model.openai_api_base == "http://127.0.0.1:9/v1"  # type: ignore[attr-defined]


def test_missing_keys_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("TOGETHER_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(MissingCredentialsError, match=r"^TOGETHER_API_KEY is not set"):
        check_credentials(load_preset("moa"))
    with pytest.raises(MissingCredentialsError, match="TOGETHER_API_KEY and OPENAI_API_KEY"):
        check_credentials(load_preset("moa-gpt4o"))
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    check_credentials(
        Topology.model_validate(  # local servers need no key
            {
                "layers": [{"proposers": [{"model": "ollama:llama3"}]}],
                "aggregator": {"model": "local:smollm2"},
            }
        )
    )


def test_keys_are_masked_in_error_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROQ_API_KEY", "gsk_supersecret_value")
    text = error_text(RuntimeError("bad key gsk_supersecret_value\nrejected"))
    assert text == "RuntimeError: bad key *** rejected"
