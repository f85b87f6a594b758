"""Where the ``moa`` command sends the package's log records: one stderr handler, at the level
``-v``/``--verbose`` (repeatable) or ``$MOA_LOG_LEVEL`` asks for.

The library logs under ``langgraph_moa.*`` and adds no handler of its own (a ``NullHandler`` on
the package logger), as a library should; only this command line configures output:

- no option: warnings and errors only (the progress display already says what happens);
- ``-v`` or ``MOA_LOG_LEVEL=info``: provider requests and answers (model, latency, tokens,
  attempts), retries, cache hits, budget decisions: never a key, never message contents;
- ``-vv`` or ``MOA_LOG_LEVEL=debug``: also each HTTP request's method and URL;
- ``-vvv``: also the debug logs of the libraries underneath (openai, httpx, langgraph), which
  may include the messages sent.

``-v`` wins over the variable. Every line passes through the same masking as stored errors
(:func:`langgraph_moa.llm.chat_models.redact`), so a configured key never reaches the terminal.
"""

from __future__ import annotations

import logging
import os
import sys

from langgraph_moa.errors import MoAInputError

_PACKAGE_LOGGER = "langgraph_moa"
_LIBRARY_LOGGERS = ("openai", "httpx", "httpcore", "langgraph", "langchain_core")
_NAMES = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}


class _Masked(logging.Filter):
    """Masks configured API keys in the formatted message (arguments included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from langgraph_moa.llm.chat_models import redact

        record.msg = redact(record.getMessage())
        record.args = None
        return True


class _Stderr(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time, so lines land above rich's live
    progress display (which swaps ``sys.stderr`` while it runs) instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def _level_for(verbosity: int, env: str | None) -> int:
    """The package's level: from ``-v`` counted, else ``$MOA_LOG_LEVEL``, else WARNING."""
    if verbosity > 0:
        return logging.INFO if verbosity == 1 else logging.DEBUG
    if not env or not env.strip():
        return logging.WARNING
    name = env.strip().lower()
    if name in _NAMES:
        return _NAMES[name]
    raise MoAInputError(f"MOA_LOG_LEVEL={env!r} is not a log level: use one of {', '.join(_NAMES)}")


def setup_logging(verbosity: int = 0) -> None:
    """Send the package's records (and, with ``-vvv``, the libraries') to stderr."""
    level = _level_for(verbosity, os.environ.get("MOA_LOG_LEVEL"))
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("moa: %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_Masked())
    names = [_PACKAGE_LOGGER, *(_LIBRARY_LOGGERS if verbosity >= 3 else ())]
    for name in names:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _Stderr)]:
            logger.removeHandler(old)  # configured once per process, even if called again
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False  # this handler only: no second copy through the root
