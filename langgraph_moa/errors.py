"""Exceptions the project raises on purpose, each carrying a one-line, user-facing message, and
:func:`storage_error`, which words a disk or database failure as one."""

from __future__ import annotations


class MoAError(Exception):
    """Base class: the message is one clear line meant for the user."""


class MoAInputError(MoAError, ValueError):
    """Bad input from the user: a topology, preset, provider, prompt or missing key (CLI exit 2)."""


class MissingCredentialsError(MoAInputError):
    """A provider's API key is not set; the message names the environment variable."""


class MoARunError(MoAError, RuntimeError):
    """A run could not produce an answer (e.g. every proposer of a layer failed)."""


class MissingExtraError(MoAInputError):
    """A feature needs an optional dependency group (a pip extra) that is not installed; the
    message names the feature and the pip command that installs it."""


class LocalModelUnusableError(MoAInputError):
    """The embedded model's llama.cpp build cannot run on this machine (it crashed when checked);
    the message says what failed and how to rebuild it."""


class MoAStorageError(MoAError, RuntimeError):
    """A file the run keeps (a ledger, the call cache, a manifest) could not be written or read
    for a reason that is not about one row (no space left, a file-size limit, an I/O error);
    the message names the file and the condition. Made by :func:`storage_error`."""


def storage_error(path: object, err: BaseException, doing: str = "write") -> MoAStorageError:
    """A :class:`MoAStorageError` for ``err`` (an ``OSError`` or a ``sqlite3.Error``) met on
    ``path``: one line naming the file, SQLite's error name or the errno, and, where it can be
    seen, which limit was hit (a file-size limit: EFBIG; a full disk: ENOSPC). SQLite does not
    say which errno a failed write had, so those two are checked on the file and its disk."""
    import errno
    import sqlite3

    if isinstance(err, sqlite3.Error):
        name = getattr(err, "sqlite_errorname", None)
        condition = f"{err} ({name})" if name else str(err) or type(err).__name__
        condition += _limit_hit(str(path))
    elif isinstance(err, OSError) and err.errno is not None:
        code = errno.errorcode.get(err.errno, str(err.errno))
        condition = f"{code}: {err.strerror or err}"
    else:
        condition = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return MoAStorageError(f"cannot {doing} {str(path)!r}: {' '.join(condition.split())}")


def _limit_hit(path: str) -> str:
    """Which limit a failed SQLite write most likely met, when one is visibly reached."""
    import os
    import resource

    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if soft != resource.RLIM_INFINITY:
        for name in (path, f"{path}-wal", f"{path}-journal"):
            try:
                size = os.stat(name).st_size
            except OSError:
                continue
            if size + 65536 >= soft:
                return f"; EFBIG: {os.path.basename(name)} reached the file-size limit ({soft} B)"
    try:
        disk = os.statvfs(os.path.dirname(path) or ".")
    except OSError:
        return ""
    free = disk.f_bavail * disk.f_frsize
    return f"; ENOSPC: {free} B left on the disk" if free < 1 << 20 else ""
