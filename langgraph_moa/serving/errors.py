"""Errors in OpenAI's shape (a status plus an ``{"error": {...}}`` body) and the status each
kind of failure maps to."""

# 400 a bad request or a model this server refuses; 401 a missing or wrong key; 403 a
# pass-through provider the operator did not configure; 404 an unknown model or route; 408 a
# body that did not arrive in time; 413 a body over the limit; 429 every concurrency slot taken;
# 502 the upstream models failed; 503 a key missing from the server's environment (the
# operator's setup, not the caller's fault), or a run cut short by the server stopping; 504 a
# topology's deadline_s passed (the upstream models did not answer in time: a gateway timeout,
# not to be retried, as ChatMixtureOfAgents does not retry it: the same deadline would pass
# again, and be paid again); 500 anything else, with a generic message and one line on stderr.

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any

from fastapi.responses import JSONResponse

from langgraph_moa.errors import (
    LocalModelUnusableError,
    MissingCredentialsError,
    MissingExtraError,
    MoAError,
    MoAInputError,
    MoARunError,
)
from langgraph_moa.llm.chat_models import redact
from langgraph_moa.run import DeadlinePassed
from langgraph_moa.serving.runs import RunCancelled


def log_line(message: str) -> None:
    """One line for the operator on stderr (never a traceback, keys masked)."""
    sys.stderr.write(f"moa serve: {redact(' '.join(message.split()))}\n")
    sys.stderr.flush()


def http_wording(message: str) -> str:
    """An error message for an HTTP client: without a closing parenthesis of command-line
    advice ("(export the key, or use --preset local)"), which an HTTP caller cannot follow."""
    return re.sub(r"\s*\([^()]*--[^()]*\)\s*$", "", message)


class APIError(Exception):
    """An error answer: HTTP status plus OpenAI's ``{"error": {...}}`` body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}
        self.extra: dict[str, Any] = {}  # beside "error" in the body (a partial run's record)

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            },
            **self.extra,
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _no_retry() -> dict[str, str]:
    # The openai client retries 5xx by default; these failures would only repeat (and be
    # paid for again), so say so with the header it honours.
    return {"x-should-retry": "false"}


def internal_error() -> APIError:
    return APIError(
        500,
        "internal server error: the request could not be completed",
        type_="server_error",
        code="internal_error",
    )


def _final(status: int, message: str, type_: str, code: str) -> APIError:
    """An error a retry would only repeat (and pay for again)."""
    return APIError(status, message, type_=type_, code=code, headers=_no_retry())


def error_of_run(exc: BaseException) -> APIError:
    """Map what a graph run raised to the status a caller should see."""
    if isinstance(exc, RunCancelled):
        return APIError(
            503,
            "the run was cancelled: the server is stopping; retry shortly",
            type_="server_error",
            code="run_cancelled",
        )
    if isinstance(exc, MissingCredentialsError):
        message = f"this server is not configured for the model: {http_wording(str(exc))}"
        return _final(503, message, "server_error", "missing_api_key")
    if isinstance(exc, MissingExtraError | LocalModelUnusableError):
        message = f"this server cannot run the model: {http_wording(str(exc))}"
        return _final(503, message, "server_error", "model_unavailable")
    if isinstance(exc, DeadlinePassed):
        return _final(
            504, f"the model's deadline passed: {exc}", "server_error", "deadline_exceeded"
        )
    if isinstance(exc, MoAInputError):
        return APIError(400, http_wording(str(exc)), code="invalid_request")
    if isinstance(exc, MoARunError):
        message = f"the upstream models failed: {exc}"
        return _final(502, message, "upstream_error", "upstream_failed")
    if isinstance(exc, MoAError):
        return APIError(500, str(exc), type_="server_error", code="internal_error")
    log_line(f"internal error: {type(exc).__name__}: {exc}")
    return internal_error()


def _param_of(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_error(errors: Sequence[Any]) -> APIError:
    parts, param = [], None
    for e in errors:
        loc = [p for p in e.get("loc", ()) if p != "body"]
        where = _param_of(loc)
        param = param or where or None
        msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return APIError(400, "invalid request: " + "; ".join(parts), param=param, code="invalid_value")


def too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"the request body is too large: the limit is {limit} bytes",
        code="request_too_large",
    )


def too_slow(timeout_s: float) -> APIError:
    return APIError(
        408,
        f"the request body did not arrive within {timeout_s:g} seconds",
        code="request_timeout",
        headers={"connection": "close"},
    )
