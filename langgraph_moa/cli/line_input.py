"""The user's lines in ``moa chat``: line editing and a history kept across sessions at a
terminal, plain lines from a pipe or file.

At a terminal, prompt_toolkit (the ``[chat]`` extra) reads each line: arrow keys, Emacs keys,
Up/Down and Ctrl-R through earlier prompts. Without it, the standard library's ``readline``
gives ``input()`` the same basics. Either way the history is one file: ``--history``, else
``$MOA_CHAT_HISTORY``, else ``chat_history`` in moa's data folder (see
:func:`langgraph_moa.cli.store.data_dir`); it is created readable by its owner only, since
prompts can be private. It is read whole when the chat starts, so a history that is not a
regular file, or is over 64 MiB, is refused with one line (``/dev/null`` keeps none). Input that
is not a terminal is read line by line without blocking the event loop, and keeps no history.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
from pathlib import Path
from typing import Any

from langgraph_moa.cli.console import err
from langgraph_moa.cli.store import data_dir
from langgraph_moa.errors import MoAInputError
from langgraph_moa.extras import has_extra

PROMPT = "you> "
MAX_HISTORY_BYTES = 64 << 20


def _history_path(given: Path | None = None) -> Path:
    """Where the chat history is kept: ``given``, ``$MOA_CHAT_HISTORY`` or the data folder."""
    if given is not None:
        return given.expanduser()
    if env := os.environ.get("MOA_CHAT_HISTORY"):
        return Path(env).expanduser()
    return data_dir() / "chat_history"


def prepare_history(path: Path) -> None:
    """Create the history file (and its folder) if missing, readable by its owner only.

    The history is read whole when the chat starts, so it must be a regular file of at most
    :data:`MAX_HISTORY_BYTES` (``/dev/zero`` would never end); ``/dev/null`` keeps none.
    """
    if str(path) == os.devnull:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY | os.O_NONBLOCK, 0o600)
        try:
            info = os.fstat(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise MoAInputError(
            f"cannot keep the chat history in {str(path)!r}: {e.strerror}"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise MoAInputError(f"the chat history {str(path)!r} is not a regular file")
    if info.st_size > MAX_HISTORY_BYTES:
        raise MoAInputError(
            f"the chat history {str(path)!r} is larger than {MAX_HISTORY_BYTES >> 20} MiB: "
            "trim it or give another --history"
        )


async def _read_piped_line() -> str:
    """One line of standard input without blocking the event loop ("" at end of input).

    A terminal or pipe is watched by the loop (so Ctrl-C at the prompt is not stuck behind a
    blocked thread); a regular file, which the loop cannot watch, is read directly.
    """
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    ready: asyncio.Future[None] = loop.create_future()
    try:
        loop.add_reader(fd, lambda: None if ready.done() else ready.set_result(None))
    except (PermissionError, OSError, ValueError):
        return sys.stdin.readline()
    try:
        await ready
    finally:
        loop.remove_reader(fd)
    return sys.stdin.readline()


class LineReader:
    """Reads the chat's lines; :meth:`read` returns None at the end (Ctrl-D, end of input).

    Ctrl-C at the prompt raises KeyboardInterrupt, as it does without line editing.
    """

    def __init__(self, history: Path | None = None) -> None:
        self.terminal = sys.stdin.isatty() and sys.stdout.isatty()
        self.path = _history_path(history) if self.terminal else None
        self.session: Any = None
        self.readline: Any = None
        if self.path is None:
            return
        prepare_history(self.path)
        if has_extra("chat"):
            from prompt_toolkit import PromptSession
            from prompt_toolkit.history import FileHistory
            from prompt_toolkit.output import create_output

            output = create_output()
            # cursor position requests only place completion menus, which the chat has none
            # of; a terminal that never answers them would get a warning at every prompt
            if hasattr(output, "enable_cpr"):
                output.enable_cpr = False
            self.session = PromptSession(history=FileHistory(str(self.path)), output=output)
            return
        try:
            import readline
        except ImportError:  # a Python built without it: plain input()
            return
        self.readline = readline
        with contextlib.suppress(OSError):  # no history yet, or an unreadable one
            readline.read_history_file(self.path)

    async def read(self) -> str | None:
        if self.session is not None:
            try:
                text: str = await self.session.prompt_async(PROMPT)
            except EOFError:
                return None
            return text
        if not self.terminal:
            err.print(f"[bold]{PROMPT.strip()}[/bold] ", end="")
            line = await _read_piped_line()
            return line or None
        try:
            # readline edits input() only; nothing else runs on the loop while the user types
            text = input(PROMPT)
        except EOFError:
            return None
        if self.readline is not None and self.path is not None and text.strip():
            with contextlib.suppress(OSError):  # the history is a convenience, not a record
                self.readline.append_history_file(1, self.path)
        return text
