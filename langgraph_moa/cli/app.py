"""The ``moa`` command: the typer app, its root options, and ``main``, the console entry point.

The commands live one module per group (:mod:`~langgraph_moa.cli.conversation`: ask, chat,
resume, history, fork; :mod:`~langgraph_moa.cli.serve_cmd`; :mod:`~langgraph_moa.cli.graph_cmd`:
graph, presets; :mod:`~langgraph_moa.cli.thread_list`: threads;
:mod:`~langgraph_moa.cli.relabel`: relabel, export; :mod:`~langgraph_moa.cli.evaluate`: eval,
report) and are registered here, in the order ``moa --help`` lists them. Bad input (topology,
preset, provider, missing key, empty prompt, unknown thread) prints one line on stderr and exits
with code 2; a run that cannot produce an answer exits with 1. Never a traceback.

Each command imports the engine (LangGraph, LangChain, the thread store, the console) where it
runs, not with its module: ``moa --help`` and ``moa presets`` would otherwise spend a second
importing LangGraph they never use (tests/integration/test_startup.py checks what loads).
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from langgraph_moa.cli import collector
from langgraph_moa.cli.conversation import ask, chat, fork, history_cmd, resume
from langgraph_moa.cli.evaluate import eval_command, report_command
from langgraph_moa.cli.graph_cmd import graph, presets
from langgraph_moa.cli.help import MoAGroup, MoATyper
from langgraph_moa.cli.logs import setup_logging
from langgraph_moa.cli.options import fail
from langgraph_moa.cli.relabel import export_command, relabel_command
from langgraph_moa.cli.serve_cmd import serve
from langgraph_moa.cli.thread_list import threads_command
from langgraph_moa.errors import MoAError, MoAInputError

app = MoATyper(
    name="moa",
    cls=MoAGroup,
    help="Mixture-of-Agents on LangGraph: layered proposers, critique and aggregation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version() -> str:
    try:
        return version("langgraph-moa")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def _show_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"moa (langgraph-moa) {_version()}\n")
        raise typer.Exit()


# The commands that load the engine and run a graph: the collector stays off while they load it
# (see langgraph_moa.cli.collector); every other command gets it back at once.
_RUN_COMMANDS = frozenset({"ask", "chat", "resume", "fork"})


@app.callback()
def _root(
    ctx: typer.Context,
    _version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_show_version, is_eager=True, help="Print the version."
        ),
    ] = False,
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose",
            "-v",
            count=True,
            help="Log to stderr: -v requests, retries, cache and budget; -vv debug; -vvv "
            "libraries too (or $MOA_LOG_LEVEL).",
        ),
    ] = 0,
) -> None:
    """Mixture-of-Agents on LangGraph: layered proposers, critique and aggregation."""
    setup_logging(verbose)
    if ctx.invoked_subcommand not in _RUN_COMMANDS:
        collector.settle()


app.command()(ask)
app.command()(chat)
app.command()(serve)
app.command()(resume)
app.command("history")(history_cmd)
app.command("threads")(threads_command)
app.command()(fork)
app.command()(graph)
app.command()(presets)
app.command("relabel")(relabel_command)
app.command("export")(export_command)
app.command("eval")(eval_command)
app.command("report")(report_command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: usage errors and run errors alike become one line on stderr
    (``moa: error: ...``; exit 2 for bad input, 1 for a failed run, 130 for Ctrl-C)."""
    args = sys.argv[1:] if argv is None else argv
    collector.at_exit()
    collector.pause()  # until the command has loaded what it needs (see collector)
    try:
        # `moa` alone shows what it can do
        code = app(args=args or ["--help"], standalone_mode=False, prog_name="moa")
    except SystemExit:
        raise
    except typer.TyperException as e:  # click's usage errors (typer vendors click)
        ctx = getattr(e, "ctx", None)
        where = f"{ctx.command_path}: " if ctx is not None and ctx.command_path != "moa" else ""
        message = e.format_message().replace("Value error, ", "")
        fail(f"{where}{message}", getattr(e, "exit_code", 2))
    except (typer.Abort, KeyboardInterrupt):
        fail("interrupted", 130)
    except MoAInputError as e:
        fail(str(e), 2)
    except MoAError as e:
        fail(str(e), 1)
    except Exception as e:  # never a traceback for the user
        from langgraph_moa.llm.call import error_text

        fail(error_text(e), 1)
    finally:
        collector.unpause()
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
