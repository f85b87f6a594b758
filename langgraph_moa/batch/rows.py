"""Reading dataset rows for relabeling: JSONL, Parquet or a folder of them, one row at a time,
each checked by :func:`langgraph_moa.batch.row_check.check_row` (what a row is, and its checks,
are there).

Anything wrong with one row becomes an :class:`~langgraph_moa.batch.row_check.InvalidRow` with
where it was (``file:line``) and a one-line reason, and reading goes on: one bad line never sinks
a run. That covers a line that is not UTF-8 or not JSON, a number Python will not convert (an
integer of more than 4,300 digits, a float out of range, ``NaN``), a line longer than
:data:`MAX_LINE` (skipped to its newline without being held), and a row that fails its checks.
A UTF-8 byte order mark before the first line is read past. Parquet data that cannot be read
part way through a file is one invalid row at the first row lost (the rows before it are kept).

What cannot be an input at all is one line (:class:`~langgraph_moa.errors.MoAInputError`)
naming the file, before anything runs: a missing or empty file, an unknown suffix, something
that is not a regular file (a device such as a link to ``/dev/zero``, a FIFO: they never end),
a Parquet file whose footer cannot be read (truncated). In a folder, files are taken by suffix,
case aside (``C.JSONL``). Rows are streamed, never held all at once, so memory stays flat in the
size of the input.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from langgraph_moa.batch.row_check import InvalidRow, Row, check_row, decode_line
from langgraph_moa.errors import MoAInputError
from langgraph_moa.extras import require_extra

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
MAX_LINE = 64 * 1024 * 1024  # bytes in one JSONL line, at most
BOM = b"\xef\xbb\xbf"


def _kind(mode: int) -> str:
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _checked(path: Path, *, whole_input: bool) -> Path:
    """``path`` if it can be an input file: a regular file, readable (and not empty when it is
    the whole input), a Parquet file with a readable footer."""
    try:
        info = path.stat()
    except OSError as err:
        raise MoAInputError(f"cannot read {str(path)!r}: {err.strerror}") from None
    mode, size = info.st_mode, info.st_size
    if not stat.S_ISREG(mode):
        link = f" (a link to {str(path.resolve())!r})" if path.is_symlink() else ""
        raise MoAInputError(
            f"{str(path)!r}{link} is {_kind(mode)}, not a regular file: give a JSONL or Parquet "
            "file"
        )
    if whole_input and size == 0:
        raise MoAInputError(f"{str(path)!r} is empty")
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as err:
        raise MoAInputError(f"cannot read {str(path)!r}: {err.strerror}") from None
    if FORMATS[path.suffix.lower()] == "parquet":
        _parquet_file(path)
    return path


def input_files(path: Path) -> list[Path]:
    """The files of an input: the file itself, or a folder's JSONL/Parquet files by name (the
    suffix in any case). Raises MoAInputError (one line, naming the file) for what cannot be an
    input: see the module docstring."""
    if path.is_dir():
        try:
            entries = sorted(path.iterdir())
        except OSError as err:
            raise MoAInputError(f"cannot read {str(path)!r}: {err.strerror}") from None
        files = [
            _checked(p, whole_input=False)
            for p in entries
            if p.suffix.lower() in FORMATS and not p.is_dir()
        ]
        if not files:
            raise MoAInputError(f"{str(path)!r} holds no .jsonl or .parquet file")
        return files
    if not path.exists():
        raise MoAInputError(f"cannot read {str(path)!r}: no such file")
    if path.suffix.lower() not in FORMATS:
        raise MoAInputError(
            f"{str(path)!r}: unknown input format {path.suffix or '(no extension)'!r} "
            "(expected .jsonl or .parquet)"
        )
    return [_checked(path, whole_input=True)]


def _name(path: Path) -> str:
    """The file's name as text that can be stored (undecodable bytes of a name replaced)."""
    return path.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def read_lines(f: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """Each line of a JSONL file opened in binary, numbered from 1, a byte order mark before
    the first read past; None for a line longer than :data:`MAX_LINE`, which is skipped to its
    newline a MiB at a time (never held whole)."""
    number = 0
    while raw := f.readline(MAX_LINE + 1):
        number += 1
        if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield number, None
            continue
        if number == 1 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        yield number, raw


def parse_line(raw: bytes, where: str) -> Row | InvalidRow:
    """One JSONL line (bytes), parsed and checked."""
    try:
        data = decode_line(raw)
    except ValueError as err:
        return InvalidRow(where, str(err))
    return check_row(data, where)


def _jsonl(path: Path) -> Iterator[Row | InvalidRow]:
    name = _name(path)
    with path.open("rb") as f:
        for number, raw in read_lines(f):
            where = f"{name}:{number}"
            if raw is None:
                yield InvalidRow(where, f"the line is longer than {MAX_LINE >> 20} MiB")
            elif raw.strip():
                yield parse_line(raw, where)


def _parquet_file(path: Path) -> Any:
    require_extra("parquet", "Parquet input")
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as err:  # pyarrow's errors: not Parquet, truncated...
        text = " ".join(str(err).split())[:200]
        raise MoAInputError(f"cannot read {str(path)!r} as Parquet: {text}") from None


def _parquet(path: Path) -> Iterator[Row | InvalidRow]:
    table = _parquet_file(path)
    name = _name(path)
    total = table.metadata.num_rows
    number = 0
    batches = table.iter_batches(batch_size=256)
    while True:
        try:
            items = next(batches).to_pylist()
        except StopIteration:
            return
        except Exception as err:  # a damaged page: the rows before it are kept
            text = " ".join(str(err).split())[:200]
            lost = f"rows {number + 1}-{total}" if total > number + 1 else f"row {number + 1}"
            yield InvalidRow(f"{name}:{number + 1}", f"Parquet {lost} cannot be read: {text}")
            return
        for data in items:
            number += 1
            yield check_row(data, f"{name}:{number}")


def read_rows(path: Path) -> Iterator[Row | InvalidRow]:
    """Every row of a file or folder, in order, checked; bad ones as :class:`InvalidRow`."""
    for file in input_files(path):
        fmt = FORMATS[file.suffix.lower()]
        yield from _parquet(file) if fmt == "parquet" else _jsonl(file)


def rows_of(items: Iterable[Any]) -> Iterator[Row | InvalidRow]:
    """Rows fed from Python (dicts in the input format, or Rows), checked the same way."""
    for k, item in enumerate(items, 1):
        yield item if isinstance(item, Row | InvalidRow) else check_row(item, f"#{k}")


def count_rows(path: Path) -> int:
    """How many rows the input holds (lines of JSONL, rows of Parquet), for progress; a JSONL
    file is read up to the size it had when counting began (a file still growing is not
    followed)."""
    total = 0
    for file in input_files(path):
        if FORMATS[file.suffix.lower()] == "parquet":
            total += _parquet_file(file).metadata.num_rows
            continue
        last = b"\n"
        with file.open("rb") as f:
            left = file.stat().st_size
            while left > 0 and (chunk := f.read(min(left, 1 << 20))):
                left -= len(chunk)
                total += chunk.count(b"\n")
                last = chunk[-1:]
        total += last != b"\n"  # a last line without its newline
    return total
