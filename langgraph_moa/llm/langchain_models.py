"""Chat models beyond the OpenAI-compatible table: LangChain ``init_chat_model`` providers,
providers registered with a factory, and ready-made models registered by name; how they are
made and how one call to them is retried and timed out.

Their clients differ (the anthropic SDK, google-genai, boto3, whatever a user brings), so moa
cannot count HTTP attempts or bound a request at the transport as it does for the openai client
(:mod:`langgraph_moa.llm.openai_client`). Instead each attempt is one LangChain invocation, made
with the integration's own retries off (``max_retries=0``, a LangChain standard parameter) so
that every attempt is moa's and counted: tenacity, the library LangChain's ``with_retry`` is
built on, retries transient failures with the agent's backoff (a server's Retry-After wins), and
``asyncio.timeout`` bounds each whole attempt. ``with_retry`` itself is not used because it
retries by exception type only, while "transient" (429, 408, 409, 5xx, timeouts, lost
connections) is an HTTP status each SDK puts on its own exception classes; :func:`status_of`
reads it the way those SDKs expose it.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from langchain_core.language_models import BaseChatModel
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from langgraph_moa.errors import MissingCredentialsError, MissingExtraError, MoAInputError
from langgraph_moa.extras import importable
from langgraph_moa.spec.agent import Agent, Retry
from langgraph_moa.spec.providers import (
    DEFAULT_TIMEOUT_S,
    MAX_RETRY_AFTER_S,
    factory_of,
    langchain_provider,
    provider_kind,
    registered_model,
)

T = TypeVar("T")
_TRANSIENT_NAMES = ("Timeout", "Connection", "ConnectError", "NetworkError")


def check_langchain_ready(agent: Agent) -> None:
    """For an ``init_chat_model`` provider: ``langchain`` and the integration are installed
    (else one line naming the pip command)."""
    provider = langchain_provider(agent.provider)
    if provider_kind(agent.model) != "langchain" or provider is None:
        return
    needed = (("langchain", "langchain"), (provider.package, provider.module))
    missing = [package for package, module in needed if not importable(module)]
    install = "pip install " + " ".join(
        repr(p) if "[" in p else p for p in missing or [provider.package]
    )
    if missing:
        names = " and ".join(missing)
        raise MissingExtraError(
            f"{agent.model} needs {names} (LangChain's {agent.provider} integration): {install}"
        )
    # Imported now, before any call: an import inside a running layer would stall the event
    # loop (and every other call's timers) for as long as it takes; once per process.
    try:
        importlib.import_module("langchain.chat_models")
        importlib.import_module(provider.module)
    except ImportError as err:
        raise MissingExtraError(
            f"{agent.model}: {provider.package} is installed but cannot be imported "
            f"({' '.join(str(err).split())}); reinstall it: {install}"
        ) from None


def missing_key_envs(agent: Agent) -> list[str]:
    """Key variables an ``init_chat_model`` provider reads, when none of them is set."""
    provider = langchain_provider(agent.provider)
    if provider_kind(agent.model) != "langchain" or provider is None or not provider.key_envs:
        return []
    if any(os.environ.get(env) for env in provider.key_envs):
        return []
    return [provider.key_envs[0]]


def make_langchain_model(agent: Agent, *, streaming: bool = False) -> BaseChatModel:
    """The chat model of a registered model, a factory provider or an ``init_chat_model``
    provider, with the agent's sampling, length and timeout (its own retries off)."""
    kind = provider_kind(agent.model)
    timeout_s = agent.timeout_s or DEFAULT_TIMEOUT_S
    if kind == "registered_model":
        model = registered_model(agent.model)
        assert model is not None
        return model
    settings: dict[str, Any] = {
        "temperature": agent.temperature,
        "max_tokens": agent.max_tokens,
        "timeout": timeout_s,
    }
    if kind == "factory":
        factory = factory_of(agent.provider)
        assert factory is not None
        made = factory(agent.model_name, **settings)
        if not isinstance(made, BaseChatModel):
            raise MoAInputError(
                f"the factory of provider {agent.provider!r} returned "
                f"{type(made).__name__}, not a LangChain chat model"
            )
        return made
    if kind != "langchain":
        raise MoAInputError(f"{agent.model} is not served by a LangChain provider")
    check_langchain_ready(agent)
    if missing := missing_key_envs(agent):
        raise MissingCredentialsError(f"{missing[0]} is not set: {agent.model} needs it")
    from langchain.chat_models import init_chat_model

    return init_chat_model(
        agent.model_name,
        model_provider=agent.provider,
        max_retries=0,  # every attempt is counted here (see the module docstring)
        disable_streaming=not streaming,
        **settings,
    )


def _int_status(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return value
    return None


def status_of(err: BaseException) -> int | None:
    """The HTTP status an SDK's exception carries: ``status_code`` (anthropic, openai, mistral,
    httpx's ``response``), or ``code`` (google-genai), or None."""
    for value in (
        getattr(err, "status_code", None),
        getattr(getattr(err, "response", None), "status_code", None),
        getattr(err, "code", None),
    ):
        if (status := _int_status(value)) is not None:
            return status
    return None


def is_transient(err: BaseException) -> bool:
    """Worth another attempt: 408, 409, 429, 5xx, a timeout or a lost connection."""
    if isinstance(err, TimeoutError | ConnectionError):
        return True
    status = status_of(err)
    if status is not None:
        return status in (408, 409, 429) or status >= 500
    return any(part in cls.__name__ for cls in type(err).__mro__ for part in _TRANSIENT_NAMES)


def _retry_after_of(err: BaseException | None) -> float | None:
    """Seconds a server asked to wait (its ``Retry-After`` header, in seconds), or None."""
    headers = getattr(getattr(err, "response", None), "headers", None)
    try:
        value = float(headers.get("retry-after")) if headers is not None else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and 0 < value < float("inf") else None


def _wait(backoff: Retry) -> Callable[[RetryCallState], float]:
    """The openai client's schedule: ``initial_s`` doubling up to ``max_s``, less up to 25%
    jitter; a Retry-After (up to a limit) instead when the server sent one."""

    def wait(state: RetryCallState) -> float:
        err = state.outcome.exception() if state.outcome else None
        if (after := _retry_after_of(err)) is not None:
            return min(after, MAX_RETRY_AFTER_S)
        delay = min(backoff.initial_s * 2.0 ** (state.attempt_number - 1), backoff.max_s)
        return delay * (1 - 0.25 * random.random())

    return wait


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    retry: Retry,
    timeout_s: float | None,
    attempts: list[int],
) -> T:
    """``await call()``, each attempt within ``timeout_s``, retried while the failure is
    transient; ``attempts[0]`` counts the attempts made."""

    async def attempt() -> T:
        attempts[0] += 1
        async with asyncio.timeout(timeout_s):
            return await call()

    retrying = AsyncRetrying(
        stop=stop_after_attempt(retry.attempts),
        wait=_wait(retry),
        retry=retry_if_exception(is_transient),
        reraise=True,
    )
    return await retrying(attempt)
