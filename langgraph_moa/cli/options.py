"""What the ``moa`` commands share: their common options, the durability choice, and ``fail``.

Kept apart from :mod:`langgraph_moa.cli.app` (which registers the commands) so that the command
modules can use them without importing the app that imports them.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.markup import escape

from langgraph_moa.spec.topology import DEFAULT_PRESET


class DurabilityChoice(enum.StrEnum):
    sync = "sync"
    async_ = "async"
    exit = "exit"


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr, then exit (2: bad input, 1: the run failed)."""
    from langgraph_moa.cli.console import err

    err.print(f"[red]moa: error:[/red] {escape(message)}")
    raise SystemExit(code)


PresetOpt = Annotated[
    str | None, typer.Option("--preset", "-p", help=f"Preset name (default: {DEFAULT_PRESET}).")
]
TopologyOpt = Annotated[
    Path | None, typer.Option("--topology", "-t", help="Topology file (.yaml/.json).")
]
DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="Thread store: a SQLite path or postgresql:// URL (or $MOA_DB)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object at the end.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")]
ThreadOpt = Annotated[str, typer.Option("--thread", help="The thread id.")]
DurabilityOpt = Annotated[
    DurabilityChoice,
    typer.Option(help="When checkpoints are written: sync (each step, safest), async, or exit."),
]
SwitchOpt = Annotated[
    bool,
    typer.Option(
        "--switch-topology",
        help="Run an existing thread with the given --preset/--topology instead of its own.",
    ),
]
