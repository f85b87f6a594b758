"""The ``moa`` command line: the app (:mod:`~langgraph_moa.cli.app`), a turn on a thread
(:mod:`~langgraph_moa.cli.session`), one module per command group, the console (rendering),
threads and their store, offline drawing. ``main`` is the console-script entry point; ``app`` is
the typer app."""

from langgraph_moa.cli.app import app, main

__all__ = ["app", "main"]
