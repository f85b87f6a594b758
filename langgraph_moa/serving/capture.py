"""Capturing production traffic: each completed pass-through exchange (passthrough.py) becomes one
JSONL row in the ``moa relabel`` input format, in a directory of rotated files.

A row: ``id``, ``timestamp`` (UTC, ISO 8601), ``model`` (``provider:model`` upstream),
``messages`` (the request's, then the completion as the last assistant message), the request's
intent for the answer as sent, under the request's own names (``tools``, ``tool_choice``,
``parallel_tool_calls``, ``response_format`` and the sampling fields ``temperature``, ``top_p``,
``max_tokens``, ``max_completion_tokens``, ``seed``, ``stop``, ``presence_penalty``,
``frequency_penalty``: each when the request had it; ``moa relabel`` gives them to the
aggregator), ``usage`` (the upstream's, when it reported any), ``latency_s``, and ``metadata``
(the request's ``user`` and ``metadata``, when given). The configuration file may drop or hash
fields of the row (``drop``/``hash``, dotted paths, ``*`` for every item); a row whose message
content was hashed keeps its figures but cannot be relabeled (``moa relabel`` records it as
invalid).
Configured provider keys are masked wherever they appear; request headers are never read
into a row, so the server's and the upstream's keys cannot land in one.

Why hand-written: the guarantee wanted is "a kill -9 never leaves half a row", which is one
``write`` of the whole line to a file opened for appending (a partial write is cut back), then
``fsync``; a logging handler or a JSON-lines library gives neither the single write nor the
cut-back. Rows are written by one thread of their own, so a response never waits for the disk;
rows queued together share one ``fsync``. On shutdown the queue is drained.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import queue
import random
import re
import threading
import uuid
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from langgraph_moa.errors import MoAInputError
from langgraph_moa.llm.chat_models import redact
from langgraph_moa.serving.errors import log_line
from langgraph_moa.serving.protocol import AGGREGATOR_FIELDS, ALL_CALLS_FIELDS
from langgraph_moa.spec.files import read_text_file

SALT_ENV = "MOA_CAPTURE_SALT"
_FILE = re.compile(r"^capture-(\d{8})-(\d{4})\.jsonl$")
_STOP = object()
# The request fields that say how the answer is to be written (the ones the MoA endpoint gives
# the final answer's writer, and the seed): kept in the row so a relabel writes the same way.
INTENT_FIELDS = AGGREGATOR_FIELDS + ALL_CALLS_FIELDS


# --- configuration ----------------------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelCapture(Strict):
    """Capture settings of one pass-through model id (``capture/...`` or an alias)."""

    capture: bool = True
    sample_rate: float | None = Field(default=None, ge=0.0, le=1.0)


class CaptureConfig(Strict):
    """The capture configuration file (YAML or JSON)."""

    aliases: dict[str, str] = Field(
        default_factory=dict,
        description='Extra model ids served as pass-through: {"prod-gpt4o": "openai:gpt-4o"}.',
    )
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0, description="Share of exchanges kept.")
    models: dict[str, ModelCapture] = Field(default_factory=dict)
    drop: list[str] = Field(default_factory=list, description="Row fields removed (dotted paths).")
    hash: list[str] = Field(
        default_factory=list, description="Row fields replaced by 'sha256:<hex>' of their JSON."
    )
    rotate_mb: float = Field(default=100.0, gt=0, description="A new file past this size.")
    rotate_daily: bool = Field(default=True, description="A new file each UTC day.")

    def settings(self, model_id: str) -> tuple[bool, float]:
        """Whether ``model_id`` is captured, and at what sampling rate."""
        own = self.models.get(model_id)
        if own is None:
            return True, self.sample_rate
        rate = own.sample_rate if own.sample_rate is not None else self.sample_rate
        return own.capture, rate


def load_capture_config(path: str | Path | None) -> CaptureConfig:
    """The configuration at ``path`` (defaults without one); one-line MoAInputError if bad."""
    if path is None:
        return CaptureConfig()
    where = str(path)
    text = read_text_file(path, what="the capture config")  # bounded: /dev/zero is one line
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        reason = " ".join(str(e).split())  # one line
        raise MoAInputError(f"the capture config {where!r} is not YAML: {reason}") from None
    try:
        return CaptureConfig.model_validate(data or {})
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise MoAInputError(f"capture config {where!r}, {loc}: {first['msg']}") from None


# --- shaping a row ----------------------------------------------------------------------------


def _digest(value: Any, salt: str) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256((salt + text).encode("utf-8")).hexdigest()


def _apply(node: Any, parts: list[str], action: str, salt: str) -> None:
    """Drop or hash what ``parts`` (a dotted path split, ``*`` for every item) reaches."""
    if not parts:
        return
    head, rest = parts[0], parts[1:]
    keys: list[Any]
    if isinstance(node, dict):
        keys = list(node) if head == "*" else [head] if head in node else []
    elif isinstance(node, list):
        if head == "*":
            indices = range(len(node))
        elif head.isdigit() and int(head) < len(node):
            indices = range(int(head), int(head) + 1)
        else:
            indices = range(0)
        keys = list(reversed(indices))  # from the end: a drop leaves the earlier ones in place
    else:
        return
    for key in keys:
        if rest:
            _apply(node[key], rest, action, salt)
        elif action == "drop":
            del node[key]
        else:
            node[key] = _digest(node[key], salt)


def capture_row(
    *,
    model: str,
    messages: list[Any],
    completion: dict[str, Any],
    request: dict[str, Any],
    usage: dict[str, Any] | None,
    latency_s: float,
    user: str | None,
    metadata: dict[str, Any] | None,
) -> dict[str, Any]:
    """The relabel-input row of one exchange (before dropping and hashing); ``request`` is the
    request body, of which the :data:`INTENT_FIELDS` it has are kept as sent."""
    row: dict[str, Any] = {
        "id": f"cap-{uuid.uuid4().hex}",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "model": model,
        "messages": [*messages, completion],
    }
    for name in INTENT_FIELDS:
        if request.get(name) is not None:
            row[name] = request[name]
    if usage:
        row["usage"] = usage
    row["latency_s"] = round(latency_s, 4)
    meta: dict[str, Any] = {}
    if user is not None:
        meta["user"] = user
    if isinstance(metadata, dict):
        meta.update(metadata)
    if meta:
        row["metadata"] = meta
    return row


# --- the capture directory --------------------------------------------------------------------


class CaptureStats:
    """Counts for ``GET /v1/capture/stats``, updated from both threads under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows = 0
        self.bytes = 0
        self.failed = 0  # upstream errors, broken streams: answered, not captured
        self.cancelled = 0  # the client left before the answer was complete
        self.sampled_out = 0  # complete, left out by the sampling rate or capture off
        self.write_errors = 0  # rows the disk refused (full, gone): lost, and counted
        self.pending = 0

    def add(self, **deltas: int) -> None:
        with self.lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)


class CaptureSink:
    """The capture directory: rows appended by a writer thread, one ``write`` per row."""

    def __init__(self, directory: str | Path, config: CaptureConfig) -> None:
        """Opens the first file at once: a directory that cannot be written is refused here,
        at start-up (MoAInputError), not at the first request."""
        self.directory = Path(directory)
        self.config = config
        self.stats = CaptureStats()
        self.random = random.Random()
        self._salt = os.environ.get(SALT_ENV, "")
        self._queue: queue.Queue[Any] = queue.Queue()
        self._fd = -1
        self._size = 0
        self._day = ""
        self.files = 0
        self.current: Path | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._open_next()
        except OSError as e:
            reason = e.strerror or str(e)
            raise MoAInputError(
                f"cannot write to the capture directory {str(self.directory)!r}: {reason}"
            ) from None
        self._thread = threading.Thread(target=self._write_rows, name="moa-capture", daemon=True)
        self._thread.start()

    # -- deciding and shaping (serving loop) -----------------------------------------------
    def wants(self, model_id: str) -> bool:
        """Whether an exchange of ``model_id`` that completes will be kept (drawn now)."""
        enabled, rate = self.config.settings(model_id)
        return enabled and (rate >= 1.0 or self.random.random() < rate)

    def submit(self, row: dict[str, Any]) -> None:
        """Queue a row for writing (dropped/hashed fields applied, keys masked)."""
        for path in self.config.drop:
            _apply(row, path.split("."), "drop", self._salt)
        for path in self.config.hash:
            _apply(row, path.split("."), "hash", self._salt)
        line = redact(json.dumps(row, ensure_ascii=False, separators=(",", ":"))) + "\n"
        self.stats.add(pending=1)
        self._queue.put(line.encode("utf-8"))

    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        with s.lock:
            return {
                "object": "capture.stats",
                "rows": s.rows,
                "bytes": s.bytes,
                "failures": s.failed + s.write_errors,
                "failed": s.failed,
                "cancelled": s.cancelled,
                "sampled_out": s.sampled_out,
                "write_errors": s.write_errors,
                "pending": s.pending,
                "files": self.files,
                "file": self.current.name if self.current else None,
            }

    # -- the files (writer thread, and start-up) -------------------------------------------
    def _open_next(self) -> None:
        day = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
        taken = [
            int(m.group(2))
            for p in self.directory.iterdir()
            if (m := _FILE.match(p.name)) and m.group(1) == day
        ]
        path = self.directory / f"capture-{day}-{max(taken, default=0) + 1:04d}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._size, self._day, self.current = fd, os.fstat(fd).st_size, day, path
        self.files += 1
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:  # the new file's name survives a crash too
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _rotate_if_due(self, size: int) -> None:
        limit = int(self.config.rotate_mb * 1024 * 1024)
        day = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
        if (self._size and self._size + size > limit) or (
            self.config.rotate_daily and day != self._day
        ):
            self._open_next()

    def _append(self, line: bytes) -> bool:
        self._rotate_if_due(len(line))
        written = os.write(self._fd, line)
        if written != len(line):  # a short write (disk full): cut it back, never a half row
            os.ftruncate(self._fd, self._size)
            return False
        self._size += written
        return True

    def _write_rows(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while True:  # whatever else is queued shares this fsync
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows = written = errors = 0
            for line in batch:
                if line is _STOP:
                    stopping = True
                    continue
                try:
                    if self._append(line):
                        rows, written = rows + 1, written + len(line)
                    else:
                        errors += 1
                except OSError:
                    errors += 1
            if rows:
                # an error here leaves the rows written, only their durability in doubt
                with contextlib.suppress(OSError):
                    os.fsync(self._fd)
            self.stats.add(rows=rows, bytes=written, write_errors=errors, pending=-(rows + errors))
            if errors:
                log_line(f"capture: {errors} rows could not be written to {self.current}")

    def close(self) -> None:
        """Write what is queued, then close the file."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
