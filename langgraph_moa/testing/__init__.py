"""Test helpers shipped with the package: a fake OpenAI-compatible server (:class:`FakeOpenAI`,
scripted per request by a :class:`Behavior`) and a fake Anthropic Messages API
(:class:`FakeAnthropic`), both on loopback.

The names are imported on first use (PEP 562): importing the package loads neither fake, nor
FastAPI.
"""

from typing import TYPE_CHECKING

from langgraph_moa.faces import lazy_face

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


__getattr__, __dir__ = lazy_face(__name__, _HOME, __all__)
