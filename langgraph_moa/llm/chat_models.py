"""Turn an agent's ``"provider:model"`` into a LangChain chat model.

Which kind of provider serves a name is decided in :mod:`langgraph_moa.spec.providers`.
Registered models, factory providers and LangChain ``init_chat_model`` providers are made in
:mod:`langgraph_moa.llm.langchain_models`. OpenAI-compatible services go through
langchain-openai's ChatOpenAI with the provider's base URL (overridable with
``<PROVIDER>_BASE_URL``) and key (``<PROVIDER>_API_KEY``); ``openai`` reads ``OPENAI_API_KEY`` /
``OPENAI_BASE_URL`` exactly as the openai client does. ``local`` is the embedded SmolLM2 model
run by llama.cpp (see :mod:`langgraph_moa.llm.local_model`). Keys are read from the environment
when a model is made and never stored anywhere else.

The model stack (langchain-openai, the openai client, httpx) is imported where a model is made,
not with this module: a command that only draws a graph or lists presets never needs it, and it
is most of the package's import time. :func:`warm_up` does that first-call work ahead of a run,
so the run's first requests do not wait for it.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from langchain_core.language_models import BaseChatModel
from pydantic import SecretStr

from langgraph_moa.errors import MissingCredentialsError
from langgraph_moa.extras import require_extra
from langgraph_moa.llm.langchain_models import (
    check_langchain_ready,
    make_langchain_model,
    missing_key_envs,
)
from langgraph_moa.llm.local_model import ChatLocalLlama, resolve_model_path
from langgraph_moa.llm.local_runtime import check_local_runtime
from langgraph_moa.spec.agent import Retry
from langgraph_moa.spec.providers import (
    DEFAULT_TIMEOUT_S,
    LANGCHAIN_PROVIDERS,
    PROVIDERS,
    ProviderSpec,
    provider_kind,
    registered_models,
)

if TYPE_CHECKING:
    from langgraph_moa.spec.agent import Agent
    from langgraph_moa.spec.topology import Topology


def _max_tokens_option(spec: ProviderSpec, max_tokens: int) -> dict[str, Any]:
    """How a reply's length limit is sent. langchain-openai sends OpenAI's newer
    ``max_completion_tokens``; other OpenAI-compatible services are only sure to understand the
    classic ``max_tokens``, sent as an extra body field; the embedded model takes it directly."""
    if spec.name == "openai" or not spec.openai_compatible:
        return {"max_tokens": max_tokens}
    return {"extra_body": {"max_tokens": max_tokens}}


def check_credentials(topology: Topology) -> None:
    """Raise MissingCredentialsError naming every unset key variable, before any call is made."""
    missing: list[str] = []
    for agent in topology.agents():
        spec = PROVIDERS.get(agent.provider)
        if provider_kind(agent.model) in ("openai", "local") and spec is not None:
            if spec.key_required and not spec.resolve_key():
                missing.append(spec.key_env)
        else:
            missing.extend(missing_key_envs(agent))
    missing = list(dict.fromkeys(missing))
    if missing:
        names = " and ".join(missing)
        verb = "is" if len(missing) == 1 else "are"
        raise MissingCredentialsError(
            f"{names} {verb} not set: topology {topology.name!r} needs "
            f"{'it' if len(missing) == 1 else 'them'} (export the key, or use --preset local)"
        )


def check_ready(topology: Topology, *, probe_local: bool = False) -> None:
    """Before any call: the extras the topology's providers need are installed (one line naming
    the pip command if not) and every key is set (see :func:`check_credentials`).

    ``probe_local`` also makes sure llama.cpp can run each local model file on this machine
    (:mod:`langgraph_moa.llm.local_runtime`; up to a second the first time, then remembered).
    """
    for agent in topology.agents():
        kind = provider_kind(agent.model)
        if kind == "local":
            require_extra("local", f"the embedded model ({agent.model})")
            if probe_local:
                check_local_runtime(resolve_model_path(agent.model_name))
        elif kind == "langchain":
            check_langchain_ready(agent)
    check_credentials(topology)


def make_chat_model(agent: Agent, *, streaming: bool = False, n: int = 1) -> BaseChatModel:
    """A chat model for ``agent``; ``n`` > 1 asks for that many samples in one request."""
    kind = provider_kind(agent.model)
    if kind not in ("openai", "local"):
        return make_langchain_model(agent, streaming=streaming)
    spec = PROVIDERS[agent.provider]
    if kind == "local":
        return ChatLocalLlama(
            model_path=agent.model_name,
            temperature=agent.temperature,
            max_tokens=agent.max_tokens,
            seed=agent.seed,
            disable_streaming=not streaming,
        )

    from langchain_openai import ChatOpenAI

    from langgraph_moa.llm.openai_client import RetryingAsyncOpenAI

    key = spec.resolve_key()
    if not key:
        raise MissingCredentialsError(f"{spec.key_env} is not set: {agent.model} needs it")
    limit = _max_tokens_option(spec, agent.max_tokens)
    timeout_s = agent.timeout_s or DEFAULT_TIMEOUT_S
    # A client of this model's own (langchain-openai's shared default is bound to the first
    # event loop that used it), retrying with the agent's backoff.
    client = RetryingAsyncOpenAI(
        api_key=key,
        base_url=spec.resolve_base_url(),
        retry=agent.retry or Retry(),
        timeout_s=timeout_s,
        model=agent.model,
    )
    return ChatOpenAI(
        model=agent.model_name,
        api_key=key,  # type: ignore[arg-type]
        base_url=spec.resolve_base_url(),
        temperature=agent.temperature,
        n=n,
        seed=agent.seed,
        **limit,
        timeout=timeout_s,
        max_retries=(agent.retry or Retry()).attempts - 1,
        stream_usage=True,
        disable_streaming=not streaming,
        root_async_client=client,
        async_client=client.chat.completions,
    )


async def warm_up(topology: Topology) -> None:
    """Do a cold process's first-call work before a run instead of inside it: import the model
    stack, make one chat model per provider and timeout (the first one made also imports the
    openai client's resources and builds langchain-openai's shared HTTP client) and load the
    async backend the HTTP connections use; a third of a second in all. The models made here are
    dropped; they have opened no connection."""
    done: set[tuple[str, float | None]] = set()
    for agent in topology.agents():
        spec, kind = PROVIDERS[agent.provider], (agent.provider, agent.timeout_s)
        if spec.openai_compatible and spec.resolve_key() and kind not in done:
            done.add(kind)
            make_chat_model(agent)
    if done:
        import anyio

        await anyio.sleep(0)  # httpcore's first connection would load anyio's asyncio backend


def call_options(
    agent: Agent, *, temperature: float | None = None, max_tokens: int | None = None
) -> dict[str, Any]:
    """Per-call overrides of an agent's sampling, as keyword arguments its chat model takes."""
    options: dict[str, Any] = {}
    if temperature is not None:
        options["temperature"] = temperature
    if max_tokens is not None:
        spec = PROVIDERS.get(agent.provider)
        if provider_kind(agent.model) in ("openai", "local") and spec is not None:
            options |= _max_tokens_option(spec, max_tokens)
        else:  # LangChain's standard parameter
            options["max_tokens"] = max_tokens
    return options


def _secrets() -> list[str]:
    """Every key moa knows of: the table's and LangChain providers' key variables, and the
    secret fields of registered models."""
    envs = [spec.key_env for spec in PROVIDERS.values()]
    envs += [env for p in LANGCHAIN_PROVIDERS.values() for env in p.key_envs + p.secret_envs]
    keys = [key for env in dict.fromkeys(envs) if (key := os.environ.get(env))]
    for model in registered_models():
        keys += [
            secret
            for value in vars(model).values()
            if isinstance(value, SecretStr) and (secret := value.get_secret_value())
        ]
    return keys


def redact(text: str) -> str:
    """Mask every known provider key that appears in ``text`` (see :func:`_secrets`).

    A key of 6 characters or more is masked wherever it appears; a shorter one (a test or local
    server's key) wherever it stands as a word of its own, so that masking it cannot mangle
    ordinary words that merely contain it.
    """
    for key in _secrets():
        if key not in text:
            continue
        if len(key) >= 6:
            text = text.replace(key, "***")
        else:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", "***", text)
    return text
