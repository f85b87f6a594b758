"""Model facts: list prices (USD per million tokens) and context windows, in one table keyed
``"provider:model"``, where a key ending in ``*`` matches by prefix (``"local:*"``); one lookup
(exact key, else the longest matching prefix) serves both.

The built-in table covers the models the presets use and a few models of LangChain providers
(a ``*`` key prices an alias and its dated snapshots alike: ``anthropic:claude-sonnet-4-5*``).
A user extends or overrides prices with ``prices:`` in a topology, or with a YAML/JSON file
named by ``MOA_PRICES``
(``{"provider:model": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}``), and declares a
window with an agent's ``context_window``. Unknown models have no cost (``None``) and no
window, never a guess.

Batch prices: a call answered through a provider's Batch API is priced at the model's batch
price: ``batch_input_per_mtok`` / ``batch_output_per_mtok`` where the table or the user gives
them, else :data:`BATCH_DISCOUNT` (half) of the online price for the providers that sell a batch
tier (:func:`~langgraph_moa.spec.providers.batch_shape`: OpenAI, Together, Anthropic, and
OpenAI-compatible providers registered with a Batch API).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from pydantic import TypeAdapter, ValidationError

from langgraph_moa.errors import MoAInputError
from langgraph_moa.spec.files import describe_validation_error, read_data_file
from langgraph_moa.spec.providers import batch_shape
from langgraph_moa.spec.topology import Price


@dataclass(frozen=True)
class ModelFacts:
    price: Price | None = None
    context_window: int | None = None  # tokens the model accepts


def _f(inp: float, out: float, window: int | None = None) -> ModelFacts:
    return ModelFacts(Price(input_per_mtok=inp, output_per_mtok=out), window)


# List prices as published by each provider when the presets were written.
_MODEL_FACTS: dict[str, ModelFacts] = {
    "openai:gpt-4o": _f(2.50, 10.00, 128000),
    "openai:gpt-4o-mini": _f(0.15, 0.60, 128000),
    "openai:gpt-4.1": _f(2.00, 8.00, 1047576),
    "openai:gpt-4.1-mini": _f(0.40, 1.60, 1047576),
    "together:Qwen/Qwen1.5-110B-Chat": _f(1.80, 1.80, 32768),
    "together:Qwen/Qwen1.5-72B-Chat": _f(0.90, 0.90, 32768),
    "together:microsoft/WizardLM-2-8x22B": _f(1.20, 1.20, 65536),
    "together:meta-llama/Llama-3-70b-chat-hf": _f(0.90, 0.90, 8192),
    "together:mistralai/Mixtral-8x22B-Instruct-v0.1": _f(1.20, 1.20, 65536),
    "together:databricks/dbrx-instruct": _f(1.20, 1.20, 32768),
    # LangChain init_chat_model providers (names as their APIs take them)
    "anthropic:claude-opus-4-1*": _f(15.00, 75.00, 200000),
    "anthropic:claude-sonnet-4-5*": _f(3.00, 15.00, 200000),
    "anthropic:claude-haiku-4-5*": _f(1.00, 5.00, 200000),
    "anthropic:claude-3-5-haiku*": _f(0.80, 4.00, 200000),
    "google_genai:gemini-2.5-pro": _f(1.25, 10.00, 1048576),
    "google_genai:gemini-2.5-flash": _f(0.30, 2.50, 1048576),
    "local:smollm2": _f(0.0, 0.0, 8192),
    "local:smollm2-135m-instruct": _f(0.0, 0.0, 8192),
    "local:*": _f(0.0, 0.0),
    "ollama:*": _f(0.0, 0.0),
    "vllm:*": _f(0.0, 0.0),
}
_BUILTIN_PRICES: dict[str, Price] = {k: f.price for k, f in _MODEL_FACTS.items() if f.price}
KNOWN_CONTEXT_WINDOWS: dict[str, int] = {
    k: f.context_window for k, f in _MODEL_FACTS.items() if f.context_window
}

T = TypeVar("T")


def lookup(table: Mapping[str, T], model: str) -> T | None:
    """``table[model]``, else the entry of the longest ``*`` key that prefixes ``model``."""
    if model in table:
        return table[model]
    prefixes = [k for k in table if k.endswith("*") and model.startswith(k[:-1])]
    return table[max(prefixes, key=len)] if prefixes else None


def context_window_for(model: str, declared: int | None) -> int | None:
    """The context window of ``model``: the ``declared`` one, else the table's, else None."""
    return declared if declared is not None else lookup(KNOWN_CONTEXT_WINDOWS, model)


_PRICES_FILE = TypeAdapter(dict[str, Price])


def _load_prices_file(path: str) -> dict[str, Price]:
    data = read_data_file(path, what="MOA_PRICES file")
    try:
        return _PRICES_FILE.validate_python(data or {})
    except ValidationError as err:
        raise MoAInputError(f"MOA_PRICES file {path!r}: {describe_validation_error(err)}") from None


# What a Batch API charges of the online price (OpenAI, Together and Anthropic all list batch
# prices at half the online ones).
BATCH_DISCOUNT = 0.5


def has_batch_api(model: str) -> bool:
    """Whether ``model``'s provider sells its tokens through a Batch API (at a batch price):
    the same providers :mod:`langgraph_moa.llm.batch_api` sends batches to."""
    return batch_shape(model) is not None


class PriceTable:
    """Built-in prices, then ``MOA_PRICES``, then the topology's own ``prices`` (last wins)."""

    def __init__(self, extra: Mapping[str, Price] | None = None, *, env: bool = True) -> None:
        self._prices: dict[str, Price] = dict(_BUILTIN_PRICES)
        if env and (path := os.environ.get("MOA_PRICES")):
            self._prices.update(_load_prices_file(path))
        self._prices.update(extra or {})

    def price(self, model: str) -> Price | None:
        return lookup(self._prices, model)

    def batch_price(self, model: str) -> Price | None:
        """What ``model`` costs through its provider's Batch API: the declared batch prices,
        else the provider's discount on the online price, else the online price."""
        price = self.price(model)
        if price is None:
            return None
        discount = BATCH_DISCOUNT if has_batch_api(model) else 1.0
        inp = price.batch_input_per_mtok
        out = price.batch_output_per_mtok
        return Price(
            input_per_mtok=price.input_per_mtok * discount if inp is None else inp,
            output_per_mtok=price.output_per_mtok * discount if out is None else out,
        )

    def cost(
        self, model: str, input_tokens: int, output_tokens: int, *, batch: bool = False
    ) -> float | None:
        """What a call cost, online or (``batch``) through the provider's Batch API."""
        price = self.batch_price(model) if batch else self.price(model)
        if price is None:
            return None
        return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6


class BatchPrices(PriceTable):
    """A price table that prices every call of the ``batched`` models at their batch price
    (what a run of the batch engine pays, and reserves, for them)."""

    def __init__(
        self, extra: Mapping[str, Price] | None = None, *, batched: frozenset[str] = frozenset()
    ) -> None:
        super().__init__(extra)
        self.batched = batched

    def cost(
        self, model: str, input_tokens: int, output_tokens: int, *, batch: bool = False
    ) -> float | None:
        batch = batch or model in self.batched
        return super().cost(model, input_tokens, output_tokens, batch=batch)
