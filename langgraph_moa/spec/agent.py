"""One LLM call site's settings: an :class:`Agent` (model, sampling, timeout, context window)
and its :class:`Retry` policy, with the checks on model and node names every agent shares.

Part of the topology spec (:mod:`langgraph_moa.spec.topology` holds the whole shape); the
strict, frozen base model every spec class derives from lives here because everything else
builds on the agent.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from langgraph_moa.spec.providers import known_providers, provider_kind

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_MODEL_RE = re.compile(r"^[a-z][a-z0-9_-]*:.+$")

# Names a proposer cannot take: each layer's own join node is "L<i>/join", and a join that asks
# a model has a node "L<i>/select" or "L<i>/rank" after it.
RESERVED_NAMES = frozenset({"join", "select", "rank"})


class Strict(BaseModel):
    """The base of every spec model: an unknown key is an error, and a model is frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Retry(Strict):
    """Retries of one call on 429, 5xx, timeouts and connection errors (never on other 4xx):
    exponential backoff from ``initial_s`` doubling up to ``max_s``, with jitter; a server's
    Retry-After wins."""

    attempts: int = Field(default=3, ge=1, le=20, description="Tries in all, the first included.")
    initial_s: float = Field(default=0.5, gt=0, le=600)
    max_s: float = Field(default=8.0, gt=0, le=600)

    @model_validator(mode="after")
    def _ordered(self) -> Retry:
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s ({self.max_s}) must be at least initial_s ({self.initial_s})")
        return self


class Agent(Strict):
    """One LLM call site: a proposer, the critic or the aggregator."""

    name: str | None = Field(
        default=None,
        description="Node-friendly name; derived from the model (and made unique) when absent.",
    )
    model: str = Field(
        description='"provider:model", e.g. "openai:gpt-4o-mini" or "local:smollm2".'
    )
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(default=512, gt=0)
    system_prompt: str | None = Field(
        default=None, description="A role for this agent, placed first in its system message."
    )
    n: int = Field(default=1, ge=1, le=16, description="How many samples to draw from this agent.")
    seed: int | None = Field(default=None, description="Sampling seed, where the provider has one.")
    timeout_s: float | None = Field(
        default=None, gt=0, description="Per-request timeout; default: the topology's timeout_s."
    )
    retry: Retry | None = Field(default=None, description="Default: the topology's retry.")
    context_window: int | None = Field(
        default=None, gt=0, description="Tokens the model accepts; known models have a default."
    )

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        if not _MODEL_RE.match(value) or not value.isprintable():
            raise ValueError(
                f'model must look like "provider:model" (e.g. "openai:gpt-4o"), got {value!r}'
            )
        if provider_kind(value) is None:
            provider = value.split(":", 1)[0]
            raise ValueError(f"unknown provider {provider!r}; known: {known_providers()}")
        return value

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME_RE.match(value):
            raise ValueError(
                "name may hold only letters, digits, '.', '_' and '-', and must start with a "
                f"letter or digit; got {value!r}"
            )
        if value in RESERVED_NAMES:
            raise ValueError(f"name {value!r} is reserved (each layer has a node L<i>/{value})")
        return value

    @property
    def provider(self) -> str:
        return self.model.split(":", 1)[0]

    @property
    def model_name(self) -> str:
        return self.model.split(":", 1)[1]
