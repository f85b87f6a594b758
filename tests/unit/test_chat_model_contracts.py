"""LangChain's standard unit tests (langchain-tests) for both chat models: construction, tool
binding, structured output where supported, tracing parameters."""

from __future__ import annotations

from langchain_tests.unit_tests import ChatModelUnitTests

from langgraph_moa import ChatMixtureOfAgents
from langgraph_moa.llm.local_model import ChatLocalLlama

TOPOLOGY = {
    "layers": [{"proposers": [{"model": "openai:a"}, {"model": "openai:b"}]}],
    "aggregator": {"model": "openai:agg"},
}


class TestChatMixtureOfAgentsUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatMixtureOfAgents]:
        return ChatMixtureOfAgents

    @property
    def chat_model_params(self) -> dict:
        return {"topology": TOPOLOGY}

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True


class TestChatLocalLlamaUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatLocalLlama]:
        return ChatLocalLlama

    @property
    def chat_model_params(self) -> dict:
        return {"temperature": 0.0}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False
