"""Thin async clients for providers' Batch APIs, one per API shape, for the batch engine.

A Batch API takes a file of requests, answers them within a day at about half the price, and
hands back a file of results. Two shapes are covered:

* OpenAI's (``openai``, ``together``, and providers registered with ``batch_api="openai"``):
  a JSONL file uploaded to ``/v1/files``, a batch made of it at ``/v1/batches`` (one model per
  batch), results in an output file and an error file;
* Anthropic's Message Batches (``anthropic``): the requests in the create call's JSON body
  (several models may share a batch), results as a JSONL download.

:class:`BatchAPI` is the same small surface over both: :meth:`~BatchAPI.line` writes one request
of a batch file, :meth:`~BatchAPI.submit` sends a file, :meth:`~BatchAPI.status` polls,
:meth:`~BatchAPI.results` streams the answers line by line, :meth:`~BatchAPI.cancel`, and
:meth:`~BatchAPI.find` recovers a batch whose id was lost (sent, but the process stopped before
recording it). :class:`BatchClients` owns the adapters of a run (one per provider, base URL and
key) and closes them; :func:`batch_api_for` makes a single one.

Base URLs and keys are resolved as the online path resolves them (the provider table's
``<PROVIDER>_BASE_URL`` / key variable; ``ANTHROPIC_API_URL`` or ``ANTHROPIC_BASE_URL`` and
``ANTHROPIC_API_KEY`` as langchain-anthropic reads them). The openai and anthropic SDKs are
imported when a client is made, not with this module. Keys never appear in messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Self

from langgraph_moa.errors import MissingCredentialsError, MissingExtraError, MoAError, MoAInputError
from langgraph_moa.extras import importable
from langgraph_moa.spec.providers import LANGCHAIN_PROVIDERS, PROVIDERS, batch_shape

if TYPE_CHECKING:
    import anthropic
    import openai

MB = 1_000_000  # the providers' "MB"; the decimal one is the safer reading
OPENAI_ENDPOINT: Final = "/v1/chat/completions"
TAG_KEY = "moa_batch"  # the metadata key an OpenAI-shape batch carries its tag under
_TIMEOUT_S = 600.0  # an upload of a few hundred MB takes a while
_RETRIES = 3
_MAX_ERROR_CHARS = 300
_ANTHROPIC_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_CHUNK = 1 << 16


@dataclass(frozen=True)
class BatchLimits:
    """What one batch may hold: requests, bytes of its file (OpenAI) or create body
    (Anthropic), whether all its requests must name one model, the longest ``custom_id``."""

    max_requests: int
    max_bytes: int
    one_model_per_batch: bool
    custom_id_max: int


OPENAI_LIMITS = BatchLimits(50_000, 200 * MB, True, 64)
TOGETHER_LIMITS = BatchLimits(50_000, 100 * MB, True, 64)
# A registered OpenAI-compatible service: the stricter of the two above.
REGISTERED_LIMITS = TOGETHER_LIMITS
# Anthropic's 256 MB bound the create call's body: the file's lines plus 14 bytes of wrapping.
ANTHROPIC_LIMITS = BatchLimits(100_000, 256 * MB - 64, False, 64)


@dataclass(frozen=True)
class BatchStatus:
    """Where a batch is. ``state`` is ``pending`` until the provider says it ended; then
    ``outcome`` says how (``completed``, ``expired``, ``cancelled``, ``failed``: the file was
    refused, see ``errors``). ``done`` counts the requests answered (successes and errors;
    Anthropic reports them only once the batch ended), ``failed`` the errors among them;
    ``created_at`` is the provider's clock (Unix seconds)."""

    id: str
    state: Literal["pending", "ended"]
    outcome: Literal["completed", "expired", "cancelled", "failed"] | None
    total: int
    done: int
    failed: int
    created_at: float
    errors: list[str]


@dataclass(frozen=True)
class BatchResult:
    """One request's result. ``body`` is what the online request would have returned (OpenAI:
    the ``chat.completion``; Anthropic: the ``message``), or None with ``error`` (one line:
    the HTTP status and the provider's message). ``retryable``: sending it again may succeed (a
    429, a 5xx, or it never ran). ``unfinished``: the batch expired or was cancelled before it
    ran; it may be resubmitted as it is."""

    custom_id: str
    body: dict[str, Any] | None
    error: str | None
    retryable: bool
    unfinished: bool


class BatchAPIError(MoAError, RuntimeError):
    """A call to a Batch API failed (upload, create, poll, download, cancel): one line naming
    the provider, what was being done and why. ``status`` is the HTTP status, if one came;
    ``transient`` says whether trying again later may work (429, 5xx, timeouts, connection
    failures)."""

    def __init__(self, message: str, *, status: int | None = None, transient: bool = False):
        super().__init__(message)
        self.status = status
        self.transient = transient


def _one_line(text: str) -> str:
    """A provider's words made safe to keep: printable, one line, keys masked, bounded."""
    from langgraph_moa.llm.chat_models import redact

    text = "".join(c if c.isprintable() else " " for c in text)
    text = redact(" ".join(text.split()))
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"


def _transient_status(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def _message_of(body: Any) -> str:
    """The message of an error body (``{"error": {"message": ...}}`` in both shapes)."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return json.dumps(body)[:200] if body is not None else "no detail"


def _failure(provider: str, doing: str, err: Exception) -> BatchAPIError:
    """A :class:`BatchAPIError` for an SDK exception (openai's and anthropic's have the same
    classes under their own names: a status error with ``status_code`` and ``body``, a
    timeout, a connection error)."""
    status = getattr(err, "status_code", None)
    names = [cls.__name__ for cls in type(err).__mro__]
    if isinstance(status, int):
        why = f"HTTP {status}: {_message_of(getattr(err, 'body', None) or str(err))}"
        transient = _transient_status(status)
    elif any("Timeout" in name for name in names):
        why, transient = "timed out", True
    elif any("Connection" in name for name in names):
        why = f"connection failed: {err.__cause__ or err}"
        transient = True
    else:
        why, transient = f"{type(err).__name__}: {err}", False
    message = _one_line(f"{provider} Batch API: {doing} failed: {why}")
    return BatchAPIError(
        message, status=status if isinstance(status, int) else None, transient=transient
    )


class BatchAPI(ABC):
    """One provider's Batch API (see the module docstring). ``name`` is its shape,
    ``provider`` the model prefix it serves, ``limits`` what one batch may hold."""

    name: Literal["openai", "anthropic"]

    def __init__(self, provider: str, limits: BatchLimits) -> None:
        self.provider = provider
        self.limits = limits

    def check_custom_id(self, custom_id: str) -> None:
        """Raise MoAInputError unless ``custom_id`` may name a request of this API."""
        if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= self.limits.custom_id_max:
            raise MoAInputError(
                f"a {self.provider} batch custom_id is 1 to {self.limits.custom_id_max} "
                f"characters; got {custom_id!r}"
            )

    def line(self, custom_id: str, body: dict[str, Any]) -> bytes:
        """One request of a batch file, newline-terminated: ``body`` is the JSON body the
        online request would send."""
        self.check_custom_id(custom_id)
        entry = self.entry(custom_id, body)
        return (json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n").encode()

    @abstractmethod
    def entry(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """A batch file's line, as an object."""

    @abstractmethod
    async def submit(self, path: Path, *, model: str, tag: str) -> str:
        """Send the batch file at ``path`` (lines made by :meth:`line`); its batch id.
        ``tag`` is recorded with the batch where the API keeps metadata, so :meth:`find` can
        recover it; ``model`` is the model its requests name (informational)."""

    @abstractmethod
    async def find(self, tag: str, *, since: float, requests: int) -> str | None:
        """The id of a batch submitted with ``tag`` at or after ``since`` (Unix seconds, the
        provider's clock: allow for skew), holding ``requests`` requests; None if there is
        none."""

    @abstractmethod
    async def status(self, batch_id: str) -> BatchStatus: ...

    @abstractmethod
    def results(self, batch_id: str) -> AsyncIterator[BatchResult]:
        """The results of an ended batch, streamed line by line, in no particular order
        (nothing for a batch that has not ended)."""

    @abstractmethod
    async def cancel(self, batch_id: str) -> None:
        """Ask the provider to cancel (answered requests keep their results); a batch that
        has already ended is left as it is."""

    @abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class OpenAIBatchAPI(BatchAPI):
    """OpenAI's Batch API (files + ``/v1/batches``), over ``openai.AsyncOpenAI``."""

    name = "openai"

    def __init__(self, provider: str, limits: BatchLimits, *, base_url: str | None, key: str):
        import openai

        super().__init__(provider, limits)
        self.client: openai.AsyncOpenAI = openai.AsyncOpenAI(
            api_key=key, base_url=base_url, max_retries=_RETRIES, timeout=_TIMEOUT_S
        )

    def _error(self, doing: str, err: Exception) -> BatchAPIError:
        return _failure(self.provider, doing, err)

    def entry(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"custom_id": custom_id, "method": "POST", "url": OPENAI_ENDPOINT, "body": body}

    async def submit(self, path: Path, *, model: str, tag: str) -> str:
        """Upload the file (streamed from disk in 64 KiB reads, never whole in memory) and
        make a batch of it, tagged in its metadata (``{"moa_batch": tag}``)."""
        import openai

        if not 1 <= len(tag) <= 512:
            raise MoAInputError(f"a batch tag is 1 to 512 characters; got {len(tag)}")
        try:
            with path.open("rb") as handle:
                uploaded = await self.client.files.create(
                    file=(path.name, handle, "application/jsonl"), purpose="batch"
                )
        except openai.OpenAIError as err:
            raise self._error(f"uploading {path.name}", err) from None
        metadata = {TAG_KEY: tag, "moa_model": model[:512]}
        try:
            batch = await self.client.batches.create(
                input_file_id=uploaded.id,
                endpoint=OPENAI_ENDPOINT,
                completion_window="24h",
                metadata=metadata,
            )
        except openai.OpenAIError as err:
            with contextlib.suppress(openai.OpenAIError):  # the upload is of no use now
                await self.client.files.delete(uploaded.id)
            raise self._error("creating the batch", err) from None
        return batch.id

    async def find(self, tag: str, *, since: float, requests: int) -> str | None:
        """The newest batch tagged ``tag`` among those created since ``since`` (the tag says
        which; ``requests`` is not needed here: a batch still validating counts none yet)."""
        import openai

        floor = math.floor(since)  # OpenAI's times are whole seconds
        try:
            async for batch in self.client.batches.list(limit=100):
                if batch.created_at < floor:
                    break
                if (batch.metadata or {}).get(TAG_KEY) == tag:
                    return batch.id
        except openai.OpenAIError as err:
            raise self._error("listing batches", err) from None
        return None

    async def status(self, batch_id: str) -> BatchStatus:
        import openai

        try:
            batch = await self.client.batches.retrieve(batch_id)
        except openai.OpenAIError as err:
            raise self._error(f"reading batch {batch_id}", err) from None
        ended = batch.status in ("completed", "expired", "cancelled", "failed")
        counts = batch.request_counts
        errors = [
            f"{e.code or 'error'}: {e.message or ''}" + (f" (line {e.line})" if e.line else "")
            for e in ((batch.errors.data or []) if batch.errors else [])
        ]
        return BatchStatus(
            batch.id,
            "ended" if ended else "pending",
            batch.status if ended else None,  # type: ignore[arg-type]  # narrowed by `ended`
            counts.total if counts else 0,
            (counts.completed + counts.failed) if counts else 0,
            counts.failed if counts else 0,
            float(batch.created_at),
            [_one_line(e) for e in errors],
        )

    async def results(self, batch_id: str) -> AsyncIterator[BatchResult]:
        """The output file's lines, then the error file's (failed requests; expired and
        cancelled ones, ``unfinished``)."""
        import openai

        try:
            batch = await self.client.batches.retrieve(batch_id)
        except openai.OpenAIError as err:
            raise self._error(f"reading batch {batch_id}", err) from None
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            try:
                async with self.client.files.with_streaming_response.content(file_id) as got:
                    async for text in got.iter_lines():
                        if text.strip():
                            yield self.parse(json.loads(text))
            except openai.OpenAIError as err:
                raise self._error(f"downloading results file {file_id}", err) from None

    @staticmethod
    def parse(item: dict[str, Any]) -> BatchResult:
        """One line of an output or error file."""
        custom_id = str(item.get("custom_id"))
        response, error = item.get("response"), item.get("error")
        if isinstance(response, dict):
            status = int(response.get("status_code") or 0)
            body = response.get("body")
            if 200 <= status < 300 and isinstance(body, dict):
                return BatchResult(custom_id, body, None, False, False)
            why = _one_line(f"HTTP {status}: {_message_of(body)}")
            return BatchResult(custom_id, None, why, _transient_status(status), False)
        error = error if isinstance(error, dict) else {}
        code = str(error.get("code") or "error")
        why = _one_line(f"{code}: {error.get('message') or 'no detail'}")
        unfinished = code in ("batch_expired", "batch_cancelled")
        return BatchResult(custom_id, None, why, unfinished, unfinished)

    async def cancel(self, batch_id: str) -> None:
        import openai

        if (await self.status(batch_id)).state == "ended":
            return
        try:
            await self.client.batches.cancel(batch_id)
        except openai.APIStatusError as err:
            if err.status_code in (400, 409) and (await self.status(batch_id)).state == "ended":
                return
            raise self._error(f"cancelling batch {batch_id}", err) from None
        except openai.OpenAIError as err:
            raise self._error(f"cancelling batch {batch_id}", err) from None

    async def aclose(self) -> None:
        await self.client.close()


class _RequestsBody:
    """The body of a Message Batches create call, read from a batch file as it is sent:
    ``{"requests":[`` + the file's lines joined by commas + ``]}``. It can be iterated again
    (a retried request reads the file again)."""

    HEAD, TAIL = b'{"requests":[', b"]}"

    def __init__(self, path: Path) -> None:
        self.path = path
        size = path.stat().st_size
        with path.open("rb") as handle:
            handle.seek(max(size - 1, 0))
            if size == 0 or handle.read(1) != b"\n":
                raise MoAInputError(f"{path.name} is not a batch file (no newline-ended lines)")
        # each line's newline becomes a comma, the last one is dropped
        self.length = len(self.HEAD) + size - 1 + len(self.TAIL)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.HEAD
        last, held = b"\n", b""
        with self.path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                if b"\n\n" in last + chunk:
                    raise MoAInputError(f"{self.path.name} has an empty line")
                last = chunk[-1:]
                yield (held + chunk[:-1]).replace(b"\n", b",")
                held = chunk[-1:]
        yield self.TAIL


_ANTHROPIC_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class AnthropicBatchAPI(BatchAPI):
    """Anthropic's Message Batches, over ``anthropic.AsyncAnthropic``."""

    name = "anthropic"

    def __init__(self, provider: str, limits: BatchLimits, *, base_url: str, key: str):
        import anthropic

        super().__init__(provider, limits)
        self.client: anthropic.AsyncAnthropic = anthropic.AsyncAnthropic(
            api_key=key, base_url=base_url, max_retries=_RETRIES, timeout=_TIMEOUT_S
        )

    def _error(self, doing: str, err: Exception) -> BatchAPIError:
        return _failure(self.provider, doing, err)

    def check_custom_id(self, custom_id: str) -> None:
        if not isinstance(custom_id, str) or not _ANTHROPIC_CUSTOM_ID.match(custom_id):
            raise MoAInputError(
                "an anthropic batch custom_id is 1 to 64 letters, digits, '_' or '-'; "
                f"got {custom_id!r}"
            )

    def entry(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"custom_id": custom_id, "params": body}

    async def submit(self, path: Path, *, model: str, tag: str) -> str:
        """Create the batch, its JSON body streamed from the file's lines (with a
        Content-Length: never whole in memory). Anthropic keeps no metadata: ``tag`` is not
        sent (:meth:`find` goes by time and size)."""
        import anthropic
        from anthropic.types.messages import MessageBatch

        body = _RequestsBody(path)
        headers = {"Content-Type": "application/json", "Content-Length": str(body.length)}
        try:
            batch = await self.client.post(
                "/v1/messages/batches",
                cast_to=MessageBatch,
                content=body,
                options={"headers": headers},
            )
        except anthropic.AnthropicError as err:
            raise self._error("creating the batch", err) from None
        return batch.id

    async def find(self, tag: str, *, since: float, requests: int) -> str | None:
        """The newest batch created at or after ``since`` with ``requests`` requests (there is
        no metadata to carry ``tag``)."""
        import anthropic

        try:
            async for batch in self.client.messages.batches.list(limit=100):
                if batch.created_at.timestamp() < since:
                    break
                counts = batch.request_counts
                total = (
                    counts.processing
                    + counts.succeeded
                    + counts.errored
                    + counts.canceled
                    + counts.expired
                )
                if total == requests:
                    return batch.id
        except anthropic.AnthropicError as err:
            raise self._error("listing batches", err) from None
        return None

    async def status(self, batch_id: str) -> BatchStatus:
        import anthropic

        try:
            batch = await self.client.messages.batches.retrieve(batch_id)
        except anthropic.AnthropicError as err:
            raise self._error(f"reading batch {batch_id}", err) from None
        c = batch.request_counts
        ended = batch.processing_status == "ended"
        outcome: Literal["completed", "expired", "cancelled"] | None = None
        if ended:
            outcome = (
                "cancelled"
                if batch.cancel_initiated_at
                else "expired"
                if c.expired
                else "completed"
            )
        return BatchStatus(
            batch.id,
            "ended" if ended else "pending",
            outcome,
            c.processing + c.succeeded + c.errored + c.canceled + c.expired,
            c.succeeded + c.errored,
            c.errored,
            batch.created_at.timestamp(),
            [],
        )

    async def results(self, batch_id: str) -> AsyncIterator[BatchResult]:
        import anthropic

        try:
            batch = await self.client.messages.batches.retrieve(batch_id)
            if batch.processing_status != "ended":
                return
            streamed = self.client.messages.batches.with_streaming_response.results(batch_id)
            async with streamed as got:
                async for text in got.iter_lines():
                    if text.strip():
                        yield self.parse(json.loads(text))
        except anthropic.AnthropicError as err:
            raise self._error(f"downloading the results of batch {batch_id}", err) from None

    @staticmethod
    def parse(item: dict[str, Any]) -> BatchResult:
        """One line of the results."""
        custom_id = str(item.get("custom_id"))
        result = item.get("result")
        result = result if isinstance(result, dict) else {}
        kind = result.get("type")
        if kind == "succeeded" and isinstance(result.get("message"), dict):
            return BatchResult(custom_id, result["message"], None, False, False)
        if kind in ("canceled", "expired"):
            why = "the batch was cancelled" if kind == "canceled" else "the batch expired"
            return BatchResult(custom_id, None, f"{kind}: {why} before it ran", True, True)
        error = result.get("error")
        inner = error.get("error", error) if isinstance(error, dict) else {}
        inner = inner if isinstance(inner, dict) else {}
        kind = str(inner.get("type") or kind or "error")
        status = _ANTHROPIC_ERROR_STATUS.get(kind)
        head = f"HTTP {status}" if status else kind
        why = _one_line(f"{head}: {inner.get('message') or kind}")
        transient = status is not None and _transient_status(status)
        return BatchResult(custom_id, None, why, transient, False)

    async def cancel(self, batch_id: str) -> None:
        import anthropic

        if (await self.status(batch_id)).state == "ended":
            return
        try:
            await self.client.messages.batches.cancel(batch_id)
        except anthropic.APIStatusError as err:
            if err.status_code in (400, 409) and (await self.status(batch_id)).state == "ended":
                return
            raise self._error(f"cancelling batch {batch_id}", err) from None
        except anthropic.AnthropicError as err:
            raise self._error(f"cancelling batch {batch_id}", err) from None

    async def aclose(self) -> None:
        await self.client.close()


@dataclass(frozen=True)
class _Target:
    """Where a model's batches go."""

    shape: Literal["openai", "anthropic"]
    provider: str
    base_url: str | None
    key: str
    limits: BatchLimits

    @property
    def cache_key(self) -> tuple[str, str, str]:
        digest = hashlib.sha256(self.key.encode()).hexdigest()[:16]
        return (self.provider, self.base_url or "", digest)


def _target(model: str) -> _Target | None:
    """The Batch API serving ``model`` (``"provider:model"``), or None if its provider has none.
    Raises MissingCredentialsError when it has one but its key is not set."""
    shape = batch_shape(model)
    provider = model.split(":", 1)[0]
    if shape == "openai":
        spec = PROVIDERS[provider]
        key = spec.resolve_key()
        if not key:
            if spec.key_required:
                raise MissingCredentialsError(f"{spec.key_env} is not set: {model} needs it")
            key = "EMPTY"
        limits = {"openai": OPENAI_LIMITS, "together": TOGETHER_LIMITS}.get(
            provider, REGISTERED_LIMITS
        )
        return _Target("openai", provider, spec.resolve_base_url(), key, limits)
    if shape == "anthropic":
        if not importable("anthropic"):
            package = LANGCHAIN_PROVIDERS["anthropic"].package
            raise MissingExtraError(f"anthropic's Batch API needs the SDK: pip install {package}")
        key = os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise MissingCredentialsError(f"ANTHROPIC_API_KEY is not set: {model} needs it")
        base_url = (
            os.environ.get("ANTHROPIC_API_URL")
            or os.environ.get("ANTHROPIC_BASE_URL")
            or "https://api.anthropic.com"
        )
        return _Target("anthropic", provider, base_url, key, ANTHROPIC_LIMITS)
    return None


def _make(target: _Target) -> BatchAPI:
    if target.shape == "anthropic":
        assert target.base_url is not None
        return AnthropicBatchAPI(
            target.provider, target.limits, base_url=target.base_url, key=target.key
        )
    return OpenAIBatchAPI(target.provider, target.limits, base_url=target.base_url, key=target.key)


def batch_api_for(model: str) -> BatchAPI | None:
    """A new adapter for the Batch API of ``model``'s provider (the caller closes it), or None
    when the provider has none (registered models, factory providers, most of the table)."""
    target = _target(model)
    return None if target is None else _make(target)


class BatchClients:
    """The Batch API adapters of a run, one per provider, base URL and key (the key kept as a
    digest in the cache key), all closed on exit::

        async with BatchClients() as clients:
            api = clients.get("openai:gpt-4o-mini")
    """

    def __init__(self) -> None:
        self._apis: dict[tuple[str, str, str], BatchAPI] = {}

    def get(self, model: str) -> BatchAPI | None:
        """The adapter for ``model``'s provider (made on first use), or None (see
        :func:`batch_api_for`)."""
        target = _target(model)
        if target is None:
            return None
        api = self._apis.get(target.cache_key)
        if api is None:
            api = self._apis[target.cache_key] = _make(target)
        return api

    async def aclose(self) -> None:
        apis, self._apis = list(self._apis.values()), {}
        for api in apis:
            await api.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
