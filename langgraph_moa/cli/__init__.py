"""The ``moa`` command line: commands (parsing), console (rendering), threads and their store,
offline drawing. ``main`` is the console-script entry point."""

from langgraph_moa.cli.commands import app, main

__all__ = ["app", "main"]
