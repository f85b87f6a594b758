"""Test helpers shipped with the package: a fake OpenAI-compatible server (:class:`FakeOpenAI`,
scripted per request by a :class:`Behavior`) and a fake Anthropic Messages API
(:class:`FakeAnthropic`), both on loopback.

The names are imported on first use (PEP 562): importing the package loads neither fake, nor
FastAPI.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langgraph_moa.testing.fake_anthropic import FakeAnthropic
    from langgraph_moa.testing.fake_openai import Behavior, FakeOpenAI

__all__ = ["Behavior", "FakeAnthropic", "FakeOpenAI"]

# public name -> the module that defines it
_HOME = {
    "Behavior": "langgraph_moa.testing.fake_openai",
    "FakeOpenAI": "langgraph_moa.testing.fake_openai",
    "FakeAnthropic": "langgraph_moa.testing.fake_anthropic",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
