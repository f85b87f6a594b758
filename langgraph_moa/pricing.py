"""Token prices (USD per million tokens) and the cost of a call.

The built-in table covers the models the presets use; a user extends or overrides it with
``prices:`` in a topology, or with a YAML/JSON file named by ``MOA_PRICES``
(``{"provider:model": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}``). A key ending in
``*`` matches by prefix (``"local:*"``). Unknown models have no cost (``None``), never a guess.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import TypeAdapter, ValidationError

from langgraph_moa.errors import MoAInputError
from langgraph_moa.topology import Price, describe_validation_error, read_data_file

__all__ = ["BUILTIN_PRICES", "PriceTable"]


def _p(inp: float, out: float) -> Price:
    return Price(input_per_mtok=inp, output_per_mtok=out)


# List prices as published by each provider when the preset was written.
BUILTIN_PRICES: dict[str, Price] = {
    "openai:gpt-4o": _p(2.50, 10.00),
    "openai:gpt-4o-mini": _p(0.15, 0.60),
    "openai:gpt-4.1": _p(2.00, 8.00),
    "openai:gpt-4.1-mini": _p(0.40, 1.60),
    "together:Qwen/Qwen1.5-110B-Chat": _p(1.80, 1.80),
    "together:Qwen/Qwen1.5-72B-Chat": _p(0.90, 0.90),
    "together:microsoft/WizardLM-2-8x22B": _p(1.20, 1.20),
    "together:meta-llama/Llama-3-70b-chat-hf": _p(0.90, 0.90),
    "together:mistralai/Mixtral-8x22B-Instruct-v0.1": _p(1.20, 1.20),
    "together:databricks/dbrx-instruct": _p(1.20, 1.20),
    "local:*": _p(0.0, 0.0),
    "ollama:*": _p(0.0, 0.0),
    "vllm:*": _p(0.0, 0.0),
}

_PRICES_FILE = TypeAdapter(dict[str, Price])


def _load_prices_file(path: str) -> dict[str, Price]:
    data = read_data_file(path, what="MOA_PRICES file")
    try:
        return _PRICES_FILE.validate_python(data or {})
    except ValidationError as err:
        raise MoAInputError(f"MOA_PRICES file {path!r}: {describe_validation_error(err)}") from None


class PriceTable:
    """Built-in prices, then ``MOA_PRICES``, then the topology's own ``prices`` (last wins)."""

    def __init__(self, extra: Mapping[str, Price] | None = None, *, env: bool = True) -> None:
        self._prices: dict[str, Price] = dict(BUILTIN_PRICES)
        if env and (path := os.environ.get("MOA_PRICES")):
            self._prices.update(_load_prices_file(path))
        self._prices.update(extra or {})

    def price(self, model: str) -> Price | None:
        if model in self._prices:
            return self._prices[model]
        prefixes = [k for k in self._prices if k.endswith("*") and model.startswith(k[:-1])]
        return self._prices[max(prefixes, key=len)] if prefixes else None

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float | None:
        price = self.price(model)
        if price is None:
            return None
        return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6
