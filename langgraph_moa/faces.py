"""Package faces whose names load on first use (PEP 562).

The root package, :mod:`langgraph_moa.evaluation` and :mod:`langgraph_moa.testing` list their
public names in ``__all__`` but import the modules behind them only when a name is first read:
every ``langgraph_moa.*`` import runs the package's ``__init__`` first, and ``moa --help``, the
fake test server or ``strict_json`` must not pay for LangGraph, LangChain or FastAPI they never
use. Hand-written because the standard library has no helper for it: ``importlib.util.LazyLoader``
defers a whole module, not the names a package re-exports.
"""

import sys
from collections.abc import Callable, Mapping, Sequence
from importlib import import_module
from typing import Any


def lazy_face(
    package: str, homes: Mapping[str, str], public: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: a name of ``homes`` (name -> the module
    defining it) is imported when first read, then kept in the package like any attribute."""
    namespace = sys.modules[package].__dict__

    def getattr_(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(home), name)
        namespace[name] = value  # found once; later lookups do not come here
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(public))

    return getattr_, dir_
