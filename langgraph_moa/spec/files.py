"""Reading a user's small file whole, bounded: a topology, a price table, a review decision, a
fork's edit, the server's keys or capture configuration.

Each is read at most :data:`MAX_FILE_BYTES` (plus one byte, to tell that it is over), never
whole: ``/dev/zero``, an endless pipe or a multi-gigabyte file given by mistake ends in one line
naming the file instead of a ``MemoryError`` or a hang. Pipes and process substitution
(``-t <(...)``) still work. A folder or an undecodable file is named the same way.
"""

from __future__ import annotations

from pathlib import Path

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
