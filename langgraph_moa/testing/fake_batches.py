"""The Batch APIs of the fake servers, so a batch engine can be tested through real clients.

Two shapes, each served by the fake of its provider:

* OpenAI's (also Together's), on :class:`~langgraph_moa.testing.fake_openai.FakeOpenAI`: files
  (``POST /v1/files`` multipart, ``GET /v1/files/{id}`` and ``/content``) and batches
  (``POST /v1/batches``, ``GET /v1/batches/{id}``, ``GET /v1/batches`` newest first with
  ``after``/``limit``, ``POST /v1/batches/{id}/cancel``). Results come as an output file and an
  error file of JSONL lines, as OpenAI writes them. A file that breaks a rule (too many requests,
  too many bytes, two models, a repeated ``custom_id``, a malformed line) is accepted at create
  and the batch then turns ``failed`` with its ``errors``, as OpenAI's validation does.
* Anthropic's Message Batches, on :class:`~langgraph_moa.testing.fake_anthropic.FakeAnthropic`:
  ``POST /v1/messages/batches``, ``GET .../{id}``, ``GET .../batches`` (newest first, ``after_id``
  / ``before_id`` / ``limit``), ``POST .../{id}/cancel`` and ``GET .../{id}/results`` (JSONL).
  A create that breaks a rule is refused with a 400 (a 413 past the byte limit).

Each request of a batch is answered by its server exactly as the same live request would be
(the model's reply function, ``n`` choices, usage, its next queued fault: an HTTP status becomes
that request's error result), and is logged among the server's requests with ``batch`` set.

A server's batches are in ``server.batches`` (a :class:`BatchBook`): ``behavior`` (a
:class:`BatchBehavior`: turnaround, expiry, hold, cancel time, limits) applies to batches
created after it is set; ``created()`` lists the batches made (models, request count, status),
``creates`` counts create calls (refused ones too), ``release()`` lets held batches finish.

Nothing runs in the background: a batch is brought up to date whenever it is looked at (a status
poll, a list, a results or file download, ``created()``). Its requests are answered, in their
order, the first time it is looked at after its turnaround, so results are deterministic for a
given request order.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

BatchShape = Literal["openai", "anthropic"]

MB = 1024 * 1024
OPENAI_ENDPOINT = "/v1/chat/completions"
ANTHROPIC_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_MAX_ERRORS = 100  # validation errors kept on a failed OpenAI batch


class BatchServer(Protocol):
    """What a fake server gives its batches."""

    @property
    def base_url(self) -> str: ...

    def batch_answer(
        self, body: dict[str, Any], headers: dict[str, str], batch: str
    ) -> tuple[int, dict[str, Any]]: ...

    def error_body(self, status: int, message: str) -> dict[str, Any]: ...


@dataclass
class BatchBehavior:
    """How a server treats the batches created while it is set.

    ``turnaround_s``: time from create to the end (the requests are answered then).
    ``expire_last`` / ``expire_fraction``: the batch ends ``expired``, the last K requests (or
    that fraction of them, rounded up; the larger of the two) unanswered (OpenAI: error-file
    lines with code ``batch_expired``; Anthropic: ``expired`` results).
    ``hold``: at its turnaround the batch answers its first ``hold_done`` requests and then
    waits, unfinished, until :meth:`BatchBook.release` or a cancel (a straggler).
    ``cancel_s``: how long a cancel stays ``cancelling`` before the batch ends ``cancelled``
    (answered requests keep their results; the others are canceled).
    The limits: ``max_requests`` per batch, ``max_bytes`` per batch file (OpenAI) or create body
    (Anthropic), ``one_model`` (every request of a batch names the same model).
    """

    turnaround_s: float = 0.2
    expire_last: int | None = None
    expire_fraction: float | None = None
    hold: bool = False
    hold_done: int = 0
    cancel_s: float = 0.0
    max_requests: int = 50_000
    max_bytes: int = 200 * MB
    one_model: bool = True

    @classmethod
    def for_shape(cls, shape: BatchShape) -> BatchBehavior:
        """The provider's own limits: OpenAI 50,000 requests, 200 MB, one model per batch;
        Anthropic 100,000 requests, 256 MB, any models."""
        if shape == "anthropic":
            return cls(max_requests=100_000, max_bytes=256 * MB, one_model=False)
        return cls()

    @property
    def expires(self) -> bool:
        return self.expire_last is not None or self.expire_fraction is not None

    def unfinished(self, total: int) -> int:
        """How many requests (the last ones) an expiring batch of ``total`` leaves undone."""
        if not self.expires:
            return 0
        last = self.expire_last or 0
        part = math.ceil((self.expire_fraction or 0.0) * total)
        return min(max(last, part), total)


@dataclass(frozen=True)
class BatchInfo:
    """One batch as a test sees it: ``status`` in its shape's words (OpenAI's ``status``;
    Anthropic's ``processing_status``), ``outcome`` once ended (completed, expired, cancelled,
    failed), ``answered``: requests answered so far (successes and errors); ``headers``: those
    of the create call."""

    id: str
    models: tuple[str, ...]
    requests: int
    status: str
    outcome: str | None
    answered: int
    metadata: dict[str, str]
    headers: dict[str, str]


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    path: Path

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


@dataclass
class _Result:
    kind: Literal["succeeded", "errored", "canceled", "expired"]
    status: int = 0
    body: dict[str, Any] | None = None


@dataclass
class _Batch:
    id: str
    requests: list[tuple[str, dict[str, Any]]]  # (custom_id, request body), in file order
    headers: dict[str, str]
    behavior: BatchBehavior  # a copy, as it was at create
    metadata: dict[str, str] = field(default_factory=dict)
    endpoint: str = OPENAI_ENDPOINT
    input_file_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)  # validation failures
    created_at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    status: Literal["validating", "in_progress", "cancelling", "ended"] = "validating"
    outcome: Literal["completed", "expired", "cancelled", "failed"] | None = None
    results: list[_Result] = field(default_factory=list)  # in request order, as answered
    held: bool = False
    in_progress_at: float | None = None
    cancelled_at: float | None = None  # when the cancel was asked for
    cancel_due: float | None = None  # monotonic
    ended_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(str(body.get("model", "")) for _, body in self.requests))

    def count(self, kind: str) -> int:
        return sum(1 for r in self.results if r.kind == kind)


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def _openai_status(batch: _Batch) -> str:
    return batch.outcome if batch.status == "ended" and batch.outcome else batch.status


class BatchBook:
    """The batches and files of one fake server, and how new batches are treated."""

    def __init__(self, server: BatchServer, shape: BatchShape) -> None:
        self.server = server
        self.shape: BatchShape = shape
        self.behavior = BatchBehavior.for_shape(shape)
        self.creates = 0  # create calls, refused ones included
        self._batches: dict[str, _Batch] = {}  # in creation order
        self._files: dict[str, _File] = {}
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._dir: Path | None = None

    # --- for tests ----------------------------------------------------------------------
    def created(self) -> list[BatchInfo]:
        """Every batch made since the last reset, oldest first, brought up to date."""
        with self._lock:
            infos = []
            for batch in self._batches.values():
                self.advance(batch)
                status = _openai_status(batch) if self.shape == "openai" else self._an_state(batch)
                infos.append(
                    BatchInfo(
                        batch.id,
                        batch.models,
                        len(batch.requests),
                        status,
                        batch.outcome,
                        batch.count("succeeded") + batch.count("errored"),
                        dict(batch.metadata),
                        dict(batch.headers),
                    )
                )
            return infos

    def release(self, batch_id: str | None = None) -> None:
        """Let a held batch (every held batch, without an id) finish at its next look."""
        with self._lock:
            for batch in self._batches.values():
                if batch_id is None or batch.id == batch_id:
                    batch.held = False

    def reset(self) -> None:
        """Forget every batch and file; the shape's default behaviour again."""
        with self._lock:
            self._batches.clear()
            for file in self._files.values():
                file.path.unlink(missing_ok=True)
            self._files.clear()
            self.behavior = BatchBehavior.for_shape(self.shape)
            self.creates = 0

    def close(self) -> None:
        """Delete the files kept on disk."""
        with self._lock:
            self._files.clear()
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    # --- the life of a batch ------------------------------------------------------------
    def counted(self) -> None:
        """Count a create call."""
        with self._lock:
            self.creates += 1

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}fake"

    def add(self, batch: _Batch) -> None:
        with self._lock:
            batch.held = batch.behavior.hold
            self._batches[batch.id] = batch

    def find(self, batch_id: str) -> _Batch | None:
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is not None:
                self.advance(batch)
            return batch

    def newest_first(self) -> list[_Batch]:
        with self._lock:
            batches = list(reversed(self._batches.values()))
            for batch in batches:
                self.advance(batch)
            return batches

    def advance(self, batch: _Batch) -> None:
        """Bring a batch up to now: validated, answered at its turnaround, ended."""
        with self._lock:
            if batch.status == "ended":
                return
            if batch.status == "validating":
                if batch.errors:
                    self._end(batch, "failed")
                    return
                batch.status, batch.in_progress_at = "in_progress", time.time()
            now = time.monotonic()
            if batch.cancel_due is not None:
                if now >= batch.cancel_due:
                    self._end(batch, "cancelled")
                return
            if now < batch.started + batch.behavior.turnaround_s:
                return
            total = len(batch.requests)
            if batch.held:
                self._answer(batch, min(batch.behavior.hold_done, total))
                return
            self._answer(batch, total - batch.behavior.unfinished(total))
            self._end(batch, "expired" if batch.behavior.expires else "completed")

    def cancel(self, batch: _Batch) -> str | None:
        """Start cancelling; why it cannot be, if it cannot."""
        with self._lock:
            self.advance(batch)
            if batch.status == "ended":
                return f"Cannot cancel a batch that has ended ({batch.outcome})."
            if batch.status != "cancelling":
                batch.status = "cancelling"
                batch.cancelled_at = time.time()
                batch.cancel_due = time.monotonic() + batch.behavior.cancel_s
            return None

    def _answer(self, batch: _Batch, upto: int) -> None:
        for custom_id, body in batch.requests[len(batch.results) : upto]:
            del custom_id
            status, answer = self.server.batch_answer(body, batch.headers, batch.id)
            kind: Literal["succeeded", "errored"] = "succeeded" if status < 400 else "errored"
            batch.results.append(_Result(kind, status, answer))

    def _end(
        self, batch: _Batch, outcome: Literal["completed", "expired", "cancelled", "failed"]
    ) -> None:
        if outcome != "failed":
            rest: Literal["canceled", "expired"] = (
                "canceled" if outcome == "cancelled" else "expired"
            )
            batch.results += [_Result(rest) for _ in batch.requests[len(batch.results) :]]
        batch.status, batch.outcome, batch.ended_at = "ended", outcome, time.time()
        if self.shape == "openai" and outcome != "failed":
            self._write_result_files(batch)

    # --- files --------------------------------------------------------------------------
    def folder(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="moa-fake-batches-"))
        return self._dir

    def new_file(self, filename: str, purpose: str) -> _File:
        with self._lock:
            ident = self.new_id("file-")
            file = _File(ident, filename, purpose, 0, int(time.time()), self.folder() / ident)
            return file

    def keep_file(self, file: _File) -> None:
        with self._lock:
            file.bytes = file.path.stat().st_size
            self._files[file.id] = file

    def drop_file(self, file_id: str) -> _File | None:
        with self._lock:
            file = self._files.pop(file_id, None)
            if file is not None:
                file.path.unlink(missing_ok=True)
            return file

    def file(self, file_id: str) -> _File | None:
        with self._lock:
            return self._files.get(file_id)

    def _write_result_files(self, batch: _Batch) -> None:
        outputs: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for k, ((custom_id, _), result) in enumerate(
            zip(batch.requests, batch.results, strict=True)
        ):
            line: dict[str, Any] = {"id": f"batch_req_{batch.id}_{k}", "custom_id": custom_id}
            if result.kind in ("succeeded", "errored"):
                line["response"] = {
                    "status_code": result.status,
                    "request_id": f"req_{batch.id}_{k}",
                    "body": result.body,
                }
                line["error"] = None
                (outputs if result.kind == "succeeded" else errors).append(line)
            else:
                expired = result.kind == "expired"
                line["response"] = None
                line["error"] = {
                    "code": "batch_expired" if expired else "batch_cancelled",
                    "message": "This request could not be executed before the completion "
                    "window expired."
                    if expired
                    else "This request was not executed because the batch was cancelled.",
                }
                errors.append(line)
        for lines, attr, suffix in (
            (outputs, "output_file_id", "output"),
            (errors, "error_file_id", "error"),
        ):
            if not lines:
                continue
            file = self.new_file(f"{batch.id}_{suffix}.jsonl", "batch_output")
            with file.path.open("w", encoding="utf-8") as out:
                for line in lines:
                    out.write(json.dumps(line) + "\n")
            self.keep_file(file)
            setattr(batch, attr, file.id)

    # --- OpenAI's shape -----------------------------------------------------------------
    def openai_json(self, batch: _Batch) -> dict[str, Any]:
        ended = batch.ended_at
        counted = batch.status != "validating" and batch.outcome != "failed"
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": _openai_status(batch),
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": int(batch.created_at),
            "in_progress_at": _int(batch.in_progress_at),
            "expires_at": int(batch.created_at) + 24 * 3600,
            "finalizing_at": _int(ended) if batch.outcome == "completed" else None,
            "completed_at": _int(ended) if batch.outcome == "completed" else None,
            "failed_at": _int(ended) if batch.outcome == "failed" else None,
            "expired_at": _int(ended) if batch.outcome == "expired" else None,
            "cancelling_at": _int(batch.cancelled_at),
            "cancelled_at": _int(ended) if batch.outcome == "cancelled" else None,
            "request_counts": {
                "total": len(batch.requests) if counted else 0,
                "completed": batch.count("succeeded"),
                "failed": batch.count("errored"),
            },
            "metadata": batch.metadata or None,
            "model": batch.models[0] if len(batch.models) == 1 else None,
        }

    def openai_requests(
        self, file: _File
    ) -> tuple[list[tuple[str, dict[str, Any]]], list[dict[str, Any]]]:
        """The requests of an input file, and what breaks the rules (as OpenAI's validation
        reports it: code, message, param, line)."""
        limits = self.behavior
        requests: list[tuple[str, dict[str, Any]]] = []
        errors: list[dict[str, Any]] = []

        def error(
            code: str, message: str, line: int | None = None, param: str | None = None
        ) -> None:
            if len(errors) < _MAX_ERRORS:
                errors.append({"code": code, "message": message, "param": param, "line": line})

        if file.bytes > limits.max_bytes:
            error(
                "file_too_large",
                f"The input file has {file.bytes} bytes, more than the {limits.max_bytes} a "
                "batch may hold.",
            )
        seen: set[str] = set()
        first_model: str | None = None
        with file.path.open("rb") as lines:
            for number, raw in enumerate(lines, 1):
                if not raw.strip():
                    continue
                try:
                    item = json.loads(raw)
                except ValueError:
                    item = None
                if not isinstance(item, dict):
                    error("invalid_json_line", "This line is not parseable as valid JSON.", number)
                    continue
                custom_id, body = item.get("custom_id"), item.get("body")
                if not isinstance(custom_id, str) or not custom_id:
                    error(
                        "missing_required_parameter", "custom_id is required.", number, "custom_id"
                    )
                    continue
                if item.get("method") != "POST":
                    error("invalid_method", "The request's method must be POST.", number, "method")
                if item.get("url") != OPENAI_ENDPOINT:
                    error(
                        "invalid_url",
                        f"The request's url must be the batch's endpoint, {OPENAI_ENDPOINT}.",
                        number,
                        "url",
                    )
                if not isinstance(body, dict) or not isinstance(body.get("model"), str):
                    error(
                        "missing_required_parameter",
                        "body.model is required.",
                        number,
                        "body.model",
                    )
                    continue
                if custom_id in seen:
                    error(
                        "duplicate_custom_id",
                        "The custom_id for this request is a duplicate of another request. The "
                        "custom_id parameter must be unique for each request in a batch.",
                        number,
                        "custom_id",
                    )
                seen.add(custom_id)
                model = body["model"]
                if limits.one_model and first_model is not None and model != first_model:
                    error(
                        "mismatched_model",
                        f"The provided model '{model}' does not match the model "
                        f"'{first_model}' of the other requests: a batch takes one model.",
                        number,
                        "body.model",
                    )
                first_model = first_model or model
                requests.append((custom_id, body))
        if len(requests) > limits.max_requests:
            error(
                "too_many_requests",
                f"The input file has {len(requests)} requests, more than the "
                f"{limits.max_requests} a batch may hold.",
            )
        if not requests and not errors:
            error("empty_file", "The input file has no requests.")
        return requests, errors

    # --- Anthropic's shape --------------------------------------------------------------
    @staticmethod
    def _an_state(batch: _Batch) -> str:
        if batch.status == "ended":
            return "ended"
        return "canceling" if batch.status == "cancelling" else "in_progress"

    def anthropic_json(self, batch: _Batch) -> dict[str, Any]:
        ended = batch.status == "ended"
        counts = {
            "processing": 0 if ended else len(batch.requests),
            # as Anthropic does, requests leave "processing" only when the batch ends
            "succeeded": batch.count("succeeded") if ended else 0,
            "errored": batch.count("errored") if ended else 0,
            "canceled": batch.count("canceled"),
            "expired": batch.count("expired"),
        }
        url = f"{self.server.base_url}/v1/messages/batches/{batch.id}/results"
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": self._an_state(batch),
            "request_counts": counts,
            "created_at": _iso(batch.created_at),
            "ended_at": _iso(batch.ended_at),
            "expires_at": _iso(batch.created_at + 24 * 3600),
            "archived_at": None,
            "cancel_initiated_at": _iso(batch.cancelled_at),
            "results_url": url if ended else None,
        }

    def anthropic_results(self, batch: _Batch) -> Iterator[str]:
        for (custom_id, _), result in zip(batch.requests, batch.results, strict=True):
            outcome: dict[str, Any] = {"type": result.kind}
            if result.kind == "succeeded":
                outcome["message"] = result.body
            elif result.kind == "errored":
                outcome["error"] = result.body
            yield json.dumps({"custom_id": custom_id, "result": outcome}) + "\n"


def _int(moment: float | None) -> int | None:
    return None if moment is None else int(moment)


def _page(
    items: list[dict[str, Any]], limit: int, after: str | None, before: str | None = None
) -> tuple[list[dict[str, Any]], bool]:
    """A page of a newest-first list: the ``limit`` items after ``after`` (older ones), or the
    ``limit`` items just before ``before`` (newer ones); and whether more lie that way."""
    ids = [item["id"] for item in items]
    if before is not None:
        end = ids.index(before) if before in ids else 0
        start = max(0, end - limit)
        return items[start:end], start > 0
    start = ids.index(after) + 1 if after in ids else (len(ids) if after is not None else 0)
    return items[start : start + limit], start + limit < len(items)


def _limit(request: Request, default: int, most: int) -> int | None:
    try:
        limit = int(request.query_params.get("limit", default))
    except ValueError:
        return None
    return limit if 1 <= limit <= most else None


# --- OpenAI routes --------------------------------------------------------------------------
class _Multipart:
    """Reads a multipart/form-data body as it arrives: text fields into memory, the one file
    part straight to ``target`` on disk."""

    def __init__(self, boundary: bytes, target: IO[bytes]) -> None:
        self.delimiter = b"\r\n--" + boundary
        self.target = target
        self.buffer = b"\r\n"  # the first boundary then reads as a delimiter
        self.state = "preamble"
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.name = ""
        self.value = bytearray()
        self.is_file = False

    def feed(self, chunk: bytes) -> None:
        self.buffer += chunk
        while self._step():
            pass

    def _emit(self, data: bytes) -> None:
        if self.state != "data" or not data:
            return
        if self.is_file:
            self.target.write(data)
        else:
            self.value += data

    def _step(self) -> bool:
        if self.state in ("preamble", "data"):
            found = self.buffer.find(self.delimiter)
            if found < 0:
                keep = len(self.delimiter) - 1
                if len(self.buffer) > keep:
                    self._emit(self.buffer[:-keep])
                    self.buffer = self.buffer[-keep:]
                return False
            self._emit(self.buffer[:found])
            if self.state == "data" and not self.is_file:
                self.fields[self.name] = self.value.decode("utf-8", "replace")
            self.buffer = self.buffer[found + len(self.delimiter) :]
            self.state = "boundary"
            return True
        if self.state == "boundary":
            if len(self.buffer) < 2:
                return False
            if self.buffer.startswith(b"--"):
                self.state = "end"
                return False
            if not self.buffer.startswith(b"\r\n"):
                raise ValueError("malformed multipart body")
            self.buffer, self.state = self.buffer[2:], "headers"
            return True
        if self.state == "headers":
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return False
            head = self.buffer[:end].decode("utf-8", "replace")
            self.buffer = self.buffer[end + 4 :]
            name = re.search(r'\bname="([^"]*)"', head)
            filename = re.search(r'\bfilename="([^"]*)"', head)
            self.name = name.group(1) if name else ""
            self.is_file = filename is not None
            if filename is not None:
                self.filename = filename.group(1)
            self.value = bytearray()
            self.state = "data"
            return True
        return False


def openai_batch_routes(book: BatchBook) -> list[Route]:
    """OpenAI's files and batches endpoints over ``book``."""
    server = book.server

    def fail(status: int, message: str) -> Response:
        return JSONResponse(server.error_body(status, message), status_code=status)

    async def upload(request: Request) -> Response:
        kind = request.headers.get("content-type", "")
        boundary = re.search(r'boundary="?([^";]+)"?', kind)
        if not kind.startswith("multipart/form-data") or boundary is None:
            return fail(400, "a file is uploaded as multipart/form-data")
        file = book.new_file("upload.jsonl", "batch")
        try:
            with file.path.open("wb") as target:
                form = _Multipart(boundary.group(1).encode(), target)
                async for chunk in request.stream():
                    form.feed(chunk)
        except ValueError as err:
            file.path.unlink(missing_ok=True)
            return fail(400, str(err))
        if form.filename is None or form.state != "end":
            file.path.unlink(missing_ok=True)
            return fail(400, "the body has no complete 'file' part")
        file.filename, file.purpose = form.filename, form.fields.get("purpose", "")
        if file.purpose not in ("batch", "fine-tune", "assistants", "user_data", "evals"):
            file.path.unlink(missing_ok=True)
            return fail(400, f"'{file.purpose}' is not a valid purpose")
        book.keep_file(file)
        return JSONResponse(file.json())

    async def file_info(request: Request) -> Response:
        file = book.file(request.path_params["file_id"])
        return fail(404, "No such File object") if file is None else JSONResponse(file.json())

    async def file_content(request: Request) -> Response:
        file = book.file(request.path_params["file_id"])
        if file is None:
            return fail(404, "No such File object")
        return FileResponse(file.path, media_type="application/octet-stream")

    async def file_delete(request: Request) -> Response:
        file = book.drop_file(request.path_params["file_id"])
        if file is None:
            return fail(404, "No such File object")
        return JSONResponse({"id": file.id, "object": "file", "deleted": True})

    async def create(request: Request) -> Response:
        book.counted()
        try:
            body = await request.json()
        except ValueError:
            return fail(400, "the body is not JSON")
        if not isinstance(body, dict):
            return fail(400, "the body is not a JSON object")
        if body.get("endpoint") != OPENAI_ENDPOINT:
            return fail(
                400, f"endpoint must be {OPENAI_ENDPOINT} here, not {body.get('endpoint')!r}"
            )
        if body.get("completion_window") != "24h":
            return fail(400, "completion_window must be '24h'")
        metadata = body.get("metadata") or {}
        if (
            not isinstance(metadata, dict)
            or len(metadata) > 16
            or not all(
                isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
                for k, v in metadata.items()
            )
        ):
            return fail(400, "metadata: at most 16 string pairs (keys up to 64, values up to 512)")
        file = book.file(str(body.get("input_file_id")))
        if file is None:
            return fail(400, f"input_file_id {body.get('input_file_id')!r} is not a file")
        if file.purpose != "batch":
            return fail(400, "the input file's purpose is not 'batch'")
        requests, errors = book.openai_requests(file)
        batch = _Batch(
            book.new_id("batch_"),
            requests,
            {k: v for k, v in request.headers.items()},
            BatchBehavior(**vars(book.behavior)),
            metadata=dict(metadata),
            input_file_id=file.id,
            errors=errors,
        )
        book.add(batch)
        return JSONResponse(book.openai_json(batch))

    async def retrieve(request: Request) -> Response:
        batch = book.find(request.path_params["batch_id"])
        return (
            fail(404, "No such batch") if batch is None else JSONResponse(book.openai_json(batch))
        )

    async def listing(request: Request) -> Response:
        limit = _limit(request, 20, 100)
        if limit is None:
            return fail(400, "limit must be 1 to 100")
        items = [book.openai_json(b) for b in book.newest_first()]
        page, more = _page(items, limit, request.query_params.get("after"))
        return JSONResponse(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": more,
            }
        )

    async def cancel(request: Request) -> Response:
        batch = book.find(request.path_params["batch_id"])
        if batch is None:
            return fail(404, "No such batch")
        refused = book.cancel(batch)
        return fail(400, refused) if refused else JSONResponse(book.openai_json(batch))

    return [
        Route("/v1/files", upload, methods=["POST"]),
        Route("/v1/files/{file_id}", file_info, methods=["GET"]),
        Route("/v1/files/{file_id}", file_delete, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
        Route("/v1/batches", create, methods=["POST"]),
        Route("/v1/batches", listing, methods=["GET"]),
        Route("/v1/batches/{batch_id}", retrieve, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", cancel, methods=["POST"]),
    ]


# --- Anthropic routes -----------------------------------------------------------------------
def anthropic_batch_routes(book: BatchBook) -> list[Route]:
    """Anthropic's Message Batches endpoints over ``book``."""
    server = book.server

    def fail(status: int, message: str) -> Response:
        return JSONResponse(server.error_body(status, message), status_code=status)

    async def create(request: Request) -> Response:
        book.counted()
        limits = book.behavior
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limits.max_bytes:
                body = server.error_body(
                    413, "Request exceeds the maximum allowed number of bytes."
                )
                body["error"]["type"] = "request_too_large"
                return JSONResponse(body, status_code=413)
        try:
            body = json.loads(raw)
        except ValueError:
            return fail(400, "The request body is not valid JSON.")
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            return fail(400, "requests: Field required (a non-empty list)")
        if len(requests) > limits.max_requests:
            return fail(400, f"requests: List should have at most {limits.max_requests} items")
        seen: set[str] = set()
        parsed: list[tuple[str, dict[str, Any]]] = []
        for k, item in enumerate(requests):
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            params = item.get("params") if isinstance(item, dict) else None
            if not isinstance(custom_id, str) or not ANTHROPIC_CUSTOM_ID.match(custom_id):
                return fail(
                    400,
                    f"requests.{k}.custom_id: String should match pattern "
                    f"'{ANTHROPIC_CUSTOM_ID.pattern}'",
                )
            if custom_id in seen:
                return fail(400, f"requests: custom_id {custom_id!r} is used more than once")
            seen.add(custom_id)
            if not isinstance(params, dict) or not isinstance(params.get("model"), str):
                return fail(400, f"requests.{k}.params.model: Field required")
            if params.get("stream"):
                return fail(400, f"requests.{k}.params.stream: a batched request cannot stream")
            parsed.append((custom_id, params))
        models = {params["model"] for _, params in parsed}
        if limits.one_model and len(models) > 1:
            return fail(400, f"requests: one model per batch here, got {sorted(models)}")
        batch = _Batch(
            book.new_id("msgbatch_"),
            parsed,
            {k: v for k, v in request.headers.items()},
            BatchBehavior(**vars(book.behavior)),
        )
        book.add(batch)
        book.advance(batch)  # nothing to validate later: in progress at once
        return JSONResponse(book.anthropic_json(batch))

    async def retrieve(request: Request) -> Response:
        batch = book.find(request.path_params["batch_id"])
        if batch is None:
            return fail(404, "No such message batch")
        return JSONResponse(book.anthropic_json(batch))

    async def listing(request: Request) -> Response:
        limit = _limit(request, 20, 1000)
        if limit is None:
            return fail(400, "limit must be 1 to 1000")
        after, before = request.query_params.get("after_id"), request.query_params.get("before_id")
        if after is not None and before is not None:
            return fail(400, "after_id and before_id cannot both be given")
        items = [book.anthropic_json(b) for b in book.newest_first()]
        page, more = _page(items, limit, after, before)
        return JSONResponse(
            {
                "data": page,
                "has_more": more,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
            }
        )

    async def cancel(request: Request) -> Response:
        batch = book.find(request.path_params["batch_id"])
        if batch is None:
            return fail(404, "No such message batch")
        refused = book.cancel(batch)
        return fail(400, refused) if refused else JSONResponse(book.anthropic_json(batch))

    async def results(request: Request) -> Response:
        batch = book.find(request.path_params["batch_id"])
        if batch is None:
            return fail(404, "No such message batch")
        if batch.status != "ended":
            return fail(400, "The batch is still processing; its results are not ready.")

        async def lines() -> AsyncIterator[str]:
            for line in book.anthropic_results(batch):
                yield line

        return StreamingResponse(lines(), media_type="application/x-jsonl")

    return [
        Route("/v1/messages/batches", create, methods=["POST"]),
        Route("/v1/messages/batches", listing, methods=["GET"]),
        Route("/v1/messages/batches/{batch_id}", retrieve, methods=["GET"]),
        Route("/v1/messages/batches/{batch_id}/cancel", cancel, methods=["POST"]),
        Route("/v1/messages/batches/{batch_id}/results", results, methods=["GET"]),
    ]
