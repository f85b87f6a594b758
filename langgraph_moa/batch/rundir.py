"""A relabel run's directory: ``<out>/<name>/`` with its manifest and ledger.

A run is an input, a topology and settings. Its name comes from the topology and the input
(or ``--name``), so several runs over one input coexist under one ``--out`` (relabel with two
topologies, then compare). ``manifest.json`` records the topology as resolved, the input's
files and hash, package versions, each session's start and end, and the counts and cost
(recounted from the ledger, which is the truth, at the end of each session). Runs under one
``--out`` share a call cache, ``<out>/calls.sqlite``, so a run that differs from another only
in its aggregator reuses every proposer call.

Rerunning with the same name and a different topology, or other ``turns``/``turn_context``
settings, is refused (one line, nothing written): that would mix two kinds of answer in one
run. A name must be one plain folder name (no
``/``, not ``.`` or ``..``, not absolute), so a run never lands outside ``--out``. One process
writes a run at a time (an exclusive lock on ``<run>/.lock``). A manifest that cannot be written
(a full disk) is :class:`~langgraph_moa.errors.MoAStorageError`, naming the file; at the end of
a session that already failed, it never hides the first error.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from langgraph_moa.errors import MoAError, MoAInputError, storage_error
from langgraph_moa.spec.topology import Topology, parse_topology

_MANIFEST = "manifest.json"
_LEDGER = "ledger.sqlite"
CACHE = "calls.sqlite"


class Session(BaseModel):
    """One invocation of ``moa relabel`` (or ``relabel()``) on the run."""

    started: str
    ended: str | None = None
    engine: str = "local"
    new_rows: int = 0
    # why it stopped early: "budget", "interrupted", "storage", "detached" (batch engine)
    stopped: str | None = None


class Manifest(BaseModel):
    name: str
    topology: dict[str, Any]
    input: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)
    created: str
    sessions: list[Session] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)
    cost_usd: float = 0.0
    # the batch engine's last session: waves, batches, requests answered in batches or online
    batch: dict[str, Any] | None = None

    def resolved_topology(self) -> Topology:
        return parse_topology(self.topology, source=f"{self.name}/{_MANIFEST}")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("langgraph-moa", "langgraph", "langchain-core", "langchain-openai"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "unknown"
    return found


def run_name(topology: Topology, source: str) -> str:
    """``<topology>-<input stem>``, made safe for a folder name."""
    raw = f"{topology.name}-{source}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-.") or "run"


def check_name(name: str) -> str:
    """``name`` if it is one plain folder name; MoAInputError (one line) if not."""
    plain = (
        name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
        and not Path(name).is_absolute()
    )
    if not plain:
        raise MoAInputError(
            f"--name {name!r} must be one plain folder name (no '/', not '.' or '..'): "
            "the run goes in a folder of that name under --out"
        )
    return name


def _hash_files(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


class RunDir:
    """An opened run directory: its paths and manifest."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest

    @property
    def ledger_path(self) -> Path:
        return self.path / _LEDGER

    @property
    def manifest_path(self) -> Path:
        return self.path / _MANIFEST

    def save(self) -> None:
        """Write the manifest atomically (a temporary file renamed over the old one)."""
        tmp = self.path / f".{_MANIFEST}.tmp"
        try:
            tmp.write_text(self.manifest.model_dump_json(indent=2), encoding="utf-8")
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.manifest_path)
        except OSError as err:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise storage_error(self.manifest_path, err) from None

    @staticmethod
    def load(path: Path) -> RunDir:
        """An existing run; MoAInputError if ``path`` is not one."""
        manifest = path / _MANIFEST
        if not path.is_dir():
            raise MoAInputError(f"{str(path)!r} is not a relabel run (no such folder)")
        if not manifest.is_file() or not (path / _LEDGER).is_file():
            raise MoAInputError(f"{str(path)!r} is not a relabel run (no {_MANIFEST} and ledger)")
        try:
            return RunDir(path, Manifest.model_validate_json(manifest.read_bytes()))
        except (ValueError, OSError) as err:
            raise MoAInputError(f"{str(manifest)!r} is not a readable manifest: {err}") from None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with (path / ".lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MoAInputError(
                f"another relabel is writing run {str(path)!r}; wait for it or use --name"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _turns_of(settings: dict[str, Any]) -> str:
    """How a run's rows are relabeled, as the options say it (runs from before ``turns``
    existed relabeled the last turn)."""
    if settings.get("turns", "last") == "last":
        return "--turns last"
    return f"--turns all --turn-context {settings.get('turn_context', 'relabeled')}"


def _check_same_turns(path: Path, before: dict[str, Any], now: dict[str, Any]) -> None:
    was, asked = _turns_of(before), _turns_of(now)
    if was != asked:
        raise MoAInputError(
            f"run {str(path)!r} was relabeled with {was}; this one asks {asked}: "
            "give another --name (or --out)"
        )


@contextmanager
def open_run_dir(
    out: Path,
    name: str,
    topology: Topology,
    *,
    input_info: dict[str, Any],
    settings: dict[str, Any],
    engine: str,
) -> Iterator[tuple[RunDir, Session]]:
    """Create or reopen ``out/name`` for a new session, locked for this process.

    Raises MoAInputError, with nothing written, if the folder holds a run of another topology
    or something that is not a run.
    """
    path = out / check_name(name)
    spec = topology.model_dump(mode="json")
    if path.exists():
        run = RunDir.load(path)
        if run.manifest.topology != spec:
            raise MoAInputError(
                f"run {str(path)!r} relabels with topology {run.manifest.topology.get('name')!r} "
                f"as it was then; this one differs: give another --name (or --out)"
            )
        _check_same_turns(path, run.manifest.settings, settings)
    else:
        try:
            out.mkdir(parents=True, exist_ok=True)
            path.mkdir()
        except OSError as err:
            raise MoAInputError(f"cannot create {str(path)!r}: {err.strerror}") from None
        manifest = Manifest(name=name, topology=spec, created=now())
        run = RunDir(path, manifest)
    with _locked(path):
        session = Session(started=now(), engine=engine)
        run.manifest.input = input_info
        run.manifest.settings = settings
        run.manifest.versions = _versions()
        run.manifest.sessions.append(session)
        run.save()
        started = time.perf_counter()

        def end() -> None:
            session.ended = now()
            run.manifest.settings["last_session_s"] = round(time.perf_counter() - started, 3)
            run.save()

        try:
            yield run, session
        except BaseException:
            with contextlib.suppress(MoAError):  # the first error is the one to tell
                end()
            raise
        end()


def describe_input(files: list[Path] | None, source: str) -> dict[str, Any]:
    if files is None:
        return {"source": source}
    return {
        "source": source,
        "files": [str(f) for f in files],
        "bytes": sum(f.stat().st_size for f in files),
        "sha256": _hash_files(files),
    }
