"""The provider table: how each ``provider:`` prefix of a model name is reached.

OpenAI-compatible services: a default base URL (overridable with ``<PROVIDER>_BASE_URL``), a key
variable ``<PROVIDER>_API_KEY``, whether one request may ask for ``n`` samples. ``local`` is the
embedded model (not OpenAI-compatible). Plain data: the chat models themselves are made in
:mod:`langgraph_moa.llm.chat_models`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from langgraph_moa.spec.topology import Agent

__all__ = ["DEFAULT_TIMEOUT_S", "PROVIDERS", "ProviderSpec", "requests_for", "supports_n"]

DEFAULT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ProviderSpec:
    """How to reach one provider."""

    name: str
    base_url: str | None
    key_required: bool = True
    default_key: str | None = None
    supports_n: bool = False  # accepts `n` > 1 in one chat completion request
    openai_compatible: bool = True

    @property
    def key_env(self) -> str:
        return f"{self.name.upper()}_API_KEY"

    @property
    def base_url_env(self) -> str:
        return f"{self.name.upper()}_BASE_URL"

    def resolve_base_url(self) -> str | None:
        return os.environ.get(self.base_url_env) or self.base_url

    def resolve_key(self) -> str | None:
        return os.environ.get(self.key_env) or self.default_key


PROVIDERS: dict[str, ProviderSpec] = {
    spec.name: spec
    for spec in (
        ProviderSpec("openai", None, supports_n=True),
        ProviderSpec("together", "https://api.together.xyz/v1", supports_n=True),
        ProviderSpec("groq", "https://api.groq.com/openai/v1"),
        ProviderSpec("fireworks", "https://api.fireworks.ai/inference/v1", supports_n=True),
        ProviderSpec("openrouter", "https://openrouter.ai/api/v1"),
        ProviderSpec("deepinfra", "https://api.deepinfra.com/v1/openai"),
        ProviderSpec(
            "ollama", "http://localhost:11434/v1", key_required=False, default_key="ollama"
        ),
        ProviderSpec(
            "vllm",
            "http://localhost:8000/v1",
            key_required=False,
            default_key="EMPTY",
            supports_n=True,
        ),
        ProviderSpec("local", None, key_required=False, openai_compatible=False),
    )
}


def supports_n(agent: Agent) -> bool:
    """Whether the agent's provider returns ``n`` samples from one request."""
    return PROVIDERS[agent.provider].supports_n


def requests_for(agent: Agent) -> int:
    """HTTP requests one call of ``agent`` sends for its ``n`` samples: one where the provider
    accepts ``n``, else one per sample."""
    return 1 if agent.n == 1 or supports_n(agent) else agent.n
