"""One access-log line per HTTP request, through :mod:`logging` (logger
``langgraph_moa.serving.access``): method, path, status, latency, and for completions the model,
tokens and cost. The route fills a per-request record (kept in the ASGI scope's ``state``); the
guard in front of every route writes the line once the response has been sent, however it
ended. Nothing from the request's headers is logged, so no key can reach the log."""

from __future__ import annotations

import logging
import sys
from typing import Any

from starlette.requests import Request
from starlette.types import Scope

_ACCESS_LOGGER = "langgraph_moa.serving.access"
_access_logger = logging.getLogger(_ACCESS_LOGGER)
_SCOPE_KEY = "moa_access"


def new_record(scope: Scope) -> dict[str, Any]:
    """A fresh record for this request, reachable from its route (see :func:`access_record`)."""
    record: dict[str, Any] = {}
    scope.setdefault("state", {})[_SCOPE_KEY] = record
    return record


def access_record(request: Request) -> dict[str, Any]:
    """The record the route fills for this request's log line (a throwaway one if the request
    did not come through the guard)."""
    state = request.scope.setdefault("state", {})
    record: dict[str, Any] = state.setdefault(_SCOPE_KEY, {})
    return record


def note_usage(record: dict[str, Any], usage: dict[str, Any] | None) -> None:
    """Tokens and cost of a completion (OpenAI's usage fields, plus ``cost_usd`` if known)."""
    if not usage:
        return
    for name in ("prompt_tokens", "completion_tokens", "total_tokens", "cost_usd"):
        if usage.get(name) is not None:
            record[name] = usage[name]


def log_request(
    method: str, path: str, status: int, latency_s: float, record: dict[str, Any]
) -> None:
    """The access-log line, with the record's fields also attached as ``record.moa_access``
    for handlers that want them structured."""
    if not _access_logger.isEnabledFor(logging.INFO):
        return
    fields = " ".join(
        f"{name}={record[name]}"
        for name in (
            "model",
            "prompt_tokens",
            "completion_tokens",
            "cost_usd",
            "captured",
            "outcome",
        )
        if record.get(name) is not None
    )
    _access_logger.info(
        "%s %s %d %.1fms%s",
        method,
        path,
        status,
        latency_s * 1000,
        f" {fields}" if fields else "",
        extra={
            "moa_access": {
                "method": method,
                "path": path,
                "status": status,
                "latency_s": round(latency_s, 4),
                **record,
            }
        },
    )


def configure(enabled: bool) -> None:
    """For ``moa serve``: access lines to stderr at INFO when ``enabled`` (unless the
    application has set up logging itself), none otherwise."""
    _access_logger.setLevel(logging.INFO if enabled else logging.WARNING)
    if enabled and not _access_logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("moa serve: %(message)s"))
        _access_logger.addHandler(handler)
        _access_logger.propagate = False
