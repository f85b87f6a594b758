"""Reading a user's small file whole, bounded: a topology, a price table, a review decision, a
fork's edit, the server's keys or capture configuration; parsing it as YAML or JSON with the place
a syntax error is at; and saying in one line what a validation of it found wrong.

Each is read at most :data:`MAX_FILE_BYTES` (plus one byte, to tell that it is over), never
whole: ``/dev/zero``, an endless pipe or a multi-gigabyte file given by mistake ends in one line
naming the file instead of a ``MemoryError`` or a hang. Pipes and process substitution
(``-t <(...)``) still work. A folder or an undecodable file is named the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from langgraph_moa.errors import MoAInputError

MAX_FILE_BYTES = 1024 * 1024


def read_text_file(path: str | Path, *, what: str, limit: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of ``path``; MoAInputError naming ``what`` and the file if it cannot be
    read, is larger than ``limit`` bytes, or is not UTF-8."""
    p = Path(path)
    try:
        with p.open("rb") as f:  # at most the limit: /dev/zero or a huge file must not hang
            raw = f.read(limit + 1)
    except OSError as err:
        reason = "it is a folder" if isinstance(err, IsADirectoryError) else err.strerror
        raise MoAInputError(f"cannot read {what} {str(p)!r}: {reason}") from None
    if len(raw) > limit:
        raise MoAInputError(f"{what} {str(p)!r} is larger than {_size(limit)}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MoAInputError(f"{what} {str(p)!r} is not UTF-8 text (byte {err.start})") from None


def _size(limit: int) -> str:
    return f"{limit // 1024} KiB" if limit % 1024 == 0 else f"{limit} bytes"


def describe_validation_error(err: ValidationError) -> str:
    """Flatten a pydantic error into one line that names each offending field."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)  # the whole value: the caller names it
    return "; ".join(parts)


def _syntax_error(err: json.JSONDecodeError | yaml.YAMLError) -> str:
    """Where and what: ``line 3, column 7: mapping values are not allowed here``."""
    if isinstance(err, json.JSONDecodeError):
        return f"line {err.lineno}, column {err.colno}: {err.msg}"
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return str(problem)


def read_data_file(path: str | Path, *, what: str) -> Any:
    """Read a YAML (or ``.json``) file; MoAInputError naming ``what`` and where it is broken."""
    p = Path(path)
    kind = "JSON" if p.suffix == ".json" else "YAML"
    text = read_text_file(p, what=what)
    try:
        return json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise MoAInputError(
            f"{what} {str(p)!r} is not valid {kind}: {_syntax_error(err)}"
        ) from None
    except (RecursionError, MemoryError):
        raise MoAInputError(f"{what} {str(p)!r} is nested too deeply") from None
