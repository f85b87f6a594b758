"""The provider table: how each ``provider:`` prefix of a model name is reached.

Four kinds of provider, looked up in this order (the first that knows a name wins):

1. a model registered by the user under an exact ``"provider:model"`` name
   (:func:`register_model`: a ready-made LangChain chat model, used as is);
2. the OpenAI-compatible table below (plus providers registered with a base URL), and ``local``,
   the embedded model: a default base URL (overridable with ``<PROVIDER>_BASE_URL``), a key
   variable, whether one request may ask for ``n`` samples. It wins over LangChain for the
   prefixes both know (``openai``, ``groq``, ``together``, ...): it is the tested path, with
   whole-request timeouts and counted HTTP attempts;
3. a provider registered with a factory (:func:`register_provider`);
4. LangChain's ``init_chat_model`` providers (``anthropic``, ``google_genai``, ``bedrock``,
   ``mistralai``, ``azure_openai``...), usable when ``langchain`` and the provider's integration
   package are installed.

The LangChain list is kept here as data (the import name of each integration, the variables that
hold its key) rather than read from ``langchain`` at run time: ``langchain`` is optional, and a
topology is validated before anything heavy is imported. A unit test compares it with
``init_chat_model``'s own list so the two cannot drift apart unnoticed.

The chat models themselves are made in :mod:`langgraph_moa.llm.chat_models`.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from langgraph_moa.errors import MoAInputError

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from langgraph_moa.spec.agent import Agent

DEFAULT_TIMEOUT_S = 120.0
# Longest Retry-After a retry waits for, whatever the provider; beyond it the failure is reported.
MAX_RETRY_AFTER_S = 120.0

_ChatModelFactory = Callable[..., "BaseChatModel"]
"""``factory(model_name, *, temperature, max_tokens, timeout) -> BaseChatModel``."""

_ProviderKind = Literal["registered_model", "openai", "local", "factory", "langchain"]


@dataclass(frozen=True)
class ProviderSpec:
    """How to reach one OpenAI-compatible provider (or the embedded model)."""

    name: str
    base_url: str | None
    key_required: bool = True
    default_key: str | None = None
    supports_n: bool = False  # accepts `n` > 1 in one chat completion request
    openai_compatible: bool = True
    api_key_env: str | None = None  # default: <NAME>_API_KEY
    # the shape of its Batch API (files + /v1/batches, as OpenAI's), if it has one
    batch_api: Literal["openai"] | None = None

    @property
    def key_env(self) -> str:
        return self.api_key_env or f"{self.name.upper()}_API_KEY"

    @property
    def base_url_env(self) -> str:
        return f"{self.name.upper()}_BASE_URL"

    def resolve_base_url(self) -> str | None:
        return os.environ.get(self.base_url_env) or self.base_url

    def resolve_key(self) -> str | None:
        return os.environ.get(self.key_env) or self.default_key


BUILTIN_PROVIDERS: dict[str, ProviderSpec] = {
    spec.name: spec
    for spec in (
        ProviderSpec("openai", None, supports_n=True, batch_api="openai"),
        ProviderSpec(
            "together", "https://api.together.xyz/v1", supports_n=True, batch_api="openai"
        ),
        ProviderSpec("groq", "https://api.groq.com/openai/v1"),
        ProviderSpec("fireworks", "https://api.fireworks.ai/inference/v1", supports_n=True),
        ProviderSpec("openrouter", "https://openrouter.ai/api/v1"),
        ProviderSpec("deepinfra", "https://api.deepinfra.com/v1/openai"),
        ProviderSpec(
            "ollama", "http://localhost:11434/v1", key_required=False, default_key="ollama"
        ),
        ProviderSpec(
            "vllm",
            "http://localhost:8000/v1",
            key_required=False,
            default_key="EMPTY",
            supports_n=True,
        ),
        ProviderSpec("local", None, key_required=False, openai_compatible=False),
    )
}

# The built-in table plus the OpenAI-compatible providers registered at run time.
PROVIDERS: dict[str, ProviderSpec] = dict(BUILTIN_PROVIDERS)


@dataclass(frozen=True)
class LangChainProvider:
    """One provider of LangChain's ``init_chat_model``."""

    name: str
    module: str  # where its chat model class lives (import name)
    key_envs: tuple[str, ...] = ()  # any one of them holds the key; () = not a single variable
    extra: str | None = None  # a pip extra of the package, when the class needs one
    # says why the model stopped (so a streamed answer without it was cut off)
    reports_finish: bool = False
    # other variables that may hold its secrets: masked in errors, never required
    secret_envs: tuple[str, ...] = ()

    @property
    def package(self) -> str:
        """The pip requirement that installs it."""
        dist = self.module.split(".", 1)[0].replace("_", "-")
        return f"{dist}[{self.extra}]" if self.extra else dist


_AWS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_BEARER_TOKEN_BEDROCK")

LANGCHAIN_PROVIDERS: dict[str, LangChainProvider] = {
    p.name: p
    for p in (
        LangChainProvider(
            "anthropic", "langchain_anthropic", ("ANTHROPIC_API_KEY",), reports_finish=True
        ),
        LangChainProvider("anthropic_bedrock", "langchain_aws", secret_envs=_AWS),
        LangChainProvider("azure_ai", "langchain_azure_ai.chat_models"),
        LangChainProvider(
            "azure_openai",
            "langchain_openai",
            reports_finish=True,
            secret_envs=("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_AD_TOKEN"),
        ),
        LangChainProvider("baseten", "langchain_baseten", secret_envs=("BASETEN_API_KEY",)),
        LangChainProvider("bedrock", "langchain_aws", secret_envs=_AWS),
        LangChainProvider("bedrock_converse", "langchain_aws", secret_envs=_AWS),
        LangChainProvider("bedrock_mantle_anthropic", "langchain_aws", extra="anthropic"),
        LangChainProvider("bedrock_mantle_openai", "langchain_aws", extra="openai"),
        LangChainProvider("cohere", "langchain_cohere", ("COHERE_API_KEY", "CO_API_KEY")),
        LangChainProvider(
            "deepseek", "langchain_deepseek", ("DEEPSEEK_API_KEY",), reports_finish=True
        ),
        LangChainProvider("fireworks", "langchain_fireworks"),
        LangChainProvider("google_anthropic_vertex", "langchain_google_vertexai.model_garden"),
        LangChainProvider(
            "google_genai", "langchain_google_genai", ("GOOGLE_API_KEY", "GEMINI_API_KEY")
        ),
        LangChainProvider("google_vertexai", "langchain_google_vertexai"),
        LangChainProvider("groq", "langchain_groq"),
        LangChainProvider(
            "huggingface",
            "langchain_huggingface",
            secret_envs=("HUGGINGFACEHUB_API_TOKEN", "HF_TOKEN"),
        ),
        LangChainProvider("ibm", "langchain_ibm", secret_envs=("WATSONX_APIKEY",)),
        LangChainProvider(
            "langsmith",
            "langchain_openai",
            secret_envs=("LANGSMITH_GATEWAY_API_KEY", "LANGSMITH_API_KEY"),
        ),
        LangChainProvider("litellm", "langchain_litellm"),
        LangChainProvider("meta", "langchain_meta"),
        LangChainProvider(
            "mistralai", "langchain_mistralai", ("MISTRAL_API_KEY",), reports_finish=True
        ),
        LangChainProvider(
            "nvidia", "langchain_nvidia_ai_endpoints", secret_envs=("NVIDIA_API_KEY",)
        ),
        LangChainProvider("ollama", "langchain_ollama"),
        LangChainProvider("openai", "langchain_openai"),
        LangChainProvider("openrouter", "langchain_openrouter"),
        LangChainProvider(
            "perplexity", "langchain_perplexity", secret_envs=("PPLX_API_KEY", "PERPLEXITY_API_KEY")
        ),
        LangChainProvider("together", "langchain_together"),
        LangChainProvider("upstage", "langchain_upstage", secret_envs=("UPSTAGE_API_KEY",)),
        LangChainProvider("xai", "langchain_xai", ("XAI_API_KEY",), reports_finish=True),
    )
}

# What users register, by name. A lock: the sync API and a server may read while a user's
# thread registers.
_lock = threading.Lock()
_factories: dict[str, _ChatModelFactory] = {}
_models: dict[str, BaseChatModel] = {}
_PROVIDER_RE = re.compile(r"^[a-z][a-z0-9_-]*$")


def _check_provider_name(name: str) -> None:
    if not isinstance(name, str) or not _PROVIDER_RE.match(name):
        raise MoAInputError(
            "a provider name is lowercase letters, digits, '_' and '-', starting with a letter; "
            f"got {name!r}"
        )
    if name in BUILTIN_PROVIDERS:
        raise MoAInputError(
            f"{name!r} is a built-in provider and cannot be replaced; point it elsewhere with "
            f"{BUILTIN_PROVIDERS[name].base_url_env}"
        )


def register_provider(
    name: str,
    factory: _ChatModelFactory | None = None,
    *,
    base_url: str | None = None,
    api_key_env: str | None = None,
    supports_n: bool = False,
    batch_api: Literal["openai"] | None = None,
) -> None:
    """Make ``name:<model>`` usable in topologies.

    Either ``factory``, called as ``factory(model_name, temperature=..., max_tokens=...,
    timeout=...)`` for each agent, returning a LangChain chat model (moa retries and times out
    its calls: give the model no retries of its own); or ``base_url`` of an OpenAI-compatible
    service, reached like the built-in table's providers (``<NAME>_BASE_URL`` overrides it; the
    key is read from ``api_key_env`` when given, else none is sent). ``batch_api="openai"``
    says the service also has OpenAI's Batch API (files and ``/v1/batches``) at that base URL.
    Registering a name again replaces it; the built-in table's names cannot be replaced.
    """
    _check_provider_name(name)
    if (factory is None) == (base_url is None):
        raise MoAInputError("register_provider takes a factory or a base_url (one of them)")
    if batch_api not in (None, "openai"):
        raise MoAInputError(f"batch_api is 'openai' or None, not {batch_api!r}")
    if batch_api is not None and factory is not None:
        raise MoAInputError("batch_api goes with a base_url: a factory's service is not known")
    if factory is not None and not callable(factory):
        raise MoAInputError(f"the factory for provider {name!r} is not callable")
    with _lock:
        _factories.pop(name, None)
        PROVIDERS.pop(name, None)
        if factory is not None:
            _factories[name] = factory
        else:
            PROVIDERS[name] = ProviderSpec(
                name,
                base_url,
                key_required=api_key_env is not None,
                default_key=None if api_key_env else "EMPTY",
                supports_n=supports_n,
                api_key_env=api_key_env,
                batch_api=batch_api,
            )


def register_model(name: str, model: BaseChatModel) -> None:
    """Make a ready-made LangChain chat model usable in topologies as ``model: <name>``.

    ``name`` looks like any other model name (``"mine:reviewer"``) and wins over every
    provider for that exact name. The model is used as it is: its own settings (temperature,
    length, key) apply, not the agent's; moa retries and times out its calls.
    """
    provider, sep, rest = name.partition(":") if isinstance(name, str) else ("", "", "")
    if not sep or not rest or not _PROVIDER_RE.match(provider) or not name.isprintable():
        raise MoAInputError(f'a registered model is named "provider:model"; got {name!r}')
    if not hasattr(model, "ainvoke") or not hasattr(model, "agenerate"):
        raise MoAInputError(f"the model registered as {name!r} is not a LangChain chat model")
    with _lock:
        _models[name] = model


def unregister(name: str) -> None:
    """Forget a registered model (by its full name) or provider; unknown names are ignored."""
    with _lock:
        _models.pop(name, None)
        _factories.pop(name, None)
        if name not in BUILTIN_PROVIDERS:
            PROVIDERS.pop(name, None)


def registered_model(model: str) -> BaseChatModel | None:
    """The chat model registered under exactly ``model``, if any."""
    return _models.get(model)


def registered_models() -> list[BaseChatModel]:
    with _lock:
        return list(_models.values())


def factory_of(provider: str) -> _ChatModelFactory | None:
    return _factories.get(provider)


def langchain_provider(provider: str) -> LangChainProvider | None:
    return LANGCHAIN_PROVIDERS.get(provider)


def provider_kind(model: str) -> _ProviderKind | None:
    """Which kind of provider serves ``model`` (``"provider:model"``), or None if none does."""
    if model in _models:
        return "registered_model"
    provider = model.split(":", 1)[0]
    spec = PROVIDERS.get(provider)
    if spec is not None:
        return "openai" if spec.openai_compatible else "local"
    if provider in _factories:
        return "factory"
    if provider in LANGCHAIN_PROVIDERS:
        return "langchain"
    return None


def known_providers() -> str:
    """The providers a model name may start with, in words, for an error message."""
    table = ", ".join(sorted(PROVIDERS))
    others = sorted(set(LANGCHAIN_PROVIDERS) - set(PROVIDERS))
    text = (
        f"the OpenAI-compatible table and the embedded model ({table}); LangChain "
        f"init_chat_model providers, with langchain and the integration installed "
        f"({', '.join(others)})"
    )
    if registered := sorted(set(_factories) | {m.split(":", 1)[0] for m in _models}):
        text += f"; registered ({', '.join(registered)})"
    return text


def batch_shape(model: str) -> Literal["openai", "anthropic"] | None:
    """The shape of the Batch API serving ``model``'s provider (``"provider:model"``): OpenAI's
    for table providers that have one (``batch_api``), Anthropic's for ``anthropic``; None when
    its provider has none (a registered model is used as it is, so never through a batch)."""
    kind = provider_kind(model)
    provider = model.split(":", 1)[0]
    if kind == "openai":
        return PROVIDERS[provider].batch_api
    if kind == "langchain" and provider == "anthropic":
        return "anthropic"
    return None


def supports_n(agent: Agent) -> bool:
    """Whether the agent's provider returns ``n`` samples from one request (only the
    OpenAI-compatible table says so; every other provider gets one request per sample)."""
    if agent.model in _models:
        return False
    spec = PROVIDERS.get(agent.provider)
    return spec is not None and spec.supports_n


def requests_for(agent: Agent) -> int:
    """HTTP requests one call of ``agent`` sends for its ``n`` samples: one where the provider
    accepts ``n``, else one per sample."""
    return 1 if agent.n == 1 or supports_n(agent) else agent.n
