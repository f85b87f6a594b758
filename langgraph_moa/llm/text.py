"""The text of a LangChain message, the one way every module reads it.

``BaseMessage.text`` joins the text blocks of list content; some message classes return it as a
``TextAccessor`` string subclass, others (older versions) as a method, so it is normalised here
to a plain ``str``; content that has no text form falls back to ``str(content)``.
"""

from __future__ import annotations

from langchain_core.messages import BaseMessage


def text_of(message: BaseMessage) -> str:
    text = message.text
    return str(text) if isinstance(text, str) else str(message.content)
