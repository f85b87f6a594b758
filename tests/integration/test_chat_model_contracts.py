"""LangChain's standard integration tests (``langchain-tests``) for the embedded model, run for
real on SmolLM2 through llama.cpp, and for ``ChatMixtureOfAgents`` over the fake
OpenAI-compatible server (its environment comes from the ``fake`` fixture, autouse here)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langgraph_moa import ChatMixtureOfAgents
from langgraph_moa.llm.local_model import ChatLocalLlama
from langgraph_moa.testing.fake_openai import FakeOpenAI


@pytest.mark.slow
class TestChatLocalLlamaIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatLocalLlama]:
        return ChatLocalLlama

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"temperature": 0.0, "max_tokens": 24}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True


class TestChatMixtureOfAgentsIntegration(ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _upstream(self, fake: FakeOpenAI) -> Iterator[None]:
        yield

    @property
    def chat_model_class(self) -> type[ChatMixtureOfAgents]:
        return ChatMixtureOfAgents

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "topology": {
                "layers": [{"proposers": [{"model": "openai:a"}, {"model": "openai:b"}]}],
                "aggregator": {"model": "openai:agg"},
            }
        }

    @property
    def has_tool_calling(self) -> bool:
        return False  # the fake upstream answers in text; tools are tested in test_chat_model

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True
